"""How a job ends, pure: finish, abort, crash, the run timeout, and the late results the
nodes the server stopped still owe.

Late results
    When the job ends while the server stops nodes that were sent ``run`` and are not away
    (``Abort``: ``aborted``; the ``run`` timer: ``timed_out``), those nodes *owe* the job their
    result: their agents stop the command and report. The job's status and every node's
    status are final at once (stored at once, and what ``POST abort`` returns); only the feed
    stays open:

    * ``output`` of an owed node is kept (``KeepOutput``) and its ``result`` is taken:
      acknowledged, published as ``late_result`` with the agent's fields (exit code, signal,
      byte counts, truncation, duration), and stored like any result (the runner stores the
      fields of every result it hands over). ``run_complete`` was published when the node
      was stopped; its status does not change.
    * A node stops owing when its result arrives; when it answers ``aborted`` for the job
      without one (``NodeAborted``: its command had not started); when it goes offline
      (``NodeDown``); or when it reconnects holding nothing of the job, or as a new
      incarnation (``NodeBack``).
    * ``job_complete``, always the feed's last event, is published when the last owed node
      stops owing, or when the ``late`` timer fires (``late_result_timeout`` after the end;
      ``LateTimeout``). A job that owes nothing completes at once, as before.
    * The owed nodes (a sixth item of their node records) and the ``late`` deadline are
      stored, so a restart resumes waiting; a ``hello`` carrying an owed result
      (``NodeBack``) is taken.
    * ``Crash`` (the engine gives up on the job) waits for nothing.
"""

from __future__ import annotations

from .events import (
    CancelTimer,
    KeepOutput,
    LateTimeout,
    NodeAborted,
    Output,
    Result,
    RunTimeout,
    SendAbort,
    StartTimer,
)
from .status import JobStatus, NodeStatus
from .step import LATE_TIMER, Step

__all__ = [
    "finish",
    "late_result",
    "late_timeout",
    "node_aborted",
    "output",
    "run_timeout",
    "stop_all",
]


def finish(step: Step, now: float, status: JobStatus, *, run_timer_fired: bool = False) -> None:
    """End the job. Every node is final by now, so none is away or launched any more (their
    grace timers were cancelled as they ended). The feed ends at once, or, when stopped
    nodes owe their results, when the last arrives or the ``late`` timer fires."""
    if step.voting_deadline is not None:
        step.effects.append(CancelTimer("voting"))
        step.voting_deadline = None
    if step.status is JobStatus.RUNNING and not run_timer_fired:
        step.effects.append(CancelTimer("run"))
    step.t.pending.clear()
    step.set_status(status)
    if step.t.owed:
        step.late_deadline = now + step.state.late_result_timeout
        step.effects.append(StartTimer(LATE_TIMER, step.late_deadline))
    else:
        step.close()


def run_timeout(step: Step, ev: RunTimeout) -> None:
    if step.status is not JobStatus.RUNNING:
        return
    live = step.live_nodes()
    for node in live:
        step.stop_node(node, NodeStatus.TIMED_OUT)
        step.run_complete(node, "timed_out")
    if live:
        step.effects.append(SendAbort(tuple(live)))
    finish(step, ev.now, JobStatus.TIMED_OUT, run_timer_fired=True)


def stop_all(
    step: Step, now: float, job: JobStatus, node_status: NodeStatus, reason: str | None
) -> None:
    """Abort or crash the job: every live node ends ``node_status`` (an aborted node that
    was sent ``run`` owes its result; the engine that gives up on a job waits for nothing)."""
    if step.finished:
        return
    live = step.live_nodes()
    running = step.status is JobStatus.RUNNING
    for node in live:
        if job is JobStatus.ABORTED:
            step.stop_node(node, node_status, reason)
        else:
            step.set_node(node, node_status, reason)
        if running:
            step.run_complete(node, str(node_status))
    if live and step.status is not JobStatus.NEW:
        step.effects.append(SendAbort(tuple(live)))
    finish(step, now, job)


def output(step: Step, ev: Output) -> None:
    """Output is kept from the nodes of a job that has not finished, then from the nodes
    that owe it their result."""
    node = ev.node
    if (node in step.t.nodes and not step.finished) or node in step.t.owed:
        step.effects.append(KeepOutput(node, ev.channel, ev.offset, ev.data, ev.size))


def late_result(step: Step, ev: Result) -> None:
    """The result of a node the job stopped: published (its fields) and no longer owed; the
    node's status does not change."""
    fields = (
        ev.fields if ev.fields is not None else {"status": ev.status, "exit_code": ev.exit_code}
    )
    step.publish("late_result", node=ev.node, **fields)
    step.stop_waiting(ev.node)


def node_aborted(step: Step, ev: NodeAborted) -> None:
    """The agent holds nothing of the job any more: whatever it owed came before, or never
    will (a node that had not started its command has no result)."""
    if ev.node in step.t.owed:
        step.stop_waiting(ev.node)


def late_timeout(step: Step, ev: LateTimeout) -> None:
    t = step.t
    if not step.finished or not t.owed:
        return  # a stale timer
    for node in list(t.owed):
        step.touch(node)
    t.owed.clear()
    step.close(timer_fired=True)
