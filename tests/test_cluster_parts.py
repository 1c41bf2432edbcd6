"""The cluster's pure parts: which unclosed jobs of the log hold which nodes
(``cluster.LogHolds``), and what travels in a mail row (``cluster._wire``)."""

from __future__ import annotations

from typing import Any

import pytest

from pushy_appliance.cluster import LogHolds
from pushy_appliance.cluster._wire import (
    AbortItem,
    EventItem,
    FrameItem,
    MailItem,
    decode_mail,
    encode_mail,
)
from pushy_appliance.errors import ProtocolError
from pushy_appliance.jobs import record
from pushy_appliance.jobs.build import JobTimers, build_job
from pushy_appliance.jobs.events import (
    AckCommit,
    AckRun,
    NackCommit,
    NackRun,
    NodeAborted,
    NodeBack,
    NodeDown,
    Output,
    Result,
)
from pushy_appliance.jobs.model import JobsModel
from pushy_appliance.jobs.validation import JobRequest


def request(nodes: list[str]) -> JobRequest:
    return JobRequest(
        command="x",
        nodes=tuple(nodes),
        quorum=1,
        run_timeout=300,
        user=None,
        dir=None,
        env=None,
        file=None,
        file_bytes=None,
        capture_output=False,
        max_concurrency=None,
        max_failures=None,
    )


def created(job_id: str, nodes: list[str], online: list[str]) -> dict[str, Any]:
    timers = JobTimers(60.0, 30.0, 30.0)
    built = build_job(
        job_id, "o", request(nodes), "admin", frozenset(online), {}, 1.0, None, timers
    )
    return built.record


def step(job_id: str, model: JobsModel, nodes: dict[str, str], **job: Any) -> dict[str, Any]:
    entry = model.jobs[job_id]
    return {
        "t": "job.step",
        "id": job_id,
        "job": {**entry.job, **job},
        "nodes": [[name, status, False, None, None] for name, status in nodes.items()],
        "events": [],
        "outputs": [],
        "results": {},
        "at": 2.0,
    }


def test_log_holds_follows_the_jobs_records() -> None:
    model = JobsModel()
    holds = LogHolds(model)
    changed: list[str] = []
    holds.watch(lambda org, node: changed.append(node))

    def apply(r: dict[str, Any]) -> None:
        model.apply(r)
        holds.applied(r)

    apply(created("j1", ["a", "b", "c"], online=["a", "b"]))
    # c was down: it voted at once and holds nothing
    assert [holds.holders("o", n) for n in "abc"] == [("j1",), ("j1",), ()]
    assert changed == ["a", "b"]  # each node that became held, once
    apply(created("j2", ["b", "d"], online=["b", "d"]))
    assert holds.holders("o", "b") == ("j1", "j2")  # the oldest first
    apply(step("j1", model, {"a": "succeeded"}))
    assert holds.holders("o", "a") == ()
    assert changed[-1] == "a"  # freed
    # a node that owes a late result still holds
    apply({**step("j2", model, {}), "nodes": [["d", "crashed", True, None, None, True]]})
    assert holds.holders("o", "d") == ("j2",)
    # a closed job holds nothing; a purged one neither
    apply(step("j2", model, {}, status="complete", late_deadline=None))
    assert holds.holders("o", "b") == ("j1",) and holds.holders("o", "d") == ()
    apply({"t": "job.purge", "id": "j1"})
    assert [holds.holders("o", n) for n in "abcd"] == [(), (), (), ()]
    # built again from a model (an appliance's start)
    apply(created("j3", ["e"], online=["e"]))
    assert LogHolds(model).holders("o", "e") == ("j3",)
    assert record.RECORD_FORMAT  # the records above are the runner's format


def test_mail_round_trips_every_node_event_and_frames() -> None:
    result = Result("n", "failed", 3, 4.0, {"status": "failed", "exit_code": 3})
    events = [
        AckCommit("n", 1.0),
        NackCommit("n", "busy", 1.5, "j0"),
        AckRun("n", 2.0),
        NackRun("n", "bad", 2.5),
        Output("n", "stderr", 10, b"\xff\x00x", 100),
        result,
        NodeBack("n", 5.0, False, "idle", result),
        NodeBack("n", 5.5, True),
        NodeDown("n", 6.0),
        NodeAborted("n", 7.0),
    ]
    items: list[MailItem] = [
        FrameItem("o", "n", "commit", {"job_id": "j", "env": {"A": "1"}, "run_timeout": 3.0})
    ]
    items += [EventItem("o", "j", e) for e in events]
    items.append(AbortItem("o", "j"))
    back = decode_mail(encode_mail(items))
    assert back == items
    assert back[6].event.fields == result.fields  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "payload",
    [b"\xc1", encode_mail([]) + b"x", b"\x91\x95\xa3bad\xa1o\xa1n\xa1t\x80"],
)
def test_undecodable_mail_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_mail(payload)
