"""Event fan-out where publishing never blocks, and the org feed's short-term memory.

:class:`Hub` delivers items published on a topic to every current subscriber of that topic.
Each subscriber has its own bounded buffer, bounded both in items (``buffer``) and in the
bytes those items stand for (``max_bytes``, the size the publisher gives each item).
Publishing is a plain synchronous call: it appends to each buffer and wakes any waiting
reader, so a job engine can publish from any point of its state machine without awaiting and
without being slowed by a slow client. A subscriber whose buffer would go over either bound
is *lagged*: it is detached at once and receives nothing more; its reader drains what is
buffered, then the subscription ends with ``lagged`` set, and the feed tells the client to
resume with ``Last-Event-ID``. The items are shared by all subscribers of a topic: what a
lagging subscriber holds is at most ``max_bytes`` of items the others were handed too.

Waking readers. Without :meth:`Hub.run`, a publish wakes each waiting reader at once. With
it running (the server runs it), the readers an item wakes are woken ``WAKE_BATCH`` at a time
with a pass of the scheduler between groups: a thousand feeds that each write when an event
arrives then cost the event loop a thousand short turns interleaved with everything else
(node heartbeats, requests), not one stall of a thousand writes.

:class:`OrgEventLog` keeps an organization's feed events for a retention window so a
reconnecting client can resume. It is pure and driven by the ``now`` it is given.

Typical feed handler::

    with hub.subscribe(topic) as sub:
        async for item in sub:
            await send(item)
        if sub.lagged:
            await send(lagged_event)
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import logging
import re
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

import trio

from .sse import encode_event

__all__ = [
    "ORG_INDEX_BITS",
    "WAKE_BATCH",
    "Hub",
    "HubStatistics",
    "OrgEvent",
    "OrgEventLog",
    "Subscription",
    "org_event_id",
]

logger = logging.getLogger(__name__)

WAKE_BATCH: Final = 16
"""Readers woken per scheduler pass by :meth:`Hub.run`."""


@dataclasses.dataclass(frozen=True, slots=True)
class HubStatistics:
    """A snapshot of a :class:`Hub`.

    Attributes:
        subscribers: subscriptions currently attached, over all topics.
        topics: topics with at least one attached subscription.
        published: calls to :meth:`Hub.publish` so far.
        lagged_disconnects: subscriptions cut off because their buffer was full.
    """

    subscribers: int
    topics: int
    published: int
    lagged_disconnects: int


class Subscription:
    """One reader's bounded view of a topic; made by :meth:`Hub.subscribe`.

    Use it as a (synchronous) context manager: leaving the ``with`` block, for any reason
    including cancellation, detaches it from the hub at once. Iterate it with ``async for``
    to get items in publish order; iteration ends when the subscription is detached and
    its buffer drained, and :attr:`lagged` then tells whether it was cut off for falling
    behind.

    Attributes:
        topic: the topic subscribed to.
    """

    __slots__ = ("_attached", "_bytes", "_closed", "_hub", "_lagged", "_lot", "_queue", "topic")

    def __init__(self, hub: Hub, topic: str) -> None:
        self.topic = topic
        self._hub = hub
        self._queue: collections.deque[tuple[Any, int]] = collections.deque()
        self._bytes = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._attached = True
        self._lagged = False
        self._closed = False

    @property
    def lagged(self) -> bool:
        """True when the hub cut this subscription off because its buffer was full."""
        return self._lagged

    @property
    def attached(self) -> bool:
        """True while the hub still delivers new items to this subscription."""
        return self._attached

    @property
    def buffered_bytes(self) -> int:
        """The sizes of the items buffered and not yet received, added up."""
        return self._bytes

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Detach from the hub and drop buffered items. Idempotent; never blocks.

        Tasks blocked in :meth:`receive` on this subscription get
        :exc:`trio.ClosedResourceError`.
        """
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._bytes = 0
        if self._attached:
            self._hub._detach(self)
        if self._lot:
            self._lot.unpark_all()

    def receive_nowait(self) -> Any:
        """Take the next buffered item without blocking.

        Returns:
            The oldest item not yet received.

        Raises:
            trio.WouldBlock: nothing is buffered yet and the subscription is attached.
            trio.EndOfChannel: the subscription was cut off (see :attr:`lagged`) and its
                buffer is drained.
            trio.ClosedResourceError: :meth:`close` was called.
        """
        if self._closed:
            raise trio.ClosedResourceError("subscription is closed")
        if self._queue:
            item, size = self._queue.popleft()
            self._bytes -= size
            return item
        if self._attached:
            raise trio.WouldBlock
        raise trio.EndOfChannel

    def peek_size(self) -> int | None:
        """The size of the next buffered item, or ``None`` when nothing is buffered."""
        return self._queue[0][1] if self._queue else None

    async def receive(self) -> Any:
        """Wait for the next item.

        Returns:
            The oldest item not yet received.

        Raises:
            trio.EndOfChannel: the subscription was cut off (see :attr:`lagged`) and its
                buffer is drained.
            trio.ClosedResourceError: :meth:`close` was called, before or during the wait.

        Cancellation: safe. A cancelled ``receive`` consumes nothing, so it can be wrapped in
        ``trio.move_on_after`` to send keep-alives between items.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                item = self.receive_nowait()
            except trio.WouldBlock:
                await self._lot.park()
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return item

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def __repr__(self) -> str:
        state = "lagged" if self._lagged else "attached" if self._attached else "detached"
        return (
            f"<Subscription {self.topic!r} {state} buffered={len(self._queue)} bytes={self._bytes}>"
        )


class Hub:
    """Topic-based fan-out with a bounded buffer per subscriber and a non-blocking publish.

    Not thread-safe: use it from the trio thread that runs the appliance.
    """

    def __init__(self, *, buffer: int = 1024, max_bytes: int = 4 * 1024 * 1024) -> None:
        """Create an empty hub.

        Args:
            buffer: items each subscriber may have unread before it is cut off
                (``feeds.subscriber_buffer``).
            max_bytes: bytes (the sizes given to :meth:`publish`) of the items a subscriber
                may have unread before it is cut off (``feeds.subscriber_bytes``); one item
                alone is always taken, however large.

        Raises:
            ValueError: ``buffer`` or ``max_bytes`` is less than 1.
        """
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1, not {buffer}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
        self.buffer: Final = buffer
        self.max_bytes: Final = max_bytes
        # A dict keeps subscription order, which makes lag decisions and tests deterministic.
        self._topics: dict[str, dict[Subscription, None]] = {}
        self._subscribers = 0
        self._published = 0
        self._lagged_disconnects = 0
        self._closed = False
        self._to_wake: dict[Subscription, None] = {}
        self._wake: trio.Event | None = None
        """Set by :meth:`publish` for :meth:`run` (``None`` while it does not run)."""

    @property
    def closed(self) -> bool:
        """True once :meth:`close_all` was called."""
        return self._closed

    def subscribe(self, topic: str) -> Subscription:
        """Attach a new subscription to ``topic``; it sees every item published from now on.

        After :meth:`close_all` the subscription is born detached: its reader ends at once,
        normally (``lagged`` false).

        Args:
            topic: the topic name (the hub gives names no meaning).

        Returns:
            The subscription, to be used as a ``with`` block so it is released on exit.
        """
        sub = Subscription(self, topic)
        if self._closed:
            sub._attached = False
            return sub
        subs = self._topics.get(topic)
        if subs is None:
            subs = self._topics[topic] = {}
        subs[sub] = None
        self._subscribers += 1
        return sub

    def has_subscribers(self, topic: str) -> bool:
        """Whether ``topic`` has an attached subscription (else :meth:`publish` drops items)."""
        return topic in self._topics

    def publish(self, topic: str, item: Any, size: int = 0) -> None:
        """Deliver ``item`` to every subscriber of ``topic``. Never blocks, never raises.

        A subscriber whose buffer already holds ``buffer`` unread items, or whose unread
        items would come to more than ``max_bytes`` with this one, does not get ``item``; it
        is detached and marked lagged instead. Costs O(subscribers of topic), with no task
        spawned.

        Args:
            topic: the topic to publish on; without subscribers the item is dropped.
            item: the item; the same object is handed to every subscriber, so it should be
                immutable (encoded bytes, a frozen record).
            size: what the item costs a subscriber that holds it, in bytes.
        """
        self._published += 1
        subs = self._topics.get(topic)
        if not subs:
            return
        limit = self.buffer
        room = self.max_bytes - size
        lagging: list[Subscription] | None = None
        entry = (item, size)
        for sub in subs:
            queue = sub._queue
            if len(queue) >= limit or (queue and sub._bytes > room):
                if lagging is None:
                    lagging = []
                lagging.append(sub)
                continue
            queue.append(entry)
            sub._bytes += size
            if sub._lot:
                if self._wake is None:
                    sub._lot.unpark()
                else:
                    self._to_wake[sub] = None
        if self._to_wake and self._wake is not None:
            self._wake.set()
        if lagging is not None:
            for sub in lagging:
                self._cut_off(sub)
            logger.warning(
                "%d feed subscriber(s) on %s fell behind and were disconnected "
                "(feeds.subscriber_buffer = %d events, feeds.subscriber_bytes = %d bytes)",
                len(lagging),
                topic,
                self.buffer,
                self.max_bytes,
            )

    def close_topic(self, topic: str) -> None:
        """Detach every subscriber of ``topic``; each reader drains its buffer, then ends.

        The subscriptions end normally (``lagged`` stays false). Used when a topic is
        finished for good, such as a job's feed after ``job_complete``.

        Args:
            topic: the topic to end; unknown topics are ignored.
        """
        subs = self._topics.pop(topic, None)
        if not subs:
            return
        self._subscribers -= len(subs)
        for sub in subs:
            sub._attached = False
            if sub._lot:
                sub._lot.unpark_all()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wake the readers that published items wait for, ``WAKE_BATCH`` at a time with a
        scheduler pass between groups, until cancelled (then publishing wakes them at once
        again, and those still to wake are woken).

        Start-up: ready at once.
        """
        self._wake = trio.Event()
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self._to_wake:
                    for _ in range(min(WAKE_BATCH, len(self._to_wake))):
                        sub = next(iter(self._to_wake))
                        del self._to_wake[sub]
                        if sub._lot:
                            sub._lot.unpark()
                    await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._wake = None
            for sub in self._to_wake:
                sub._lot.unpark_all()
            self._to_wake.clear()

    def close_all(self) -> None:
        """End every topic and take no new subscription (the server is shutting down).

        Every reader drains what it has buffered and ends normally (``lagged`` false), as
        after :meth:`close_topic`, so a feed client resumes later with ``Last-Event-ID``;
        later subscriptions are born detached. Idempotent; never blocks.
        """
        self._closed = True
        for topic in list(self._topics):
            self.close_topic(topic)

    def statistics(self) -> HubStatistics:
        """Return a snapshot of the hub's counters.

        Returns:
            The current :class:`HubStatistics`.
        """
        return HubStatistics(
            subscribers=self._subscribers,
            topics=len(self._topics),
            published=self._published,
            lagged_disconnects=self._lagged_disconnects,
        )

    def _cut_off(self, sub: Subscription) -> None:
        sub._lagged = True
        self._lagged_disconnects += 1
        self._detach(sub)
        # A reader parks only on an empty buffer, so none should be waiting on a full one;
        # waking any is a guard that keeps a waiter from sleeping past the end.
        if sub._lot:
            sub._lot.unpark_all()

    def _detach(self, sub: Subscription) -> None:
        sub._attached = False
        subs = self._topics.get(sub.topic)
        if subs is None or sub not in subs:
            return
        del subs[sub]
        self._subscribers -= 1
        if not subs:
            del self._topics[sub.topic]


ORG_INDEX_BITS: Final = 32
"""Bits of an org event's order key (:attr:`OrgEvent.order`) that hold its index ``K``."""


def org_event_id(order: int) -> str:
    """The SSE id ``org-N`` of the org event whose order key is ``N``."""
    return f"org-{order}"


@dataclasses.dataclass(frozen=True, slots=True)
class OrgEvent:
    """One event of an organization's feed.

    Attributes:
        seq: the seq of the stored record it comes from (``S``: the id is ``org-N``,
            ``N = S * 2**32 + K``).
        index: its index among the org events of that record (``K``; a batch record may
            hold several jobs' events).
        name: the event type (``start`` or ``job_complete``).
        data: the payload, ``timestamp`` first then ``job`` (built by the caller).
        time: when it was appended, used for expiry.
    """

    seq: int
    index: int
    name: str
    data: Mapping[str, Any]
    time: float

    @property
    def order(self) -> int:
        """``(seq, index)`` as one integer, increasing along the log."""
        return (self.seq << ORG_INDEX_BITS) | self.index

    @property
    def id(self) -> str:
        """The SSE id, ``org-N`` with ``N`` the :attr:`order`: the same on every appliance
        that applied the record."""
        return f"org-{self.order}"

    def encode(self) -> bytes:
        """Encode this event for the wire.

        Returns:
            The SSE bytes of this event.

        Raises:
            ValueError: the payload cannot be encoded (see :func:`.sse.encode_event`).
        """
        return encode_event(self.name, self.id, self.data)


_ORG_ID: Final = re.compile(r"org-(0|[1-9][0-9]{0,18})")


class OrgEventLog:
    """The recent events of one organization's feed, for ``Last-Event-ID`` resume.

    An event's id is ``org-N``, ``N = S * 2**32 + K``: ``S`` the seq of the stored record it
    comes from, ``K`` its index among that record's org events (``docs/FEEDS.md``). Every
    appliance on one log derives the same events with the same ids from the same records, so
    a reader may resume on any of them.

    Events expire ``retention`` seconds after they were appended; expiry happens on every
    call, from the ``now`` given, so the log is deterministic and needs no timer. The log
    also never holds more than ``max_events`` events (the oldest go first), which bounds its
    memory when jobs start faster than retention expects.
    """

    def __init__(self, retention: float, *, max_events: int = 65_536) -> None:
        """Create an empty log.

        Args:
            retention: seconds an event stays available (``feeds.org_retention``).
            max_events: most events kept regardless of age.

        Raises:
            ValueError: ``retention`` is negative, or ``max_events`` is less than 1.
        """
        if retention < 0:
            raise ValueError(f"retention must not be negative, not {retention}")
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, not {max_events}")
        self.retention: Final = retention
        self.max_events: Final = max_events
        self._events: collections.deque[OrgEvent] = collections.deque()
        self._last: OrgEvent | None = None

    def append(
        self, name: str, data: Mapping[str, Any], now: float, *, seq: int, index: int
    ) -> OrgEvent:
        """Record a new event, ``org-N`` with ``N = seq * 2**32 + index``.

        Args:
            name: the event type.
            data: the payload (``timestamp`` first, then ``job``).
            now: the current time in seconds (any clock, used consistently).
            seq: the seq of the record it comes from.
            index: its index among that record's org events.

        Returns:
            The recorded event.

        Raises:
            ValueError: ``(seq, index)`` is not after the newest event's (nothing recorded).
        """
        if seq < 1 or not 0 <= index < 1 << ORG_INDEX_BITS:
            raise ValueError(f"no org event at seq {seq}, index {index}")
        event = OrgEvent(seq=seq, index=index, name=name, data=data, time=now)
        if self._last is not None and event.order <= self._last.order:
            raise ValueError(f"{event.id} is not after {self._last.id}")
        self._expire(now)
        self._last = event
        self._events.append(event)
        if len(self._events) > self.max_events:
            self._events.popleft()
        return event

    def after(self, last_event_id: str | None, now: float) -> tuple[bool, list[OrgEvent]]:
        """Decide what a (re)connecting reader must be sent before live events.

        Args:
            last_event_id: the request's ``Last-Event-ID``, or ``None`` when absent.
            now: the current time, on the clock given to :meth:`append`.

        Returns:
            ``(start_of_history, events)``: ``(False, [])`` without an id (live events
            only); ``(False, events after it)`` for an id still retained; ``(True, every
            retained event)`` for an id that is malformed, never issued (the ids of earlier
            versions, which counted from the process's start, too), or expired.
        """
        self._expire(now)
        if last_event_id is None:
            return False, []
        order = _parse_org_id(last_event_id)
        events = list(self._events)
        at = bisect.bisect_left(events, order, key=_order) if order is not None else 0
        if order is None or at == len(events) or events[at].order != order:
            return True, events
        return False, events[at + 1 :]

    def events(self, now: float) -> list[OrgEvent]:
        """Return every retained event, oldest first.

        Args:
            now: the current time, on the clock given to :meth:`append`.

        Returns:
            The retained events.
        """
        self._expire(now)
        return list(self._events)

    @property
    def last_id(self) -> str | None:
        """The id of the newest event ever appended, or ``None`` for an empty log."""
        return self._last.id if self._last is not None else None

    @property
    def last_order(self) -> int:
        """The order key of the newest event ever appended (0 for an empty log)."""
        return self._last.order if self._last is not None else 0

    def _expire(self, now: float) -> None:
        horizon = now - self.retention
        events = self._events
        while events and events[0].time < horizon:
            events.popleft()


def _order(event: OrgEvent) -> int:
    return event.order


def _parse_org_id(event_id: str) -> int | None:
    """The order key of an ``org-N`` id; ``None`` when it is not one."""
    found = _ORG_ID.fullmatch(event_id)
    return int(found[1]) if found is not None else None
