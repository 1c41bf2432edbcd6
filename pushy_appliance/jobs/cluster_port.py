"""The job runner's side of a cluster: the :class:`~..cluster.ClusterEngine` the coordinator
calls back, and the runner's questions about jobs driven by another appliance.

In a cluster (several appliances on one PostgreSQL store, ``docs/SCALE-OUT.md`` §4, §5) the
runner drives only the jobs whose lease its :class:`~..cluster.Coordinator` holds. This
module is everything of that which is not the per-job driving loop: a job taken over from a
dead appliance is adopted once the database caught up with the log (:meth:`ClusterPort.take_over`);
a job whose lease is lost, or whose step the store refused as stale, stops being driven here
without being closed (:meth:`ClusterPort.leases_lost`, :meth:`ClusterPort.step_refused`,
:meth:`ClusterPort.drop`); frames other appliances' jobs send to nodes connected here are
written (:meth:`ClusterPort.deliver`); node events for jobs driven elsewhere are forwarded to
their driver (:meth:`ClusterPort.forward`), and those forwarded here are posted
(:meth:`ClusterPort.post_remote`); an operator's abort of a job driven elsewhere is mailed to
its driver and waits for the job's end (:meth:`ClusterPort.abort_elsewhere`).

The port owns no job: it asks the runner (its :class:`JobDriver`) which jobs are live here,
to adopt a stored job, and to forget one. Alone on its store (:class:`~..cluster.Solo`) the
coordinator never calls it, and the runner's questions return at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import trio

from .. import protocol
from ..cluster import Coordinator, LeaseGrant
from ..db import Database
from ..errors import StoreUnavailableError
from ..nodes.link import NodeLink
from ..nodes.registry import NodeRegistry
from . import record
from .events import Abort, Event, NodeBack, NodeDown, NodeEvent, Resume, Start
from .live import LiveJob
from .model import JobEntry, JobsModel
from .state import JobState, is_finished
from .status import FINISHED_JOB_STATUSES, JobStatus

__all__ = ["ABORT_ELSEWHERE_SECONDS", "ClusterPort", "JobDriver"]

log = logging.getLogger(__name__)

ABORT_ELSEWHERE_SECONDS = 30.0
"""Seconds an abort of a job another appliance drives waits for the job's end."""


_HELD_STATES = {"new": "idle", "ready": "committed", "running": "running"}
"""A live node's stored status → what its agent holds of the job (``NodeBack.job_state``),
for a node that was not sent ``run`` (one that was holds it ``running``)."""


class JobDriver(Protocol):
    """What the port asks of the job runner (:class:`~.runner.JobRunner` implements it)."""

    @property
    def live(self) -> Mapping[str, LiveJob]:
        """The jobs driven here, by id."""
        ...

    @property
    def model(self) -> JobsModel:
        """Every stored job."""
        ...

    async def adopt(self, entry: JobEntry, state: JobState) -> LiveJob:
        """Start driving a stored job (its task started, its nodes held)."""
        ...

    def forget(self, job: LiveJob) -> None:
        """The job is no longer live here (unless another was adopted under its id)."""
        ...


class ClusterPort:
    """The runner's dealings with the other appliances of a cluster.

    Args:
        driver: the job runner.
        db: the database.
        registry: the node registry (sessions of the nodes connected here).
        link: the node link (reachability, which job holds a node).
        cluster: the coordinator of the appliances sharing the store.
        now: the clock (seconds since the epoch) of the events posted to jobs.
    """

    def __init__(
        self,
        driver: JobDriver,
        db: Database,
        registry: NodeRegistry,
        link: NodeLink,
        cluster: Coordinator,
        now: Callable[[], float],
    ) -> None:
        self._driver = driver
        self._db = db
        self._registry = registry
        self._link = link
        self._cluster = cluster
        self._now = now
        self._ending: dict[str, trio.Event] = {}
        """Jobs driven elsewhere whose end an abort here waits for (set by :meth:`_applied`)."""
        self._watching = False

    # --- the runner's questions -------------------------------------------------------------

    def drives(self, job_id: str) -> bool:
        """Whether this appliance drives the job now (it is live here)."""
        return job_id in self._driver.live

    def reachable(self, org: str, nodes: Iterable[str]) -> frozenset[str]:
        """The nodes that can take a commit: reachable here (``NodeLink.reachable``), or
        connected to another live appliance of the cluster."""
        online = self._link.reachable_nodes(org, nodes)
        if not self._cluster.clustered:
            return online
        routed = self._cluster.routed
        return online | {n for n in nodes if routed(org, n) is not None}

    async def lease_orphans(self) -> None:
        """Give every unclosed job of the store without a lease (stored before the store was
        shared) an expired one, so that the takeover hands it out."""
        orphans = [(e.org, e.id) for e in self._driver.model.jobs.values() if not e.closed]
        await self._cluster.lease_orphans(orphans)

    async def forward(self, org: str, job_id: str, event: NodeEvent) -> bool:
        """Mail a node's event for a job not driven here to the job's driver.

        Returns:
            ``False`` alone on the store, or when ``job_id`` of ``org`` is no unclosed job
            of the log that has the event's node.
        """
        if not self._cluster.clustered:
            return False
        if job_id not in self._driver.model.jobs:
            await self._db.barrier()  # a job just created elsewhere, not applied yet?
        if self._driven_elsewhere(org, job_id, event.node):
            await self._cluster.forward(org, job_id, event)
            return True
        return False

    def _driven_elsewhere(self, org: str, job_id: str, node: str) -> bool:
        """Whether ``job_id`` of ``org`` is an unclosed job of the log that has ``node``,
        not driven here (so another appliance drives it, or will once it takes it over)."""
        entry = self._driver.model.jobs.get(job_id)
        return (
            entry is not None
            and entry.org == org
            and not entry.closed
            and job_id not in self._driver.live
            and node in entry.nodes
        )

    async def abort_elsewhere(self, entry: JobEntry, riders: Iterable[dict[str, Any]]) -> None:
        """Abort a job another appliance drives: mail the abort to its driver, wait until
        the job's end is applied here, then store ``riders``.

        Raises:
            StoreUnavailableError: the store refuses writes, or the job did not end within
                :data:`ABORT_ELSEWHERE_SECONDS` (its driver is away: try again).
        """
        if not self._db.writable:
            await self._db.store.append_many([])
        if not self._watching:
            self._db.watch(self._applied)
            self._watching = True
        ended = self._ending.setdefault(entry.id, trio.Event())
        await self._cluster.forward_abort(entry.org, entry.id)
        with trio.move_on_after(ABORT_ELSEWHERE_SECONDS):
            while not entry.finished:
                await ended.wait()
        if not entry.finished:  # (its event stays for the other waiters, set at the end)
            raise StoreUnavailableError("the job's appliance did not end it in time; try again")
        riders = list(riders)
        if riders:
            await self._db.commit(*riders)

    def _applied(self, r: dict[str, Any]) -> None:
        """A database watcher (registered once an abort waits for a job driven elsewhere):
        wake the abort when the job's end is applied."""
        if r.get("t") == "job.step":
            ended = self._ending.get(r["id"])
            if ended is not None and r["job"]["status"] in FINISHED_JOB_STATUSES:
                del self._ending[r["id"]]
                ended.set()

    # --- a job no longer driven here --------------------------------------------------------

    async def step_refused(self, job: LiveJob, events: Iterable[Event]) -> None:
        """The store refused the job's step as stale: another appliance took the job over.
        The step never happened, nor its effects; the nodes' events it took (``events``)
        go to the new driver, and the job's task ends after this batch."""
        job.dropped = True
        self._driver.forget(job)  # the node events that come now are forwarded
        for event in events:
            if isinstance(event, NodeEvent):
                await self._cluster.forward(job.entry.org, job.id, event)

    def drop(self, job: LiveJob) -> None:
        """The end of the task of a job another appliance drives now (it is not closed)."""
        self._driver.forget(job)
        job.room.set()
        if job.id not in self._driver.live:  # (not adopted again meanwhile: its holds are
            self._link.release(job.entry.org, job.id, job.state.nodes)  # the new one's)
        job.ended.set()  # an abort waiting for it is answered (``JobRunner.abort``)
        job.done.set()
        log.warning("job %s: no longer driven here (its lease is another appliance's)", job.id)

    # --- the cluster's calls (ClusterEngine) ------------------------------------------------

    def leases_lost(self, job_ids: Sequence[str]) -> None:
        """Stop driving these jobs at once, without closing them: another appliance holds
        their leases now (or may: this one could not renew them)."""
        for job_id in job_ids:
            job = self._driver.live.get(job_id)
            if job is not None:
                self._stop_driving(job)

    def _stop_driving(self, job: LiveJob) -> None:
        job.dropped = True
        self._driver.forget(job)  # a takeover may adopt it again before its task unwound
        if job.nursery is not None:
            job.nursery.cancel_scope.cancel()

    async def take_over(self, grants: Sequence[LeaseGrant]) -> None:
        """Drive jobs whose leases this appliance took over: once the database applied the
        log up to its head (the dead driver's last steps), rebuild each job from the model
        and post ``Resume`` (or ``Start`` to a job that never started).

        ``Resume`` puts every live node away (as after a restart, when every connection was
        lost); but here the nodes stayed connected, to this appliance or another: each one
        that is gets ``NodeBack`` at once, holding what the log says it acknowledged (a node
        ``ready`` holds the commit, one sent ``run`` is running), so the machine re-sends
        only what such a node may have missed."""
        await self._db.barrier()
        now = self._now()
        for grant in grants:
            entry = self._driver.model.jobs.get(grant.job_id)
            if entry is None or entry.closed or entry.org != grant.org:
                self._cluster.release(grant.job_id)  # closed (or purged) meanwhile
                continue
            if grant.job_id in self._driver.live:
                continue
            state = record.from_record(entry.state_record())
            job = await self._driver.adopt(entry, state)
            if state.status == JobStatus.NEW:
                job.post(Start(now, self.reachable(entry.org, state.nodes)))
            else:
                job.post(Resume(now, None))
                connected = self.reachable(entry.org, state.nodes)
                for name in state.nodes:
                    stored = entry.nodes[name]
                    if name in connected and stored[1] in _HELD_STATES:
                        job_state = _HELD_STATES[stored[1]] if not stored[2] else "running"
                        job.post(NodeBack(name, now, True, job_state))
            log.info(
                "job %s: taken over with lease epoch %d (%s, %d nodes)",
                entry.id,
                grant.epoch,
                state.status,
                len(state.nodes),
            )

    async def deliver(self, org: str, node: str, frame_type: str, fields: dict[str, Any]) -> None:
        """Write a frame a job driven by another appliance sends to a node connected here (a
        node that left meanwhile is skipped: its driver learns of it by its ``NodeDown``)."""
        job_id = fields.get("job_id")
        if isinstance(job_id, str) and job_id not in self._driver.model.jobs:
            # the node's answer is forwarded to the job's driver only once the job is
            # applied here: catch up with the log first
            await self._db.barrier()
        s = self._registry.get(org, node)
        cls = protocol.FRAME_TYPES.get(frame_type)
        if s is None or s.close_code is not None or cls is None:
            await trio.lowlevel.checkpoint()
            return
        if cls is protocol.Abort:
            self._link.expect_aborted(s)
        await s.send_now(protocol.encode(cls(seq=s.next_seq(), ts=time.time(), **fields)))

    async def post_remote(self, org: str, job_id: str, event: NodeEvent) -> None:
        """A node's event another appliance forwarded to a job driven here."""
        job = self._driver.live.get(job_id)
        if job is None or job.entry.org != org or event.node not in job.state.nodes:
            log.debug("job %s: forwarded %s dropped (not driven here)", job_id, event)
            await trio.lowlevel.checkpoint()
            return
        if isinstance(event, NodeBack | NodeDown):
            job.post(event)
            await trio.lowlevel.checkpoint()
            return
        await job.post_from_node(event, None)

    def abort_remote(self, org: str, job_id: str) -> None:
        """Another appliance's operator aborts a job driven here."""
        job = self._driver.live.get(job_id)
        if job is not None and job.entry.org == org and not is_finished(job.state):
            job.post(Abort(self._now()))

    def nodes_gone(self, nodes: Sequence[tuple[str, str]]) -> None:
        """Nodes of an appliance declared dead: ``NodeDown`` for the jobs driven here that
        hold them (unless they are connected here by now)."""
        now = self._now()
        for org, node in nodes:
            if self._registry.get(org, node) is not None:
                continue
            for job_id in self._link.held_by(org, node):
                job = self._driver.live.get(job_id)
                if job is not None:
                    job.post(NodeDown(node, now))
