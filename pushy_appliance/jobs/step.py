"""One transition in progress, pure: :class:`Step`, the operations the machine's rules are
written with.

:func:`.machine.transition` builds a :class:`Step` over the state it is given, lets the
rule for the event change node tables, scalar fields and effects through it, and returns
``step.result()``: the new state (sharing the node tables, see :mod:`.machine`) and the
effects, or the very same state when nothing changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from .events import CancelTimer, Effect, Publish, SendRehab, grace_timer
from .state import JobState
from .status import FINISHED_JOB_STATUSES, LIVE_NODE_STATUSES, JobStatus, NodeStatus

__all__ = ["LATE_TIMER", "Step"]

LATE_TIMER: Final = "late"
"""The timer of a finished job waiting for late results."""


class Step:
    """One transition in progress: scalar fields being rebuilt, effects, touched nodes, and
    the operations the machine's rules are written with."""

    __slots__ = (
        "changed",
        "effects",
        "late_deadline",
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
        self.t = state.tables
        self.status = state.status
        self.stopped = state.stopped
        self.voting_deadline = state.voting_deadline
        self.run_started_at = state.run_started_at
        self.run_deadline = state.run_deadline
        self.late_deadline = state.late_deadline
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
            late_deadline=self.late_deadline,
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

    def publish(self, event: str, **data: Any) -> None:
        self.effects.append(Publish(event, data))

    def vote(self, node: str, status: str, **why: str | None) -> None:
        """Publish ``node``'s ``quorum_vote``; ``why`` adds ``reason`` (a nack's) and
        ``held_by`` (the live job holding a busy node) where known."""
        self.publish(
            "quorum_vote",
            node=node,
            status=status,
            **{key: value for key, value in why.items() if value is not None},
        )

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

    def stop_node(self, node: str, status: NodeStatus, reason: str | None = None) -> None:
        """The server stops a live node as the job ends: ``status`` at once; a node that was
        sent ``run`` and is not away owes the job its result (see :mod:`.ending`)."""
        owes = node in self.t.launched and node not in self.t.away
        self.set_node(node, status, reason)
        if owes:
            self.t.owed[node] = None

    def stop_waiting(self, node: str) -> None:
        """``node`` owes nothing any more; the job closes with the last debt."""
        del self.t.owed[node]
        self.touch(node)
        if not self.t.owed:
            self.close()

    def close(self, *, timer_fired: bool = False) -> None:
        """The job's feed ends: stop waiting for late results, publish ``job_complete``."""
        if self.late_deadline is not None:
            self.late_deadline = None
            self.changed = True
            if not timer_fired:
                self.effects.append(CancelTimer(LATE_TIMER))
        self.publish("job_complete", status=str(self.status))
