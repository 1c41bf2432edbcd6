"""The job state machine: every transition (legal and illegal) as a table, then properties.

Each table row: a builder for the initial state, one event, and what must come out: every
node's status, the job status, and the exact effects (written compactly by ``sig``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushy_appliance.errors import StoreError
from pushy_appliance.jobs.events import (
    Abort,
    AckCommit,
    AckRun,
    CancelTimer,
    Crash,
    Effect,
    Event,
    GraceExpired,
    KeepOutput,
    LateTimeout,
    NackCommit,
    NackRun,
    NodeAborted,
    NodeAway,
    NodeBack,
    NodeDown,
    Output,
    Publish,
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
from pushy_appliance.jobs.machine import transition
from pushy_appliance.jobs.record import clone, from_record, job_record, node_record, to_record
from pushy_appliance.jobs.state import JobState, holds, is_closed, is_finished, new_job
from pushy_appliance.jobs.status import (
    FINISHED_JOB_STATUSES,
    LIVE_NODE_STATUSES,
    JobStatus,
    NodeStatus,
    nack_reasons,
    node_buckets,
)

T = 1000.0
"""Start time of every job in the table; voting timeout 60, run timeout 300, grace 30."""


# --- helpers --------------------------------------------------------------------------------


def job(
    nodes: str = "abc",
    quorum: int | None = None,
    maxc: int | None = None,
    maxf: int | None = None,
) -> JobState:
    """A ``new`` job over single-letter nodes."""
    return new_job(
        "j1",
        list(nodes),
        quorum=len(nodes) if quorum is None else quorum,
        run_timeout=300,
        voting_timeout=60,
        reconnect_grace=30,
        max_concurrency=maxc,
        max_failures=maxf,
    )


def play(state: JobState, *events: Event) -> JobState:
    for event in events:
        state, _ = transition(state, event)
    return state


def voting(nodes: str = "abc", *events: Event, **kw: Any) -> JobState:
    """Voting, every node online (commit sent at T)."""
    return play(job(nodes, **kw), Start(T, frozenset(nodes)), *events)


def running(nodes: str = "abc", *events: Event, **kw: Any) -> JobState:
    """Every node acked at T+1: running since T+1 (run deadline T+301)."""
    acks = [AckCommit(n, T + 1) for n in nodes]
    return play(voting(nodes, **kw), *acks, *events)


def started(nodes: str = "abc", *events: Event, **kw: Any) -> JobState:
    """Running, and every launched node acked the run at T+2."""
    state = running(nodes, **kw)
    state = play(state, *[AckRun(n, T + 2) for n in sorted(state.launched)])
    return play(state, *events)


def aborted(*events: Event) -> JobState:
    """a and b running, aborted at T+5: both owe their results (late deadline T+35)."""
    return play(started("ab", Abort(T + 5)), *events)


LATE_FIELDS = {
    "status": "aborted",
    "exit_code": None,
    "signal": 15,
    "stdout_bytes": 4,
    "stderr_bytes": 2,
    "truncated": False,
    "duration_s": 1.5,
}
FINISHED_NODES = "a=nacked b=unavailable c=unavailable"


def finished() -> JobState:
    """Quorum failed: a nacked, b and c unavailable at the voting timeout."""
    return voting("abc", NackCommit("a", "busy", T + 1), VotingTimeout(T + 60))


def sig(effect: Effect) -> str:
    """A compact, exact spelling of an effect."""
    match effect:
        case SendCommit(nodes):
            return "commit " + ",".join(nodes)
        case SendRun(nodes):
            return "run " + ",".join(nodes)
        case SendAbort(nodes):
            return "abort " + ",".join(nodes)
        case ReleaseNodes(nodes):
            return "release " + ",".join(nodes)
        case SendRehab(node):
            return "rehab " + node
        case SendResultAck(node):
            return "result_ack " + node
        case Publish(event, data):
            return " ".join(["pub", event, *map(str, data.values())])
        case KeepOutput(node, channel, offset, data):
            return f"output {node} {channel} {offset} {data!r}"
        case StartTimer(kind, deadline):
            return f"timer {kind} {deadline:g}"
        case CancelTimer(kind):
            return f"cancel {kind}"
    raise AssertionError(f"unknown effect {effect!r}")


def buckets(state: JobState) -> dict[str, list[str]]:
    """The job document's buckets of ``state`` (the function the served document uses)."""
    return node_buckets(state.nodes.items())


def reasons(state: JobState) -> dict[str, str]:
    """The job document's ``nack_reasons`` of ``state``."""
    return nack_reasons((n, s, state.reasons.get(n)) for n, s in state.nodes.items())


def node_line(state: JobState) -> str:
    return " ".join(f"{n}={s}" for n, s in state.nodes.items())


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    build: Callable[[], JobState]
    event: Event
    nodes: str
    job: str
    effects: Sequence[str]


R = Row
ALL = frozenset("abc")

ROWS: list[Row] = [
    # --- Start ----------------------------------------------------------------------------
    R(
        "start-all-online",
        job,
        Start(T, ALL),
        "a=new b=new c=new",
        "voting",
        ["commit a,b,c", "timer voting 1060"],
    ),
    R(
        "start-one-offline",
        lambda: job(quorum=2),
        Start(T, frozenset("ab")),
        "a=new b=new c=unavailable",
        "voting",
        ["commit a,b", "pub quorum_vote c down", "timer voting 1060"],
    ),
    R(
        "start-held-by-another-job",
        lambda: job(quorum=2),
        Start(T, frozenset("ab"), {"b": "j0", "c": "j9"}),
        "a=new b=new c=unavailable",
        "voting",
        # only a node that votes down says who holds it (b takes the commit and says busy)
        ["commit a,b", "pub quorum_vote c down j9", "timer voting 1060"],
    ),
    R(
        "start-offline-makes-quorum-unreachable",
        job,
        Start(T, frozenset("ab")),
        "a=unavailable b=unavailable c=unavailable",
        "quorum_failed",
        [
            "commit a,b",
            "pub quorum_vote c down",
            "release a,b",
            "pub job_complete quorum_failed",
        ],
    ),
    R(
        "start-all-offline-quorum-0",
        lambda: job("ab", quorum=0),
        Start(T, frozenset()),
        "a=unavailable b=unavailable",
        "complete",
        [
            "pub quorum_vote a down",
            "pub quorum_vote b down",
            "pub quorum_succeeded",
            "timer run 1300",
            "cancel run",
            "pub job_complete complete",
        ],
    ),
    R(
        "start-no-nodes",
        lambda: job("", quorum=0),
        Start(T, frozenset()),
        "",
        "complete",
        [
            "pub quorum_succeeded",
            "timer run 1300",
            "cancel run",
            "pub job_complete complete",
        ],
    ),
    R(
        "start-ignores-strangers-online",
        lambda: job("a"),
        Start(T, frozenset("az")),
        "a=new",
        "voting",
        ["commit a", "timer voting 1060"],
    ),
    R("start-again-ignored", voting, Start(T + 1, ALL), "a=new b=new c=new", "voting", []),
    R(
        "start-finished-ignored",
        finished,
        Start(T + 1, ALL),
        "a=nacked b=unavailable c=unavailable",
        "quorum_failed",
        [],
    ),
    # --- AckCommit --------------------------------------------------------------------------
    R(
        "ack-commit-new",
        voting,
        AckCommit("a", T + 1),
        "a=ready b=new c=new",
        "voting",
        ["pub quorum_vote a success"],
    ),
    R(
        "ack-commit-last-starts-run",
        lambda: voting("abc", AckCommit("a", T + 1), AckCommit("b", T + 1)),
        AckCommit("c", T + 5),
        "a=ready b=ready c=ready",
        "running",
        [
            "pub quorum_vote c success",
            "cancel voting",
            "pub quorum_succeeded",
            "timer run 1305",
            "run a,b,c",
        ],
    ),
    R(
        "ack-commit-from-ready",
        lambda: voting("abc", AckCommit("a", T + 1)),
        AckCommit("a", T + 2),
        "a=ready b=new c=new",
        "voting",
        ["pub quorum_vote a unexpected_commit"],
    ),
    R(
        "ack-commit-from-final-while-voting",
        lambda: voting("abc", NackCommit("a", "busy", T + 1), quorum=1),
        AckCommit("a", T + 2),
        "a=nacked b=new c=new",
        "voting",
        ["rehab a", "pub rehab a", "pub quorum_vote a client_died_while_voting"],
    ),
    R(
        "ack-commit-stranger",
        voting,
        AckCommit("z", T + 1),
        "a=new b=new c=new",
        "voting",
        ["rehab z"],
    ),
    R(
        "ack-commit-duplicate-while-running",
        running,
        AckCommit("a", T + 2),
        "a=ready b=ready c=ready",
        "running",
        [],
    ),
    R(
        "ack-commit-after-empty-run",
        lambda: voting("abc", VotingTimeout(T + 60), quorum=0),
        AckCommit("a", T + 61),
        "a=unavailable b=unavailable c=unavailable",
        "complete",
        ["rehab a"],
    ),
    R(
        "ack-commit-late-while-running",
        lambda: voting("abc", AckCommit("a", T + 1), VotingTimeout(T + 60), quorum=1),
        AckCommit("b", T + 61),
        "a=ready b=unavailable c=unavailable",
        "running",
        ["rehab b", "pub rehab b"],
    ),
    R(
        "ack-commit-finished",
        finished,
        AckCommit("b", T + 61),
        "a=nacked b=unavailable c=unavailable",
        "quorum_failed",
        ["rehab b"],
    ),
    R(
        "ack-commit-before-start",
        job,
        AckCommit("a", T),
        "a=new b=new c=new",
        "new",
        ["rehab a", "pub rehab a"],
    ),
    # --- NackCommit -------------------------------------------------------------------------
    R(
        "nack-commit-new",
        lambda: voting(quorum=1),
        NackCommit("a", "busy", T + 1, held_by="j0"),
        "a=nacked b=new c=new",
        "voting",
        ["pub quorum_vote a failure busy j0"],
    ),
    R(
        "nack-commit-from-ready",
        lambda: voting("abc", AckCommit("a", T + 1), quorum=1),
        NackCommit("a", "busy", T + 2),
        "a=unavailable b=new c=new",
        "voting",
        ["rehab a", "pub rehab a", "pub quorum_vote a lost_availibility"],
    ),
    R(
        "nack-commit-from-final",
        lambda: voting("abc", NackCommit("a", "busy", T + 1), quorum=1),
        NackCommit("a", "busy", T + 2),
        "a=nacked b=new c=new",
        "voting",
        ["rehab a", "pub rehab a", "pub quorum_vote a client_died_while_voting"],
    ),
    R(
        "nack-commit-quorum-unreachable",
        lambda: voting("abc", AckCommit("b", T + 1)),
        NackCommit("a", "not_whitelisted", T + 2),
        "a=nacked b=was_ready c=unavailable",
        "quorum_failed",
        [
            "pub quorum_vote a failure not_whitelisted",
            "cancel voting",
            "release b,c",
            "pub job_complete quorum_failed",
        ],
    ),
    R(
        "nack-commit-last-vote-quorum-met",
        lambda: voting("abc", AckCommit("a", T + 1), NackCommit("b", "busy", T + 1), quorum=1),
        NackCommit("c", "busy", T + 3),
        "a=ready b=nacked c=nacked",
        "running",
        [
            "pub quorum_vote c failure busy",
            "cancel voting",
            "pub quorum_succeeded",
            "timer run 1303",
            "run a",
        ],
    ),
    R(
        "nack-commit-while-running",
        running,
        NackCommit("a", "busy", T + 2),
        "a=ready b=ready c=ready",
        "running",
        ["rehab a", "pub rehab a"],
    ),
    R(
        "nack-commit-stranger",
        voting,
        NackCommit("z", "busy", T + 1),
        "a=new b=new c=new",
        "voting",
        ["rehab z"],
    ),
    # --- NodeDown ---------------------------------------------------------------------------
    R(
        "down-new-while-voting",
        lambda: voting(quorum=1),
        NodeDown("a", T + 1),
        "a=unavailable b=new c=new",
        "voting",
        ["pub quorum_vote a down"],
    ),
    R(
        "down-ready-while-voting",
        lambda: voting("abc", AckCommit("a", T + 1), quorum=1),
        NodeDown("a", T + 2),
        "a=unavailable b=new c=new",
        "voting",
        ["pub quorum_vote a down"],
    ),
    R(
        "down-final-while-voting",
        lambda: voting("abc", NackCommit("a", "busy", T + 1), quorum=1),
        NodeDown("a", T + 2),
        "a=nacked b=new c=new",
        "voting",
        [],
    ),
    R("down-stranger", voting, NodeDown("z", T + 1), "a=new b=new c=new", "voting", []),
    R(
        "down-running-node-is-away",
        started,
        NodeAway("a", T + 10),
        "a=running b=running c=running",
        "running",
        ["timer grace:a 1040"],
    ),
    R(
        "down-launched-ready-is-away",
        running,
        NodeDown("b", T + 10),
        "a=ready b=ready c=ready",
        "running",
        ["timer grace:b 1040"],
    ),
    R(
        "down-already-away",
        lambda: started("abc", NodeDown("a", T + 10)),
        NodeDown("a", T + 20),
        "a=running b=running c=running",
        "running",
        [],
    ),
    R("down-before-start", job, NodeDown("a", T), "a=new b=new c=new", "new", []),
    R(
        "down-finished",
        finished,
        NodeDown("a", T + 61),
        "a=nacked b=unavailable c=unavailable",
        "quorum_failed",
        [],
    ),
    # --- VotingTimeout ----------------------------------------------------------------------
    R(
        "voting-timeout-quorum-met",
        lambda: voting("abc", AckCommit("a", T + 1), quorum=1),
        VotingTimeout(T + 60),
        "a=ready b=unavailable c=unavailable",
        "running",
        [
            "pub quorum_vote b voting_timeout",
            "pub quorum_vote c voting_timeout",
            "release b,c",
            "pub quorum_succeeded",
            "timer run 1360",
            "run a",
        ],
    ),
    R(
        "voting-timeout-quorum-failed",
        lambda: voting("abc", AckCommit("a", T + 1), quorum=2),
        VotingTimeout(T + 60),
        "a=was_ready b=unavailable c=unavailable",
        "quorum_failed",
        [
            "pub quorum_vote b voting_timeout",
            "pub quorum_vote c voting_timeout",
            "release b,c",
            "release a",
            "pub job_complete quorum_failed",
        ],
    ),
    R(
        "voting-timeout-late",
        running,
        VotingTimeout(T + 60),
        "a=ready b=ready c=ready",
        "running",
        [],
    ),
    R("voting-timeout-before-start", job, VotingTimeout(T), "a=new b=new c=new", "new", []),
    # --- AckRun -----------------------------------------------------------------------------
    R(
        "ack-run-launched",
        running,
        AckRun("a", T + 2),
        "a=running b=ready c=ready",
        "running",
        ["pub run_start a"],
    ),
    R(
        "ack-run-duplicate",
        started,
        AckRun("a", T + 3),
        "a=running b=running c=running",
        "running",
        [],
    ),
    R(
        "ack-run-not-yet-started",
        lambda: running(maxc=1),
        AckRun("b", T + 2),
        "a=ready b=ready c=ready",
        "running",
        ["rehab b", "pub rehab b"],
    ),
    R(
        "ack-run-while-voting",
        voting,
        AckRun("a", T + 1),
        "a=new b=new c=new",
        "voting",
        ["rehab a", "pub rehab a"],
    ),
    R(
        "ack-run-after-abort",
        lambda: running("abc", Abort(T + 2)),
        AckRun("a", T + 3),
        "a=aborted b=aborted c=aborted",
        "aborted",
        [],
    ),
    R(
        "ack-run-from-succeeded",
        lambda: started("abc", Result("a", "succeeded", 0, T + 3)),
        AckRun("a", T + 4),
        "a=succeeded b=running c=running",
        "running",
        ["rehab a", "pub rehab a"],
    ),
    R(
        "ack-run-stranger",
        running,
        AckRun("z", T + 2),
        "a=ready b=ready c=ready",
        "running",
        ["rehab z"],
    ),
    # --- NackRun ----------------------------------------------------------------------------
    R(
        "nack-run-launched",
        running,
        NackRun("a", "no such job", T + 2),
        "a=failed b=ready c=ready",
        "running",
        ["pub run_complete a run_nacked"],
    ),
    R(
        "nack-run-running",
        started,
        NackRun("a", "confused", T + 3),
        "a=failed b=running c=running",
        "running",
        ["abort a", "pub run_complete a run_nacked_while_running"],
    ),
    R(
        "nack-run-last-live-completes",
        lambda: started("a"),
        NackRun("a", "confused", T + 3),
        "a=failed",
        "complete",
        [
            "abort a",
            "pub run_complete a run_nacked_while_running",
            "cancel run",
            "pub job_complete complete",
        ],
    ),
    R(
        "nack-run-not-yet-started",
        lambda: running(maxc=1),
        NackRun("c", "x", T + 2),
        "a=ready b=ready c=ready",
        "running",
        ["rehab c", "pub rehab c"],
    ),
    R(
        "nack-run-while-voting",
        voting,
        NackRun("a", "x", T + 1),
        "a=new b=new c=new",
        "voting",
        ["rehab a", "pub rehab a"],
    ),
    R(
        "nack-run-after-timeout",
        lambda: running("ab", RunTimeout(T + 301)),
        NackRun("a", "x", T + 302),
        "a=timed_out b=timed_out",
        "timed_out",
        [],
    ),
    # --- Result -----------------------------------------------------------------------------
    R(
        "result-exit-0",
        started,
        Result("a", "succeeded", 0, T + 3),
        "a=succeeded b=running c=running",
        "running",
        ["result_ack a", "pub run_complete a success"],
    ),
    R(
        "result-exit-1",
        started,
        Result("a", "failed", 1, T + 3),
        "a=failed b=running c=running",
        "running",
        ["result_ack a", "pub run_complete a failure"],
    ),
    R(
        "result-killed-by-signal",
        started,
        Result("a", "failed", None, T + 3),
        "a=failed b=running c=running",
        "running",
        ["result_ack a", "pub run_complete a failure"],
    ),
    R(
        "result-agent-timed-out",
        started,
        Result("a", "timed_out", None, T + 3),
        "a=timed_out b=running c=running",
        "running",
        ["result_ack a", "pub run_complete a timed_out"],
    ),
    R(
        "result-agent-aborted",
        started,
        Result("a", "aborted", None, T + 3),
        "a=aborted b=running c=running",
        "running",
        ["result_ack a", "pub run_complete a aborted"],
    ),
    R(
        "result-before-ack-run",
        running,
        Result("a", "succeeded", 0, T + 3),
        "a=succeeded b=ready c=ready",
        "running",
        ["result_ack a", "pub run_complete a success"],
    ),
    R(
        "result-last-completes-even-failed",
        lambda: started("ab", Result("a", "failed", 2, T + 3)),
        Result("b", "failed", 2, T + 4),
        "a=failed b=failed",
        "complete",
        [
            "result_ack b",
            "pub run_complete b failure",
            "cancel run",
            "pub job_complete complete",
        ],
    ),
    R(
        "result-duplicate",
        lambda: started("abc", Result("a", "succeeded", 0, T + 3)),
        Result("a", "succeeded", 0, T + 4),
        "a=succeeded b=running c=running",
        "running",
        ["result_ack a"],
    ),
    R(
        "result-from-not-yet-started",
        lambda: running(maxc=1),
        Result("b", "succeeded", 0, T + 3),
        "a=ready b=ready c=ready",
        "running",
        ["result_ack b", "rehab b", "pub rehab b"],
    ),
    R(
        "result-while-voting",
        voting,
        Result("a", "succeeded", 0, T + 1),
        "a=new b=new c=new",
        "voting",
        ["result_ack a", "rehab a", "pub rehab a"],
    ),
    R(
        "result-finished-never-ran",
        finished,
        Result("a", "succeeded", 0, T + 61),
        "a=nacked b=unavailable c=unavailable",
        "quorum_failed",
        ["result_ack a", "rehab a"],
    ),
    R(
        "result-after-abort",
        lambda: started("ab", Abort(T + 5)),
        Result("a", "aborted", None, T + 6),
        "a=aborted b=aborted",
        "aborted",
        ["result_ack a", "pub late_result a aborted None"],
    ),
    R(
        "result-from-away-node",
        lambda: started("abc", NodeDown("a", T + 10)),
        Result("a", "succeeded", 0, T + 11),
        "a=succeeded b=running c=running",
        "running",
        ["result_ack a", "cancel grace:a", "pub run_complete a success"],
    ),
    R(
        "result-stranger",
        started,
        Result("z", "succeeded", 0, T + 3),
        "a=running b=running c=running",
        "running",
        ["result_ack z", "rehab z"],
    ),
    # --- rolling execution ------------------------------------------------------------------
    R(
        "max-concurrency-next-starts",
        lambda: started(maxc=1),
        Result("a", "succeeded", 0, T + 3),
        "a=succeeded b=ready c=ready",
        "running",
        ["result_ack a", "pub run_complete a success", "run b"],
    ),
    R(
        "max-failures-exceeded-stops-starting",
        lambda: started(maxc=1, maxf=0),
        Result("a", "failed", 1, T + 3),
        "a=failed b=aborted c=aborted",
        "complete",
        [
            "result_ack a",
            "pub run_complete a failure",
            "pub run_complete b aborted",
            "pub run_complete c aborted",
            "abort b,c",
            "cancel run",
            "pub job_complete complete",
        ],
    ),
    R(
        "max-failures-not-exceeded",
        lambda: started(maxc=1, maxf=1),
        Result("a", "failed", 1, T + 3),
        "a=failed b=ready c=ready",
        "running",
        ["result_ack a", "pub run_complete a failure", "run b"],
    ),
    R(
        "grace-expired-stranger",
        lambda: started("abcd", maxc=2, maxf=0),
        GraceExpired("z", T + 3),
        "a=running b=running c=ready d=ready",
        "running",
        [],
    ),
    R(
        "max-failures-crash-counts",
        lambda: started("abcd", NodeDown("a", T + 3), maxc=2, maxf=0),
        GraceExpired("a", T + 33),
        "a=crashed b=running c=aborted d=aborted",
        "running",
        [
            "pub run_complete a crashed",
            "pub run_complete c aborted",
            "pub run_complete d aborted",
            "abort c,d",
        ],
    ),
    # --- NodeBack ---------------------------------------------------------------------------
    R(
        "back-same-incarnation-running",
        lambda: started("abc", NodeDown("a", T + 10)),
        NodeBack("a", T + 20, True, "running"),
        "a=running b=running c=running",
        "running",
        ["cancel grace:a"],
    ),
    R(
        "back-new-incarnation",
        lambda: started("abc", NodeDown("a", T + 10)),
        NodeBack("a", T + 20, False),
        "a=crashed b=running c=running",
        "running",
        ["cancel grace:a", "pub run_complete a crashed"],
    ),
    R(
        "back-new-incarnation-never-went-down",
        started,
        NodeBack("a", T + 20, False),
        "a=crashed b=running c=running",
        "running",
        ["pub run_complete a crashed"],
    ),
    R(
        "back-with-result",
        lambda: started("abc", NodeDown("a", T + 10)),
        NodeBack("a", T + 20, True, "idle", Result("a", "succeeded", 0, T + 20)),
        "a=succeeded b=running c=running",
        "running",
        ["result_ack a", "cancel grace:a", "pub run_complete a success"],
    ),
    R(
        "back-new-incarnation-with-result",
        lambda: started("abc", NodeDown("a", T + 10)),
        NodeBack("a", T + 20, False, "idle", Result("a", "failed", 3, T + 20)),
        "a=failed b=running c=running",
        "running",
        ["result_ack a", "cancel grace:a", "pub run_complete a failure"],
    ),
    R(
        "back-launched-still-committed-gets-run-again",
        lambda: running("abc", NodeDown("a", T + 10)),
        NodeBack("a", T + 20, True, "committed"),
        "a=ready b=ready c=ready",
        "running",
        ["cancel grace:a", "run a"],
    ),
    R(
        "back-launched-running-ack-lost",
        running,
        NodeBack("a", T + 20, True, "running"),
        "a=running b=ready c=ready",
        "running",
        ["pub run_start a"],
    ),
    R(
        "back-launched-holds-nothing",
        lambda: started("abc", NodeDown("a", T + 10)),
        NodeBack("a", T + 20, True, "idle"),
        "a=crashed b=running c=running",
        "running",
        ["cancel grace:a", "pub run_complete a crashed"],
    ),
    R(
        "back-running-claims-committed",
        started,
        NodeBack("a", T + 20, True, "committed"),
        "a=running b=running c=running",
        "running",
        ["rehab a", "pub rehab a"],
    ),
    R(
        "back-waiting-node-queues-again",
        lambda: started("abc", NodeDown("b", T + 10), maxc=1),
        NodeBack("b", T + 20, True, "committed"),
        "a=running b=ready c=ready",
        "running",
        ["cancel grace:b"],
    ),
    R(
        "back-waiting-node-dropped-commit",
        lambda: started("abc", NodeDown("b", T + 10), maxc=1),
        NodeBack("b", T + 20, True, "idle"),
        "a=running b=unavailable c=ready",
        "running",
        ["cancel grace:b"],
    ),
    R(
        "back-waiting-node-claims-running",
        lambda: started(maxc=1),
        NodeBack("b", T + 20, True, "running"),
        "a=running b=ready c=ready",
        "running",
        ["rehab b", "pub rehab b"],
    ),
    R(
        "back-voting-committed-counts-as-ack",
        voting,
        NodeBack("a", T + 5, True, "committed"),
        "a=ready b=new c=new",
        "voting",
        ["pub quorum_vote a success"],
    ),
    R(
        "back-voting-commit-lost-is-resent",
        voting,
        NodeBack("a", T + 5, True, "idle"),
        "a=new b=new c=new",
        "voting",
        ["commit a"],
    ),
    R(
        "back-voting-ready-dropped-commit",
        lambda: voting("abc", AckCommit("a", T + 1), quorum=1),
        NodeBack("a", T + 5, True, "idle"),
        "a=unavailable b=new c=new",
        "voting",
        ["pub quorum_vote a lost_availibility"],
    ),
    R(
        "back-voting-claims-running",
        voting,
        NodeBack("a", T + 5, True, "running"),
        "a=new b=new c=new",
        "voting",
        ["rehab a", "pub rehab a"],
    ),
    R(
        "back-voting-new-incarnation",
        lambda: voting(quorum=1),
        NodeBack("a", T + 5, False),
        "a=unavailable b=new c=new",
        "voting",
        ["pub quorum_vote a down"],
    ),
    R(
        "back-final-holding-job",
        lambda: started("abc", Result("a", "succeeded", 0, T + 3)),
        NodeBack("a", T + 20, True, "running"),
        "a=succeeded b=running c=running",
        "running",
        ["rehab a", "pub rehab a"],
    ),
    R(
        "back-final-idle",
        lambda: started("abc", Result("a", "succeeded", 0, T + 3)),
        NodeBack("a", T + 20, True, "idle"),
        "a=succeeded b=running c=running",
        "running",
        [],
    ),
    R(
        "back-finished-with-result",
        lambda: started("ab", Abort(T + 5)),
        NodeBack("a", T + 20, True, "idle", Result("a", "aborted", None, T + 20)),
        "a=aborted b=aborted",
        "aborted",
        ["result_ack a", "pub late_result a aborted None"],
    ),
    R(
        "back-finished-holding",
        lambda: started("ab", Abort(T + 5)),
        NodeBack("a", T + 20, True, "running"),
        "a=aborted b=aborted",
        "aborted",
        ["rehab a"],
    ),
    R(
        "back-stranger-holding",
        started,
        NodeBack("z", T + 20, True, "committed", Result("z", "failed", 1, T + 20)),
        "a=running b=running c=running",
        "running",
        ["result_ack z", "rehab z"],
    ),
    R(
        "back-unknown-job-state-is-idle",
        voting,
        NodeBack("a", T + 5, True, "dancing"),
        "a=new b=new c=new",
        "voting",
        ["commit a"],
    ),
    # --- GraceExpired -----------------------------------------------------------------------
    R(
        "grace-expired-running",
        lambda: started("abc", NodeDown("a", T + 10)),
        GraceExpired("a", T + 40),
        "a=crashed b=running c=running",
        "running",
        ["pub run_complete a crashed"],
    ),
    R(
        "grace-expired-waiting-node",
        lambda: started("abc", NodeDown("c", T + 10), maxc=1),
        GraceExpired("c", T + 40),
        "a=running b=ready c=unavailable",
        "running",
        [],
    ),
    R(
        "grace-expired-last-completes",
        lambda: started("a", NodeDown("a", T + 10)),
        GraceExpired("a", T + 40),
        "a=crashed",
        "complete",
        [
            "pub run_complete a crashed",
            "cancel run",
            "pub job_complete complete",
        ],
    ),
    R(
        "grace-expired-stale",
        started,
        GraceExpired("a", T + 40),
        "a=running b=running c=running",
        "running",
        [],
    ),
    R(
        "grace-expired-voting-after-resume",
        lambda: voting("abc", Resume(T + 10), quorum=1),
        GraceExpired("a", T + 40),
        "a=unavailable b=new c=new",
        "voting",
        ["pub quorum_vote a down"],
    ),
    # --- RunTimeout -------------------------------------------------------------------------
    R(
        "run-timeout",
        lambda: running("abc", AckRun("a", T + 2), Result("c", "succeeded", 0, T + 3)),
        RunTimeout(T + 301),
        "a=timed_out b=timed_out c=succeeded",
        "timed_out",
        [
            "pub run_complete a timed_out",
            "pub run_complete b timed_out",
            "abort a,b",
            "timer late 1331",
        ],
    ),
    R(
        "run-timeout-with-waiting-and-away",
        lambda: started("abc", NodeDown("a", T + 10), maxc=1),
        RunTimeout(T + 301),
        "a=timed_out b=timed_out c=timed_out",
        "timed_out",
        [
            "cancel grace:a",
            "pub run_complete a timed_out",
            "pub run_complete b timed_out",
            "pub run_complete c timed_out",
            "abort a,b,c",
            "pub job_complete timed_out",
        ],
    ),
    R("run-timeout-while-voting", voting, RunTimeout(T + 301), "a=new b=new c=new", "voting", []),
    R(
        "run-timeout-finished",
        finished,
        RunTimeout(T + 301),
        "a=nacked b=unavailable c=unavailable",
        "quorum_failed",
        [],
    ),
    # --- Abort ------------------------------------------------------------------------------
    R(
        "abort-new",
        job,
        Abort(T),
        "a=aborted b=aborted c=aborted",
        "aborted",
        ["pub job_complete aborted"],
    ),
    R(
        "abort-voting",
        lambda: voting("abc", AckCommit("a", T + 1), NackCommit("c", "busy", T + 1), quorum=1),
        Abort(T + 5),
        "a=aborted b=aborted c=nacked",
        "aborted",
        ["abort a,b", "cancel voting", "pub job_complete aborted"],
    ),
    R(
        "abort-running",
        lambda: started("abc", Result("a", "succeeded", 0, T + 3), NodeDown("b", T + 4), maxc=2),
        Abort(T + 5),
        "a=succeeded b=aborted c=aborted",
        "aborted",
        [
            "cancel grace:b",
            "pub run_complete b aborted",
            "pub run_complete c aborted",
            "abort b,c",
            "cancel run",
            "timer late 1035",
        ],
    ),
    R(
        "abort-run-sent-not-started",
        lambda: running("ab", maxc=1),
        Abort(T + 5),
        "a=aborted b=aborted",
        "aborted",
        [
            "pub run_complete a aborted",
            "pub run_complete b aborted",
            "abort a,b",
            "cancel run",
            "timer late 1035",
        ],
    ),
    R(
        "abort-finished",
        finished,
        Abort(T + 70),
        "a=nacked b=unavailable c=unavailable",
        "quorum_failed",
        [],
    ),
    # --- Crash ------------------------------------------------------------------------------
    R(
        "crash-running",
        lambda: started("ab", Result("b", "succeeded", 0, T + 3)),
        Crash(T + 5, "engine failure"),
        "a=crashed b=succeeded",
        "crashed",
        [
            "pub run_complete a crashed",
            "abort a",
            "cancel run",
            "pub job_complete crashed",
        ],
    ),
    R(
        "crash-voting",
        voting,
        Crash(T + 5, "engine failure"),
        "a=crashed b=crashed c=crashed",
        "crashed",
        ["abort a,b,c", "cancel voting", "pub job_complete crashed"],
    ),
    R(
        "crash-finished",
        finished,
        Crash(T + 70, "x"),
        "a=nacked b=unavailable c=unavailable",
        "quorum_failed",
        [],
    ),
    # --- late results (a and b were running when the job was aborted at T+5) ---------------
    R(
        "late-result-with-its-fields",
        aborted,
        Result("a", "aborted", None, T + 6, LATE_FIELDS),
        "a=aborted b=aborted",
        "aborted",
        ["result_ack a", "pub late_result a aborted None 15 4 2 False 1.5"],
    ),
    R(
        "late-result-last-closes",
        lambda: aborted(Result("a", "aborted", None, T + 6)),
        Result("b", "timed_out", None, T + 7),
        "a=aborted b=aborted",
        "aborted",
        [
            "result_ack b",
            "pub late_result b timed_out None",
            "cancel late",
            "pub job_complete aborted",
        ],
    ),
    R(
        "late-result-duplicate",
        lambda: aborted(Result("a", "aborted", None, T + 6)),
        Result("a", "aborted", None, T + 7),
        "a=aborted b=aborted",
        "aborted",
        ["result_ack a"],
    ),
    R(
        "late-output",
        aborted,
        Output("a", "stderr", 3, b"bye"),
        "a=aborted b=aborted",
        "aborted",
        ["output a stderr 3 b'bye'"],
    ),
    R(
        "late-output-after-result",
        lambda: aborted(Result("a", "aborted", None, T + 6)),
        Output("a", "stdout", 0, b"x"),
        "a=aborted b=aborted",
        "aborted",
        [],
    ),
    R(
        "output-running",
        started,
        Output("a", "stdout", 0, b"x"),
        "a=running b=running c=running",
        "running",
        ["output a stdout 0 b'x'"],
    ),
    R(
        "output-stranger",
        started,
        Output("z", "stdout", 0, b"x"),
        "a=running b=running c=running",
        "running",
        [],
    ),
    R(
        "output-closed",
        finished,
        Output("a", "stdout", 0, b"x"),
        FINISHED_NODES,
        "quorum_failed",
        [],
    ),
    R("late-down", aborted, NodeDown("a", T + 6), "a=aborted b=aborted", "aborted", []),
    R(
        "late-down-last-closes",
        lambda: aborted(NodeDown("a", T + 6)),
        NodeDown("b", T + 7),
        "a=aborted b=aborted",
        "aborted",
        ["cancel late", "pub job_complete aborted"],
    ),
    R(
        "late-aborted-without-result",
        lambda: aborted(Result("a", "aborted", None, T + 6)),
        NodeAborted("b", T + 7),
        "a=aborted b=aborted",
        "aborted",
        ["cancel late", "pub job_complete aborted"],
    ),
    R(
        "node-aborted-live",
        started,
        NodeAborted("a", T + 7),
        "a=running b=running c=running",
        "running",
        [],
    ),
    R(
        "late-timeout",
        lambda: aborted(Result("a", "aborted", None, T + 6)),
        LateTimeout(T + 35),
        "a=aborted b=aborted",
        "aborted",
        ["pub job_complete aborted"],
    ),
    R("late-timeout-stale", finished, LateTimeout(T + 35), FINISHED_NODES, "quorum_failed", []),
    R(
        "late-back-idle-owes-nothing",
        aborted,
        NodeBack("a", T + 20, True, "idle"),
        "a=aborted b=aborted",
        "aborted",
        [],
    ),
    R(
        "late-back-restarted-owes-nothing",
        lambda: aborted(NodeDown("b", T + 6)),
        NodeBack("a", T + 20, False, "running"),
        "a=aborted b=aborted",
        "aborted",
        ["cancel late", "pub job_complete aborted", "rehab a"],
    ),
    R(
        "late-back-still-running",
        aborted,
        NodeBack("a", T + 20, True, "running"),
        "a=aborted b=aborted",
        "aborted",
        ["rehab a"],
    ),
    R(
        "late-resume",
        aborted,
        Resume(T + 100),
        "a=aborted b=aborted",
        "aborted",
        ["timer late 1035"],
    ),
    # --- Resume -----------------------------------------------------------------------------
    R(
        "resume-voting-keeps-time-left",
        lambda: voting("abc", NackCommit("c", "busy", T + 1), quorum=1),
        Resume(T + 100, stopped_at=T + 10),
        "a=new b=new c=nacked",
        "voting",
        ["timer voting 1150", "timer grace:a 1130", "timer grace:b 1130"],
    ),
    R(
        "resume-voting-without-stop-time",
        lambda: voting("ab", quorum=1),
        Resume(T + 100),
        "a=new b=new",
        "voting",
        ["timer voting 1060", "timer grace:a 1130", "timer grace:b 1130"],
    ),
    R(
        "resume-running",
        lambda: started("abc", Result("a", "succeeded", 0, T + 3), maxc=2),
        Resume(T + 100, stopped_at=T + 50),
        "a=succeeded b=running c=ready",
        "running",
        ["timer run 1301", "timer grace:b 1130", "timer grace:c 1130"],
    ),
    R("resume-new", job, Resume(T + 100), "a=new b=new c=new", "new", []),
    R(
        "resume-finished",
        finished,
        Resume(T + 100),
        "a=nacked b=unavailable c=unavailable",
        "quorum_failed",
        [],
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_transition_table(row: Row) -> None:
    before = row.build()
    before_record = to_record(before)
    after, effects = transition(before, row.event)
    assert node_line(after) == row.nodes
    assert after.status == row.job
    assert [sig(e) for e in effects] == list(row.effects)
    # Contract: the same object back exactly when nothing changed.
    if after is before:
        assert to_record(after) == before_record
    else:
        assert to_record(after) != before_record
        assert after.version == before.version + 1


def test_table_ids_unique() -> None:
    assert len({r.id for r in ROWS}) == len(ROWS)


# --- reasons, buckets, timers -----------------------------------------------------------------


def test_nack_reasons_and_buckets() -> None:
    state = voting(
        "abcd",
        NackCommit("b", "busy", T + 1),
        NackCommit("d", "not_whitelisted", T + 1),
        AckCommit("c", T + 1),
        quorum=1,
    )
    assert reasons(state) == {"b": "busy", "d": "not_whitelisted"}
    assert buckets(state) == {"new": ["a"], "ready": ["c"], "nacked": ["b", "d"]}
    state = play(state, VotingTimeout(T + 60))
    assert buckets(state) == {"ready": ["c"], "unavailable": ["a"], "nacked": ["b", "d"]}
    assert state.reasons["a"] == "no vote within the voting timeout"


def test_restarted_node_reason() -> None:
    state = started("ab", NodeBack("a", T + 5, False))
    assert state.nodes["a"] is NodeStatus.CRASHED
    assert state.reasons["a"] == "node restarted"
    state = started("ab", NodeDown("a", T + 5), GraceExpired("a", T + 35))
    assert state.reasons["a"] == "node did not reconnect within the reconnect grace"


def test_nack_run_reason_kept() -> None:
    state = running("a", NackRun("a", "not committed", T + 2))
    assert state.reasons == {"a": "not committed"}


def test_grace_timer_name() -> None:
    assert grace_timer("web-1") == "grace:web-1"


def test_touched_names_changed_nodes() -> None:
    state = voting("abc", quorum=1)
    state, _ = transition(state, AckCommit("b", T + 1))
    assert state.touched == ("b",)
    state, _ = transition(state, AckCommit("b", T + 2))  # unexpected_commit: no change
    assert state.touched == ("b",)
    before = state
    state, _ = transition(state, NodeDown("a", T + 3))
    assert state is not before
    assert state.touched == ("a",)


def test_max_concurrency_rolls_through_nodes() -> None:
    state = running("abcde", maxc=2)
    assert state.launched == {"a", "b"}
    order: list[str] = []
    for now in range(10):
        for node in sorted(state.launched):
            state, effects = transition(state, Result(node, "succeeded", 0, T + 10 + now))
            order += [n for e in effects if isinstance(e, SendRun) for n in e.nodes]
    assert order == ["c", "d", "e"]
    assert state.status is JobStatus.COMPLETE
    assert buckets(state) == {"succeeded": ["a", "b", "c", "d", "e"]}


def test_away_waiting_node_is_skipped_then_started_when_back() -> None:
    state = running("abc", NodeDown("b", T + 2), maxc=1)
    state, effects = transition(state, Result("a", "succeeded", 0, T + 3))
    assert [sig(e) for e in effects][-1] == "run c"  # b is away: c goes first
    state, effects = transition(state, NodeBack("b", T + 4, True, "committed"))
    assert [sig(e) for e in effects] == ["cancel grace:b"]  # the slot is c's
    state, effects = transition(state, Result("c", "succeeded", 0, T + 5))
    assert [sig(e) for e in effects][-1] == "run b"


# --- consumption, records ---------------------------------------------------------------------


def test_consumed_state_cannot_be_reused() -> None:
    state = voting()
    newer, _ = transition(state, AckCommit("a", T + 1))
    assert newer is not state
    with pytest.raises(RuntimeError, match="stale JobState"):
        transition(state, AckCommit("b", T + 1))
    # An unchanged state stays usable.
    same, _ = transition(newer, NodeDown("z", T + 2))
    assert same is newer
    transition(same, AckCommit("b", T + 2))


def test_clone_is_independent() -> None:
    state = voting()
    snapshot = clone(state)
    transition(state, AckCommit("a", T + 1))
    assert snapshot.nodes["a"] is NodeStatus.NEW
    transition(snapshot, AckCommit("b", T + 1))


def test_record_parts() -> None:
    state = started("ab", NodeDown("a", T + 5), maxc=1)
    record = to_record(state)
    assert {k: v for k, v in record.items() if k != "nodes"} == job_record(state)
    assert record["nodes"] == [node_record(state, "a"), node_record(state, "b")]
    assert node_record(state, "a") == ["a", "running", True, T + 35, None]
    assert node_record(state, "b") == ["b", "ready", False, None, None]
    assert msgpack.unpackb(msgpack.packb(record)) == record


def test_new_job_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        new_job("j", ["a", "a"], quorum=1, run_timeout=1, voting_timeout=1, reconnect_grace=1)
    for kw in (
        {"quorum": -1},
        {"run_timeout": float("nan")},
        {"voting_timeout": -1.0},
        {"reconnect_grace": float("inf")},
        {"max_concurrency": 0},
        {"max_failures": -1},
    ):
        args: dict[str, Any] = {
            "quorum": 1,
            "run_timeout": 1,
            "voting_timeout": 1,
            "reconnect_grace": 1,
        }
        args.update(kw)
        with pytest.raises(ValueError):
            new_job("j", ["a"], **args)


def _corrupt(**changes: Any) -> dict[str, Any]:
    record = to_record(started("ab"))
    record.update(changes)
    return record


def _late(**changes: Any) -> dict[str, Any]:
    record = to_record(aborted())
    record.update(changes)
    return record


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ([], "not a map"),
        ({"status": "new"}, "without a job_id"),
        (_corrupt(format=2), "format"),
        (_corrupt(extra=1), "unknown keys"),
        (_corrupt(status="sleeping"), "status"),
        (_corrupt(quorum="2"), "quorum"),
        (_corrupt(quorum=-1), "quorum"),
        (_corrupt(version=True), "version"),
        (_corrupt(max_concurrency=0), "max_concurrency"),
        (_corrupt(run_timeout="300"), "run_timeout"),
        (_corrupt(stopped=0), "stopped"),
        (_corrupt(voting_deadline="x"), "voting_deadline"),
        (_corrupt(nodes={}), "nodes is not a list"),
        (_corrupt(nodes=[["a", "running", True, None]]), "node entry"),
        (_corrupt(nodes=[[1, "running", True, None, None]]), "node name"),
        (_corrupt(nodes=[["a", "dancing", True, None, None]]), "status"),
        (_corrupt(nodes=[["a", "running", 1, None, None]]), "launched"),
        (_corrupt(nodes=[["a", "running", True, "x", None]]), "away"),
        (_corrupt(nodes=[["a", "running", True, None, 5]]), "reason"),
        (_corrupt(nodes=[["a", "running", True, None, None]] * 2), "duplicate"),
        (_corrupt(nodes=[["a", "succeeded", True, None, None]]), "launched"),
        (_corrupt(nodes=[["a", "failed", False, 5.0, None]]), "away"),
        (_corrupt(nodes=[["a", "running", False, None, None]]), "running in a running job"),
        (_corrupt(status="complete", nodes=[["a", "ready", False, None, None]]), "in a complete"),
        (_corrupt(status="new", nodes=[["a", "aborted", False, None, None]]), "in a new job"),
        (_corrupt(status="voting", nodes=[["a", "was_ready", False, None, None]]), "in a voting"),
        (_corrupt(nodes=[["a", "was_ready", False, None, None]]), "in a running job"),
        (_corrupt(status="voting"), "launched"),
        (_corrupt(late_result_timeout=-1), "late_result_timeout"),
        (_corrupt(late_deadline="soon"), "late_deadline"),
        (_corrupt(late_deadline=T + 35), "late_deadline must be set exactly"),
        (_corrupt(nodes=[["a", "running", True, None, None, True]]), "cannot owe"),
        (_corrupt(nodes=[["a", "running", True, None, None, False]]), "sixth item"),
        (_late(late_deadline=None), "late_deadline must be set exactly"),
        (_late(status="complete"), "cannot owe"),
        (_late(nodes=[["a", "succeeded", False, None, None, True]]), "cannot owe"),
    ],
)
def test_from_record_rejects(record: Any, match: str) -> None:
    with pytest.raises(StoreError, match=match):
        from_record(record)


def test_owed_results_are_stored_per_node_and_old_records_still_load() -> None:
    state = aborted(Result("a", "aborted", None, T + 6))
    record = to_record(state)
    assert record["late_deadline"] == T + 35 and record["late_result_timeout"] == 30
    assert record["nodes"] == [
        ["a", "aborted", False, None, None],
        ["b", "aborted", False, None, None, True],
    ]
    restored = from_record(msgpack.unpackb(msgpack.packb(record)))
    assert restored.owed == {"b"} and restored.late_deadline == T + 35
    assert to_record(restored) == record
    assert [holds(restored, n) for n in "ab"] == [False, True]
    # a record stored before late results: no late keys, five-item node entries
    old = to_record(started("ab", Result("a", "succeeded", 0, T + 3)))
    del old["late_result_timeout"], old["late_deadline"]
    loaded = from_record(old)
    assert loaded.owed == frozenset() and loaded.late_result_timeout == 30.0
    assert loaded.late_deadline is None
    loaded, effects = transition(loaded, Abort(T + 4))
    assert loaded.owed == {"b"}
    assert [sig(e) for e in effects][-1] == "timer late 1034"


def test_a_late_result_keeps_the_final_statuses() -> None:
    """The whole story: abort, output and result after it, the feed closes last."""
    state = started("abc", Result("c", "succeeded", 0, T + 3))
    state, effects = transition(state, Abort(T + 5))
    assert state.status is JobStatus.ABORTED and is_finished(state) and not is_closed(state)
    assert buckets(state) == {"succeeded": ["c"], "aborted": ["a", "b"]}
    assert not any(sig(e).startswith("pub job_complete") for e in effects)
    for event in (
        Output("a", "stdout", 0, b"bye\n"),
        Result("a", "aborted", None, T + 6, LATE_FIELDS),
        NodeDown("b", T + 7),
    ):
        state, effects = transition(state, event)
    assert [sig(e) for e in effects] == ["cancel late", "pub job_complete aborted"]
    assert is_closed(state)
    assert buckets(state) == {"succeeded": ["c"], "aborted": ["a", "b"]}


def test_restored_state_continues_like_the_original() -> None:
    original = started("abcd", NodeDown("b", T + 5), maxc=2)
    restored = from_record(to_record(original))
    for event in (
        Result("a", "succeeded", 0, T + 6),
        NodeBack("b", T + 7, True, "running"),
        Result("b", "failed", 1, T + 8),
    ):
        original, effects_1 = transition(original, event)
        restored, effects_2 = transition(restored, event)
        assert effects_1 == effects_2
        assert to_record(original) == to_record(restored)


def test_restart_recovery_story() -> None:
    """A running job survives a restart: nodes come back or are declared crashed."""
    state = started("abc", Result("c", "succeeded", 0, T + 3))
    stored = msgpack.unpackb(msgpack.packb(to_record(state)))
    state = from_record(stored)
    state, effects = transition(state, Resume(T + 50, stopped_at=T + 40))
    assert state.away == {"a": T + 80, "b": T + 80}
    state, effects = transition(
        state, NodeBack("a", T + 55, True, "idle", Result("a", "succeeded", 0, T + 55))
    )
    assert [sig(e) for e in effects] == [
        "result_ack a",
        "cancel grace:a",
        "pub run_complete a success",
    ]
    state, effects = transition(state, GraceExpired("b", T + 80))
    assert buckets(state) == {"succeeded": ["a", "c"], "crashed": ["b"]}
    assert state.status is JobStatus.COMPLETE
    assert is_finished(state)


def test_large_job_costs_constant_time_per_node_event() -> None:
    """100,000 nodes through a whole job: O(1) per vote and result, O(n) per phase change."""
    names = [f"node-{i}" for i in range(100_000)]
    state = new_job(
        "big", names, quorum=100_000, run_timeout=300, voting_timeout=60, reconnect_grace=30
    )
    began = time.perf_counter()
    state, _ = transition(state, Start(T, frozenset(names)))
    for name in names:
        state, _ = transition(state, AckCommit(name, T + 1))
    assert state.status is JobStatus.RUNNING
    for name in names:
        state, _ = transition(state, AckRun(name, T + 2))
        state, _ = transition(state, Result(name, "succeeded", 0, T + 3))
    elapsed = time.perf_counter() - began
    assert state.status is JobStatus.COMPLETE
    assert state.count(NodeStatus.SUCCEEDED) == 100_000
    # Linear work is about a second here; an O(n) copy per event would take hours.
    assert elapsed < 30, elapsed


# --- properties -------------------------------------------------------------------------------

NODE_NAMES = ["a", "b", "c", "d"]
PICK_NODE = [*NODE_NAMES, "z"]
REASONS = ["busy", "not_whitelisted", "x", "y"]
RESULT_STATUSES = ["succeeded", "failed", "aborted", "timed_out", "odd"]
JOB_STATES = ["idle", "committed", "running", "odd"]
EXIT_CODES = [0, 1, None, 0, 2]

# Event kinds (indexes into make_event's list), repeated to favour progress: uniform kinds
# abort or crash most jobs within a few events and rarely reach the running phase.
KINDS = [0, 1, 1, 1, 1, 1, 1, 2, 3, 3, 4, 5, 5, 5, 5, 6, 7, 7, 7, 7, 7, 8, 8, 8, 9, 9, 10, 11]
KINDS += [12, 13, 14, 14, 15, 16]
KINDS += [12, 13, 13]

# One event as plain integers (fast to draw and shrink): kind, node, variant, flag.
EVENT_SPEC = st.tuples(
    st.sampled_from(KINDS),
    st.sampled_from([0, 1, 2, 3, 0, 1, 2, 3, 4]),
    st.integers(0, 4),
    st.integers(0, 4),
    st.booleans(),
)


def make_event(spec: tuple[int, int, int, int, bool], now: float) -> Event:
    kind, n, v, w, flag = spec
    node = PICK_NODE[n]
    result = Result(node, RESULT_STATUSES[v], EXIT_CODES[w], now)
    events: list[Event] = [
        Start(now, frozenset(PICK_NODE[: v + 1])),
        AckCommit(node, now),
        NackCommit(node, REASONS[v % 4], now),
        NodeDown(node, now),
        VotingTimeout(now),
        AckRun(node, now),
        NackRun(node, REASONS[v % 4], now),
        result,
        NodeBack(node, now, flag, JOB_STATES[w % 4], result if v % 2 else None),
        GraceExpired(node, now),
        RunTimeout(now),
        Abort(now),
        Crash(now, "boom"),
        Resume(now, now - 1.0 if flag else None),
        Output(node, "stdout", v, b"x"),
        NodeAborted(node, now),
        LateTimeout(now),
    ]
    return events[kind]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[JobState, list[Event]]:
    count = draw(st.integers(1, len(NODE_NAMES)))
    nodes = NODE_NAMES[:count]
    state = new_job(
        "h",
        nodes,
        quorum=draw(st.sampled_from([0, 1, 1, count // 2, count // 2, count, count + 1])),
        run_timeout=300,
        voting_timeout=60,
        reconnect_grace=30,
        max_concurrency=draw(st.none() | st.integers(1, 3)),
        max_failures=draw(st.none() | st.integers(0, 2)),
    )
    online = draw(st.just(frozenset(nodes)) | st.frozensets(st.sampled_from(nodes)))
    events: list[Event] = [Start(T, online)]
    # Often let most nodes vote yes first, so that the running phase is explored as well.
    voters = draw(st.lists(st.sampled_from(nodes), max_size=count, unique=True))
    events += [AckCommit(node, T) for node in voters]
    specs = draw(st.lists(EVENT_SPEC, min_size=3, max_size=60))
    events += [make_event(spec, T + 1 + i) for i, spec in enumerate(specs)]
    return state, events


def _check_invariants(state: JobState) -> None:
    nodes = dict(state.nodes)
    for status in NodeStatus:
        assert state.count(status) == sum(1 for s in nodes.values() if s is status)
    launched = state.launched
    assert all(nodes[n] in (NodeStatus.READY, NodeStatus.RUNNING) for n in launched)
    assert all(nodes[n] in LIVE_NODE_STATUSES for n in state.away)
    if state.max_concurrency is not None:
        assert len(launched) <= state.max_concurrency
    if state.status is JobStatus.VOTING:
        assert NodeStatus.RUNNING not in nodes.values()
        assert state.voting_deadline is not None
    if state.status is not JobStatus.NEW and not any(
        s in LIVE_NODE_STATUSES for s in nodes.values()
    ):
        assert is_finished(state)
    if is_finished(state):
        assert not any(s in LIVE_NODE_STATUSES for s in nodes.values())
        assert not state.away and not launched
    # late results: only stopped nodes of a finished job owe one, while the late timer runs
    assert all(nodes[n] in (NodeStatus.ABORTED, NodeStatus.TIMED_OUT) for n in state.owed)
    assert (state.late_deadline is not None) == bool(state.owed)
    if state.owed:
        assert is_finished(state) and not is_closed(state)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_event_sequences(scenario: tuple[JobState, list[Event]]) -> None:
    state, events = scenario
    closed_seen = False
    for event in events:
        before_nodes = dict(state.nodes)
        before_status = state.status
        was_closed = is_closed(state)
        record = to_record(state)
        state, effects = transition(state, event)  # never raises
        _check_invariants(state)
        for node, status in before_nodes.items():
            if status not in LIVE_NODE_STATUSES:
                assert state.nodes[node] is status, (node, event)
        if before_status in FINISHED_JOB_STATUSES:
            assert state.status is before_status
            assert not any(isinstance(e, (SendRun, SendCommit)) for e in effects)
            published = {e.event for e in effects if isinstance(e, Publish)}
            assert published <= {"late_result", "job_complete"}
        if was_closed:
            assert to_record(state) == record
            assert not any(isinstance(e, (Publish, KeepOutput)) for e in effects)
        completes = [e for e in effects if isinstance(e, Publish) and e.event == "job_complete"]
        assert len(completes) == (1 if is_closed(state) and not closed_seen else 0)
        if completes:
            closed_seen = True
            assert [e for e in effects if isinstance(e, Publish)][-1] == Publish(
                "job_complete", {"status": str(state.status)}
            )
        for effect in effects:
            if isinstance(effect, SendRun):
                assert all(state.nodes[n] is NodeStatus.READY for n in effect.nodes)
                assert all(n in state.launched for n in effect.nodes)
            if isinstance(effect, SendCommit):
                # Still waiting for the vote, or released by a vote that ended at once.
                released = {n for e in effects if isinstance(e, ReleaseNodes) for n in e.nodes}
                for node in effect.nodes:
                    assert state.nodes[node] is NodeStatus.NEW or node in released
        # Round trip through the stored form.
        stored = to_record(state)
        assert msgpack.unpackb(msgpack.packb(stored)) == stored
        assert to_record(from_record(stored)) == stored
    if state.status is not JobStatus.NEW and all(
        s not in LIVE_NODE_STATUSES for s in state.nodes.values()
    ):
        assert is_finished(state)


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_restored_state_agrees_with_live_one(scenario: tuple[JobState, list[Event]]) -> None:
    """Without rolling execution, a state restored from its record behaves the same."""
    state, events = scenario
    state = dataclasses.replace(state, max_concurrency=None)
    for i, event in enumerate(events):
        state, _ = transition(state, event)
        if i % 3 == 0:
            twin = from_record(to_record(state))
            if i + 1 < len(events):
                nxt = events[i + 1]
                a, effects_a = transition(clone(state), nxt)
                b, effects_b = transition(twin, nxt)
                assert to_record(a) == to_record(b)
                assert [sig(e) for e in effects_a] == [sig(e) for e in effects_b]
