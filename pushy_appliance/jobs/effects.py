"""Performing a job's effects: what the machine asked for, once the step is stored.

A stored step's effects become feed events published on the job's feed, frames queued on the
job's outgoing lists (for a node connected here, or mailed to the appliance a node is
connected to in a cluster), and timers armed in the job's nursery that post the machine's
timeout events back to the job's inbox. :meth:`Effects.write` then writes the queued frames,
in order. Used by the runner's per-job task (:mod:`.runner`) only.

Clock: timers read the ``now`` callable the effects were built with (the runner's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import trio

from .. import protocol
from ..cluster import Coordinator
from ..feeds import Feeds
from ..nodes.link import NodeLink
from ..nodes.registry import NodeRegistry, NodeSession
from .events import (
    CancelTimer,
    Effect,
    GraceExpired,
    LateTimeout,
    Publish,
    ReleaseNodes,
    RunTimeout,
    SendAbort,
    SendCommit,
    SendRehab,
    SendResultAck,
    SendRun,
    StartTimer,
    VotingTimeout,
)
from .live import LiveJob
from .state import is_closed

__all__ = ["FAN_OUT_CHUNK", "Effects"]

FAN_OUT_CHUNK = 2_000
"""Feed events and commits a new job hands out between two checkpoints (and frames written
between two)."""


class Effects:
    """Performs the effects of the live jobs' steps.

    Args:
        registry: the node registry (sessions to send frames to).
        link: the node link (nodes held unavailable until they answer an abort, rehab).
        feeds: where stored feed events are published.
        cluster: the coordinator (where a node connected to another appliance is).
        now: the clock (seconds since the epoch) of the timers.
    """

    def __init__(
        self,
        registry: NodeRegistry,
        link: NodeLink,
        feeds: Feeds,
        cluster: Coordinator,
        now: Callable[[], float],
    ) -> None:
        self._registry = registry
        self._link = link
        self._feeds = feeds
        self._cluster = cluster
        self._now = now

    async def perform_first(
        self, job: LiveJob, effects: Iterable[Effect], events: list[list[Any]]
    ) -> None:
        """:meth:`perform` for the step that created the job, in chunks: a 100,000-node
        job's first events (a vote for every node that was down) and commits are handed
        out :data:`FAN_OUT_CHUNK` at a time, with a checkpoint between two."""
        chunk = FAN_OUT_CHUNK
        for start in range(0, len(events), chunk):
            if start:
                await trio.lowlevel.checkpoint()
            self.perform(job, (), events[start : start + chunk])
        for fx in effects:
            if isinstance(fx, Publish):
                continue  # its event is one of ``events``
            if isinstance(fx, SendCommit) and len(fx.nodes) > chunk:
                for start in range(0, len(fx.nodes), chunk):
                    await trio.lowlevel.checkpoint()
                    self.perform(job, (SendCommit(fx.nodes[start : start + chunk]),), [])
            else:
                self.perform(job, (fx,), [])

    def perform(self, job: LiveJob, effects: Iterable[Effect], events: list[list[Any]]) -> None:
        """Publish a stored step's feed events and perform its effects: frames queued on the
        job's outgoing lists (written by :meth:`write`), timers armed or cancelled. Never
        blocks."""
        org = job.entry.org
        for ev in events:
            self._feeds.publish_job(org, job.id, ev)
        for fx in effects:
            if isinstance(fx, SendCommit):
                spec = job.entry.spec
                fields: dict[str, Any] = {
                    "job_id": job.id,
                    "command": spec["command"],
                    "capture": spec["capture"],
                    "run_timeout": float(spec["run_timeout"]),
                    "env": spec["env"] or {},
                }
                for key in ("user", "dir", "file"):
                    if spec[key] is not None:
                        fields[key] = spec[key]
                for node in fx.nodes:
                    self._send(job, node, protocol.Commit, fields)
            elif isinstance(fx, SendRun):
                run = {"job_id": job.id}
                for node in fx.nodes:
                    self._send(job, node, protocol.Run, run)
            elif isinstance(fx, SendAbort | ReleaseNodes):
                abort = {"job_id": job.id}
                for node in fx.nodes:
                    self._send_abort(job, node, abort)
            elif isinstance(fx, SendRehab):
                self._send_abort(job, fx.node, {"job_id": None})
                self._link.on_rehab(org, fx.node, job.id)
            elif isinstance(fx, SendResultAck):
                self._send(job, fx.node, protocol.ResultAck, {"job_id": job.id})
            elif isinstance(fx, StartTimer):
                self._arm(job, fx.kind, fx.deadline)
            elif isinstance(fx, CancelTimer):
                scope = job.timers.pop(fx.kind, None)
                if scope is not None:
                    scope.cancel()

    def _send(
        self, job: LiveJob, node: str, cls: type[Any], fields: dict[str, Any]
    ) -> NodeSession | None:
        """Queue a frame for the node's current session (if it has one that is not closing)
        on the job's outgoing list; returns that session."""
        s = self._registry.get(job.entry.org, node)
        if s is None:
            appliance = self._cluster.routed(job.entry.org, node)
            if appliance is not None:
                job.remote.append((appliance, node, cls.TYPE, fields))
            return None
        if s.close_code is not None:
            return None
        job.outgoing.append((s, cls, fields))
        return s

    def _send_abort(self, job: LiveJob, node: str, fields: dict[str, Any]) -> None:
        """Queue an ``abort`` (of the job, or ``job_id: nil`` for rehab); the link holds the
        node unavailable until its agent answers ``aborted``."""
        s = self._send(job, node, protocol.Abort, fields)
        if s is not None:
            self._link.expect_aborted(s)

    async def write(self, job: LiveJob) -> None:
        """Write the job's outgoing frames, in order. Each frame's ``seq`` is taken just before
        its write, so that frames other tasks send the node (heartbeats, …) stay in order.
        A write never waits for a node that stopped reading (see ``NodeSession.send_now``);
        one queued for its writer does not checkpoint, so a fan-out checkpoints after every
        :data:`FAN_OUT_CHUNK` frames."""
        while job.outgoing:
            batch, job.outgoing = job.outgoing, []
            ts = time.time()
            for i, (s, cls, fields) in enumerate(batch, 1):
                if s.close_code is None:
                    await s.send_now(protocol.encode(cls(seq=s.next_seq(), ts=ts, **fields)))
                if i % FAN_OUT_CHUNK == 0:
                    await trio.lowlevel.checkpoint()
        while job.remote:
            mail, job.remote = job.remote, []
            for appliance, node, frame_type, fields in mail:
                await self._cluster.send_frame(appliance, job.entry.org, node, frame_type, fields)

    def _arm(self, job: LiveJob, kind: str, deadline: float) -> None:
        old = job.timers.pop(kind, None)
        if old is not None:
            old.cancel()
        if is_closed(job.state):
            return
        scope = trio.CancelScope()
        job.timers[kind] = scope
        assert job.nursery is not None
        job.nursery.start_soon(self._timer, job, kind, deadline, scope)

    async def _timer(
        self, job: LiveJob, kind: str, deadline: float, scope: trio.CancelScope
    ) -> None:
        with scope:
            await trio.sleep(max(0.0, deadline - self._now()))
            if job.timers.get(kind) is scope:
                del job.timers[kind]
            now = self._now()
            if kind == "voting":
                job.post(VotingTimeout(now))
            elif kind == "run":
                job.post(RunTimeout(now))
            elif kind == "late":
                job.post(LateTimeout(now))
            elif kind.startswith("grace:"):
                job.post(GraceExpired(kind[len("grace:") :], now))
