"""The event feeds: ``job_status_feed/ID`` and ``job_status_feed`` (``API.md`` §3).

Both feeds are Server-Sent Events streamed from an async generator, and ``jobs_status_feed``
(the seed's spelling) is an alias of both. Each feed follows the same recipe so that a reader
never sees a gap or a duplicate:

1. subscribe to the hub topic FIRST (``job:ID`` or ``org:ORG``), when the stream starts;
2. send what is already stored (the job's events in the store, or the org log's retained
   events) after the ``Last-Event-ID``;
3. send live events, skipping any already sent.

This works because the runner stores (job feed) and :mod:`..feeds` logs (org feed) an event
before it is published: an event is either in what step 2 reads, or published after step 1.

Ids and special events:

* job feed: ids ``job-N``; the stream ends after ``job_complete``. A ``Last-Event-ID`` that
  does not name an event of the job (malformed, ``job-0``, beyond the newest) resumes from the
  start. A finished job whose events were purged gets one ``summary`` event (id ``job-1``, the
  job document) and ends. A finished job's feed takes no subscription: its history is
  complete. The runner closes a job's topic right after ``job_complete``, so no subscription
  outlives its job.
* org feed: ids ``org-N``, ``N`` counting up from the server's start time in microseconds, so
  ids never repeat across restarts; never ends on its own. Without ``Last-Event-ID`` only live
  events are sent. An unknown or expired id gets ``start_of_history`` (id ``start_id``, data
  just the ``timestamp``) and then every retained event; a client that resumes with
  ``start_id`` gets the same again.
* both: a subscriber the hub cut off for falling behind gets what was buffered, then a final
  ``lagged`` event, and the stream ends. ``lagged`` carries the id of the last event the
  client was sent (``job-0`` or ``start_id`` when none: those resume from the start), so a
  client that resumes with it gets every later event exactly once. Its data is
  ``{"timestamp":…,"buffer":N}``.

Slow and stalled clients. Publishing never waits for a reader. A client that stops reading
fills the TCP buffers, the feed's writes block, its subscription's buffer
(``feeds.subscriber_buffer``) fills and the hub cuts it off at once: neither the job nor the
other readers wait, and the subscription is released. If the client reads again it gets what
was buffered and ``lagged``. (Hypercorn shields its socket writes from cancellation, so the
connection of a client that never reads again stays open until the client goes away or TCP
gives up; it holds no subscription and at most a buffer's worth of events.)

Cancellation: a client that goes away cancels the request; the generator is closed and its
``with hub.subscribe(…)`` block releases the subscription at once.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from typing import Any, Final

import trio
from quart import Response, request
from quart_trio import QuartTrio

from ..feeds import Feeds, job_topic, org_topic
from ..hub import Hub, OrgEvent, Subscription
from ..jobs.model import JobEntry
from ..services import Services
from ..sse import KEEPALIVE, encode_event, format_timestamp
from ._jobs import job_document
from ._request import authorized, find_job

__all__ = ["EVENT_STREAM", "START_ID", "register"]

EVENT_STREAM: Final = "text/event-stream"
START_ID: Final = "start_id"
"""The id of the org feed's ``start_of_history`` event."""

_CHUNK_BYTES: Final = 64 * 1024
"""Stored events are joined into writes of about this size."""
_BATCH_ITEMS: Final = 256
"""Most live events taken from a subscription for one write."""
_CACHE_SIZE: Final = 8192
_JOB_ID_RE: Final = re.compile(r"job-([1-9][0-9]{0,17})")
_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _EncodedCache:
    """Encoded events by key, so the N readers of one feed encode each event once.

    Bounded: the oldest entries go first. Keys name immutable events (``("job", ID, n)`` or
    ``("org", ORG, seq)``), so a cached encoding never goes stale.
    """

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._size = size
        self._data: collections.OrderedDict[tuple[str, str, int], bytes] = collections.OrderedDict()

    def get(self, key: tuple[str, str, int], encode: Callable[[], bytes]) -> bytes:
        """The encoding of ``key``, made with ``encode`` when it is not cached.

        Args:
            key: names the event.
            encode: makes the bytes.

        Returns:
            The encoded event.
        """
        data = self._data.get(key)
        if data is None:
            data = self._data[key] = encode()
            if len(self._data) > self._size:
                self._data.popitem(last=False)
        return data


def _lagged(event_id: str, buffer: int) -> bytes:
    return encode_event(
        "lagged", event_id, {"timestamp": format_timestamp(time.time()), "buffer": buffer}
    )


def _parse_job_event_id(value: str | None) -> int:
    """``N`` of a ``job-N`` id, or 0 when absent or malformed."""
    if value is None:
        return 0
    match = _JOB_ID_RE.fullmatch(value.strip())
    return int(match.group(1)) if match else 0


def _joined(parts: Iterable[bytes]) -> Iterator[bytes]:
    """Join ``parts`` into chunks of about ``_CHUNK_BYTES``."""
    chunk: list[bytes] = []
    size = 0
    for part in parts:
        chunk.append(part)
        size += len(part)
        if size >= _CHUNK_BYTES:
            yield b"".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield b"".join(chunk)


async def _receive_batch(sub: Subscription, keepalive: float) -> list[Any]:
    """Wait up to ``keepalive`` seconds for an item, then take what else is buffered.

    Args:
        sub: the subscription.
        keepalive: the longest wait for a first item.

    Returns:
        The items, oldest first; empty when ``keepalive`` passed without one.

    Raises:
        trio.EndOfChannel: the subscription ended (cut off or topic closed) and is drained.
    """
    items: list[Any] = []
    try:
        items.append(sub.receive_nowait())
    except trio.WouldBlock:
        # the cancel scope is only paid for when there is nothing to send yet
        with trio.move_on_after(keepalive):
            items.append(await sub.receive())
        if not items:
            return items
    while len(items) < _BATCH_ITEMS:
        try:
            items.append(sub.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return items


class _Feeds:
    """What the feed handlers share: the hub, the feeds' logs and the encoding cache."""

    def __init__(self, svc: Services) -> None:
        self.hub: Hub = svc.hub
        self.feeds: Feeds = svc.feeds
        self.keepalive = svc.config.feeds.keepalive
        self.cache = _EncodedCache()

    def _job_event(self, job_id: str, ev: list[Any]) -> bytes:
        n, name, data = ev[0], ev[1], ev[2]
        return self.cache.get(("job", job_id, n), lambda: encode_event(name, f"job-{n}", data))

    def _org_event(self, org: str, event: OrgEvent) -> bytes:
        return self.cache.get(("org", org, event.seq), event.encode)

    def _stored(self, entry: JobEntry, after: int) -> Iterator[bytes]:
        """The job's stored events after ``job-<after>``, encoded, up to ``job_complete``."""
        # Indexing up to the current length: the list may grow while the caller is suspended,
        # and those newer events come from the subscription.
        events = entry.events
        for i in range(len(events)):
            ev = events[i]
            if ev[0] > after:
                yield self._job_event(entry.id, ev)
                if ev[1] == "job_complete":
                    return

    async def job_chunks(
        self, entry: JobEntry, last_event_id: str | None
    ) -> AsyncGenerator[bytes, None]:
        """The job feed's bytes: stored events after ``last_event_id``, then live ones.

        Args:
            entry: the job.
            last_event_id: the request's ``Last-Event-ID``.

        Yields:
            Encoded events (joined into chunks), keep-alives, and a final ``lagged``.
        """
        after = _parse_job_event_id(last_event_id)
        if not 1 <= after <= entry.last_event_n():
            after = 0
        if entry.closed:
            if not entry.events:
                doc = {"timestamp": format_timestamp(time.time()), **job_document(entry)}
                yield encode_event("summary", "job-1", doc)
                return
            for chunk in _joined(self._stored(entry, after)):
                yield chunk
            return
        with self.hub.subscribe(job_topic(entry.id)) as sub:
            # No await between subscribing and reading how far the store is: every event
            # above ``sent`` is either stored now or published to ``sub`` later.
            sent = max(after, entry.last_event_n())
            for chunk in _joined(self._stored(entry, after)):
                yield chunk
            while True:
                try:
                    items = await _receive_batch(sub, self.keepalive)
                except trio.EndOfChannel:
                    if sub.lagged:
                        yield _lagged(f"job-{sent}", self.hub.buffer)
                    return
                if not items:
                    yield KEEPALIVE
                    continue
                out: list[bytes] = []
                done = False
                for ev in items:
                    if ev[0] <= sent:
                        continue
                    out.append(self._job_event(entry.id, ev))
                    sent = ev[0]
                    if ev[1] == "job_complete":
                        done = True
                        break
                if out:
                    yield b"".join(out)
                if done:
                    return

    async def org_chunks(self, org: str, last_event_id: str | None) -> AsyncGenerator[bytes, None]:
        """The org feed's bytes: retained events after ``last_event_id``, then live ones.

        Args:
            org: the organization.
            last_event_id: the request's ``Last-Event-ID``.

        Yields:
            Encoded events (joined into chunks), keep-alives, and a final ``lagged``.
        """
        with self.hub.subscribe(org_topic(org)) as sub:
            org_log = self.feeds.org_log(org)
            # No await between subscribing and this read: every event published from now on
            # has a sequence number above ``seen``.
            start, retained = org_log.after(last_event_id, time.time())
            newest = org_log.last_id
            seen = int(newest.removeprefix("org-")) if newest else 0
            last_id = newest or START_ID
            out: list[bytes] = []
            if start:
                stamp = {"timestamp": format_timestamp(time.time())}
                out.append(encode_event("start_of_history", START_ID, stamp))
                last_id = START_ID
            for event in retained:
                out.append(self._org_event(org, event))
                last_id = event.id
            for chunk in _joined(out):
                yield chunk
            while True:
                try:
                    items = await _receive_batch(sub, self.keepalive)
                except trio.EndOfChannel:
                    if sub.lagged:
                        yield _lagged(last_id, self.hub.buffer)
                    return
                if not items:
                    yield KEEPALIVE
                    continue
                out = []
                for event in items:
                    if event.seq <= seen:
                        continue
                    seen = event.seq
                    last_id = event.id
                    out.append(self._org_event(org, event))
                if out:
                    yield b"".join(out)


def _stream(chunks: AsyncGenerator[bytes, None]) -> Response:
    response = Response(chunks, status=200, headers=dict(_HEADERS), content_type=EVENT_STREAM)
    response.timeout = None
    return response


def register(app: QuartTrio, svc: Services) -> None:
    """Register the feed routes (and their ``jobs_status_feed`` aliases) on ``app``.

    Args:
        app: the application.
        svc: the services; ``svc.hub``, ``svc.feeds`` and ``svc.jobs`` must be set.
    """
    feeds = _Feeds(svc)

    async def job_feed(org: str, job_id: str) -> Response:
        await authorized(svc, org, "read", produces=EVENT_STREAM)
        entry = await find_job(svc, org, job_id)
        return _stream(feeds.job_chunks(entry, request.headers.get("Last-Event-ID")))

    async def org_feed(org: str) -> Response:
        await authorized(svc, org, "read", produces=EVENT_STREAM)
        return _stream(feeds.org_chunks(org, request.headers.get("Last-Event-ID")))

    for name in ("job_status_feed", "jobs_status_feed"):
        app.add_url_rule(
            f"/organizations/<org>/pushy/{name}/<job_id>", f"{name}_job", job_feed, methods=["GET"]
        )
        app.add_url_rule(
            f"/organizations/<org>/pushy/{name}", f"{name}_org", org_feed, methods=["GET"]
        )
