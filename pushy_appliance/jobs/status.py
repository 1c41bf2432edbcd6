"""The status vocabulary of jobs (``API.md`` §5), pure: statuses, their sets, the job
document's buckets and nack reasons.

Everyone who needs to know which statuses exist, which are final, in which order the
buckets of a job document come, or how the buckets and ``nack_reasons`` are computed asks
this module: the machine, the stored model (which serves ``GET jobs/ID``), the HTTP routes,
the CLI and the benchmarks.

Job: ``new → voting → running → complete``, or ``quorum_failed``, ``timed_out``,
``aborted``, ``crashed`` (the last five are *finished*). Node inside a job: ``new, ready,
running`` (*live*) and ``succeeded, failed, aborted, unavailable, nacked, crashed,
was_ready, timed_out`` (*final*; a final node never moves).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

__all__ = [
    "BUCKETS",
    "FINISHED_JOB_STATUSES",
    "LIVE_NODE_STATUSES",
    "JobStatus",
    "NodeStatus",
    "nack_reasons",
    "node_buckets",
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

BUCKETS: Final = tuple(str(s) for s in NodeStatus)
"""The buckets of the job document's ``nodes``, in the order they are shown."""


def node_buckets(statuses: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """The job document's ``nodes``: status → sorted node names, non-empty buckets only.

    Args:
        statuses: ``(node, status)`` pairs, one per node of the job.

    Returns:
        Buckets in the order of :data:`BUCKETS`.
    """
    found: dict[str, list[str]] = {}
    for node, status in statuses:
        found.setdefault(status, []).append(node)
    return {b: sorted(found[b]) for b in BUCKETS if b in found}


def nack_reasons(entries: Iterable[tuple[str, str, str | None]]) -> dict[str, str]:
    """The job document's ``nack_reasons``: nacked node → the agent's reason.

    Args:
        entries: ``(node, status, reason)`` triples, one per node of the job.

    Returns:
        Only nodes whose status is ``nacked`` and that have a reason, sorted by name.
    """
    return {
        node: reason
        for node, status, reason in sorted(entries)
        if status == NodeStatus.NACKED and reason is not None
    }
