"""The node↔job link: the one owner of what a node is doing with jobs.

The registry (:mod:`.registry`) knows connections; the job machine (:mod:`..jobs.machine`)
knows each job's nodes. Between them this module owns:

* **Node messages.** ``hello``, every job frame and the end of a connection become job
  events (:mod:`..jobs.events`) handed to the job they concern through one narrow call,
  :meth:`JobPort.post` (implemented by the runner). Within a live job the machine decides
  what a message means; the link decides only for messages no live job takes.
* **Which live job holds which node** (one table). The runner tells the link: :meth:`hold`
  when it adopts a job, :meth:`release` as nodes end. A node is held by a job while it is
  live in it (``new``, ``ready``, ``running``) or owes it a late result (see
  :mod:`..jobs.machine`); a node sent a commit is held at once, since it is about to be busy.
  ``hello`` and the end of a connection go to the jobs that hold the node.
* **Rehab.** A node that was sent an ``abort`` (of a job, or ``abort {job_id: nil}`` for a
  job it should not hold) is unavailable until its agent answers ``aborted`` (``NODES.md``
  §1): a process it is still stopping would make it nack the next commit as busy.
* **Results outside jobs.** A ``result`` that no live job takes (the job is over or
  unknown) is acknowledged at once, so the agent forgets it; its ``output`` is dropped. Any
  other frame for such a job sends the node to rehab.
* **Availability**, two predicates, each defined here once:

  - :meth:`NodeLink.reachable`: online, not closing, not in rehab. What ``Start`` uses to
    pick the nodes that get a commit: a busy node must still get it, and nack it ``busy``
    (``API.md`` §5).
  - :meth:`NodeLink.available`: reachable and held by no live job. What ``node_states``,
    ``_status`` and :meth:`NodeLink.statistics` report.

Without a job engine (registry-only tests, tools) the link runs with :class:`NoJobs`, a
port that knows no job: every job a node reports is sent to rehab, every result
acknowledged.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from .. import protocol
from ..jobs.events import (
    AckCommit,
    AckRun,
    NackCommit,
    NackRun,
    NodeAborted,
    NodeBack,
    NodeDown,
    NodeEvent,
    Output,
    Result,
)
from .registry import NodeRegistry, NodeSession

__all__ = ["JobPort", "LinkStatistics", "NoJobs", "NodeLink"]

log = logging.getLogger(__name__)


class JobPort(Protocol):
    """What the link asks of the job engine: one call."""

    async def post(self, org: str, job_id: str, event: NodeEvent) -> bool:
        """Hand ``event`` (from node ``event.node`` of ``org``) to the live job ``job_id``.

        Returns:
            ``False`` when no live job ``job_id`` of ``org`` has that node (the link then
            treats the message as one for a job that is over).
        """
        ...


class NoJobs:
    """The :class:`JobPort` of a server without a job engine: no job is live."""

    async def post(self, org: str, job_id: str, event: NodeEvent) -> bool:
        return False


@dataclasses.dataclass(frozen=True, slots=True)
class LinkStatistics:
    """Node counts: ``online`` (live sessions), ``available`` (:meth:`NodeLink.available`)."""

    online: int
    available: int


class NodeLink:
    """Node messages to jobs, the table of held nodes, rehab and availability.

    Args:
        registry: the live sessions.
        now: the clock of the events (seconds since the epoch); the runner's.
    """

    def __init__(self, registry: NodeRegistry, *, now: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.port: JobPort = NoJobs()
        self._now = now
        self._held: dict[tuple[str, str], set[str]] = {}
        """``(org, node)`` → the live jobs that hold it."""
        self._rehab: dict[tuple[str, str], NodeSession] = {}
        """``(org, node)`` → its session that waits for ``aborted``."""
        self.on_rehab: Callable[[str, str, str | None], None] = _no_observer
        """Told ``(org, node, job_id)`` each time a node is sent to rehab, by the link
        (``job_id`` ``None``) or for a live job by the runner (the audit log's node event)."""

    def connect(self, port: JobPort) -> None:
        """Hand node messages to ``port`` (the job runner) from now on."""
        self.port = port

    # --- availability -----------------------------------------------------------------------

    def reachable(self, session: NodeSession) -> bool:
        """Whether the node can take a commit: online, not closing, not in rehab.

        Used by the runner for ``Start``: a node busy with another job is reachable, gets
        the commit and nacks it ``busy`` (``API.md`` §5).
        """
        return (
            session.close_code is None
            and self._rehab.get((session.org, session.name)) is not session
        )

    def available(self, session: NodeSession) -> bool:
        """Whether the node is idle: reachable and held by no live job.

        What ``node_states``, ``_status`` and :meth:`statistics` report.
        """
        return self.reachable(session) and (session.org, session.name) not in self._held

    def is_available(self, org: str, name: str) -> bool:
        """Whether the node ``name`` of ``org`` is online and :meth:`available`."""
        s = self.registry.get(org, name)
        return s is not None and self.available(s)

    def reachable_nodes(self, org: str, nodes: Iterable[str]) -> frozenset[str]:
        """The nodes of ``nodes`` that are :meth:`reachable` now."""
        get = self.registry.get
        out = set()
        for name in nodes:
            s = get(org, name)
            if s is not None and self.reachable(s):
                out.add(name)
        return frozenset(out)

    def held_by(self, org: str, node: str) -> frozenset[str]:
        """The live jobs that hold the node."""
        return frozenset(self._held.get((org, node), ()))

    def statistics(self) -> LinkStatistics:
        sessions = self.registry.sessions.values()
        return LinkStatistics(len(sessions), sum(1 for s in sessions if self.available(s)))

    def node_state(self, org: str, name: str) -> dict[str, Any]:
        """``{"node_name","status","availability","updated_at"?}`` (``updated_at`` a float,
        the stored time of the last status change)."""
        s = self.registry.get(org, name)
        stored = self.registry.model.nodes.get((org, name))
        doc: dict[str, Any] = {
            "node_name": name,
            "status": "online" if s is not None else "offline",
            "availability": "available" if self.is_available(org, name) else "unavailable",
        }
        if stored is not None:
            doc["updated_at"] = stored["at"]
        return doc

    # --- the runner's table -----------------------------------------------------------------

    def hold(self, org: str, job_id: str, nodes: Iterable[str]) -> None:
        """The live job ``job_id`` holds ``nodes`` (live in it, or owing it a result)."""
        held = self._held
        for node in nodes:
            jobs = held.get((org, node))
            if jobs is None:
                held[(org, node)] = {job_id}
            else:
                jobs.add(job_id)

    def release(self, org: str, job_id: str, nodes: Iterable[str]) -> None:
        """The job ``job_id`` no longer holds ``nodes`` (they ended; or the job is over)."""
        held = self._held
        for node in nodes:
            jobs = held.get((org, node))
            if jobs is not None:
                jobs.discard(job_id)
                if not jobs:
                    del held[(org, node)]

    # --- rehab ------------------------------------------------------------------------------

    def expect_aborted(self, session: NodeSession) -> None:
        """An ``abort`` goes to the node: hold it unavailable until its agent answers
        ``aborted``."""
        self._rehab[(session.org, session.name)] = session

    def start_rehab(self, session: NodeSession) -> None:
        """Send ``abort {job_id: nil}`` (queued) and hold the node unavailable until
        ``aborted``."""
        self.expect_aborted(session)
        session.send(protocol.Abort, job_id=None)
        self.on_rehab(session.org, session.name, None)

    # --- node messages (from the node listener) ---------------------------------------------

    async def node_hello(self, session: NodeSession, hello: protocol.Hello) -> None:
        """A node connected (``welcome`` already sent): tell every job that holds it; rehab
        a job it holds that no live job of its incarnation takes; acknowledge a result no
        job takes."""
        org, node = session.org, session.name
        key = (org, node)
        stale = self._rehab.get(key)
        if stale is not None and stale is not session:
            del self._rehab[key]  # the rehab of a connection that is gone
        now = self._now()
        previous = session.previous_incarnation
        same = previous is not None and previous == hello.incarnation_id
        pending = hello.pending_result
        taken: set[str] = set()
        for job_id in sorted(self._held.get(key, ())):
            job_state = hello.job_state if hello.job_id == job_id else "idle"
            result = None
            if pending is not None and pending.job_id == job_id:
                result = _result(node, pending, now)
            if await self.port.post(org, job_id, NodeBack(node, now, same, job_state, result)):
                taken.add(job_id)
        if pending is not None and pending.job_id not in taken:
            # a result for a job that is over (or unknown): acknowledge so the agent forgets it
            session.send(protocol.ResultAck, job_id=pending.job_id)
        if hello.job_id is not None and (hello.job_id not in taken or not same):
            # A job held by another incarnation is a ghost (its process is not the agent's
            # any more; the job ends the node crashed or unavailable): free the agent of it.
            self.start_rehab(session)

    async def node_frame(self, session: NodeSession, frame: protocol.Frame) -> None:
        """A job frame from a node (``ack_commit`` … ``result``, ``output``, ``aborted``)."""
        org, node = session.org, session.name
        if isinstance(frame, protocol.Aborted):
            if self._rehab.get((org, node)) is session:
                del self._rehab[(org, node)]
            if frame.job_id is not None:  # the job it held, if still live, learns it is gone
                await self.port.post(org, frame.job_id, NodeAborted(node, self._now()))
            return
        job_id = getattr(frame, "job_id", None)
        event = _job_event(frame, node, self._now())
        if event is None:
            return
        if isinstance(job_id, str) and await self.port.post(org, job_id, event):
            return
        if isinstance(frame, protocol.Result):
            session.send(protocol.ResultAck, job_id=frame.job_id)
        elif not isinstance(frame, protocol.Output):  # output of a job that is over: dropped
            log.info("node %s/%s: %s for unknown job %s: rehab", org, node, frame.TYPE, job_id)
            self.start_rehab(session)

    async def node_lost(self, session: NodeSession) -> None:
        """The node's current session ended: tell every job that holds it."""
        org, node = session.org, session.name
        if self._rehab.get((org, node)) is session:
            del self._rehab[(org, node)]
        now = self._now()
        for job_id in sorted(self._held.get((org, node), ())):
            await self.port.post(org, job_id, NodeDown(node, now))


def _no_observer(org: str, node: str, job_id: str | None) -> None:
    """:attr:`NodeLink.on_rehab` of a link nobody observes."""


def _result(node: str, r: protocol.Result | protocol.ResultBody, now: float) -> Result:
    fields = {
        "status": r.status,
        "exit_code": r.exit_code,
        "signal": r.signal,
        "stdout_bytes": r.stdout_bytes,
        "stderr_bytes": r.stderr_bytes,
        "truncated": r.truncated,
        "duration_s": r.duration_s,
    }
    return Result(node, r.status, r.exit_code, now, fields)


def _job_event(frame: protocol.Frame, node: str, now: float) -> NodeEvent | None:
    """The job event of a node's job frame (``None`` for frames that are not job frames)."""
    if isinstance(frame, protocol.AckCommit):
        return AckCommit(node, now)
    if isinstance(frame, protocol.NackCommit):
        return NackCommit(node, frame.reason, now)
    if isinstance(frame, protocol.AckRun):
        return AckRun(node, now)
    if isinstance(frame, protocol.NackRun):
        return NackRun(node, frame.reason, now)
    if isinstance(frame, protocol.Result):
        return _result(node, frame, now)
    if isinstance(frame, protocol.Output):
        return Output(node, frame.channel, frame.offset, frame.data)
    return None
