"""The job state machine: ``transition(state, event) -> (state, effects)``, pure.

One job's life (``API.md`` §5, ``NODES.md`` §3-4) as a function of events. The runner feeds
events (node messages, timers, operator requests), stores the new state, then performs the
returned effects in order. Nothing here does I/O, reads a clock or raises on a bad event:
an event that makes no sense in the current state returns ``(state, ())`` or sends the node
to rehab.

Modules
    Statuses are in :mod:`.status`, events and effects in :mod:`.events`, the state and
    :func:`~.state.new_job` in :mod:`.state`, the stored form in :mod:`.record`. The rules
    are here (voting, running, reconnects, timers), with how a job ends and the late results
    it waits for in :mod:`.ending`, both written with the operations of :class:`.step.Step`.

Ownership and cost (read this before using a state twice)
    A job may hold 100,000 nodes and every vote is one event, so copying the node table per
    event is out. :func:`transition` therefore *takes ownership* of the state it is given: the
    returned state is a new frozen object that shares, and may have updated in place, the node
    tables of the old one. Each node event costs O(1) amortized; only events that touch every
    node (``Start``, ``VotingTimeout``, the end of voting, ``RunTimeout``, ``Abort``, ``Crash``,
    ``Resume``) are O(nodes). Using a consumed state again raises :class:`RuntimeError` (a
    programming error, caught by a version check). Take :func:`.record.to_record` (or
    :func:`.record.clone`) first if an old snapshot is needed. When nothing changed,
    ``transition`` returns the very object it was given; ``new is not old`` tells the runner
    there is something to store, and ``new.touched`` names the nodes whose
    :func:`.record.node_record` changed.

Times
    Every event carries ``now`` (the last vote may start the run, whose deadline is absolute).
    Every ``now`` and deadline is wall-clock seconds since the epoch (the runner's clock,
    ``time.time()`` in production): they are persisted and compared across restarts. The
    runner sleeps ``deadline - now()`` for a timer.

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
    * Timers are named by kind (``voting``, ``run``, ``grace:NODE``, ``late``);
      ``StartTimer`` replaces a timer of the same kind, ``CancelTimer`` of an unknown or fired
      timer is a no-op, and a timer event that arrives late (``VotingTimeout`` after voting
      ended, ``GraceExpired`` for a node that came back, ``LateTimeout`` after the last late
      result) is ignored.
    * ``Publish`` effects are not re-issued: their events are stored with the state.
    * A send to a node that is offline may simply be dropped: whatever the node still needs
      is re-derived when it reconnects (``NodeBack``).
    * ``Resume`` of a ``new`` job does nothing: the runner sends ``Start`` as for a new job.
    * ``Resume`` of a job that still waits for late results re-arms the ``late`` timer (its
      deadline is stored); a finished job that owes nothing is not resumed at all.

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
      (a re-sent duplicate, or the result of a process we gave up on) changes nothing and is
      not a rehab, unless the node owes it (see :mod:`.ending`); a result from a node that
      was never told to run is a rehab.
    * Likewise ``ack_run``/``nack_run`` from a node the server already told to stop (final
      ``aborted`` or ``timed_out``) are expected stragglers and ignored.
    * ``rehab`` is published on the job feed only while the job is not finished (its feed
      ends with ``job_complete``) and only for nodes of the job; a message from a node that is
      not part of the job gets ``SendRehab`` alone.
    * ``nack_run`` from a running node also sends it an ``abort`` for the job.
    * The job feed's ``start`` event is published by the runner when it creates the job (it
      carries request fields the machine does not keep), before it sends ``Start``.
    * A ``quorum_vote`` says why a node could not vote yes where that is known: ``failure``
      carries the nack's ``reason`` (and ``held_by``, the other live job holding a node that
      nacked ``busy``); ``down`` at ``Start`` carries ``held_by`` when a live job holds the
      node that cannot take the commit (in rehab after that job's abort, or away from it).
"""

from __future__ import annotations

from typing import Final

from .ending import finish, late_result, late_timeout, node_aborted, output, run_timeout, stop_all
from .events import (
    Abort,
    AckCommit,
    AckRun,
    CancelTimer,
    Crash,
    Effect,
    Event,
    GraceExpired,
    LateTimeout,
    NackCommit,
    NackRun,
    NodeAborted,
    NodeBack,
    NodeDown,
    Output,
    ReleaseNodes,
    Result,
    Resume,
    RunTimeout,
    SendAbort,
    SendCommit,
    SendRehab,
    SendResultAck,
    SendRun,
    Start,
    StartTimer,
    VotingTimeout,
    grace_timer,
)
from .state import FAILURES, JobState
from .status import LIVE_NODE_STATUSES, JobStatus, NodeStatus
from .step import LATE_TIMER, Step

__all__ = ["transition"]

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

REASON_RESTARTED: Final = "node restarted"
REASON_NO_RECONNECT: Final = "node did not reconnect within the reconnect grace"
REASON_QUORUM_UNREACHABLE: Final = "quorum unreachable"
REASON_VOTING_TIMEOUT: Final = "no vote within the voting timeout"
REASON_DOWN_AT_START: Final = "node offline or unavailable when the job started"
REASON_DOWN_VOTING: Final = "node went offline while voting"
REASON_DROPPED_COMMIT: Final = "node no longer holds the commit"
REASON_LOST_JOB: Final = "node no longer holds the job"
REASON_MAX_FAILURES: Final = "not started: more than max_failures nodes failed"


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
    tables = state.tables
    if tables.version != state.version:
        raise RuntimeError(
            f"job {state.job_id}: stale JobState (version {state.version}, tables at "
            f"{tables.version}); transition() consumes its input state"
        )
    step = Step(state)
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
            run_timeout(step, event)
        case Abort():
            stop_all(step, event.now, JobStatus.ABORTED, NodeStatus.ABORTED, None)
        case Crash():
            stop_all(step, event.now, JobStatus.CRASHED, NodeStatus.CRASHED, event.reason)
        case Resume():
            _resume(step, event)
        case Output():
            output(step, event)
        case NodeAborted():
            node_aborted(step, event)
        case LateTimeout():
            late_timeout(step, event)
        case _:  # pragma: no cover - the Event union is closed; ignore anything else
            pass
    return step.result()


# --- voting ---------------------------------------------------------------------------------


def _start(step: Step, ev: Start) -> None:
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
                step.vote(node, "down", held_by=ev.held_by.get(node))
    _settle(step, ev.now)
    if step.status is JobStatus.VOTING:
        step.voting_deadline = ev.now + step.state.voting_timeout
        step.effects.append(StartTimer("voting", step.voting_deadline))


def _ack_commit(step: Step, ev: AckCommit) -> None:
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


def _nack_commit(step: Step, ev: NackCommit) -> None:
    node = ev.node
    status = step.t.nodes.get(node)
    if status is None:
        step.effects.append(SendRehab(node))
    elif step.status is JobStatus.VOTING:
        if status is NodeStatus.NEW:
            step.present(node)
            step.set_node(node, NodeStatus.NACKED, ev.reason)
            step.vote(node, "failure", reason=ev.reason, held_by=ev.held_by)
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


def _node_down(step: Step, ev: NodeDown) -> None:
    node = ev.node
    if node in step.t.owed:  # its result is lost with the connection: wait no more
        step.stop_waiting(node)
        return
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


def _voting_timeout(step: Step, ev: VotingTimeout) -> None:
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


def _end_voting(step: Step, now: float, success: bool) -> None:
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
        finish(step, now, JobStatus.QUORUM_FAILED)
        return
    step.publish("quorum_succeeded")
    step.set_status(JobStatus.RUNNING)
    step.run_started_at = now
    step.run_deadline = now + step.state.run_timeout
    step.effects.append(StartTimer("run", step.run_deadline))
    t.pending.clear()
    t.pending.extend(n for n, s in t.nodes.items() if s is NodeStatus.READY and n not in t.away)


def _settle(step: Step, now: float) -> None:
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
        _run_progress(step, now)


# --- running --------------------------------------------------------------------------------


def _run_progress(step: Step, now: float) -> None:
    t = step.t
    limit = step.state.max_failures
    if not step.stopped and limit is not None and sum(t.counts[s] for s in FAILURES) > limit:
        _stop_starting(step)
    if not step.stopped:
        _launch(step)
    if not any(t.counts[s] for s in LIVE_NODE_STATUSES):
        finish(step, now, JobStatus.COMPLETE)


def _stop_starting(step: Step) -> None:
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


def _launch(step: Step) -> None:
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


def _ack_run(step: Step, ev: AckRun) -> None:
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


def _nack_run(step: Step, ev: NackRun) -> None:
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


def _result(step: Step, ev: Result) -> None:
    node = ev.node
    t = step.t
    step.effects.append(SendResultAck(node))
    status = t.nodes.get(node)
    if status is None:
        step.effects.append(SendRehab(node))
    elif node in t.owed:
        late_result(step, ev)
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


def _node_back(step: Step, ev: NodeBack) -> None:
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
    elif node in t.owed and (holds == "idle" or not ev.same_incarnation):
        step.stop_waiting(node)  # it has no result for the job: nothing will come
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


def _lost(step: Step, node: str, reason: str) -> None:
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


def _back_voting(step: Step, node: str, status: NodeStatus, holds: str) -> None:
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


def _back_running(step: Step, node: str, status: NodeStatus, holds: str) -> None:
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


def _grace_expired(step: Step, ev: GraceExpired) -> None:
    node = ev.node
    t = step.t
    if t.away.pop(node, None) is None:
        return  # it came back, or the job ended: a stale timer
    step.touch(node)
    if t.nodes[node] in LIVE_NODE_STATUSES:
        _lost(step, node, REASON_NO_RECONNECT)
    _settle(step, ev.now)


def _resume(step: Step, ev: Resume) -> None:
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
        if step.late_deadline is not None:  # still owed results: wait what is left
            step.effects.append(StartTimer(LATE_TIMER, step.late_deadline))
        return
    step.changed = True
    grace = ev.now + step.state.reconnect_grace
    t.pending.clear()
    for node in step.live_nodes():
        t.away[node] = grace
        step.touch(node)
        step.effects.append(StartTimer(grace_timer(node), grace))
