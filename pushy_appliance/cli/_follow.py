"""Following a job from the CLI: fetching it, reading its event feed, polling without one.

Progress comes from the job feed (``GET job_status_feed/ID``). A feed cut off for lagging is
resumed with ``Last-Event-ID``; a server without feeds (404 on the feed of a job that exists)
is polled with ``GET jobs/ID`` instead. A server that goes away while a job is followed (a
restart) is waited for with backoff (:class:`Reconnector`), and the feed resumed with
``Last-Event-ID`` where it stopped.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import trio

from ..client import PushyClient
from ..errors import ClientError, ConfigError, ServerRefusedError, ServerUnreachableError
from ..sse import Event, SSEParser
from ._common import naming
from ._progress import FINISHED_JOB_STATUSES, ProgressDisplay

__all__ = [
    "JOB_ID_HELP",
    "RECONNECT_WINDOW",
    "EventHandler",
    "Reconnector",
    "follow_job",
    "get_job",
    "is_transient",
    "job_path",
    "poll_job",
    "resolve_job_id",
    "watch_job",
]

_POLL_INTERVAL: Final = 1.0
RECONNECT_WINDOW: Final = 120.0
"""Seconds a follower waits for a server that went away before it gives up (exit 3)."""
RECONNECT_FIRST: Final = 0.25
"""Seconds: the cap of the first wait for a server that went away."""
RECONNECT_CAP: Final = 5.0
"""Seconds: the largest wait between two attempts."""
_TRANSIENT_STATUSES: Final = frozenset({502, 503, 504})
_DRAIN_SECONDS: Final = 5.0
_ID_LENGTH: Final = 32
JOB_ID_HELP: Final = "the job id, or the start of it when no other job's id starts the same"
_AMBIGUOUS_SHOWN: Final = 5

EventHandler = Callable[[Event], None]
T = TypeVar("T")


def job_path(c: PushyClient, job_id: str, rest: str = "") -> str:
    """The API path of a job (``rest`` appended: ``/abort``, ``/output/NODE/CHANNEL``)."""
    return c.org_path(f"pushy/jobs/{job_id}{rest}")


async def resolve_job_id(c: PushyClient, text: str) -> str:
    """The job id that ``text`` names: a whole id, or the start of exactly one job's id.

    A whole id (32 characters or more) is taken as it is, without asking the server; a shorter
    one is looked up in ``GET jobs``.

    Args:
        c: the client.
        text: the id or prefix as the user typed it.

    Returns:
        The job's whole id.

    Raises:
        ConfigError: ``text`` is empty, or the start of more than one job's id (exit 2).
        ServerRefusedError: no job's id starts with ``text`` (404), or the listing was refused.
    """
    wanted = text.strip().lower()
    if len(wanted) >= _ID_LENGTH:
        return text.strip()
    if not wanted:
        raise ConfigError("job id", None, "empty: give the id, or the start of one")
    jobs = await c.json("GET", c.org_path("pushy/jobs"))
    ids = sorted({str(j.get("id")) for j in jobs if str(j.get("id", "")).startswith(wanted)})
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise ServerRefusedError(404, f"no job id starts with '{text}'")
    shown = ", ".join(ids[:_AMBIGUOUS_SHOWN]) + (", …" if len(ids) > _AMBIGUOUS_SHOWN else "")
    raise ConfigError(
        "job id",
        None,
        f"'{text}' is the start of {len(ids)} job ids ({shown}): give more of it",
    )


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


class Reconnector:
    """Waits between attempts to reach a server that went away (a restart, a network cut).

    Delays grow from :data:`RECONNECT_FIRST` doubling up to :data:`RECONNECT_CAP`, each
    jittered down to half; once the server has been away for ``window`` seconds the error
    that lost it is raised. The first loss and the return are told through ``notify``.

    Args:
        window: seconds without reaching the server before giving up.
        notify: shows one line to the user (default: ``pushy: …`` on stderr).
        rng: the random source of the jitter.
    """

    def __init__(
        self,
        window: float = RECONNECT_WINDOW,
        notify: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.window = window
        self._notify = notify or _to_stderr
        self._rng = rng or random.Random()
        self._lost_at: float | None = None
        self._attempt = 0

    async def lost(self, error: ClientError) -> None:
        """The server could not be reached (``error``): wait before the next attempt.

        Raises:
            ClientError: ``error``, once the server has been away for the whole window.
        """
        now = trio.current_time()
        if self._lost_at is None:
            self._lost_at = now
            self._notify(f"lost the server ({error}); reconnecting for up to {self.window:g} s")
        elif now - self._lost_at >= self.window:
            raise error
        ceiling = min(RECONNECT_CAP, RECONNECT_FIRST * 2.0 ** min(self._attempt, 30))
        self._attempt += 1
        delay = self._rng.uniform(ceiling / 2, ceiling)
        await trio.sleep(min(delay, max(0.0, self._lost_at + self.window - now)))

    def reached(self) -> None:
        """The server answered: the next loss starts a new window."""
        if self._lost_at is not None:
            self._notify("reconnected")
        self._lost_at = None
        self._attempt = 0

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()``, again after each transient failure, within the window.

        Raises:
            whatever ``fn`` raises that is not transient, or the transient error once the
            window has passed.
        """
        while True:
            try:
                result = await fn()
            except ClientError as e:
                if not is_transient(e):
                    raise
                await self.lost(e)
                continue
            self.reached()
            return result


def is_transient(error: ClientError) -> bool:
    """Whether ``error`` may pass by itself: the server is unreachable, or answered 502, 503
    or 504 (restarting, or a proxy without it)."""
    if isinstance(error, ServerUnreachableError):
        return True
    return isinstance(error, ServerRefusedError) and error.status in _TRANSIENT_STATUSES


def _to_stderr(text: str) -> None:
    print(f"pushy: {text}", file=sys.stderr, flush=True)


async def follow_job(
    c: PushyClient,
    job_id: str,
    handle: EventHandler,
    *,
    reconnect: Reconnector | None = None,
) -> bool:
    """Feed every event of a job's feed to ``handle`` until the job completes.

    A feed cut off for lagging (``lagged`` event), closed early or broken by the network is
    resumed with ``Last-Event-ID``, so ``handle`` sees each event once. A stream that keeps
    ending with nothing new is retried with a growing pause (at most 2 s). A server that goes
    away once the feed was open (a restart) is waited for by ``reconnect`` (backoff, for up
    to :data:`RECONNECT_WINDOW` seconds), and the feed resumed where it stopped.

    Args:
        c: the client.
        job_id: the job.
        handle: called with each event, in order (``lagged`` events are not passed on).
        reconnect: the waits between attempts (default: a new :class:`Reconnector`).

    Returns:
        ``True`` once the job finished (``job_complete`` seen, or the job document says so);
        ``False`` when the server has no job feed (the caller polls instead).

    Raises:
        ServerRefusedError: the job does not exist (404 naming it), or another refusal.
        ServerUnreachableError: the server cannot be reached at first, or went away and did
            not come back within the window.

    Cancellation: safe at any point; the stream is closed.
    """
    path = c.org_path(f"pushy/job_status_feed/{job_id}")
    reconnect = reconnect or Reconnector()
    last_id: str | None = None
    connected = False
    failures = 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id is not None else {}
        progressed = lagged = summary = False
        try:
            async with c.stream(path, accept="text/event-stream", headers=headers) as response:
                connected = True
                reconnect.reached()
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
            if not lagged:
                doc = await get_job(c, job_id)
                if doc.get("status") in FINISHED_JOB_STATUSES and (summary or not progressed):
                    return True
        except ServerRefusedError as e:
            if e.status == 404 and not connected:
                await get_job(c, job_id)  # raises the 404 naming the job when it is unknown
                return False
            if not (connected and is_transient(e)):
                raise naming(e, "job", job_id) from None
            await reconnect.lost(e)
            continue
        except ServerUnreachableError as e:
            if not connected:
                raise
            await reconnect.lost(e)
            continue
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
    """Show the job's progress until it ends; return its final document.

    Nacks are shown with their reason and busy nodes with the job holding them (the
    ``quorum_vote`` events carry both); a server restart on the way is waited for.
    """
    reconnect = Reconnector()
    with display:
        if not await follow_job(c, job_id, display.event, reconnect=reconnect):
            await poll_job(c, job_id, display)
        doc = await reconnect.call(lambda: get_job(c, job_id))
        display.finish(doc)
    return doc
