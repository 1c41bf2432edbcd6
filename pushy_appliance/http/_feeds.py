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
* org feed: ids ``org-N``, ``N = S * 2**32 + K``, ``S`` the seq of the stored record the
  event comes from and ``K`` its index among that record's org events, so ids never repeat
  and every appliance on one shared log gives an event the same id (a reader resumes on any
  of them); never ends on its own. Without ``Last-Event-ID`` only live
  events are sent. An unknown or expired id (those of earlier versions too) gets
  ``start_of_history`` (id ``start_id``, data
  just the ``timestamp``) and then every retained event; a client that resumes with
  ``start_id`` gets the same again. With ``?node_events=true`` the reader also gets the live
  node events (``node_status``, ``nodes_changed``: see :mod:`..feeds`), which have no id.
* both: a subscriber the hub cut off for falling behind gets what was buffered, then a final
  ``lagged`` event, and the stream ends. ``lagged`` carries the id of the last event the
  client was sent (``job-0`` or ``start_id`` when none: those resume from the start), so a
  client that resumes with it gets every later event exactly once. Its data is
  ``{"timestamp":…,"buffer":N}``.

Shutdown. The server closes every topic (:meth:`~..hub.Hub.close_all`) as it starts to drain:
each feed sends what it has and ends, without ``lagged``, so its client resumes with
``Last-Event-ID`` once the server is back; a feed opened during the drain sends its history
and ends. An open feed does not hold up the stop.

Slow and stalled clients. Publishing never waits for a reader. A client that stops reading
fills the TCP buffers, the feed's writes block, its subscription's buffer fills (more than
``feeds.subscriber_buffer`` events or ``feeds.subscriber_bytes`` bytes unread) and the hub
cuts it off at once: neither the job nor the other readers wait, and the subscription is
released. If the client reads again it gets what was buffered and ``lagged``. What a feed
holds besides is bounded too: it takes about ``_BATCH_BYTES`` of events at a time from its
subscription (events shared with the other readers of the topic), and writes at most
``_WRITE_BYTES`` at a time (small events joined, larger ones cut), so a client that stops
reading holds one such write (and its TLS record) in the server; the encodings of stored
events shared by all readers are kept up to ``_CACHE_BYTES``. (Hypercorn shields its socket
writes from cancellation, so the connection of a client that never reads again stays open
until the client goes away, TCP gives up, or the server stops, whose drain deadline shuts it
down; it holds no subscription and at most one write.) Open feeds are capped, per principal
(``feeds.max_per_principal``, 429) and on the server (``feeds.max_connections``, 503): see
:class:`~..feeds.Feeds`.

Permission. A feed re-checks that its reader may still read it (the organization, the
principal and, for a signed request, the keys it held, its membership, ``pushy_job_readers``;
for a dashboard session, that the session is alive) whenever identities or sessions change,
before it sends anything more, and at every keep-alive; when not, it ends at once, sending
nothing more (``FeedReader.revoked``).

Cancellation: a client that goes away cancels the request; the generator is closed and its
``with hub.subscribe(…)`` block releases the subscription at once.
"""

from __future__ import annotations

import collections
import re
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from typing import Final

import trio
from quart import Response, request
from quart_trio import QuartTrio

from ..auth import Principal
from ..feeds import FeedEvent, FeedReader, Feeds, job_topic, org_topic
from ..hub import Hub, OrgEvent, Subscription, org_event_id
from ..jobs.model import JobEntry
from ..services import Services
from ..sse import KEEPALIVE, encode_event, format_timestamp
from ._jobs import job_document
from ._request import authorized, find_job, session_cookie

__all__ = ["EVENT_STREAM", "START_ID", "register"]

EVENT_STREAM: Final = "text/event-stream"
START_ID: Final = "start_id"
"""The id of the org feed's ``start_of_history`` event."""

_WRITE_BYTES: Final = 16 * 1024
"""The most one write of a feed holds: what a client that stopped reading holds in the server
(besides its TLS record). Smaller events are joined up to it, larger ones cut."""
_BATCH_BYTES: Final = 64 * 1024
"""Live events are taken from a subscription about this many bytes at a time."""
_CACHE_BYTES: Final = 16 * 1024 * 1024
"""The encodings of stored events kept for the readers of the same history."""
_JOB_ID_RE: Final = re.compile(r"job-([1-9][0-9]{0,17})")
_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _EncodedCache:
    """Encoded stored events by key, so the N readers of one history encode each event once.

    Bounded by bytes: the oldest entries go first. Keys name immutable events (``("job", ID,
    n)`` or ``("org", ORG, seq)``), so a cached encoding never goes stale.
    """

    def __init__(self, max_bytes: int = _CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
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
            self._bytes += len(data)
            while self._bytes > self._max_bytes:
                self._bytes -= len(self._data.popitem(last=False)[1])
        return data


def _lagged(event_id: str, hub: Hub) -> bytes:
    data = {
        "timestamp": format_timestamp(time.time()),
        "buffer": hub.buffer,
        "bytes": hub.max_bytes,
    }
    return encode_event("lagged", event_id, data)


def _parse_job_event_id(value: str | None) -> int:
    """``N`` of a ``job-N`` id, or 0 when absent or malformed."""
    if value is None:
        return 0
    match = _JOB_ID_RE.fullmatch(value.strip())
    return int(match.group(1)) if match else 0


def _writes(parts: Iterable[bytes]) -> Iterator[bytes]:
    """``parts`` as writes of at most ``_WRITE_BYTES``: small parts joined, larger ones cut
    (a stream's bytes may be split anywhere)."""
    chunk: list[bytes] = []
    size = 0
    for part in parts:
        if size + len(part) > _WRITE_BYTES and chunk:
            yield b"".join(chunk)
            chunk, size = [], 0
        if len(part) > _WRITE_BYTES:
            for i in range(0, len(part), _WRITE_BYTES):
                yield part[i : i + _WRITE_BYTES]
            continue
        chunk.append(part)
        size += len(part)
    if chunk:
        yield b"".join(chunk)


async def _receive_batch(sub: Subscription, keepalive: float) -> list[FeedEvent]:
    """Wait up to ``keepalive`` seconds for an event, then take what else is buffered, up to
    about ``_BATCH_BYTES``.

    Args:
        sub: the subscription.
        keepalive: the longest wait for a first event.

    Returns:
        The events, oldest first; empty when ``keepalive`` passed without one.

    Raises:
        trio.EndOfChannel: the subscription ended (cut off or topic closed) and is drained.
        trio.ClosedResourceError: the subscription was closed (the reader was revoked).
    """
    items: list[FeedEvent] = []
    try:
        items.append(sub.receive_nowait())
    except trio.WouldBlock:
        # the cancel scope is only paid for when there is nothing to send yet
        with trio.move_on_after(keepalive):
            items.append(await sub.receive())
        if not items:
            return items
    size = len(items[0].wire)
    while size < _BATCH_BYTES:
        try:
            item: FeedEvent = sub.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        items.append(item)
        size += len(item.wire)
    return items


class _Body:
    """A feed's response body: its chunks; and the reader's place given back when the
    response ends, or when it is dropped without being sent (a client gone at once)."""

    def __init__(self, chunks: AsyncGenerator[bytes, None], reader: FeedReader) -> None:
        self._chunks = chunks
        self._release = weakref.finalize(self, reader.close)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            self._release()


class _Feeds:
    """What the feed handlers share: the hub, the feeds and the encoding cache."""

    def __init__(self, svc: Services) -> None:
        self.hub: Hub = svc.hub
        self.feeds: Feeds = svc.feeds
        self.keepalive = svc.config.feeds.keepalive
        self.cache = _EncodedCache()

    def _job_event(self, job_id: str, ev: list[object]) -> bytes:
        n, name, data = ev[0], ev[1], ev[2]
        assert isinstance(n, int) and isinstance(name, str) and isinstance(data, dict)
        return self.cache.get(("job", job_id, n), lambda: encode_event(name, f"job-{n}", data))

    def _org_event(self, org: str, event: OrgEvent) -> bytes:
        return self.cache.get(("org", org, event.order), event.encode)

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
        self, entry: JobEntry, last_event_id: str | None, reader: FeedReader
    ) -> AsyncGenerator[bytes, None]:
        """The job feed's bytes: stored events after ``last_event_id``, then live ones.

        Args:
            entry: the job.
            last_event_id: the request's ``Last-Event-ID``.
            reader: the feed's reader (its subscription, and whether it may still read).

        Yields:
            Encoded events (in writes of at most ``_WRITE_BYTES``), keep-alives, and a final
            ``lagged``.
        """
        after = _parse_job_event_id(last_event_id)
        if not 1 <= after <= entry.last_event_n():
            after = 0
        if entry.closed:
            if not entry.events:
                doc = {"timestamp": format_timestamp(time.time()), **job_document(entry)}
                yield encode_event("summary", "job-1", doc)
                return
            for chunk in _writes(self._stored(entry, after)):
                if not reader.still_allowed():
                    return
                yield chunk
            return
        with reader.subscribe(job_topic(entry.id)) as sub:
            # No await between subscribing and reading how far the store is: every event
            # above ``sent`` is either stored now or published to ``sub`` later.
            sent = max(after, entry.last_event_n())
            for chunk in _writes(self._stored(entry, after)):
                if not reader.still_allowed():
                    return
                yield chunk
            while True:
                try:
                    items = await _receive_batch(sub, self.keepalive)
                except trio.EndOfChannel:
                    if sub.lagged and reader.still_allowed():
                        yield _lagged(f"job-{sent}", self.hub)
                    return
                except trio.ClosedResourceError:  # revoked
                    return
                if not items:
                    if not reader.still_allowed(recheck=True):
                        return
                    yield KEEPALIVE
                    continue
                out: list[bytes] = []
                done = False
                for ev in items:
                    if ev.seq <= sent:
                        continue
                    out.append(ev.wire)
                    sent = ev.seq
                    if ev.name == "job_complete":
                        done = True
                        break
                for chunk in _writes(out):
                    if not reader.still_allowed():
                        return
                    yield chunk
                if done:
                    return

    async def org_chunks(
        self, org: str, last_event_id: str | None, reader: FeedReader, *, node_events: bool
    ) -> AsyncGenerator[bytes, None]:
        """The org feed's bytes: retained events after ``last_event_id``, then live ones.

        Args:
            org: the organization.
            last_event_id: the request's ``Last-Event-ID``.
            reader: the feed's reader (its subscription, and whether it may still read).
            node_events: also send the live node events (``?node_events=true``).

        Yields:
            Encoded events (in writes of at most ``_WRITE_BYTES``), keep-alives, and a final
            ``lagged``.
        """
        with reader.subscribe(org_topic(org)) as sub:
            org_log = self.feeds.org_log(org)
            # No await between subscribing and this read: every event published from now on
            # has an order key above ``seen``.
            start, retained = org_log.after(last_event_id, time.time())
            seen = org_log.last_order
            last_id = org_log.last_id or START_ID
            out: list[bytes] = []
            if start:
                stamp = {"timestamp": format_timestamp(time.time())}
                out.append(encode_event("start_of_history", START_ID, stamp))
                last_id = START_ID
            for event in retained:
                out.append(self._org_event(org, event))
                last_id = event.id
            for chunk in _writes(out):
                if not reader.still_allowed():
                    return
                yield chunk
            while True:
                try:
                    items = await _receive_batch(sub, self.keepalive)
                except trio.EndOfChannel:
                    if sub.lagged and reader.still_allowed():
                        yield _lagged(last_id, self.hub)
                    return
                except trio.ClosedResourceError:  # revoked
                    return
                if not items:
                    if not reader.still_allowed(recheck=True):
                        return
                    yield KEEPALIVE
                    continue
                out = []
                for item in items:
                    if item.is_node_event:  # live only, without an id
                        if node_events:
                            out.append(item.wire)
                        continue
                    if item.seq <= seen:
                        continue
                    seen = item.seq
                    last_id = org_event_id(item.seq)
                    out.append(item.wire)
                for chunk in _writes(out):
                    if not reader.still_allowed():
                        return
                    yield chunk


def _stream(chunks: AsyncGenerator[bytes, None], reader: FeedReader) -> Response:
    body = _Body(chunks, reader)
    response = Response(body, status=200, headers=dict(_HEADERS), content_type=EVENT_STREAM)
    response.timeout = None
    return response


def register(app: QuartTrio, svc: Services) -> None:
    """Register the feed routes (and their ``jobs_status_feed`` aliases) on ``app``.

    Args:
        app: the application.
        svc: the services; ``svc.hub``, ``svc.feeds`` and ``svc.jobs`` must be set.
    """
    feeds = _Feeds(svc)

    def open_reader(org: str, who: Principal) -> FeedReader:
        """The feed's reader, counted against the caps; it may read while the grant of
        this request holds and, through a dashboard session, while that session lives."""
        session_id = session_cookie(org)
        grant = svc.auth.grant(org, who, "read", signed=session_id is None)
        holds, sessions = svc.auth.holds, svc.web_sessions

        def allowed() -> bool:
            return holds(grant) and (
                session_id is None or sessions.alive(session_id, trio.current_time())
            )

        key = (who.kind, who.name) if who.kind == "user" else (org, who.kind, who.name)
        client = request.scope.get("client")
        peer = (str(client[0]), int(client[1])) if client else None
        return svc.feeds.open_reader(key, who.name, allowed, peer)

    async def job_feed(org: str, job_id: str) -> Response:
        who = await authorized(svc, org, "read", produces=EVENT_STREAM)
        entry = await find_job(svc, org, job_id)
        reader = open_reader(org, who)
        last = request.headers.get("Last-Event-ID")
        return _stream(feeds.job_chunks(entry, last, reader), reader)

    async def org_feed(org: str) -> Response:
        who = await authorized(svc, org, "read", produces=EVENT_STREAM)
        reader = open_reader(org, who)
        last = request.headers.get("Last-Event-ID")
        node_events = request.args.get("node_events", "").lower() == "true"
        return _stream(feeds.org_chunks(org, last, reader, node_events=node_events), reader)

    for name in ("job_status_feed", "jobs_status_feed"):
        app.add_url_rule(
            f"/organizations/<org>/pushy/{name}/<job_id>", f"{name}_job", job_feed, methods=["GET"]
        )
        app.add_url_rule(
            f"/organizations/<org>/pushy/{name}", f"{name}_org", org_feed, methods=["GET"]
        )
