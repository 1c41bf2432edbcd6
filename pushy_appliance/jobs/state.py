"""One job's state, pure: :class:`JobState`, :func:`new_job` and the queries on a state.

The machine (:mod:`.machine`) is the only writer of a state; the record codec
(:mod:`.record`) turns it into stored maps and back. See :mod:`.machine` for the ownership
rule (a state is consumed by the transition it is given to).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from .status import FINISHED_JOB_STATUSES, LIVE_NODE_STATUSES, JobStatus, NodeStatus

__all__ = [
    "DEFAULT_LATE_RESULT_TIMEOUT",
    "FAILURES",
    "JobState",
    "NodeTables",
    "check_params",
    "holds",
    "is_closed",
    "is_finished",
    "new_job",
]

FAILURES: Final = (NodeStatus.FAILED, NodeStatus.CRASHED, NodeStatus.TIMED_OUT)
"""Node statuses that count against ``max_failures``."""

DEFAULT_LATE_RESULT_TIMEOUT: Final = 30.0
"""Seconds a finished job waits for the results its stopped nodes owe (the default of
``jobs.late_result_timeout``, and the value of records stored before the setting existed)."""


class NodeTables:
    """The per-node part of a job's state, updated in place by the transition that owns it
    (only :mod:`.machine` writes it; :mod:`.record` reads and builds it)."""

    __slots__ = ("away", "counts", "launched", "nodes", "owed", "pending", "reasons", "version")

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
        self.owed: dict[str, None] = {}
        """Nodes of a finished job that owe it their result (an ordered set)."""
        self.version = version


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class JobState:
    """One job's state. Build with :func:`new_job` or :func:`.record.from_record`.

    The scalar fields are immutable; the per-node tables are shared with the states that
    :func:`.machine.transition` derives from this one (a state is consumed by ``transition``,
    see :mod:`.machine`). Read them through the properties.

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
        late_result_timeout: seconds a finished job waits for the results it is owed.
        late_deadline: when the ``late`` timer fires (while results are owed).
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
    late_result_timeout: float
    late_deadline: float | None
    version: int
    touched: tuple[str, ...]
    tables: NodeTables = dataclasses.field(repr=False)
    """The per-node tables (see :class:`NodeTables`); read them through the properties."""

    @property
    def nodes(self) -> Mapping[str, NodeStatus]:
        """Node → status, in request order (a read-only live view)."""
        return MappingProxyType(self.tables.nodes)

    @property
    def reasons(self) -> Mapping[str, str]:
        """Node → why it ended as it did, where known (a read-only live view)."""
        return MappingProxyType(self.tables.reasons)

    @property
    def away(self) -> Mapping[str, float]:
        """Live nodes that are offline → deadline of their grace (a read-only live view)."""
        return MappingProxyType(self.tables.away)

    @property
    def launched(self) -> frozenset[str]:
        """Nodes that were sent ``run`` and are still live."""
        return frozenset(self.tables.launched)

    @property
    def owed(self) -> frozenset[str]:
        """Nodes of a finished job that owe it their result."""
        return frozenset(self.tables.owed)

    @property
    def failures(self) -> int:
        """Nodes that ended ``failed``, ``crashed`` or ``timed_out``."""
        counts = self.tables.counts
        return sum(counts[s] for s in FAILURES)

    @property
    def live_count(self) -> int:
        """Nodes still ``new``, ``ready`` or ``running``."""
        counts = self.tables.counts
        return sum(counts[s] for s in LIVE_NODE_STATUSES)

    def count(self, status: NodeStatus) -> int:
        """How many nodes have ``status`` (O(1))."""
        return self.tables.counts[status]


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
    late_result_timeout: float = DEFAULT_LATE_RESULT_TIMEOUT,
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
        late_result_timeout: seconds the job, once ended, waits for the results of the
            nodes it stopped.

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
    check_params(
        quorum,
        run_timeout,
        voting_timeout,
        reconnect_grace,
        max_concurrency,
        max_failures,
        late_result_timeout,
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
        late_result_timeout=late_result_timeout,
        late_deadline=None,
        version=0,
        touched=(),
        tables=NodeTables(table, 0),
    )


def check_params(
    quorum: int,
    run_timeout: float,
    voting_timeout: float,
    reconnect_grace: float,
    max_concurrency: int | None,
    max_failures: int | None,
    late_result_timeout: float = DEFAULT_LATE_RESULT_TIMEOUT,
) -> None:
    """Check :func:`new_job`'s numbers.

    Raises:
        ValueError: one is out of range (its message names it).
    """
    if quorum < 0:
        raise ValueError(f"quorum {quorum} < 0")
    for name, value in (
        ("run_timeout", run_timeout),
        ("voting_timeout", voting_timeout),
        ("reconnect_grace", reconnect_grace),
        ("late_result_timeout", late_result_timeout),
    ):
        if not value >= 0 or math.isinf(value):
            raise ValueError(f"{name} {value!r} is not a finite number >= 0")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency {max_concurrency} < 1")
    if max_failures is not None and max_failures < 0:
        raise ValueError(f"max_failures {max_failures} < 0")


def is_finished(state: JobState) -> bool:
    """Whether the job ended (``complete``, ``quorum_failed``, ``timed_out``, ``aborted``,
    ``crashed``)."""
    return state.status in FINISHED_JOB_STATUSES


def is_closed(state: JobState) -> bool:
    """Whether nothing about the job changes any more: it finished and no node owes it a
    result, so its feed is complete (``job_complete`` was published)."""
    return state.status in FINISHED_JOB_STATUSES and not state.tables.owed


def holds(state: JobState, node: str) -> bool:
    """Whether the job holds ``node``: the node is live in it (a node sent a commit is about
    to be busy with it), or owes it a result. What the runner tells the node link.

    Raises:
        KeyError: ``node`` is not part of the job.
    """
    t = state.tables
    return t.nodes[node] in LIVE_NODE_STATUSES or node in t.owed
