"""Following a job from the CLI: fetching it, reading its event feed, polling without one.

Progress comes from the job feed (``GET job_status_feed/ID``). A feed cut off for lagging is
resumed with ``Last-Event-ID``; a server without feeds (404 on the feed of a job that exists)
is polled with ``GET jobs/ID`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import trio

from ..client import PushyClient
from ..errors import ServerRefusedError, ServerUnreachableError
from ..sse import Event, SSEParser
from ._common import naming
from ._progress import FINISHED_JOB_STATUSES, ProgressDisplay

__all__ = ["EventHandler", "follow_job", "get_job", "job_path", "poll_job", "watch_job"]

_POLL_INTERVAL: Final = 1.0
_MAX_RECONNECTS: Final = 5
_DRAIN_SECONDS: Final = 5.0

EventHandler = Callable[[Event], None]


def job_path(c: PushyClient, job_id: str, rest: str = "") -> str:
    """The API path of a job (``rest`` appended: ``/abort``, ``/output/NODE/CHANNEL``)."""
    return c.org_path(f"pushy/jobs/{job_id}{rest}")


async def get_job(c: PushyClient, job_id: str) -> dict[str, Any]:
    """The job document.

    Raises:
        ServerRefusedError: naming the job (404 when it does not exist).
    """
    try:
        doc: dict[str, Any] = await c.json("GET", job_path(c, job_id))
    except ServerRefusedError as e:
        raise naming(e, "job", job_id) from None
    return doc


async def follow_job(c: PushyClient, job_id: str, handle: EventHandler) -> bool:
    """Feed every event of a job's feed to ``handle`` until the job completes.

    A feed cut off for lagging (``lagged`` event), closed early or broken by the network is
    resumed with ``Last-Event-ID``, so ``handle`` sees each event once. A stream that keeps
    ending with nothing new is retried with a growing pause (at most 2 s).

    Args:
        c: the client.
        job_id: the job.
        handle: called with each event, in order (``lagged`` events are not passed on).

    Returns:
        ``True`` once the job finished (``job_complete`` seen, or the job document says so);
        ``False`` when the server has no job feed (the caller polls instead).

    Raises:
        ServerRefusedError: the job does not exist (404 naming it), or another refusal.
        ServerUnreachableError: the server cannot be reached, or went away and did not come
            back after a few tries.

    Cancellation: safe at any point; the stream is closed.
    """
    path = c.org_path(f"pushy/job_status_feed/{job_id}")
    last_id: str | None = None
    connected = False
    failures = 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id is not None else {}
        progressed = lagged = summary = False
        try:
            async with c.stream(path, accept="text/event-stream", headers=headers) as response:
                connected = True
                parser = SSEParser()
                done = False
                # Read to the end even after job_complete or lagged (the server closes the
                # stream then): leaving httpx's nested byte generators half-consumed leaks
                # them. A server that does not close is given a few seconds.
                drain = trio.CancelScope()
                with drain:
                    async for chunk in response.aiter_bytes():
                        if done or lagged:
                            continue
                        for event in parser.feed(chunk):
                            if event.name == "lagged":
                                lagged = True
                                drain.deadline = trio.current_time() + _DRAIN_SECONDS
                                break
                            if event.id is not None:
                                last_id = event.id
                            progressed = True
                            summary = summary or event.name == "summary"
                            handle(event)
                            if event.name == "job_complete":
                                done = True
                                drain.deadline = trio.current_time() + _DRAIN_SECONDS
                                break
                if done:
                    return True
        except ServerRefusedError as e:
            if e.status == 404 and not connected:
                await get_job(c, job_id)  # raises the 404 naming the job when it is unknown
                return False
            raise naming(e, "job", job_id) from None
        except ServerUnreachableError:
            if not connected or failures >= _MAX_RECONNECTS:
                raise
        else:
            if not lagged:
                doc = await get_job(c, job_id)
                if doc.get("status") in FINISHED_JOB_STATUSES and (summary or not progressed):
                    return True
        failures = 0 if progressed else failures + 1
        if not lagged:
            await trio.sleep(min(0.2 * failures, 2.0))


async def poll_job(c: PushyClient, job_id: str, display: ProgressDisplay) -> dict[str, Any]:
    """Show the job document every second until the job finished; return the last one."""
    while True:
        doc = await get_job(c, job_id)
        display.document(doc)
        if doc.get("status") in FINISHED_JOB_STATUSES:
            return doc
        await trio.sleep(_POLL_INTERVAL)


async def watch_job(c: PushyClient, job_id: str, display: ProgressDisplay) -> dict[str, Any]:
    """Show the job's progress until it ends; return its final document."""
    with display:
        if not await follow_job(c, job_id, display.event):
            await poll_job(c, job_id, display)
        doc = await get_job(c, job_id)
        display.finish(doc)
    return doc
