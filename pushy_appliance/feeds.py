"""The event feeds' side of the hub: topic names, publishing, the org feed's log, and the
open feeds (their caps, and whether their readers may still read).

Publishing. A job's feed events are stored (with the job's state, one store write per step)
before they are published, so a feed handler that subscribes first and reads the log or the
store second sees every event once:

* the job feed: the runner hands each event it stored to :meth:`Feeds.publish_job`, which
  publishes it on the job's topic (:func:`job_topic`) as a :class:`FeedEvent`, encoded once
  for all its readers, its size what it costs a reader that holds it, and after
  ``job_complete`` (always the job feed's last event) closes the topic: its readers drain
  what they have and end. The events of a job another appliance drives (a log several
  appliances share, ``docs/SCALE-OUT.md`` §7) are published alike by
  :meth:`Feeds.record_followed`, the database's ``watch_followed`` watcher, as the follower
  applies the records that stored them.
* the org feed: ``start`` and ``job_complete``, its only job events (``API.md`` §3), come from
  the records as the database applies them, own or followed (:meth:`Feeds.record_applied`,
  a database watcher): each is appended to the organization's
  :class:`~.hub.OrgEventLog` (kept for ``feeds.org_retention`` seconds, so a client can
  resume with ``Last-Event-ID``) and then published on the org topic (:func:`org_topic`).
  Its id is ``org-N``, ``N = S * 2**32 + K``: ``S`` the seq of the record, ``K`` the event's
  index among the record's org events; every appliance on one log derives the same ids, so
  a reader resumes on any of them.

Node events (an addition to the org feed, ``docs/FEEDS.md``), sent only to the org feed's
readers that ask for them (``?node_events=true``). The node link tells
:meth:`Feeds.node_changed` of every node whose status or availability may have changed; at
most every ``NODE_STATUS_INTERVAL`` seconds :meth:`Feeds.run` asks the link the state of those
nodes (``node_state``) and, for each whose ``(status, availability)`` differs from what the
org feed last said of it, publishes ``node_status`` (``timestamp``, ``node``, ``status``,
``availability``). So a node gets at most one event per interval, a change undone within it
gets none, and a node the feed has not mentioned is taken to be offline (as every node is
when the server starts). When more than ``NODE_STATUS_BURST`` nodes of one organization
changed in one interval (a fleet reconnecting after a restart), that organization's feed
gets one ``nodes_changed`` event (``timestamp``, ``count``) instead: readers read
``node_states`` again. Node events are live only: they have no id, are not kept in the org
log (a resumed reader reads the nodes' states anew) and are not logged.

Open feeds. Every feed response is a :class:`FeedReader` from :meth:`Feeds.open_reader`,
held until the response ends: at most ``feeds.max_connections`` on the server and
``feeds.max_per_principal`` per principal (:class:`~.errors.TooManyFeedsError`,
:class:`~.errors.TooManyPrincipalFeedsError` otherwise). A reader carries the question
whether its principal may still read (``allowed``). :meth:`Feeds.permissions_changed` (the
identity model's and the dashboard sessions' watcher) makes every open reader ask it again:
the reader's own task asks before it sends anything more, and :meth:`Feeds.run` asks for the
idle ones; a reader that may not read any more is *revoked*: its subscription is closed and
its feed ends at once, whatever it had buffered.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Final

import trio

from .errors import TooManyFeedsError, TooManyPrincipalFeedsError
from .hub import Hub, OrgEventLog, Subscription
from .jobs.compact import EventLog
from .sse import encode_event, format_timestamp

__all__ = [
    "NODE_EVENTS",
    "NODE_STATUS_BURST",
    "NODE_STATUS_INTERVAL",
    "FeedEvent",
    "FeedReader",
    "Feeds",
    "FeedsStatistics",
    "job_topic",
    "org_topic",
]

log = logging.getLogger(__name__)

NODE_STATUS_INTERVAL: Final = 0.5
"""Seconds between two rounds of node events: a node gets at most one event per round."""
NODE_STATUS_BURST: Final = 100
"""Nodes of one organization changed in one round above which its feed gets one
``nodes_changed`` event instead of a ``node_status`` event per node."""
NODE_EVENTS: Final = frozenset({"node_status", "nodes_changed"})
"""The org feed's node events (live only, without an id, for readers that ask for them)."""
_OFFLINE: Final = ("offline", "unavailable")


def job_topic(job_id: str) -> str:
    """The hub topic of one job's feed."""
    return f"job:{job_id}"


def org_topic(org: str) -> str:
    """The hub topic of an organization's feed."""
    return f"org:{org}"


@dataclasses.dataclass(frozen=True, slots=True)
class FeedEvent:
    """An event as published on a feed's topic.

    Attributes:
        seq: its number: ``N`` of ``job-N``; of an org event its order key
            (:attr:`~.hub.OrgEvent.order`); 0 for a node event.
        name: the event type.
        wire: the event encoded for the stream (``event:``, ``id:``, ``data:`` lines).
    """

    seq: int
    name: str
    wire: bytes

    @property
    def is_node_event(self) -> bool:
        """Whether it is one of the org feed's :data:`NODE_EVENTS` (``seq`` 0, no id)."""
        return self.name in NODE_EVENTS


@dataclasses.dataclass(frozen=True, slots=True)
class FeedsStatistics:
    """Open feeds: ``readers`` in all, ``revoked`` since start (permission gone)."""

    readers: int
    revoked: int


class FeedReader:
    """One open feed: who reads it, its subscription, and whether they may still read.

    Made by :meth:`Feeds.open_reader`; counts against the caps until :meth:`close`.

    Attributes:
        name: the reader's principal, for the log.
    """

    __slots__ = (
        "_allowed",
        "_checked",
        "_feeds",
        "_key",
        "_open",
        "_sub",
        "name",
        "peer",
        "revoked",
    )

    def __init__(
        self,
        feeds: Feeds,
        key: Hashable,
        name: str,
        allowed: Callable[[], bool],
        peer: tuple[str, int] | None,
    ) -> None:
        self._feeds = feeds
        self._key = key
        self.name = name
        self.peer = peer
        """The client's address, to find its connection at shutdown."""
        self._allowed = allowed
        self._checked = feeds._generation
        self._sub: Subscription | None = None
        self._open = True
        self.revoked = False
        """True once its principal lost the permission: its feed must end, sending nothing."""

    def subscribe(self, topic: str) -> Subscription:
        """The feed's subscription to ``topic`` (use it as a ``with`` block); closed when the
        reader is revoked (its receive then raises :exc:`trio.ClosedResourceError`)."""
        sub = self._sub = self._feeds.hub.subscribe(topic)
        if self.revoked:
            sub.close()
        return sub

    def still_allowed(self, *, recheck: bool = False) -> bool:
        """Whether the reader may go on: asks ``allowed`` again when permissions may have
        changed since it last did (or with ``recheck``); revokes the reader when not.

        Args:
            recheck: ask even if nothing changed (what time alone can end: a session's idle
                timeout).
        """
        if self.revoked:
            return False
        generation = self._feeds._generation
        if recheck or self._checked != generation:
            self._checked = generation
            if not self._allowed():
                self._revoke()
                return False
        return True

    def _revoke(self) -> None:
        self.revoked = True
        self._feeds._revoked += 1
        log.info("feed of %s closed: it may not read it any more", self.name)
        if self._sub is not None:
            self._sub.close()

    def close(self) -> None:
        """The feed's response ended: release its place. Idempotent."""
        if not self._open:
            return
        self._open = False
        if self._sub is not None:
            self._sub.close()
        self._feeds._release(self)


class Feeds:
    """Publishes feed events, keeps each organization's feed log, and keeps the open feeds.

    Args:
        hub: where events are published.
        org_retention: seconds the org feed keeps events for resuming.
        max_readers: feeds open at once on the server (``feeds.max_connections``).
        max_readers_per_principal: feeds one principal may have open
            (``feeds.max_per_principal``).
        node_state: ``(status, availability)`` of a node of an organization now (the node
            link's); without it no node event is published.
        now: the clock of the org log's retention (seconds since the epoch).
        job_org: the organization of a job (the jobs model's), for the org events of a
            ``job.step`` record (:meth:`record_applied`).
    """

    def __init__(
        self,
        hub: Hub,
        *,
        org_retention: float,
        max_readers: int = 2048,
        max_readers_per_principal: int = 64,
        node_state: Callable[[str, str], tuple[str, str]] | None = None,
        now: Callable[[], float] = time.time,
        job_org: Callable[[str], str | None] | None = None,
    ) -> None:
        self.hub = hub
        self.org_retention = org_retention
        self.max_readers = max_readers
        self.max_readers_per_principal = max_readers_per_principal
        self._now = now
        self._logs: dict[str, OrgEventLog] = {}
        self._job_org = job_org
        self._record_seq = 0
        self._record_index = 0
        self._readers: dict[FeedReader, None] = {}
        self._per_principal: collections.Counter[Hashable] = collections.Counter()
        self._generation = 0
        self._revoked = 0
        self._changed = trio.Event()
        self._none_open = trio.Event()
        self._none_open.set()
        self._node_state = node_state
        self._nodes_dirty: dict[tuple[str, str], None] = {}
        self._nodes_said: dict[tuple[str, str], tuple[str, str]] = {}
        """What the org feed last said of each node not offline (``_OFFLINE`` otherwise)."""
        self._nodes_changed = trio.Event()

    def org_log(self, org: str) -> OrgEventLog:
        """The org feed's retained events of ``org`` (created empty on first use)."""
        log_ = self._logs.get(org)
        if log_ is None:
            log_ = self._logs[org] = OrgEventLog(self.org_retention)
        return log_

    # --- publishing -------------------------------------------------------------------------

    def publish_job(self, org: str, job_id: str, event: list[Any]) -> None:
        """Publish a stored job-feed event (``[n, name, data]``, ``data`` stamped) on the
        job's topic; the topic is closed after ``job_complete``. Never blocks.

        Args:
            org: the job's organization.
            job_id: the job.
            event: the event as stored.
        """
        n, name, data = event[0], event[1], event[2]
        topic = job_topic(job_id)
        if self.hub.has_subscribers(topic):
            wire = encode_event(name, f"job-{n}", data)
            self.hub.publish(topic, FeedEvent(n, name, wire), len(wire))
        if name == "job_complete":
            self.hub.close_topic(topic)

    def record_followed(self, record: dict[str, Any]) -> None:
        """The database's ``watch_followed`` watcher: the job-feed events another appliance
        stored (a ``job.create`` or ``job.step`` record it appended) are published on the
        job's topic, as :meth:`publish_job` publishes the runner's own. Never blocks."""
        t = record.get("t")
        if t != "job.create" and t != "job.step":
            return
        job_id = record["id"]
        if not self.hub.has_subscribers(job_topic(job_id)):
            return  # (nobody to tell, no topic to close)
        stored: Sequence[list[Any]] = (
            record["events"] if t == "job.step" else EventLog.from_stored(record["events"])
        )
        for event in stored:
            self.publish_job("", job_id, event)

    def record_applied(self, record: dict[str, Any], seq: int) -> None:
        """A database watcher: the org feed's events of a record applied at ``seq`` (own or
        followed): ``start`` (a ``job.create``'s first event) and ``job_complete`` (the last
        event of a job, in a ``job.step``, or in a ``job.create`` that ended at once), with
        the ids ``org-N``, ``N = seq * 2**32 + K``. Never blocks."""
        t = record.get("t")
        if t != "job.create" and t != "job.step":
            return
        if seq != self._record_seq:
            self._record_seq, self._record_index = seq, 0
        job_id = record["id"]
        if t == "job.create":
            stored = EventLog.from_stored(record["events"])
            org: str | None = record["org"]
            ends = [stored[0]] if len(stored) else []
            if len(stored) > 1 and stored[-1][1] == "job_complete":
                ends.append(stored[-1])
        else:
            events = record["events"]
            if not events or events[-1][1] != "job_complete":
                return
            org = self._job_org(job_id) if self._job_org is not None else None
            ends = [events[-1]]
        if org is None:
            return
        for _n, name, data in ends:
            if name in ("start", "job_complete"):
                self._publish_org(org, name, job_id, data, seq, self._record_index)
                self._record_index += 1

    def close_job(self, job_id: str) -> None:
        """Close a job's topic (the job was purged): its readers end."""
        self.hub.close_topic(job_topic(job_id))

    def _publish_org(
        self, org: str, name: str, job_id: str, data: Mapping[str, Any], seq: int, index: int
    ) -> None:
        fields = {k: v for k, v in data.items() if k != "timestamp"}
        payload = {"timestamp": data["timestamp"], "job": job_id, **fields}
        event = self.org_log(org).append(name, payload, self._now(), seq=seq, index=index)
        topic = org_topic(org)
        if self.hub.has_subscribers(topic):
            wire = event.encode()
            self.hub.publish(topic, FeedEvent(event.order, name, wire), len(wire))

    # --- node events ------------------------------------------------------------------------

    def node_changed(self, org: str, node: str) -> None:
        """The node's status or availability may have changed (the node link's watcher): an
        event follows within ``NODE_STATUS_INTERVAL`` if it did. Never blocks."""
        self._nodes_dirty[(org, node)] = None
        self._nodes_changed.set()

    def publish_node_events(self) -> int:
        """Publish what changed of the nodes marked by :meth:`node_changed` (one round).

        Returns:
            How many nodes changed.
        """
        dirty, self._nodes_dirty = self._nodes_dirty, {}
        if self._node_state is None:
            return 0
        changed: dict[str, list[tuple[str, tuple[str, str]]]] = {}
        said = self._nodes_said
        for org, node in dirty:
            state = self._node_state(org, node)
            if state == said.get((org, node), _OFFLINE):
                continue
            if state == _OFFLINE:
                del said[(org, node)]
            else:
                said[(org, node)] = state
            changed.setdefault(org, []).append((node, state))
        stamp = format_timestamp(self._now())
        for org, nodes in changed.items():
            topic = org_topic(org)
            if not self.hub.has_subscribers(topic):
                continue
            if len(nodes) > NODE_STATUS_BURST:
                self._publish_live(
                    topic, "nodes_changed", {"timestamp": stamp, "count": len(nodes)}
                )
                continue
            for node, (status, availability) in nodes:
                payload = {
                    "timestamp": stamp,
                    "node": node,
                    "status": status,
                    "availability": availability,
                }
                self._publish_live(topic, "node_status", payload)
        return sum(len(nodes) for nodes in changed.values())

    def _publish_live(self, topic: str, name: str, payload: dict[str, Any]) -> None:
        wire = encode_event(name, None, payload)
        self.hub.publish(topic, FeedEvent(0, name, wire), len(wire))

    async def _node_events(self) -> None:
        last = -math.inf
        while True:
            await self._nodes_changed.wait()
            await trio.sleep_until(last + NODE_STATUS_INTERVAL)
            self._nodes_changed = trio.Event()
            last = trio.current_time()
            self.publish_node_events()

    # --- open feeds -------------------------------------------------------------------------

    def open_reader(
        self,
        key: Hashable,
        name: str,
        allowed: Callable[[], bool],
        peer: tuple[str, int] | None = None,
    ) -> FeedReader:
        """Count a new open feed, within the caps.

        Args:
            key: the principal, as the per-principal cap counts it.
            name: the principal, for messages and the log.
            allowed: whether the principal may still read this feed (asked again after
                :meth:`permissions_changed`); must not block.
            peer: the client's address (host, port), if known.

        Returns:
            The reader, to :meth:`FeedReader.close` when the feed's response ends.

        Raises:
            TooManyFeedsError: ``max_readers`` feeds are open.
            TooManyPrincipalFeedsError: ``key`` has ``max_readers_per_principal`` open.
        """
        if len(self._readers) >= self.max_readers:
            raise TooManyFeedsError(self.max_readers)
        if self._per_principal[key] >= self.max_readers_per_principal:
            raise TooManyPrincipalFeedsError(name, self.max_readers_per_principal)
        reader = FeedReader(self, key, name, allowed, peer)
        self._readers[reader] = None
        self._per_principal[key] += 1
        if len(self._readers) == 1:
            self._none_open = trio.Event()
        return reader

    def _release(self, reader: FeedReader) -> None:
        if reader in self._readers:
            del self._readers[reader]
            self._per_principal[reader._key] -= 1
            if self._per_principal[reader._key] <= 0:
                del self._per_principal[reader._key]
            if not self._readers:
                self._none_open.set()

    async def wait_all_closed(self) -> None:
        """Wait until no feed is open (at once if none is)."""
        await self._none_open.wait()

    def open_peers(self) -> set[tuple[str, int]]:
        """The client addresses of the feeds open now (those known)."""
        return {r.peer for r in self._readers if r.peer is not None}

    def permissions_changed(self) -> None:
        """Who may read what may have changed: every open reader asks again before it sends
        more, and :meth:`run` revokes the idle ones that may not read. Never blocks."""
        self._generation += 1
        self._changed.set()

    def statistics(self) -> FeedsStatistics:
        return FeedsStatistics(len(self._readers), self._revoked)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Re-check the open readers after each :meth:`permissions_changed`, and publish the
        node events, until cancelled.

        Start-up: ready at once.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._node_events)
            task_status.started()
            while True:
                await self._changed.wait()
                # (a batch of identity records is applied whole before this task runs again)
                self._changed = trio.Event()
                for reader in list(self._readers):
                    reader.still_allowed()
