"""The job runner: feeds events to the pure job machine and performs its effects.

Each live job has one task that drains the job's inbox in batches: every event in the batch
goes through :func:`.machine.transition`; the changes of the whole batch (job fields, changed
nodes, published feed events, output chunks, results) become ONE ``job.step`` record,
committed durably; only then are the effects performed (frames sent, timers armed, events
published on the feeds: :class:`~.effects.Effects`, :attr:`JobRunner.effects`). So a crash
loses effects, never state, and a fan-out to thousands of nodes costs a handful of fsyncs,
not one per vote. A step the store refuses (disk full) is held, with its effects, until the
store writes again; the job goes on from there. After a restart :meth:`JobRunner.resume`
sends ``Resume`` to every unfinished job; the machine re-derives what a lost effect would
have done.

In a cluster (several appliances on one PostgreSQL store, ``docs/SCALE-OUT.md`` §4, §5) the
runner drives only the jobs whose lease its :class:`~..cluster.Coordinator` holds: a new job
claims its lease before its record is stored, every step is fenced with the lease's epoch (a
step refused as stale drops the job: its task stops, the job is not closed), a closed job's
lease is given back, and frames for nodes connected to another appliance are mailed there.
The rest of the cluster's business (takeover, lost leases, frames and node events from other
appliances, forwarding node events and aborts to a job's driver) is the runner's
:class:`~.cluster_port.ClusterPort` (:attr:`JobRunner.cluster_port`), the
:class:`~..cluster.ClusterEngine` the coordinator calls back. Alone on its store
(:class:`~..cluster.Solo`) none of this costs anything.

The runner only creates, aborts and drives jobs; a new job's state, first feed events and
``job.create`` record are built by :func:`.build.build_job` (pure). Node messages reach it
from the node link (:mod:`..nodes.link`) through :meth:`JobRunner.post`, its
:class:`~..nodes.link.JobPort`; the runner tells the link which nodes each live job holds
(:meth:`~..nodes.link.NodeLink.hold`, :meth:`~..nodes.link.NodeLink.release`). Frames to
nodes never wait for a node that stopped reading:
:meth:`~..nodes.registry.NodeSession.send_now` writes at once only when the write cannot
block, and queues the frame for the node's own writer otherwise.

Clock: every ``now`` the runner gives the machine, and every timer, reads the ``now`` callable
it was built with (wall-clock ``time.time`` by default; tests pass a clock that follows
trio's, so timers run on the autojump clock).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

import trio

from ..cluster import Coordinator, Solo
from ..db import Database
from ..errors import (
    JobCapacityError,
    JobFinishedError,
    NoSuchJobError,
    StaleLeaseError,
    StoreUnavailableError,
)
from ..feeds import Feeds
from ..nodes.link import NodeLink
from ..nodes.registry import NodeRegistry
from ..sse import MonotonicStamper
from . import record
from .build import JobTimers, build_job, feed_event
from .cluster_port import ClusterPort
from .details import JobDetails
from .effects import Effects
from .events import (
    Abort,
    Effect,
    KeepOutput,
    NodeBack,
    NodeDown,
    NodeEvent,
    Publish,
    Result,
    Resume,
    Start,
)
from .live import LiveJob
from .machine import transition
from .model import JobEntry, JobsModel
from .state import DEFAULT_LATE_RESULT_TIMEOUT, JobState, holds, is_closed, is_finished
from .status import JobStatus
from .validation import JobRequest

__all__ = [
    "BUILD_IN_THREAD_NODES",
    "INBOX_HIGH_WATER",
    "READ_IN_THREAD_BYTES",
    "JobRunner",
]

log = logging.getLogger(__name__)

INBOX_HIGH_WATER = 10_000
"""Queued events beyond which node frames for a job wait (back-pressure on their sockets)."""
BUILD_IN_THREAD_NODES = 2_000
"""Jobs of more nodes are built in a worker thread (a 100,000-node job takes about a second
of CPU to build; the event loop serves other requests meanwhile)."""
READ_IN_THREAD_BYTES = 64 * 1024
"""Archived details this large or larger are read and decoded in a worker thread."""


class JobRunner:
    """Drives every live job.

    Args:
        db: the database; its ``jobs`` model is a :class:`JobsModel`.
        registry: the node registry (sessions to send frames to).
        link: the node link; the runner becomes its job port.
        feeds: where stored feed events are published.
        voting_timeout, reconnect_grace, late_result_timeout: seconds, from the configuration.
        max_live_jobs, max_live_job_nodes: the caps on jobs that have not finished, and on
            their nodes together (``limits.*``).
        now: the clock (seconds since the epoch) of events and timers.
        cluster: the coordinator of the appliances sharing the store (default: alone).
    """

    def __init__(
        self,
        db: Database,
        registry: NodeRegistry,
        link: NodeLink,
        feeds: Feeds,
        *,
        voting_timeout: float,
        reconnect_grace: float,
        late_result_timeout: float = DEFAULT_LATE_RESULT_TIMEOUT,
        max_live_jobs: int = 1000,
        max_live_job_nodes: int = 1_000_000,
        now: Callable[[], float] = time.time,
        cluster: Coordinator | None = None,
    ) -> None:
        self.db = db
        self.cluster: Coordinator = cluster if cluster is not None else Solo()
        self.registry = registry
        self.link = link
        self.feeds = feeds
        self.voting_timeout = voting_timeout
        self.reconnect_grace = reconnect_grace
        self.late_result_timeout = late_result_timeout
        self.max_live_jobs = max_live_jobs
        self.max_live_job_nodes = max_live_job_nodes
        self._now = now
        self.live: dict[str, LiveJob] = {}
        self._creating: list[int] = []
        """Node counts of the jobs being created (reserved against the caps)."""
        self._nursery: trio.Nursery | None = None
        self.effects = Effects(registry, link, feeds, self.cluster, now)
        """Performs the effects of the jobs' steps."""
        self.cluster_port = ClusterPort(self, db, registry, link, self.cluster, now)
        """What the coordinator calls back (give it to ``Coordinator.run``), and the runner's
        dealings with jobs driven by other appliances."""
        link.connect(self)

    @property
    def model(self) -> JobsModel:
        model = self.db.models["jobs"]
        assert isinstance(model, JobsModel)
        return model

    def live_job_ids(self) -> list[str]:
        """The jobs that have not finished (``_status``'s ``job_processes``)."""
        return sorted(job_id for job_id, job in self.live.items() if not is_finished(job.state))

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run jobs until cancelled; resumes the unfinished jobs of the store first.

        Start-up: ready once every unfinished job has been resumed.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.resume()
            task_status.started()
            await trio.sleep_forever()

    async def resume(self) -> None:
        """Restart every unfinished job of the store (``Resume`` with its remaining time), and
        every finished one that still waits for late results.

        In a cluster the jobs are resumed as their leases are taken over instead (this
        appliance holds none at start); a job without a lease (stored before the store was
        shared) is given an expired one, so that the takeover hands it out."""
        if self.cluster.clustered:
            await self.cluster_port.lease_orphans()
            return
        now = self._now()
        stopped_at = self.model.last_at or None
        for entry in list(self.model.jobs.values()):
            if entry.closed:
                continue
            state = record.from_record(entry.state_record())
            job = await self.adopt(entry, state)
            if state.status == JobStatus.NEW:
                job.post(Start(now, self.link.reachable_nodes(entry.org, state.nodes)))
            else:
                job.post(Resume(now, stopped_at))
            log.info("job %s: resumed (%s, %d nodes)", entry.id, state.status, len(state.nodes))

    async def adopt(
        self,
        entry: JobEntry,
        state: JobState,
        stamper: MonotonicStamper | None = None,
        first: tuple[Iterable[Effect], list[list[Any]]] | None = None,
        held: list[str] | None = None,
    ) -> LiveJob:
        """Start driving a stored job.

        Args:
            stamper: the stamper that made the job's first events (a new job).
            first: effects and feed events of the step that created the job, performed by
                the job's task before anything else (a job can be over at once).
            held: the nodes the job holds (``state.holds``), if known already.
        """
        job = LiveJob(entry, state, high_water=INBOX_HIGH_WATER)
        if stamper is not None:
            job.stamper = stamper
        self.live[entry.id] = job
        if is_finished(state):
            job.ended.set()
        if held is None:
            held = [n for n in state.nodes if holds(state, n)]
        self.link.hold(entry.org, entry.id, held)
        assert self._nursery is not None
        await self._nursery.start(self._drive, job, first)
        return job

    # --- API operations ---------------------------------------------------------------------

    async def create(
        self,
        org: str,
        req: JobRequest,
        requester: str,
        *,
        rerun_of: str | None = None,
        riders: Callable[[str], Iterable[dict[str, Any]]] | None = None,
    ) -> str:
        """Create and start a job; returns once its record is durable.

        A job of more than :data:`BUILD_IN_THREAD_NODES` nodes is built (its state after
        ``Start``, its first feed events, its ``job.create`` record) in a worker thread:
        nothing else sees it before it is stored, and the event loop goes on serving
        meanwhile. Its first feed events and commits are then handed out in chunks of
        :data:`~.effects.FAN_OUT_CHUNK` with a checkpoint between two.

        Args:
            rerun_of: the job this one re-runs (kept in its spec).
            riders: given the new job's id, records to store in the same commit as the job
                (the request's audit record).

        Returns:
            The new job id (32 lowercase hex characters).

        Raises:
            JobCapacityError: the job would pass ``max_live_jobs`` or ``max_live_job_nodes``
                (nothing was stored).
        """
        self._reserve(len(req.nodes))
        try:
            job_id = secrets.token_hex(16)
            now = self._now()
            online = self.cluster_port.reachable(org, req.nodes)
            holders = self.link.holders(org, req.nodes)
            timers = JobTimers(self.voting_timeout, self.reconnect_grace, self.late_result_timeout)
            build = (job_id, org, req, requester, online, holders, now, rerun_of, timers)
            if len(req.nodes) > BUILD_IN_THREAD_NODES:
                built = await trio.to_thread.run_sync(build_job, *build)
            else:
                built = build_job(*build)
            # Once stored, the job must also run: a client that hangs up (cancelling this
            # request) must not leave a stored job that nobody drives until the next restart.
            with trio.CancelScope(shield=True):
                await self.cluster.claim(org, job_id)
                await self.db.commit(built.record, *(riders(job_id) if riders is not None else ()))
                log.info(
                    "job %s: started by %s in %s on %d node(s): %r",
                    job_id,
                    requester,
                    org,
                    len(req.nodes),
                    req.command,
                )
                first = (built.effects, built.events)
                await self.adopt(
                    self.model.jobs[job_id], built.state, built.stamper, first, built.held
                )
        finally:
            self._creating.pop()
        return job_id

    def _reserve(self, nodes: int) -> None:
        """Count a job being created against the caps on live jobs, or refuse it."""
        live = [job for job in self.live.values() if not is_finished(job.state)]
        jobs = len(live) + len(self._creating) + 1
        if jobs > self.max_live_jobs:
            raise JobCapacityError("live jobs", self.max_live_jobs, jobs - 1)
        held = sum(len(job.state.nodes) for job in live) + sum(self._creating) + nodes
        if held > self.max_live_job_nodes:
            raise JobCapacityError("nodes in live jobs", self.max_live_job_nodes, held)
        self._creating.append(nodes)

    async def abort(self, org: str, job_id: str, *, riders: Iterable[dict[str, Any]] = ()) -> None:
        """Abort a voting or running job and wait until its end is durable (not for the late
        results of the nodes it stopped: the job's and the nodes' statuses are final then).

        Args:
            riders: records to store in the same commit as the step that ends the job (the
                request's audit record).

        Raises:
            NoSuchJobError: no such job in ``org``.
            JobFinishedError: the job already finished.
            StoreUnavailableError: the store refuses writes now; the job is not touched (its
                end could not be stored, and the caller would wait for it).
        """
        entry = self.model.jobs.get(job_id)
        if entry is None or entry.org != org:
            raise NoSuchJobError(job_id)
        job = self.live.get(job_id)
        if job is None and self.cluster.clustered and not entry.finished:
            await self.cluster_port.abort_elsewhere(entry, riders)
            return
        # (the job's own task may be storing the step that ends it: its riders are taken)
        if job is None or entry.finished or is_finished(job.state):
            raise JobFinishedError(job_id)
        if not self.db.writable:
            # appending nothing writes nothing, and raises the store's own refusal
            await self.db.store.append_many([])
        job.riders.extend(riders)
        job.post(Abort(self._now()))
        await job.ended.wait()
        if job.dropped:
            raise StoreUnavailableError("the job is driven by another appliance now; try again")

    async def load_details(self, entry: JobEntry) -> None:
        """Have an archived job's details in memory (the model's cache) before they are
        read: a blob of :data:`READ_IN_THREAD_BYTES` or more is read and decoded in a worker
        thread, so that the event loop does not wait for a 100,000-node job's.

        Raises:
            StoreError: the details cannot be read.
        """
        ref = entry.ref
        history = self.model.history
        if ref is None or history.cached(entry.id) is not None:
            return
        if ref[2] < READ_IN_THREAD_BYTES:
            entry.details()
            return

        def load() -> tuple[JobDetails, int]:
            details, size = history.load(ref)
            details.buckets()  # what the job document shows, computed here too (a
            details.nack_reasons()  # 100,000-node job's took 50 ms of the event loop)
            return details, size

        details, size = await trio.to_thread.run_sync(load)
        if self.model.jobs.get(entry.id) is entry and entry.ref == ref:
            history.keep(entry.id, details, size)

    # --- the job port (node messages from the link) -----------------------------------------

    async def post(self, org: str, job_id: str, event: NodeEvent) -> bool:
        """Hand a node's event to the live job ``job_id`` of ``org`` (the link's
        :class:`~..nodes.link.JobPort`).

        Frames wait while the job's inbox is over its high-water mark (back-pressure on the
        node's socket); connection changes (``NodeBack``, ``NodeDown``) never wait.

        Returns:
            ``False`` when no live job ``job_id`` of ``org`` has the event's node.
        """
        job = self.live.get(job_id)
        if job is None or job.entry.org != org or event.node not in job.state.nodes:
            return await self.cluster_port.forward(org, job_id, event)
        if isinstance(event, NodeBack | NodeDown):
            job.post(event)
            return True
        await job.post_from_node(event, self.registry.get(org, event.node))
        return self.live.get(job_id) is job

    # --- the per-job task -------------------------------------------------------------------

    async def _drive(
        self,
        job: LiveJob,
        first: tuple[Iterable[Effect], list[list[Any]]] | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            job.nursery = nursery
            if first is not None:
                await self.effects.perform_first(job, *first)
            task_status.started()
            try:
                while not job.dropped:
                    await self.effects.write(job)
                    if is_closed(job.state):
                        break
                    await job.wakeup.wait()
                    job.wakeup = trio.Event()
                    await self._batch(job)
            finally:
                nursery.cancel_scope.cancel()
        if job.dropped:
            self.cluster_port.drop(job)
        else:
            self._retire(job)

    async def _batch(self, job: LiveJob) -> None:
        """Run every queued event through the machine; store the batch as one ``job.step``
        (job fields, changed nodes, feed events, output chunks, results); then act on it.

        The job's events are numbered here, in arrival order, by this one task: stored and
        published in ``n`` order with no lock.
        """
        batch = list(job.inbox)
        job.inbox.clear()
        job.room.set()
        state = job.state
        effects: list[Effect] = []
        touched: dict[str, None] = {}
        changed = False
        results: dict[str, Any] = {}
        outputs: list[list[Any]] = []
        events: list[list[Any]] = []
        n = job.entry.last_event_n() + 1
        now = self._now()
        capture = bool(job.entry.spec["capture"])
        for event in batch:
            new, fx = transition(state, event)
            if new is not state:
                changed = True
                touched.update(dict.fromkeys(new.touched))
            state = new
            effects.extend(fx)
            for f in fx:
                if isinstance(f, Publish):
                    events.append(feed_event(n, f.event, f.data, job.stamper, now))
                    n += 1
                elif isinstance(f, KeepOutput) and capture:
                    chunk = [f.node, f.channel, f.offset, f.data]
                    outputs.append(chunk if f.size is None else [*chunk, f.size])
                    if f.data:  # a chunk past the cap is counted, not published
                        text = f.data.decode("utf-8", "replace")
                        fields = {"node": f.node, "channel": f.channel, "data": text}
                        events.append(feed_event(n, "output", fields, job.stamper, now))
                        n += 1
            result = event.result if isinstance(event, NodeBack) else event
            if isinstance(result, Result) and result.fields is not None:
                results[result.node] = result.fields
        job.state = state
        riders, job.riders = job.riders, []
        if not changed and not results and not outputs:
            if riders:
                await self.db.commit(*riders)
            self.effects.perform(job, effects, [])
            return
        step = {
            "t": "job.step",
            "id": job.id,
            "job": record.job_record(state),
            "nodes": [record.node_record(state, name) for name in touched],
            "events": events,
            "outputs": outputs,
            "results": results,
            "at": now,
        }
        fence = self.cluster.fence(job.id)
        try:
            try:
                if fence:
                    await self.db.commit(step, *riders, fence=fence)
                else:
                    await self.db.commit(step, *riders)
            except StoreUnavailableError as e:
                # Nothing of the step is stored or applied: hold it, and its effects, until
                # the store writes again. Meanwhile the inbox fills, and above its high-water
                # mark the nodes' frames wait (they are not timed out for it: see
                # ``post_from_node``).
                log.warning("job %s: step held until the store can write (%s)", job.id, e.reason)
                if fence:
                    await self.db.commit_retrying(step, *riders, fence=fence)
                else:
                    await self.db.commit_retrying(step, *riders)
                log.info("job %s: held step stored", job.id)
        except StaleLeaseError as e:
            # another appliance took the job over: this step never happened, nor its effects;
            # the nodes' events it took go to the new driver
            log.warning("job %s: step refused (%s); driven elsewhere now", job.id, e)
            await self.cluster_port.step_refused(job, (*batch, *job.inbox))
            return
        if is_finished(state):
            job.ended.set()
        released = [name for name in touched if not holds(state, name)]
        self.link.release(job.entry.org, job.id, released)
        self.effects.perform(job, effects, events)

    def forget(self, job: LiveJob) -> None:
        """The job is no longer live here (unless another was adopted under its id since)."""
        if self.live.get(job.id) is job:
            del self.live[job.id]

    def _retire(self, job: LiveJob) -> None:
        self.live.pop(job.id, None)
        job.room.set()  # nobody drains this inbox any more: let waiting nodes go on
        self.link.release(job.entry.org, job.id, job.state.nodes)
        self.cluster.release(job.id)
        job.done.set()
        log.info("job %s: finished %s", job.id, job.state.status)
