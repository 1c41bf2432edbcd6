"""The job state machine: ``transition(state, event) -> (state, effects)``, pure.

One job's life (``API.md`` §5, ``NODES.md`` §3-4) as a function of events. The runner feeds
events (node messages, timers, operator requests), stores the new state, then performs the
returned effects in order. Nothing here does I/O, reads a clock or raises on a bad event:
an event that makes no sense in the current state returns ``(state, ())`` or sends the node
to rehab.

Statuses
    Job: ``new → voting → running → complete``, or ``quorum_failed``, ``timed_out``,
    ``aborted``, ``crashed`` (the last five are *finished*). Node: ``new, ready, running``
    (*live*) and ``succeeded, failed, aborted, unavailable, nacked, crashed, was_ready,
    timed_out`` (*final*; a final node never moves).

Ownership and cost (read this before using a state twice)
    A job may hold 100,000 nodes and every vote is one event, so copying the node table per
    event is out. :func:`transition` therefore *takes ownership* of the state it is given: the
    returned state is a new frozen object that shares, and may have updated in place, the node
    tables of the old one. Each node event costs O(1) amortized; only events that touch every
    node (``Start``, ``VotingTimeout``, the end of voting, ``RunTimeout``, ``Abort``, ``Crash``,
    ``Resume``) are O(nodes). Using a consumed state again raises :class:`RuntimeError` (a
    programming error, caught by a version check). Take :func:`to_record` (or :func:`clone`)
    first if an old snapshot is needed. When nothing changed, ``transition`` returns the very
    object it was given; ``new is not old`` tells the runner there is something to store, and
    ``new.touched`` names the nodes whose :func:`node_record` changed.

Times
    Every event carries ``now`` (the last vote may start the run, whose deadline is absolute).
    Every ``now`` and deadline is wall-clock seconds since the epoch (``time.time()``): they
    are persisted and compared across restarts. The runner turns a deadline into a trio
    deadline with ``trio.current_time() + (deadline - time.time())``.

Effects and restart
    The runner stores the new state (and the events of its :class:`Publish` effects, in the
    same store write) *before* performing the effects, so a crash can lose effects but never
    state. What a lost effect would have done is re-derived after a restart, and every effect
    is safe to perform twice:

    * ``Resume`` re-arms the voting or run timer and puts every live node *away* with a fresh
      reconnect grace (and a ``grace:NODE`` timer); nothing is sent until nodes reconnect.
    * A node that reconnects (``NodeBack``) reports the job state it holds; the machine re-sends
      exactly what that node is missing: a ``commit`` to a voting node that holds nothing, a
      ``run`` to a started node that is still only committed; a node holding a job it should
      not gets rehab. ``abort``/``release`` to a node that no longer holds the job is a no-op
      on the agent.
    * Timers are named by kind (``voting``, ``run``, ``grace:NODE``); ``StartTimer`` replaces a
      timer of the same kind, ``CancelTimer`` of an unknown or fired timer is a no-op, and a
      timer event that arrives late (``VotingTimeout`` after voting ended, ``GraceExpired`` for
      a node that came back) is ignored.
    * ``Publish`` effects are not re-issued: their events are stored with the state.
    * A send to a node that is offline may simply be dropped: whatever the node still needs
      is re-derived when it reconnects (``NodeBack``).
    * ``Resume`` of a ``new`` job does nothing: the runner sends ``Start`` as for a new job.

Decisions the spec leaves open
    * Early quorum failure (``new + ready < quorum`` while voting): the job ends
      ``quorum_failed`` at once; ready nodes end ``was_ready``, still-``new`` nodes end
      ``unavailable`` (reason ``quorum unreachable``) without a vote event; both are released
      (``ReleaseNodes``: the agent drops the commit).
    * Nodes still ``new`` at the voting timeout end ``unavailable`` (vote ``voting_timeout``) and
      are released at once, whatever the outcome of the vote.
    * Running, with ``max_concurrency``, ready nodes are started in request order; a node that
      comes back from being away is queued at the end. A ready node that goes offline before it
      was sent ``run`` is away like a running one: it is not started while away, and ends
      ``unavailable`` (not ``crashed``: it never ran) if its grace expires. A node that was sent
      ``run`` ends ``crashed`` then. (An agent drops a commit that sees no ``run`` within
      ``voting_timeout`` + 10 s, ``NODES.md`` §4; a node that waited longer for its slot nacks
      the ``run`` and ends ``failed``, ``run_nacked``.)
    * Every node that ends while the job is ``running`` publishes ``run_complete``, except a
      not-yet-started node that ends ``unavailable`` (no ``run_complete`` status fits); nodes
      that end while voting publish at most a ``quorum_vote``.
    * A ``result`` is the agent's last word on a job (it is idle afterwards), so it is always
      acknowledged (``SendResultAck``). A result from a node that ran the job and already ended
      (a re-sent duplicate, or the result of a process we aborted or gave up on) changes
      nothing and is not a rehab; a result from a node that was never told to run is.
    * Likewise ``ack_run``/``nack_run`` from a node the server already told to stop (final
      ``aborted`` or ``timed_out``) are expected stragglers and ignored.
    * ``rehab`` is published on the job feed only while the job is not finished (its feed
      ends with ``job_complete``) and only for nodes of the job; a message from a node that is
      not part of the job gets ``SendRehab`` alone.
    * ``nack_run`` from a running node also sends it an ``abort`` for the job.
    * The job feed's ``start`` event is published by the runner when it creates the job (it
      carries request fields the machine does not keep), before it sends ``Start``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from ..errors import StoreError

__all__ = [
    "FINISHED_JOB_STATUSES",
    "LIVE_NODE_STATUSES",
    "RECORD_FORMAT",
    "Abort",
    "AckCommit",
    "AckRun",
    "CancelTimer",
    "Crash",
    "Effect",
    "Event",
    "Finished",
    "GraceExpired",
    "JobState",
    "JobStatus",
    "NackCommit",
    "NackRun",
    "NodeAway",
    "NodeBack",
    "NodeDown",
    "NodeStatus",
    "Publish",
    "ReleaseNodes",
    "Result",
    "Resume",
    "RunTimeout",
    "SendAbort",
    "SendCommit",
    "SendRehab",
    "SendResultAck",
    "SendRun",
    "Start",
    "StartTimer",
    "VotingTimeout",
    "clone",
    "from_record",
    "grace_timer",
    "is_finished",
    "job_record",
    "nack_reasons",
    "new_job",
    "node_buckets",
    "node_record",
    "to_record",
    "transition",
]


class JobStatus(enum.StrEnum):
    """Status of a job."""

    NEW = "new"
    VOTING = "voting"
    RUNNING = "running"
    COMPLETE = "complete"
    QUORUM_FAILED = "quorum_failed"
    TIMED_OUT = "timed_out"
    ABORTED = "aborted"
    CRASHED = "crashed"


class NodeStatus(enum.StrEnum):
    """Status of one node inside a job (the buckets of the job document, in their order)."""

    NEW = "new"
    READY = "ready"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"
    UNAVAILABLE = "unavailable"
    NACKED = "nacked"
    CRASHED = "crashed"
    WAS_READY = "was_ready"
    TIMED_OUT = "timed_out"


FINISHED_JOB_STATUSES: Final = frozenset(
    {
        JobStatus.COMPLETE,
        JobStatus.QUORUM_FAILED,
        JobStatus.TIMED_OUT,
        JobStatus.ABORTED,
        JobStatus.CRASHED,
    }
)
"""Job statuses from which nothing moves."""

LIVE_NODE_STATUSES: Final = frozenset({NodeStatus.NEW, NodeStatus.READY, NodeStatus.RUNNING})
"""Node statuses that may still change; every other node status is final."""

_FAILURES: Final = (NodeStatus.FAILED, NodeStatus.CRASHED, NodeStatus.TIMED_OUT)
_STOP_SENT: Final = frozenset({NodeStatus.ABORTED, NodeStatus.TIMED_OUT})
_RAN: Final = frozenset(
    {
        NodeStatus.SUCCEEDED,
        NodeStatus.FAILED,
        NodeStatus.ABORTED,
        NodeStatus.TIMED_OUT,
        NodeStatus.CRASHED,
    }
)
_JOB_STATES: Final = frozenset({"idle", "committed", "running"})

RECORD_FORMAT: Final = 1
"""Version of the :func:`to_record` format."""

_GRACE_PREFIX: Final = "grace:"

REASON_RESTARTED: Final = "node restarted"
REASON_NO_RECONNECT: Final = "node did not reconnect within the reconnect grace"
REASON_QUORUM_UNREACHABLE: Final = "quorum unreachable"
REASON_VOTING_TIMEOUT: Final = "no vote within the voting timeout"
REASON_DOWN_AT_START: Final = "node offline or unavailable when the job started"
REASON_DOWN_VOTING: Final = "node went offline while voting"
REASON_DROPPED_COMMIT: Final = "node no longer holds the commit"
REASON_LOST_JOB: Final = "node no longer holds the job"
REASON_MAX_FAILURES: Final = "not started: more than max_failures nodes failed"


def grace_timer(node: str) -> str:
    """The timer kind of ``node``'s reconnect grace (``grace:NODE``).

    Args:
        node: the node name.

    Returns:
        The kind used in :class:`StartTimer` / :class:`CancelTimer`.
    """
    return _GRACE_PREFIX + node


# --- events ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Start:
    """Begin voting. ``online_nodes``: the job's nodes that are online and available now;
    the others vote ``down`` at once."""

    now: float
    online_nodes: frozenset[str]


@dataclasses.dataclass(frozen=True, slots=True)
class AckCommit:
    """The node's ``ack_commit`` for this job."""

    node: str
    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class NackCommit:
    """The node's ``nack_commit``; ``reason`` is the agent's (``busy``, ``not_whitelisted``…)."""

    node: str
    reason: str
    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class NodeDown:
    """The node went offline (socket lost, heartbeats missed) or became unavailable.

    While voting, a live node votes ``down`` and ends ``unavailable`` at once. While running,
    a live node is *away*: it has the reconnect grace (from ``now``) to come back.
    """

    node: str
    now: float


NodeAway = NodeDown
"""Alias: "socket lost while running" is :class:`NodeDown` during the running phase."""


@dataclasses.dataclass(frozen=True, slots=True)
class VotingTimeout:
    """The ``voting`` timer fired."""

    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class AckRun:
    """The node's ``ack_run``: it started the command."""

    node: str
    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class NackRun:
    """The node's ``nack_run``."""

    node: str
    reason: str
    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """The node's ``result`` (or a ``hello``'s ``pending_result``).

    ``status`` is the agent's (``succeeded|failed|aborted|timed_out``): ``timed_out`` and
    ``aborted`` end the node so; otherwise exit code 0 is ``succeeded``, anything else
    (including ``None``, killed by a signal) ``failed``.
    """

    node: str
    status: str
    exit_code: int | None
    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class NodeBack:
    """The node reconnected (its ``hello``), as seen by this job.

    Attributes:
        node: the node.
        now: when.
        same_incarnation: whether the agent is the same process as before (same
            ``incarnation_id``). A new incarnation lost whatever it ran: ``node restarted``.
        job_state: what the agent holds *of this job*: ``idle`` (nothing, or another job),
            ``committed`` or ``running`` (its ``hello.job_state`` when ``hello.job_id`` is this
            job). Unknown values count as ``idle``.
        result: the agent's unacknowledged result for this job, applied first.
    """

    node: str
    now: float
    same_incarnation: bool
    job_state: str = "idle"
    result: Result | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class GraceExpired:
    """The ``grace:NODE`` timer fired."""

    node: str
    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class RunTimeout:
    """The ``run`` timer fired."""

    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class Abort:
    """The operator aborts the job (``POST jobs/ID/abort``)."""

    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class Crash:
    """The engine gives up on the job (for example, its record cannot be acted on)."""

    now: float
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Resume:
    """The server restarted and loaded this job.

    ``stopped_at``, when known, is when the server stopped (its last durable write): a voting
    job gets back the voting time it had left then. The run deadline is not moved (agents
    enforce ``run_timeout`` themselves).
    """

    now: float
    stopped_at: float | None = None


Event: TypeAlias = (
    Start
    | AckCommit
    | NackCommit
    | NodeDown
    | VotingTimeout
    | AckRun
    | NackRun
    | Result
    | NodeBack
    | GraceExpired
    | RunTimeout
    | Abort
    | Crash
    | Resume
)

# --- effects --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SendCommit:
    """Send ``commit`` for the job to each node."""

    nodes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SendRun:
    """Send ``run`` for the job to each node."""

    nodes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SendAbort:
    """Send ``abort {job_id}`` to each node: stop (or drop) what it holds of this job."""

    nodes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseNodes:
    """These nodes hold a commit that will never run: send each ``abort {job_id}`` so the agent
    drops it and is available again."""

    nodes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SendRehab:
    """Send the node ``abort {job_id: nil}`` (rehab: unavailable until it answers
    ``aborted``)."""

    node: str


@dataclasses.dataclass(frozen=True, slots=True)
class SendResultAck:
    """Send ``result_ack`` for the job: the agent may forget its result."""

    node: str


@dataclasses.dataclass(frozen=True, slots=True)
class Publish:
    """Append an event to the job feed. ``data`` is the event's fields without ``timestamp``
    (the hub stamps it), exactly as ``API.md`` §3 "Event feeds"."""

    event: str
    data: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class StartTimer:
    """Arm (or re-arm) the timer ``kind`` to fire at ``deadline`` (wall-clock seconds)."""

    kind: str
    deadline: float


@dataclasses.dataclass(frozen=True, slots=True)
class CancelTimer:
    """Disarm the timer ``kind`` (a no-op if it is not armed)."""

    kind: str


@dataclasses.dataclass(frozen=True, slots=True)
class Finished:
    """The job ended with ``status``; the runner may drop it from its live jobs."""

    status: JobStatus


Effect: TypeAlias = (
    SendCommit
    | SendRun
    | SendAbort
    | ReleaseNodes
    | SendRehab
    | SendResultAck
    | Publish
    | StartTimer
    | CancelTimer
    | Finished
)

# --- state ----------------------------------------------------------------------------------


class _Tables:
    """The per-node part of a job's state, updated in place by the owning transition."""

    __slots__ = ("away", "counts", "launched", "nodes", "pending", "reasons", "version")

    def __init__(self, nodes: dict[str, NodeStatus], version: int) -> None:
        self.nodes = nodes
        self.counts: dict[NodeStatus, int] = dict.fromkeys(NodeStatus, 0)
        for status in nodes.values():
            self.counts[status] += 1
        self.reasons: dict[str, str] = {}
        # Ready nodes of a running job waiting for a slot, in start order. Entries go stale
        # (the node started, ended or went away) and are skipped when popped: O(1) per event.
        self.pending: deque[str] = deque()
        self.launched: set[str] = set()
        """Nodes that were sent ``run`` and are still live."""
        self.away: dict[str, float] = {}
        """Live nodes that are offline, with the deadline of their reconnect grace."""
        self.version = version


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class JobState:
    """One job's state. Build with :func:`new_job` or :func:`from_record`.

    The scalar fields are immutable; the per-node tables are shared with the states that
    :func:`transition` derives from this one (see the module docstring: a state is consumed by
    ``transition``). Read them through the properties.

    Attributes:
        job_id: the job.
        status: the job status.
        quorum: nodes that must ack the commit (resolved count).
        run_timeout: seconds from the start of running to the ``run`` timer.
        voting_timeout: seconds from ``Start`` to the ``voting`` timer.
        reconnect_grace: seconds an away node has to come back.
        max_concurrency: most nodes started and still live at once; ``None``: all.
        max_failures: more failed/crashed/timed_out nodes than this stop further starts;
            ``None``: never.
        stopped: ``max_failures`` was exceeded: no further node starts.
        voting_deadline: when the voting timer fires (while voting).
        run_started_at: when running began.
        run_deadline: when the run timer fires.
        version: bumped by every transition that changes the state.
        touched: nodes whose :func:`node_record` the transition that built this state changed.
    """

    job_id: str
    status: JobStatus
    quorum: int
    run_timeout: float
    voting_timeout: float
    reconnect_grace: float
    max_concurrency: int | None
    max_failures: int | None
    stopped: bool
    voting_deadline: float | None
    run_started_at: float | None
    run_deadline: float | None
    version: int
    touched: tuple[str, ...]
    _tables: _Tables = dataclasses.field(repr=False)

    @property
    def nodes(self) -> Mapping[str, NodeStatus]:
        """Node → status, in request order (a read-only live view)."""
        return MappingProxyType(self._tables.nodes)

    @property
    def reasons(self) -> Mapping[str, str]:
        """Node → why it ended as it did, where known (a read-only live view)."""
        return MappingProxyType(self._tables.reasons)

    @property
    def away(self) -> Mapping[str, float]:
        """Live nodes that are offline → deadline of their grace (a read-only live view)."""
        return MappingProxyType(self._tables.away)

    @property
    def launched(self) -> frozenset[str]:
        """Nodes that were sent ``run`` and are still live."""
        return frozenset(self._tables.launched)

    @property
    def failures(self) -> int:
        """Nodes that ended ``failed``, ``crashed`` or ``timed_out``."""
        counts = self._tables.counts
        return sum(counts[s] for s in _FAILURES)

    @property
    def live_count(self) -> int:
        """Nodes still ``new``, ``ready`` or ``running``."""
        counts = self._tables.counts
        return sum(counts[s] for s in LIVE_NODE_STATUSES)

    def count(self, status: NodeStatus) -> int:
        """How many nodes have ``status`` (O(1))."""
        return self._tables.counts[status]


def new_job(
    job_id: str,
    nodes: Iterable[str],
    *,
    quorum: int,
    run_timeout: float,
    voting_timeout: float,
    reconnect_grace: float,
    max_concurrency: int | None = None,
    max_failures: int | None = None,
) -> JobState:
    """A job in status ``new``, every node ``new``. Send it :class:`Start` to begin voting.

    Args:
        job_id: the job id.
        nodes: node names, in request order.
        quorum: resolved quorum (0 … any; above ``len(nodes)`` the vote can only fail).
        run_timeout: seconds the run may take.
        voting_timeout: seconds voting may take.
        reconnect_grace: seconds an offline running node has to come back.
        max_concurrency: most nodes running at once (≥ 1), ``None`` for all.
        max_failures: failures tolerated before no further node starts (≥ 0), ``None``.

    Returns:
        The new state.

    Raises:
        ValueError: duplicate node names or out-of-range arguments (validate requests with
            ``jobs.validation`` first; this is a programming error).
    """
    names = tuple(nodes)
    table = dict.fromkeys(names, NodeStatus.NEW)
    if len(table) != len(names):
        raise ValueError("duplicate node names")
    _check_params(
        quorum, run_timeout, voting_timeout, reconnect_grace, max_concurrency, max_failures
    )
    return JobState(
        job_id=job_id,
        status=JobStatus.NEW,
        quorum=quorum,
        run_timeout=run_timeout,
        voting_timeout=voting_timeout,
        reconnect_grace=reconnect_grace,
        max_concurrency=max_concurrency,
        max_failures=max_failures,
        stopped=False,
        voting_deadline=None,
        run_started_at=None,
        run_deadline=None,
        version=0,
        touched=(),
        _tables=_Tables(table, 0),
    )


def _check_params(
    quorum: int,
    run_timeout: float,
    voting_timeout: float,
    reconnect_grace: float,
    max_concurrency: int | None,
    max_failures: int | None,
) -> None:
    if quorum < 0:
        raise ValueError(f"quorum {quorum} < 0")
    for name, value in (
        ("run_timeout", run_timeout),
        ("voting_timeout", voting_timeout),
        ("reconnect_grace", reconnect_grace),
    ):
        if not value >= 0 or math.isinf(value):
            raise ValueError(f"{name} {value!r} is not a finite number >= 0")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency {max_concurrency} < 1")
    if max_failures is not None and max_failures < 0:
        raise ValueError(f"max_failures {max_failures} < 0")


# --- the transition -------------------------------------------------------------------------


def transition(state: JobState, event: Event) -> tuple[JobState, tuple[Effect, ...]]:
    """Apply one event to a job.

    Args:
        state: the current state; consumed (see the module docstring): do not use it again
            unless the very same object is returned.
        event: what happened.

    Returns:
        ``(new_state, effects)``. ``new_state is state`` when nothing changed. Effects are to be
        performed in order, after ``new_state`` is stored.

    Raises:
        RuntimeError: ``state`` was already consumed by an earlier transition (a programming
            error). Events never raise: an illegal one changes nothing or sends rehab.
    """
    tables = state._tables
    if tables.version != state.version:
        raise RuntimeError(
            f"job {state.job_id}: stale JobState (version {state.version}, tables at "
            f"{tables.version}); transition() consumes its input state"
        )
    step = _Step(state)
    match event:
        case Start():
            _start(step, event)
        case AckCommit():
            _ack_commit(step, event)
        case NackCommit():
            _nack_commit(step, event)
        case NodeDown():
            _node_down(step, event)
        case VotingTimeout():
            _voting_timeout(step, event)
        case AckRun():
            _ack_run(step, event)
        case NackRun():
            _nack_run(step, event)
        case Result():
            _result(step, event)
        case NodeBack():
            _node_back(step, event)
        case GraceExpired():
            _grace_expired(step, event)
        case RunTimeout():
            _run_timeout(step, event)
        case Abort():
            _stop_all(step, JobStatus.ABORTED, NodeStatus.ABORTED, None)
        case Crash():
            _stop_all(step, JobStatus.CRASHED, NodeStatus.CRASHED, event.reason)
        case Resume():
            _resume(step, event)
        case _:  # pragma: no cover - the Event union is closed; ignore anything else
            pass
    return step.result()


class _Step:
    """One transition in progress: scalar fields being rebuilt, effects, touched nodes."""

    __slots__ = (
        "changed",
        "effects",
        "run_deadline",
        "run_started_at",
        "state",
        "status",
        "stopped",
        "t",
        "touched",
        "voting_deadline",
    )

    def __init__(self, state: JobState) -> None:
        self.state = state
        self.t = state._tables
        self.status = state.status
        self.stopped = state.stopped
        self.voting_deadline = state.voting_deadline
        self.run_started_at = state.run_started_at
        self.run_deadline = state.run_deadline
        self.effects: list[Effect] = []
        self.touched: dict[str, None] = {}
        self.changed = False

    def result(self) -> tuple[JobState, tuple[Effect, ...]]:
        effects = tuple(self.effects)
        if not self.changed:
            return self.state, effects
        version = self.state.version + 1
        self.t.version = version
        new = dataclasses.replace(
            self.state,
            status=self.status,
            stopped=self.stopped,
            voting_deadline=self.voting_deadline,
            run_started_at=self.run_started_at,
            run_deadline=self.run_deadline,
            version=version,
            touched=tuple(self.touched),
        )
        return new, effects

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_JOB_STATUSES

    def set_status(self, status: JobStatus) -> None:
        self.status = status
        self.changed = True

    def set_node(self, node: str, status: NodeStatus, reason: str | None = None) -> None:
        t = self.t
        t.counts[t.nodes[node]] -= 1
        t.counts[status] += 1
        t.nodes[node] = status
        if reason is not None:
            t.reasons[node] = reason
        if status not in LIVE_NODE_STATUSES:
            t.launched.discard(node)
            if t.away.pop(node, None) is not None:
                self.effects.append(CancelTimer(grace_timer(node)))
        self.touch(node)

    def touch(self, node: str) -> None:
        self.touched[node] = None
        self.changed = True

    def publish(self, event: str, **data: str) -> None:
        self.effects.append(Publish(event, data))

    def vote(self, node: str, status: str) -> None:
        self.publish("quorum_vote", node=node, status=status)

    def run_complete(self, node: str, status: str) -> None:
        self.publish("run_complete", node=node, status=status)

    def rehab(self, node: str) -> None:
        """Unexpected message from ``node``: rehab it; the job itself does not change."""
        self.effects.append(SendRehab(node))
        if node in self.t.nodes and not self.finished:
            self.publish("rehab", node=node)

    def present(self, node: str) -> None:
        """``node`` is evidently connected: end its grace; a not-yet-started node queues up."""
        t = self.t
        if t.away.pop(node, None) is None:
            return
        self.effects.append(CancelTimer(grace_timer(node)))
        self.touch(node)
        if (
            self.status is JobStatus.RUNNING
            and t.nodes[node] is NodeStatus.READY
            and node not in t.launched
        ):
            t.pending.append(node)

    def live_nodes(self) -> list[str]:
        return [n for n, s in self.t.nodes.items() if s in LIVE_NODE_STATUSES]


# --- voting ---------------------------------------------------------------------------------


def _start(step: _Step, ev: Start) -> None:
    if step.state.status is not JobStatus.NEW:
        return
    t = step.t
    step.set_status(JobStatus.VOTING)
    online = tuple(n for n in t.nodes if n in ev.online_nodes)
    if online:
        step.effects.append(SendCommit(online))
    if len(online) != len(t.nodes):
        for node in list(t.nodes):
            if node not in ev.online_nodes:
                step.set_node(node, NodeStatus.UNAVAILABLE, REASON_DOWN_AT_START)
                step.vote(node, "down")
    _settle(step, ev.now)
    if step.status is JobStatus.VOTING:
        step.voting_deadline = ev.now + step.state.voting_timeout
        step.effects.append(StartTimer("voting", step.voting_deadline))


def _ack_commit(step: _Step, ev: AckCommit) -> None:
    node = ev.node
    status = step.t.nodes.get(node)
    if status is None:
        step.effects.append(SendRehab(node))
    elif step.status is JobStatus.VOTING:
        if status is NodeStatus.NEW:
            step.present(node)
            step.set_node(node, NodeStatus.READY)
            step.vote(node, "success")
            _settle(step, ev.now)
        elif status is NodeStatus.READY:
            step.present(node)
            step.vote(node, "unexpected_commit")
        else:
            step.rehab(node)
            step.vote(node, "client_died_while_voting")
    elif step.status is JobStatus.RUNNING and status in LIVE_NODE_STATUSES:
        pass  # a duplicate of the ack that made it ready
    else:
        step.rehab(node)


def _nack_commit(step: _Step, ev: NackCommit) -> None:
    node = ev.node
    status = step.t.nodes.get(node)
    if status is None:
        step.effects.append(SendRehab(node))
    elif step.status is JobStatus.VOTING:
        if status is NodeStatus.NEW:
            step.present(node)
            step.set_node(node, NodeStatus.NACKED, ev.reason)
            step.vote(node, "failure")
        elif status is NodeStatus.READY:
            step.set_node(node, NodeStatus.UNAVAILABLE, ev.reason)
            step.rehab(node)
            step.vote(node, "lost_availibility")
        else:
            step.rehab(node)
            step.vote(node, "client_died_while_voting")
        _settle(step, ev.now)
    else:
        step.rehab(node)


def _node_down(step: _Step, ev: NodeDown) -> None:
    node = ev.node
    status = step.t.nodes.get(node)
    if status is None or status not in LIVE_NODE_STATUSES:
        return
    if step.status is JobStatus.VOTING:
        step.set_node(node, NodeStatus.UNAVAILABLE, REASON_DOWN_VOTING)
        step.vote(node, "down")
        _settle(step, ev.now)
    elif step.status is JobStatus.RUNNING and node not in step.t.away:
        deadline = ev.now + step.state.reconnect_grace
        step.t.away[node] = deadline
        step.touch(node)
        step.effects.append(StartTimer(grace_timer(node), deadline))


def _voting_timeout(step: _Step, ev: VotingTimeout) -> None:
    if step.status is not JobStatus.VOTING:
        return
    step.voting_deadline = None  # the timer fired: nothing to cancel
    step.changed = True
    timed_out = [n for n, s in step.t.nodes.items() if s is NodeStatus.NEW]
    for node in timed_out:
        step.set_node(node, NodeStatus.UNAVAILABLE, REASON_VOTING_TIMEOUT)
        step.vote(node, "voting_timeout")
    if timed_out:
        step.effects.append(ReleaseNodes(tuple(timed_out)))
    _settle(step, ev.now)


def _end_voting(step: _Step, now: float, success: bool) -> None:
    t = step.t
    if step.voting_deadline is not None:
        step.effects.append(CancelTimer("voting"))
        step.voting_deadline = None
    if not success:
        released: list[str] = []
        for node, status in t.nodes.items():
            if status is NodeStatus.READY:
                step.set_node(node, NodeStatus.WAS_READY)
                released.append(node)
            elif status is NodeStatus.NEW:
                step.set_node(node, NodeStatus.UNAVAILABLE, REASON_QUORUM_UNREACHABLE)
                released.append(node)
        if released:
            step.effects.append(ReleaseNodes(tuple(released)))
        _finish(step, JobStatus.QUORUM_FAILED)
        return
    step.publish("quorum_succeeded")
    step.set_status(JobStatus.RUNNING)
    step.run_started_at = now
    step.run_deadline = now + step.state.run_timeout
    step.effects.append(StartTimer("run", step.run_deadline))
    t.pending.clear()
    t.pending.extend(n for n, s in t.nodes.items() if s is NodeStatus.READY and n not in t.away)


def _settle(step: _Step, now: float) -> None:
    """After node changes: end voting if it is decided; start, stop or complete the run."""
    t = step.t
    if step.status is JobStatus.VOTING:
        new = t.counts[NodeStatus.NEW]
        ready = t.counts[NodeStatus.READY]
        if new == 0:
            _end_voting(step, now, ready >= step.state.quorum)
        elif ready + new < step.state.quorum:
            _end_voting(step, now, False)
    if step.status is JobStatus.RUNNING:
        _run_progress(step)


# --- running --------------------------------------------------------------------------------


def _run_progress(step: _Step) -> None:
    t = step.t
    limit = step.state.max_failures
    if not step.stopped and limit is not None and sum(t.counts[s] for s in _FAILURES) > limit:
        _stop_starting(step)
    if not step.stopped:
        _launch(step)
    if not any(t.counts[s] for s in LIVE_NODE_STATUSES):
        _finish(step, JobStatus.COMPLETE)


def _stop_starting(step: _Step) -> None:
    """More than ``max_failures`` failures: nodes not yet started end ``aborted``."""
    t = step.t
    step.stopped = True
    step.changed = True
    waiting = dict.fromkeys(
        n for n in (*t.pending, *t.away) if t.nodes[n] is NodeStatus.READY and n not in t.launched
    )
    t.pending.clear()
    for node in waiting:
        step.set_node(node, NodeStatus.ABORTED, REASON_MAX_FAILURES)
        step.run_complete(node, "aborted")
    if waiting:
        step.effects.append(SendAbort(tuple(waiting)))


def _launch(step: _Step) -> None:
    """Send ``run`` to waiting ready nodes while there are free slots."""
    t = step.t
    limit = step.state.max_concurrency
    batch: list[str] = []
    while t.pending and (limit is None or len(t.launched) < limit):
        node = t.pending.popleft()
        if t.nodes[node] is NodeStatus.READY and node not in t.launched and node not in t.away:
            t.launched.add(node)
            step.touch(node)
            batch.append(node)
    if batch:
        step.effects.append(SendRun(tuple(batch)))


def _finish(step: _Step, status: JobStatus, *, run_timer_fired: bool = False) -> None:
    """End the job. Every node is final by now, so none is away or launched any more (their
    grace timers were cancelled as they ended)."""
    if step.voting_deadline is not None:
        step.effects.append(CancelTimer("voting"))
        step.voting_deadline = None
    if step.status is JobStatus.RUNNING and not run_timer_fired:
        step.effects.append(CancelTimer("run"))
    step.t.pending.clear()
    step.set_status(status)
    step.publish("job_complete", status=str(status))
    step.effects.append(Finished(status))


def _ack_run(step: _Step, ev: AckRun) -> None:
    node = ev.node
    t = step.t
    status = t.nodes.get(node)
    if status is None:
        step.effects.append(SendRehab(node))
    elif status in _STOP_SENT or (
        status is NodeStatus.RUNNING and step.status is JobStatus.RUNNING
    ):
        pass  # a straggler after our abort, or a duplicate
    elif step.status is JobStatus.RUNNING and status is NodeStatus.READY and node in t.launched:
        step.present(node)
        step.set_node(node, NodeStatus.RUNNING)
        step.publish("run_start", node=node)
    else:
        step.rehab(node)


def _nack_run(step: _Step, ev: NackRun) -> None:
    node = ev.node
    t = step.t
    status = t.nodes.get(node)
    if status is None:
        step.effects.append(SendRehab(node))
    elif status in _STOP_SENT:
        pass
    elif step.status is JobStatus.RUNNING and status is NodeStatus.RUNNING:
        step.present(node)
        step.set_node(node, NodeStatus.FAILED, ev.reason)
        step.effects.append(SendAbort((node,)))
        step.run_complete(node, "run_nacked_while_running")
        _settle(step, ev.now)
    elif step.status is JobStatus.RUNNING and status is NodeStatus.READY and node in t.launched:
        step.present(node)
        step.set_node(node, NodeStatus.FAILED, ev.reason)
        step.run_complete(node, "run_nacked")
        _settle(step, ev.now)
    else:
        step.rehab(node)


def _result_outcome(ev: Result) -> tuple[NodeStatus, str]:
    if ev.status == "timed_out":
        return NodeStatus.TIMED_OUT, "timed_out"
    if ev.status == "aborted":
        return NodeStatus.ABORTED, "aborted"
    if ev.exit_code == 0:
        return NodeStatus.SUCCEEDED, "success"
    return NodeStatus.FAILED, "failure"


def _result(step: _Step, ev: Result) -> None:
    node = ev.node
    t = step.t
    step.effects.append(SendResultAck(node))
    status = t.nodes.get(node)
    if status is None:
        step.effects.append(SendRehab(node))
    elif step.status is JobStatus.RUNNING and (
        status is NodeStatus.RUNNING or (status is NodeStatus.READY and node in t.launched)
    ):
        step.present(node)
        final, published = _result_outcome(ev)
        step.set_node(node, final)
        step.run_complete(node, published)
        _settle(step, ev.now)
    elif status in _RAN:
        pass  # a re-sent duplicate, or the result of a process we stopped or gave up on
    else:
        step.rehab(node)


# --- reconnects and timers ------------------------------------------------------------------


def _node_back(step: _Step, ev: NodeBack) -> None:
    node = ev.node
    t = step.t
    holds = ev.job_state if ev.job_state in _JOB_STATES else "idle"
    if node not in t.nodes:
        if ev.result is not None:
            step.effects.append(SendResultAck(node))
        if holds != "idle":
            step.effects.append(SendRehab(node))
        return
    if ev.result is not None:
        _result(step, ev.result)
    status = t.nodes[node]
    if step.finished or status not in LIVE_NODE_STATUSES:
        if holds != "idle" and ev.result is None:
            step.rehab(node)
        return
    step.present(node)
    if not ev.same_incarnation:
        _lost(step, node, REASON_RESTARTED)
    elif step.status is JobStatus.VOTING:
        _back_voting(step, node, status, holds)
    elif step.status is JobStatus.RUNNING:
        _back_running(step, node, status, holds)
    elif holds != "idle":
        step.rehab(node)
    _settle(step, ev.now)


def _lost(step: _Step, node: str, reason: str) -> None:
    """A live node is gone for good (restarted, or its grace expired)."""
    if step.status is JobStatus.VOTING:
        step.set_node(node, NodeStatus.UNAVAILABLE, reason)
        step.vote(node, "down")
    elif step.status is JobStatus.RUNNING:
        if node in step.t.launched:
            step.set_node(node, NodeStatus.CRASHED, reason)
            step.run_complete(node, "crashed")
        else:
            step.set_node(node, NodeStatus.UNAVAILABLE, reason)


def _back_voting(step: _Step, node: str, status: NodeStatus, holds: str) -> None:
    if holds == "running":
        step.rehab(node)
    elif status is NodeStatus.NEW:
        if holds == "committed":  # its ack was lost with the connection
            step.set_node(node, NodeStatus.READY)
            step.vote(node, "success")
        else:  # the commit never reached it
            step.effects.append(SendCommit((node,)))
    elif holds == "idle":  # ready, but the agent dropped the commit
        step.set_node(node, NodeStatus.UNAVAILABLE, REASON_DROPPED_COMMIT)
        step.vote(node, "lost_availibility")


def _back_running(step: _Step, node: str, status: NodeStatus, holds: str) -> None:
    if node not in step.t.launched:  # waiting for a slot
        if holds == "running":
            step.rehab(node)
        elif holds == "idle":
            step.set_node(node, NodeStatus.UNAVAILABLE, REASON_DROPPED_COMMIT)
        return
    if holds == "idle":
        step.set_node(node, NodeStatus.CRASHED, REASON_LOST_JOB)
        step.run_complete(node, "crashed")
    elif status is NodeStatus.READY:
        if holds == "committed":  # the run was lost with the connection
            step.effects.append(SendRun((node,)))
        else:  # its ack_run was lost
            step.set_node(node, NodeStatus.RUNNING)
            step.publish("run_start", node=node)
    elif holds == "committed":
        step.rehab(node)


def _grace_expired(step: _Step, ev: GraceExpired) -> None:
    node = ev.node
    t = step.t
    if t.away.pop(node, None) is None:
        return  # it came back, or the job ended: a stale timer
    step.touch(node)
    if t.nodes[node] in LIVE_NODE_STATUSES:
        _lost(step, node, REASON_NO_RECONNECT)
    _settle(step, ev.now)


def _run_timeout(step: _Step, ev: RunTimeout) -> None:
    if step.status is not JobStatus.RUNNING:
        return
    live = step.live_nodes()
    for node in live:
        step.set_node(node, NodeStatus.TIMED_OUT)
        step.run_complete(node, "timed_out")
    if live:
        step.effects.append(SendAbort(tuple(live)))
    _finish(step, JobStatus.TIMED_OUT, run_timer_fired=True)


def _stop_all(step: _Step, job: JobStatus, node_status: NodeStatus, reason: str | None) -> None:
    """Abort or crash the job: every live node ends ``node_status``."""
    if step.finished:
        return
    live = step.live_nodes()
    running = step.status is JobStatus.RUNNING
    for node in live:
        step.set_node(node, node_status, reason)
        if running:
            step.run_complete(node, str(node_status))
    if live and step.status is not JobStatus.NEW:
        step.effects.append(SendAbort(tuple(live)))
    _finish(step, job)


def _resume(step: _Step, ev: Resume) -> None:
    t = step.t
    if step.status is JobStatus.VOTING:
        deadline = step.voting_deadline if step.voting_deadline is not None else ev.now
        if ev.stopped_at is not None and ev.now > ev.stopped_at:
            deadline += ev.now - ev.stopped_at
        step.voting_deadline = deadline
        step.effects.append(StartTimer("voting", deadline))
    elif step.status is JobStatus.RUNNING:
        run_deadline = step.run_deadline if step.run_deadline is not None else ev.now
        step.run_deadline = run_deadline
        step.effects.append(StartTimer("run", run_deadline))
    else:
        return
    step.changed = True
    grace = ev.now + step.state.reconnect_grace
    t.pending.clear()
    for node in step.live_nodes():
        t.away[node] = grace
        step.touch(node)
        step.effects.append(StartTimer(grace_timer(node), grace))


# --- queries --------------------------------------------------------------------------------


def is_finished(state: JobState) -> bool:
    """Whether the job ended (``complete``, ``quorum_failed``, ``timed_out``, ``aborted``,
    ``crashed``)."""
    return state.status in FINISHED_JOB_STATUSES


def node_buckets(state: JobState) -> dict[str, list[str]]:
    """The job document's ``nodes``: status → sorted node names, non-empty buckets only.

    Args:
        state: the job.

    Returns:
        Buckets in the order of :class:`NodeStatus`.
    """
    buckets: dict[NodeStatus, list[str]] = {}
    for node, status in state._tables.nodes.items():
        buckets.setdefault(status, []).append(node)
    return {str(s): sorted(buckets[s]) for s in NodeStatus if s in buckets}


def nack_reasons(state: JobState) -> dict[str, str]:
    """The job document's ``nack_reasons``: nacked node → the agent's reason.

    Args:
        state: the job.

    Returns:
        Only nodes whose status is ``nacked``, sorted by name.
    """
    t = state._tables
    return {n: t.reasons[n] for n in sorted(t.reasons) if t.nodes.get(n) is NodeStatus.NACKED}


# --- records --------------------------------------------------------------------------------
#
# to_record(state) is a msgpack-able map (str, int, float, bool, None, list, dict):
#
#   format           1
#   job_id           str
#   status           job status
#   quorum           int
#   run_timeout, voting_timeout, reconnect_grace       numbers (seconds)
#   max_concurrency, max_failures                      int or None
#   stopped          bool
#   voting_deadline, run_started_at, run_deadline      float or None (epoch seconds)
#   version          int
#   nodes            list, in request order, of node records:
#                    [name, status, launched (bool), away_deadline or None, reason or None]
#
# job_record(state) is the same map without "nodes"; node_record(state, node) one entry of
# "nodes", so a runner may store the job map and the touched nodes' entries separately and
# reassemble the full map for from_record. The queue of ready nodes waiting for a slot is not
# stored: from_record rebuilds it in request order.

_JOB_KEYS: Final = (
    "format",
    "job_id",
    "status",
    "quorum",
    "run_timeout",
    "voting_timeout",
    "reconnect_grace",
    "max_concurrency",
    "max_failures",
    "stopped",
    "voting_deadline",
    "run_started_at",
    "run_deadline",
    "version",
)


def job_record(state: JobState) -> dict[str, Any]:
    """The job-level fields of :func:`to_record` (everything but ``nodes``).

    Args:
        state: the job.

    Returns:
        A msgpack-able map.
    """
    return {
        "format": RECORD_FORMAT,
        "job_id": state.job_id,
        "status": str(state.status),
        "quorum": state.quorum,
        "run_timeout": state.run_timeout,
        "voting_timeout": state.voting_timeout,
        "reconnect_grace": state.reconnect_grace,
        "max_concurrency": state.max_concurrency,
        "max_failures": state.max_failures,
        "stopped": state.stopped,
        "voting_deadline": state.voting_deadline,
        "run_started_at": state.run_started_at,
        "run_deadline": state.run_deadline,
        "version": state.version,
    }


def node_record(state: JobState, node: str) -> list[Any]:
    """One entry of :func:`to_record`'s ``nodes``.

    Args:
        state: the job.
        node: one of its nodes.

    Returns:
        ``[name, status, launched, away_deadline, reason]``.

    Raises:
        KeyError: ``node`` is not part of the job.
    """
    t = state._tables
    return [node, str(t.nodes[node]), node in t.launched, t.away.get(node), t.reasons.get(node)]


def to_record(state: JobState) -> dict[str, Any]:
    """The whole state as a msgpack-able map (format in the comment above this function).

    Args:
        state: the job.

    Returns:
        A new map; it shares nothing with ``state``.
    """
    record = job_record(state)
    record["nodes"] = [node_record(state, n) for n in state._tables.nodes]
    return record


def from_record(record: Mapping[str, Any]) -> JobState:
    """Rebuild a state from :func:`to_record`'s map.

    Args:
        record: the map, as stored.

    Returns:
        A state equal to the one recorded (``to_record`` of it gives ``record`` back).

    Raises:
        StoreError: the map is not a valid job record.
    """
    if not isinstance(record, Mapping):
        raise StoreError(f"job record is a {type(record).__name__}, not a map")
    job_id = record.get("job_id")
    if not isinstance(job_id, str):
        raise StoreError("job record without a job_id")

    def bad(reason: str) -> StoreError:
        return StoreError(f"job {job_id}: invalid job record: {reason}")

    unknown = set(record) - set(_JOB_KEYS) - {"nodes"}
    if unknown:
        raise bad(f"unknown keys {sorted(unknown)}")
    if record.get("format") != RECORD_FORMAT:
        raise bad(f"format {record.get('format')!r} is not {RECORD_FORMAT}")
    raw_status = record.get("status")
    if not isinstance(raw_status, str) or raw_status not in JobStatus.__members__.values():
        raise bad(f"status {raw_status!r}")
    status = JobStatus(raw_status)
    quorum = _int_field(record, "quorum", bad)
    version = _int_field(record, "version", bad)
    max_concurrency = _opt_int_field(record, "max_concurrency", bad)
    max_failures = _opt_int_field(record, "max_failures", bad)
    run_timeout = _num_field(record, "run_timeout", bad)
    voting_timeout = _num_field(record, "voting_timeout", bad)
    reconnect_grace = _num_field(record, "reconnect_grace", bad)
    stopped = record.get("stopped")
    if not isinstance(stopped, bool):
        raise bad("stopped is not a boolean")
    try:
        _check_params(
            quorum, run_timeout, voting_timeout, reconnect_grace, max_concurrency, max_failures
        )
    except ValueError as exc:
        raise bad(str(exc)) from None

    entries = record.get("nodes")
    if not isinstance(entries, list):
        raise bad("nodes is not a list")
    nodes: dict[str, NodeStatus] = {}
    launched: set[str] = set()
    away: dict[str, float] = {}
    reasons: dict[str, str] = {}
    for entry in entries:
        name, node_status, is_launched, away_deadline, reason = _node_entry(entry, bad)
        if name in nodes:
            raise bad(f"duplicate node {name!r}")
        nodes[name] = node_status
        live = node_status in LIVE_NODE_STATUSES
        if is_launched:
            if status is not JobStatus.RUNNING or node_status is NodeStatus.NEW or not live:
                raise bad(f"node {name!r} cannot be launched while {node_status}")
            launched.add(name)
        if away_deadline is not None:
            if not live or status in FINISHED_JOB_STATUSES:
                raise bad(f"node {name!r} cannot be away while {node_status}")
            away[name] = away_deadline
        if reason is not None:
            reasons[name] = reason
        if not _node_fits(status, node_status, is_launched):
            raise bad(f"node {name!r} is {node_status} in a {status} job")

    tables = _Tables(nodes, version)
    tables.launched = launched
    tables.away = away
    tables.reasons = reasons
    if status is JobStatus.RUNNING and not stopped:
        tables.pending.extend(
            n
            for n, s in nodes.items()
            if s is NodeStatus.READY and n not in launched and n not in away
        )
    return JobState(
        job_id=job_id,
        status=status,
        quorum=quorum,
        run_timeout=run_timeout,
        voting_timeout=voting_timeout,
        reconnect_grace=reconnect_grace,
        max_concurrency=max_concurrency,
        max_failures=max_failures,
        stopped=stopped,
        voting_deadline=_opt_num_field(record, "voting_deadline", bad),
        run_started_at=_opt_num_field(record, "run_started_at", bad),
        run_deadline=_opt_num_field(record, "run_deadline", bad),
        version=version,
        touched=(),
        _tables=tables,
    )


def clone(state: JobState) -> JobState:
    """An independent copy of ``state`` (O(nodes)), e.g. to keep a snapshot.

    Args:
        state: the job; not consumed.

    Returns:
        A state with the same record and its own tables.
    """
    return from_record(to_record(state))


def _node_fits(job: JobStatus, node: NodeStatus, launched: bool) -> bool:
    """Whether a node status can occur in a job status (keeps restored states consistent)."""
    if job is JobStatus.NEW:
        return node is NodeStatus.NEW
    if job is JobStatus.VOTING:
        return node in _VOTING_NODE_STATUSES
    if job is JobStatus.RUNNING:
        if node is NodeStatus.RUNNING:
            return launched
        return node is not NodeStatus.NEW and node is not NodeStatus.WAS_READY
    return node not in LIVE_NODE_STATUSES


_VOTING_NODE_STATUSES: Final = frozenset(
    {NodeStatus.NEW, NodeStatus.READY, NodeStatus.UNAVAILABLE, NodeStatus.NACKED}
)


_Bad: TypeAlias = Callable[[str], StoreError]


def _int_field(record: Mapping[str, Any], key: str, bad: _Bad) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad(f"{key} is not an integer")
    return value


def _opt_int_field(record: Mapping[str, Any], key: str, bad: _Bad) -> int | None:
    return None if record.get(key) is None else _int_field(record, key, bad)


def _num_field(record: Mapping[str, Any], key: str, bad: _Bad) -> float:
    value = record.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise bad(f"{key} is not a number")
    return value


def _opt_num_field(record: Mapping[str, Any], key: str, bad: _Bad) -> float | None:
    return None if record.get(key) is None else _num_field(record, key, bad)


def _node_entry(entry: object, bad: _Bad) -> tuple[str, NodeStatus, bool, float | None, str | None]:
    if not isinstance(entry, (list, tuple)) or len(entry) != 5:
        raise bad(f"node entry {entry!r} is not [name, status, launched, away, reason]")
    name, status, launched, away_deadline, reason = entry
    if not isinstance(name, str):
        raise bad(f"node name {name!r} is not a string")
    if not isinstance(status, str) or status not in NodeStatus.__members__.values():
        raise bad(f"node {name!r} has status {status!r}")
    node_status = NodeStatus(status)
    if not isinstance(launched, bool):
        raise bad(f"node {name!r}: launched is not a boolean")
    if away_deadline is not None and (
        not isinstance(away_deadline, (int, float)) or isinstance(away_deadline, bool)
    ):
        raise bad(f"node {name!r}: away deadline is not a number")
    if reason is not None and not isinstance(reason, str):
        raise bad(f"node {name!r}: reason is not a string")
    return name, node_status, launched, away_deadline, reason
