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
* **Output offsets.** A job's channel of a node's output is one byte stream; the link takes
  each ``output`` chunk only where it continues what the job has (:meth:`NodeLink.node_frame`):

  - within one connection, a job's channel's chunks must be exactly contiguous (the link
    keeps the next expected offset per connection, job and channel); a gap or an overlap is
    a protocol error: logged, dropped, and counted toward the close after three in a minute;
  - the first chunk of a job's channel on a *new* connection may restart at any offset up to
    what the server holds (that is the agent re-sending what it captured after a reconnect);
    the part the server holds is trimmed off. A gap there is a protocol error too;
  - what the server holds starts, for a job's channel first seen by this process (after a
    restart), at the stored output's ``received`` count
    (:meth:`~..jobs.model.JobsModel.output_received`), and grows by every chunk a job takes;
  - beyond the per-channel cap (``output.max_bytes_per_channel``) a chunk's bytes are
    counted, not stored: the job gets only the part within the cap, and the chunk's size.

  Only the node's current connection is heard: a late frame of a replaced one is dropped (its
  agent sends the output again on the new one).
* **A result sent again after a reconnect.** An agent whose command ended while it was away
  reports the result in ``hello.pending_result``, then sends the whole captured output again,
  then the ``result`` frame (``NODES.md`` §4). For a live job that captures output, the same
  incarnation's ``hello`` therefore counts as *back running* (``NodeBack`` of ``running``,
  without the result): the output that follows is taken, and the ``result`` frame ends the
  node. Without capture, or from a new incarnation, the result in ``hello`` is taken at once.
* **Availability**, two predicates, each defined here once:

  - :meth:`NodeLink.reachable`: online, not closing, not in rehab. What ``Start`` uses to
    pick the nodes that get a commit: a busy node must still get it, and nack it ``busy``
    (``API.md`` §5).
  - :meth:`NodeLink.available`: reachable and held by no live job. What ``node_states``,
    ``_status`` and :meth:`NodeLink.statistics` report.

  The watcher given to :meth:`NodeLink.watch` is told of every node whose status or
  availability may have changed (the org feed's ``node_status`` events).

* **The cluster** (several appliances on one PostgreSQL store, ``docs/SCALE-OUT.md`` §4,
  §5), once :meth:`NodeLink.attach_cluster` was called: a node is also held by the unclosed
  jobs of the log that another appliance drives (:class:`~..cluster.LogHolds`), so it is
  unavailable here too, and its ``hello``, frames and lost connection go to those jobs as
  well (the port forwards them to their driver); the node's route is written as it
  connects and leaves.

Without a job engine (registry-only tests, tools) the link runs with :class:`NoJobs`, a
port that knows no job: every job a node reports is sent to rehab, every result
acknowledged.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from .. import protocol
from ..cluster import Coordinator, LogHolds
from ..errors import ProtocolError
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
from ..jobs.model import JobsModel
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


class _Stream:
    """One channel of one job's output from one node, as the link has taken it."""

    __slots__ = ("end", "next", "session")

    def __init__(self, end: int) -> None:
        self.end = end
        """Bytes of the channel the job has (stored, or counted past the cap)."""
        self.session: NodeSession | None = None
        """The connection whose chunks were taken last; ``None`` after it ended."""
        self.next = 0
        """The offset that connection's next chunk must have."""


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
        self._held: dict[tuple[str, str], str | dict[str, None]] = {}
        """``(org, node)`` → the live job that holds it, or, when several do, a dict of them
        (as keys), the oldest first (a dict costs about 200 bytes; a 100,000-node job holds
        100,000 nodes, almost all held by that job alone)."""
        self._rehab: dict[tuple[str, str], NodeSession] = {}
        """``(org, node)`` → its session that waits for ``aborted``."""
        self._streams: dict[tuple[str, str], dict[tuple[str, str], _Stream]] = {}
        """``(org, node)`` → ``(job, channel)`` → what the job has of that output."""
        self._changed: Callable[[str, str], None] = _ignore
        self.on_rehab: Callable[[str, str, str | None], None] = _no_observer
        """Told ``(org, node, job_id)`` each time a node is sent to rehab, by the link
        (``job_id`` ``None``) or for a live job by the runner (the audit log's node event)."""
        self._cluster: Coordinator | None = None
        self._log_holds: LogHolds | None = None
        self._drives: Callable[[str], bool] = _never

    def attach_cluster(
        self, cluster: Coordinator, holds: LogHolds, drives: Callable[[str], bool]
    ) -> None:
        """Take part in a cluster: write the nodes' routes through ``cluster``; count as
        holders of a node the jobs of ``holds`` that this appliance does not ``drives``."""
        self._cluster = cluster
        self._log_holds = holds
        self._drives = drives
        # a node connected elsewhere comes and goes, a job driven elsewhere takes or frees a
        # node: the node's status or availability here may change (the org feed's events)
        cluster.watch_routes(self._changed_elsewhere)
        holds.watch(self._changed_elsewhere)

    def _changed_elsewhere(self, org: str, node: str) -> None:
        self._changed(org, node)

    def _elsewhere(self, key: tuple[str, str]) -> list[str]:
        """The unclosed jobs holding the node ``key`` that another appliance drives."""
        if self._log_holds is None:
            return []
        drives = self._drives
        return [j for j in self._log_holds.holders(*key) if not drives(j)]

    def watch(self, changed: Callable[[str, str], None]) -> None:
        """Call ``changed(org, node)`` from now on whenever the node's status (online,
        offline) or availability may have changed. It must not block or raise."""
        self._changed = changed

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
        key = (session.org, session.name)
        if not self.reachable(session) or key in self._held:
            return False
        return self._log_holds is None or not self._elsewhere(key)

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
        return frozenset(self._holding((org, node)))

    def _holding(self, key: tuple[str, str]) -> list[str]:
        """The live jobs that hold the node ``key``, sorted (then those driven elsewhere)."""
        jobs = self._held.get(key)
        here = [] if jobs is None else [jobs] if isinstance(jobs, str) else sorted(jobs)
        if self._log_holds is None:
            return here
        return here + [j for j in self._elsewhere(key) if j not in here]

    def holder(self, org: str, node: str, *, besides: str | None = None) -> str | None:
        """The live job (other than ``besides``) that has held the node longest, if any: the
        job a busy node is running, for the votes that say so."""
        for job_id in self._jobs_holding((org, node)):
            if job_id != besides:
                return job_id
        return None

    def holders(self, org: str, nodes: Iterable[str]) -> dict[str, str]:
        """Node → :meth:`holder`, for the nodes of ``nodes`` that a live job holds."""
        out: dict[str, str] = {}
        for node in nodes:
            jobs = self._jobs_holding((org, node))
            if jobs:
                out[node] = jobs[0]
        return out

    def _jobs_holding(self, key: tuple[str, str]) -> Sequence[str]:
        """The live jobs that hold the node ``key``, the oldest first (then those driven
        elsewhere)."""
        jobs = self._held.get(key)
        here: tuple[str, ...] = (
            () if jobs is None else (jobs,) if isinstance(jobs, str) else tuple(jobs)
        )
        if self._log_holds is None:
            return here
        return here + tuple(j for j in self._elsewhere(key) if j not in here)

    def statistics(self) -> LinkStatistics:
        sessions = self.registry.sessions.values()
        return LinkStatistics(len(sessions), sum(1 for s in sessions if self.available(s)))

    def status(self, org: str, name: str) -> tuple[str, str]:
        """``(status, availability)`` of the node ``name`` of ``org``: ``online`` or
        ``offline``, ``available`` (online and :meth:`available`) or ``unavailable``. In a
        cluster a node connected to another appliance is ``online`` too, ``available`` when
        no job holds it (its rehab there is that appliance's to know)."""
        s = self.registry.get(org, name)
        if s is None:
            if self._cluster is None or self._cluster.routed(org, name) is None:
                return "offline", "unavailable"
            # connected to another appliance of the cluster
            key = (org, name)
            held = key in self._held or bool(self._elsewhere(key))
            return "online", "unavailable" if held else "available"
        return "online", "available" if self.available(s) else "unavailable"

    def node_state(self, org: str, name: str) -> dict[str, Any]:
        """``{"node_name","status","availability","updated_at"?}`` (``updated_at`` a float,
        the stored time of the last status change)."""
        status, availability = self.status(org, name)
        doc: dict[str, Any] = {
            "node_name": name,
            "status": status,
            "availability": availability,
        }
        stored = self.registry.model.nodes.get((org, name))
        if stored is not None:
            doc["updated_at"] = stored["at"]
        return doc

    # --- the runner's table -----------------------------------------------------------------

    def hold(self, org: str, job_id: str, nodes: Iterable[str]) -> None:
        """The live job ``job_id`` holds ``nodes`` (live in it, or owing it a result)."""
        held = self._held
        for node in nodes:
            key = (org, node)
            jobs = held.get(key)
            if jobs is None:
                held[key] = job_id
                self._changed(org, node)
            elif isinstance(jobs, str):
                if jobs != job_id:
                    held[key] = {jobs: None, job_id: None}
            else:
                jobs[job_id] = None

    def release(self, org: str, job_id: str, nodes: Iterable[str]) -> None:
        """The job ``job_id`` no longer holds ``nodes`` (they ended; or the job is over)."""
        held = self._held
        streams = self._streams
        for node in nodes:
            key = (org, node)
            jobs = held.get(key)
            if jobs is not None:
                if isinstance(jobs, str):
                    if jobs == job_id:
                        del held[key]
                        self._changed(org, node)
                else:
                    jobs.pop(job_id, None)
                    if len(jobs) == 1:
                        held[key] = next(iter(jobs))
            mine = streams.get(key)
            if mine is not None:
                mine.pop((job_id, "stdout"), None)
                mine.pop((job_id, "stderr"), None)
                if not mine:
                    del streams[key]

    # --- rehab ------------------------------------------------------------------------------

    def expect_aborted(self, session: NodeSession) -> None:
        """An ``abort`` goes to the node: hold it unavailable until its agent answers
        ``aborted``."""
        self._rehab[(session.org, session.name)] = session
        self._changed(session.org, session.name)

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
        self._changed(org, node)
        if self._cluster is not None:
            self._cluster.node_up(org, node, hello.incarnation_id)
        key = (org, node)
        stale = self._rehab.get(key)
        if stale is not None and stale is not session:
            del self._rehab[key]  # the rehab of a connection that is gone
        now = self._now()
        previous = session.previous_incarnation
        same = previous is not None and previous == hello.incarnation_id
        pending = hello.pending_result
        taken: set[str] = set()
        for job_id in self._holding(key):
            job_state = hello.job_state if hello.job_id == job_id else "idle"
            result = None
            if pending is not None and pending.job_id == job_id:
                if same and self._captures(job_id):
                    job_state = "running"  # its output comes again, then the result frame
                else:
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
        """A job frame from a node (``ack_commit`` … ``result``, ``output``, ``aborted``).

        Raises:
            ProtocolError: an ``output`` chunk that leaves a gap, or overlaps within one
                connection (dropped; the caller counts it as the protocol error it is).
        """
        org, node = session.org, session.name
        if isinstance(frame, protocol.Output):
            await self._output(session, frame)
            return
        if isinstance(frame, protocol.Aborted):
            if self._rehab.get((org, node)) is session:
                del self._rehab[(org, node)]
                self._changed(org, node)
            if frame.job_id is not None:  # the job it held, if still live, learns it is gone
                await self.port.post(org, frame.job_id, NodeAborted(node, self._now()))
            return
        job_id = getattr(frame, "job_id", None)
        event = _job_event(frame, node, self._now())
        if event is None:
            return
        if isinstance(event, NackCommit) and event.reason == "busy":
            event = dataclasses.replace(event, held_by=self.holder(org, node, besides=job_id))
        if isinstance(job_id, str) and await self.port.post(org, job_id, event):
            return
        if isinstance(frame, protocol.Result):
            session.send(protocol.ResultAck, job_id=frame.job_id)
        else:
            log.info("node %s/%s: %s for unknown job %s: rehab", org, node, frame.TYPE, job_id)
            self.start_rehab(session)

    async def _output(self, session: NodeSession, frame: protocol.Output) -> None:
        """Hand the new part of an ``output`` chunk to its job, as the module docstring says."""
        org, node, job_id, channel = session.org, session.name, frame.job_id, frame.channel
        if job_id not in self._jobs_holding((org, node)):
            return  # output of a job that is over (or unknown): dropped
        if self.registry.get(org, node) is not session:
            return  # a replaced connection's late frame: its agent sends it again
        streams = self._streams.setdefault((org, node), {})
        stream = streams.get((job_id, channel))
        if stream is None:
            jobs = self._jobs()
            held = 0 if jobs is None else jobs.output_received(job_id, node, channel)
            stream = streams[(job_id, channel)] = _Stream(held)
        offset, data = frame.offset, frame.data
        if stream.session is session:
            if offset != stream.next:
                kind = "a gap" if offset > stream.next else "an overlap"
                raise ProtocolError(
                    f"output of job {job_id} {channel} at offset {offset}: {kind}, the"
                    f" connection's next offset is {stream.next}"
                )
        elif offset > stream.end:
            raise ProtocolError(
                f"output of job {job_id} {channel} at offset {offset}: a gap, the server"
                f" holds {stream.end} bytes"
            )
        stream.session = session
        stream.next = offset + len(data)
        if offset < stream.end:  # the part the server holds: a re-send after a reconnect
            data = data[stream.end - offset :]
            offset = stream.end
        if not data:
            return
        size = len(data)
        cap = self._output_cap()
        if cap is not None and offset + size > cap:
            data = data[: max(cap - offset, 0)]  # the rest is counted, not stored
        event = Output(node, channel, offset, data, None if len(data) == size else size)
        if await self.port.post(org, job_id, event):
            stream.end = offset + size

    def _jobs(self) -> JobsModel | None:
        model = self.registry.db.models.get("jobs")
        return model if isinstance(model, JobsModel) else None

    def _output_cap(self) -> int | None:
        jobs = self._jobs()
        return None if jobs is None else jobs.output_cap

    def _captures(self, job_id: str) -> bool:
        """Whether the job ``job_id`` captures output (``False`` when unknown)."""
        jobs = self._jobs()
        entry = None if jobs is None else jobs.jobs.get(job_id)
        return entry is not None and bool(entry.spec.get("capture"))

    async def node_lost(self, session: NodeSession) -> None:
        """The node's current session ended: tell every job that holds it."""
        org, node = session.org, session.name
        self._changed(org, node)
        if self._cluster is not None:
            self._cluster.node_down(org, node)
        if self._rehab.get((org, node)) is session:
            del self._rehab[(org, node)]
        for stream in self._streams.get((org, node), {}).values():
            if stream.session is session:
                stream.session = None
        now = self._now()
        for job_id in self._holding((org, node)):
            await self.port.post(org, job_id, NodeDown(node, now))


def _ignore(org: str, node: str) -> None:
    """The watcher of a link nobody watches."""


def _never(job_id: str) -> bool:
    """:meth:`NodeLink.attach_cluster`'s ``drives`` before it is called."""
    return False


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
    return None
