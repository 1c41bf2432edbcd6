"""The node registry: live node sessions, heartbeats, offline detection and node states.

One :class:`NodeSession` per connected node. Frames to a node go out one of two ways:

* queued in its bounded outbox (:meth:`NodeSession.send`, never blocking), drained by the
  connection's own writer task; a node whose outbox is full, or one of whose writes stalls
  for ``DIRECT_SEND_TIMEOUT`` (it stopped reading and its socket buffer is full), is closed
  as stuck (4008) rather than slowing anyone else;
* written at once by an async caller (:meth:`NodeSession.send_now`: the heartbeat ticker,
  the job engine's fan-out), which saves the hop through the outbox and the writer's task
  switch per frame, but only when the write cannot block: nothing is queued for the node, no
  write of it is in progress, and its socket has room for the frame now (the connection's
  *room probe* compares the kernel's send queue with the socket's send buffer). Otherwise
  the frame is queued. So neither the ticker nor a job's task ever waits for a node that
  stopped reading: a stalled node costs the others nothing, and only its own writer waits.

Either way frames leave in the order they were handed over: a direct write is taken only
when nothing is queued or being written, and the WebSocket layer frames a message
synchronously when it is called, then writes under a first-in-first-out lock.

One ticker task sends the server heartbeat to every node each interval (the frame body is
packed once per tick) and closes the sessions that sent nothing for ``offline_threshold``
intervals.

A session is bound to the identity its connection authenticated with: its organization, its
client and the client's key that verified the upgrade's signature (:attr:`NodeSession.key`).
It is opened only while all three exist (:meth:`NodeRegistry.identity_gone`, asked by the
listener right before :meth:`NodeRegistry.open_session`), and the registry watches every
committed record (:meth:`~..db.Database.watch`): a record that deletes the organization,
deletes or re-creates the client, or replaces its key closes every session that depended on
it with ``CLOSE_DELETED`` (4003) before the change's commit returns, so no job, frame or
secret reaches a session whose identity is gone.

Status changes (online, offline) are stored as ``node.seen`` records (see
:class:`~.model.NodeModel`), not every heartbeat. A store that refuses writes never fails a
node for it: the latest change of each node is held and stored once the store writes again.
The registry knows nothing of jobs: what a node does with jobs (its messages, rehab, which
job holds it, whether it is available) is the node link's (:mod:`.link`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import trio

from .. import protocol
from ..db import Database
from ..errors import StoreUnavailableError
from ..model import IdentityModel
from .model import NodeModel

__all__ = [
    "CLOSE_DELETED",
    "CLOSE_GOING_AWAY",
    "CLOSE_PROTOCOL",
    "CLOSE_REPLACED",
    "CLOSE_STUCK",
    "CLOSE_TIMEOUT",
    "CLOSE_UNSUPPORTED_VERSION",
    "DIRECT_SEND_TIMEOUT",
    "NodeRegistry",
    "NodeSession",
    "RegistryStatistics",
    "RoomProbe",
    "Sender",
]

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL = 1008
CLOSE_REPLACED = 4001
CLOSE_DELETED = 4003
CLOSE_STUCK = 4008
CLOSE_TIMEOUT = 4009
CLOSE_UNSUPPORTED_VERSION = 4010
"""The close code for a ``hello`` of a protocol version the server does not speak."""

_STATUS_BATCH = 1000
"""Held status changes stored per record (one batch record each)."""

DIRECT_SEND_TIMEOUT = 1.0
"""Seconds one write to a node may wait (socket buffer full) before the node is closed as
stuck; a direct write is a backstop case (its room probe was wrong, or there is none)."""

Sender = Callable[[bytes], Awaitable[bool]]
"""Writes one frame to the node's connection; ``False`` when the connection is closed."""


class RoomProbe(Protocol):
    """Whether a frame can be written to the connection now without waiting (see
    :class:`~.sendroom.SendRoom`)."""

    def __call__(self, size: int) -> bool:
        """Whether ``size`` bytes can be written now (the caller then writes them)."""
        ...

    def forget(self) -> None:
        """Frames were queued for the writer: what the probe knew of the socket is stale."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class RegistryStatistics:
    sessions: int
    online: int
    dropped_stuck: int
    timed_out: int


class NodeSession:
    """One live node connection.

    Attributes:
        org, name: who it is.
        key: the client's public key (PEM) that verified the connection's signature, or
            ``None`` (a session opened without authentication, in tests): the session lives
            while the organization, the client and this key do.
        incarnation_id: the agent's incarnation from ``hello``. (Its facts are not kept
            here: the node model holds them, once, packed and flattened.)
        close_code: set once the session is closing.
    """

    __slots__ = (
        "_close_requested",
        "_held_back",
        "_outbox",
        "_pending",
        "_room",
        "_sender",
        "_seq",
        "_writing",
        "close_code",
        "close_reason",
        "connected_at",
        "incarnation_id",
        "key",
        "last_received",
        "last_sent",
        "name",
        "org",
        "previous_incarnation",
    )

    def __init__(
        self,
        org: str,
        name: str,
        hello: protocol.Hello,
        outbox: trio.MemorySendChannel[bytes],
        close_requested: Callable[[NodeSession], None],
        sender: Sender | None = None,
        room: RoomProbe | None = None,
        key: str | None = None,
    ) -> None:
        self.org = org
        self.name = name
        self.key = key
        self.incarnation_id = hello.incarnation_id
        self.connected_at = trio.current_time()
        self.last_received = self.connected_at
        self.last_sent = self.connected_at
        self.close_code: int | None = None
        self.close_reason = ""
        self.previous_incarnation: str | None = None
        """The incarnation this node had when it was last seen (``None``: never seen)."""
        self._outbox = outbox
        self._pending = 0
        """Frames queued in the outbox and not yet written by :meth:`run_writer`."""
        self._sender = sender
        self._room = room
        self._writing = False
        """A direct write is in progress."""
        self._seq = protocol.Sequencer()
        self._close_requested = close_requested
        self._held_back = 0
        """Waits in progress in which the server does not read this node's frames."""

    def __repr__(self) -> str:
        return f"<node {self.org}/{self.name} incarnation {self.incarnation_id[:8]}>"

    def send(self, cls: type[Any], **fields: Any) -> bool:
        """Queue a frame of type ``cls`` (``seq`` and ``ts`` filled in). Never blocks.

        Returns:
            ``False`` when the session is closing or its outbox is full (it is then closed
            as stuck).
        """
        frame = cls(seq=self._seq.next(), ts=time.time(), **fields)
        return self.send_bytes(protocol.encode(frame))

    def send_bytes(self, data: bytes) -> bool:
        """Queue already-encoded bytes (the caller took ``seq`` from :meth:`next_seq`)."""
        if self.close_code is not None:
            return False
        try:
            self._outbox.send_nowait(data)
        except trio.WouldBlock:
            log.warning("node %s/%s: outbox full, dropping the connection", self.org, self.name)
            self.close(CLOSE_STUCK, "outbox full")
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self._pending += 1
        if self._room is not None:
            self._room.forget()
        self.last_sent = trio.current_time()
        return True

    async def send_now(self, data: bytes) -> bool:
        """Write already-encoded bytes at once when that cannot block; else queue them.

        Written at once only when nothing is queued, no write of this session is in
        progress and the room probe (if the connection has one) says the socket takes the
        frame now; otherwise queued for the writer, never waiting. The caller took ``seq``
        from :meth:`next_seq` just before (no checkpoint between), so frames stay in ``seq``
        order. A direct write that stalls anyway for :data:`DIRECT_SEND_TIMEOUT` closes the
        session as stuck.

        Returns:
            ``False`` when the session is closing, closed, or was closed by this call.
        """
        sender = self._sender
        if (
            sender is None
            or self._pending
            or self._writing
            or self.close_code is not None
            or (self._room is not None and not self._room(len(data)))
        ):
            return self.send_bytes(data)
        self.last_sent = trio.current_time()
        self._writing = True
        ok = False
        try:
            with trio.move_on_after(DIRECT_SEND_TIMEOUT) as scope:
                ok = await sender(data)
        finally:
            self._writing = False
        if scope.cancelled_caught:
            self._stalled()
        return ok

    def _stalled(self) -> None:
        log.warning(
            "node %s/%s: a write stalled for %.0f s, dropping the connection",
            self.org,
            self.name,
            DIRECT_SEND_TIMEOUT,
        )
        self.close(CLOSE_STUCK, "send stalled")

    async def run_writer(self, outbox: trio.MemoryReceiveChannel[bytes]) -> None:
        """Write the queued frames with the session's sender until the outbox closes, or a
        write stalls for :data:`DIRECT_SEND_TIMEOUT` (the session is then closed as stuck).

        Start-up: none (started with ``start_soon`` by the connection it belongs to).
        """
        sender = self._sender
        assert sender is not None, "a session without a sender has no writer"
        async with outbox:
            async for data in outbox:
                ok = False
                with trio.move_on_after(DIRECT_SEND_TIMEOUT) as scope:
                    ok = await sender(data)
                self._pending -= 1
                if scope.cancelled_caught:
                    self._stalled()
                    return
                if not ok:
                    return

    def next_seq(self) -> int:
        return self._seq.next()

    @property
    def heard(self) -> bool:
        """Whether the server reads this node's frames now (see :meth:`held_back`)."""
        return not self._held_back

    @contextlib.contextmanager
    def held_back(self) -> Iterator[None]:
        """The server stops reading this node's frames for a while (back-pressure of a job
        whose inbox is full, as while its step waits for the store): the node's heartbeats
        go unread, and that silence is the server's, not the node's. The ticker does not time
        it out meanwhile, and its silence counts from the end of the wait."""
        self._held_back += 1
        try:
            yield
        finally:
            self._held_back -= 1
            self.last_received = max(self.last_received, trio.current_time())

    def close(self, code: int, reason: str) -> None:
        """Ask the connection to close with ``code`` (idempotent, never blocks)."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self._close_requested(self)


class NodeRegistry:
    """Live sessions by ``(org, node)``, the heartbeat ticker and stored node states.

    Args:
        db: the database (its ``nodes`` model is a :class:`NodeModel`).
        incarnation_id: the server's incarnation, sent in heartbeats.
        interval: heartbeat interval in seconds.
        offline_threshold: intervals of silence after which a node is offline.
    """

    def __init__(
        self,
        db: Database,
        incarnation_id: str,
        *,
        interval: float,
        offline_threshold: int,
        outbox_size: int = 256,
    ) -> None:
        self.db = db
        self.incarnation_id = incarnation_id
        self.interval = interval
        self.offline_threshold = offline_threshold
        self.outbox_size = outbox_size
        self.sessions: dict[tuple[str, str], NodeSession] = {}
        self._template = protocol.HeartbeatTemplate(incarnation_id)
        self._dropped_stuck = 0
        self._timed_out = 0
        self._closers: dict[NodeSession, Callable[[int, str], None]] = {}
        db.watch(self._identity_changed)
        self._status_seq = 0
        self._held_statuses: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        """``(org, node)`` → the latest status change the store refused: (order, record)."""
        self._flushing = False
        """Held changes exist or are being stored: new changes queue behind them."""
        self._nursery: trio.Nursery | None = None

    @property
    def model(self) -> NodeModel:
        model = self.db.models["nodes"]
        assert isinstance(model, NodeModel)
        return model

    # --- sessions ---------------------------------------------------------------------------

    def open_session(
        self,
        org: str,
        name: str,
        hello: protocol.Hello,
        closer: Callable[[int, str], None],
        sender: Sender | None = None,
        room: RoomProbe | None = None,
        *,
        key: str | None = None,
    ) -> tuple[NodeSession, trio.MemoryReceiveChannel[bytes]]:
        """Register a new connection, replacing (and closing) an older one for the node.

        The caller checks :meth:`identity_gone` first, with no checkpoint in between.

        Args:
            closer: called (never blocking) when the session must close, with code and reason.
            sender: writes a frame to the connection, for :meth:`NodeSession.send_now` and
                :meth:`NodeSession.run_writer`; without one, every frame stays queued in the
                outbox (tests read it).
            room: the connection's room probe, for :meth:`NodeSession.send_now`; without
                one every direct write is tried (and stopped by the stall timeout).
            key: the client key (PEM) the connection authenticated with; the session is
                closed when it goes (``None``: bound to the organization and client only).

        Returns:
            The session and the receiving end of its outbox, for the connection's writer.
        """
        send, receive = trio.open_memory_channel[bytes](self.outbox_size)
        session = NodeSession(org, name, hello, send, self._on_close_requested, sender, room, key)
        stored = self.model.nodes.get((org, name))
        session.previous_incarnation = None if stored is None else stored.incarnation
        self._closers[session] = closer
        old = self.sessions.get((org, name))
        if old is not None:
            log.info("node %s/%s: new connection replaces the old one", org, name)
            old.close(CLOSE_REPLACED, "replaced by a new connection")
        self.sessions[(org, name)] = session
        return session, receive

    def _on_close_requested(self, session: NodeSession) -> None:
        if session.close_code == CLOSE_STUCK:
            self._dropped_stuck += 1
        closer = self._closers.get(session)
        if closer is not None:
            closer(session.close_code or 1000, session.close_reason)

    def forget(self, session: NodeSession) -> bool:
        """Remove a session that ended. Returns whether it was the node's current session."""
        self._closers.pop(session, None)
        if session.close_code is None:
            session.close_code = 1006
        if self.sessions.get((session.org, session.name)) is session:
            del self.sessions[(session.org, session.name)]
            return True
        return False

    def get(self, org: str, name: str) -> NodeSession | None:
        return self.sessions.get((org, name))

    # --- identity -------------------------------------------------------------------------

    def identity_gone(self, org: str, name: str, key: str | None) -> str | None:
        """Why a session of node ``name`` of ``org`` signed with ``key`` has lost its identity.

        Returns:
            ``organization deleted``, ``client deleted`` or ``client key replaced``; ``None``
            while the organization, the client and the key (when given) all exist (and
            always, on a database without an identity model).
        """
        identity = self.db.models.get("identity")
        if not isinstance(identity, IdentityModel):
            return None
        if not identity.has_org(org):
            return "organization deleted"
        found = identity.principal(org, name)
        if found is None or found[0] != "client":
            return "client deleted"
        if key is not None and key not in found[1]:
            return "client key replaced"
        return None

    def _identity_changed(self, record: dict[str, Any]) -> None:
        """A committed record (the database's watcher): close the sessions whose identity it
        removed."""
        t = record.get("t")
        if t == "org.del":
            org = record.get("name")
            affected = [s for (o, _), s in self.sessions.items() if o == org]
        elif t in ("client.del", "client.put"):
            found = self.sessions.get((record["org"], record["name"]))
            affected = [] if found is None else [found]
        else:
            return
        for s in affected:
            why = self.identity_gone(s.org, s.name, s.key)
            if why is not None and s.close_code is None:
                log.info("node %s/%s: %s, closing its session", s.org, s.name, why)
                s.close(CLOSE_DELETED, why)

    def close_all(self, code: int, reason: str) -> None:
        for s in list(self.sessions.values()):
            s.close(code, reason)

    def statistics(self) -> RegistryStatistics:
        online = len(self.sessions)
        return RegistryStatistics(online, online, self._dropped_stuck, self._timed_out)

    # --- stored states ----------------------------------------------------------------------

    async def record_status(
        self,
        org: str,
        name: str,
        status: str,
        facts: dict[str, Any] | None = None,
        incarnation: str | None = None,
    ) -> None:
        """Store a node's status change (a ``node.seen`` record). Never raises because the
        store refuses writes, and never waits for it.

        While the store refuses writes (or changes held earlier are still being stored), the
        change is held instead: only the latest of each node is kept, and the ticker's task
        stores them once the store writes again (logged once per outage). Changes are stored
        in the order they were made.
        """
        record = {
            "incarnation": incarnation,
            "t": "node.seen",
            "org": org,
            "name": name,
            "status": status,
            "at": time.time(),
            "facts": facts,
        }
        self._status_seq += 1
        seq = self._status_seq
        if not self._held_statuses and not self._flushing and self.db.writable:
            try:
                await self.db.commit(record)
                return
            except StoreUnavailableError as e:
                reason = e.reason
        else:
            reason = "the store is not writable"
        self._hold_status(seq, record, reason)

    def _hold_status(self, seq: int, record: dict[str, Any], reason: str) -> None:
        key = (record["org"], record["name"])
        held = self._held_statuses.get(key)
        if held is None or held[0] < seq:
            self._held_statuses[key] = (seq, record)
        if self._flushing:
            return
        self._flushing = True
        log.warning(
            "node status changes held until the store can write (%s); "
            "the latest of each node is stored then",
            reason,
        )
        if self._nursery is not None:
            self._nursery.start_soon(self._store_held_statuses)

    async def _store_held_statuses(self) -> None:
        """Store the held status changes once the store writes again, oldest first."""
        stored = 0
        try:
            while self._held_statuses:
                await self.db.wait_writable()
                held = sorted(self._held_statuses.values(), key=lambda item: item[0])
                self._held_statuses = {}
                done = 0
                try:
                    for done in range(0, len(held), _STATUS_BATCH):
                        await self.db.commit(*(r for _, r in held[done : done + _STATUS_BATCH]))
                    done = len(held)
                except StoreUnavailableError:  # refused again: hold what is left
                    for seq, record in held[done:]:
                        self._hold_status(seq, record, "")
                stored += done
        finally:
            self._flushing = False
        log.info("stored the held node status changes of %d node(s)", stored)

    def known_nodes(self, org: str) -> list[str]:
        """Nodes of ``org`` that ever connected (and still exist as clients)."""
        names = {n for (o, n) in self.model.nodes if o == org}
        names.update(n for (o, n) in self.sessions if o == org)
        return sorted(names)

    # --- ticker -----------------------------------------------------------------------------

    async def tick(self) -> None:
        """Send heartbeats where due and close sessions that went silent."""
        now = trio.current_time()
        ts = time.time()
        render = self._template.render
        silent_after = self.offline_threshold * self.interval
        # A node that got any frame in the last half interval skips this heartbeat (its next
        # one comes at most 1.5 intervals after that frame). Comparing with a full interval
        # would skip nodes whose previous heartbeat went out a moment after the previous
        # tick began, halving their heartbeat rate.
        due = now - self.interval * 0.5
        for s in list(self.sessions.values()):
            if now - s.last_received > silent_after and s.heard:
                self._timed_out += 1
                log.info(
                    "node %s/%s: no frame for %.1f s, marking offline",
                    s.org,
                    s.name,
                    now - s.last_received,
                )
                s.close(CLOSE_TIMEOUT, "heartbeat timeout")
                continue
            if s.last_sent <= due:
                await s.send_now(render(s.next_seq(), ts))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the heartbeat ticker until cancelled; it also stores held status changes.

        Start-up: ready at once.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._flushing:  # held before the registry ran
                nursery.start_soon(self._store_held_statuses)
            task_status.started()
            deadline = trio.current_time()
            while True:
                # a fixed period: a tick that takes long (many nodes) does not stretch the next
                deadline = max(deadline + self.interval, trio.current_time())
                await trio.sleep_until(deadline)
                await self.tick()
