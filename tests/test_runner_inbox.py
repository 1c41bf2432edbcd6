"""A job's inbox is bounded: node frames wait (back-pressure) above the high-water mark, and
the job's own drive loop, taking the inbox in one batch, lets them go. The real runner on an
in-memory store, its step commits held at a gate so the drive loop stays busy."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from pushy_appliance.jobs import runner
from pushy_appliance.jobs.events import AckCommit, NodeDown
from pushy_appliance.jobs.validation import JobRequest

from helpers import EPOCH, idle_hello, memory_engine


def now() -> float:
    """The engine's clock."""
    return EPOCH + trio.current_time()


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


async def test_node_frames_wait_above_the_high_water_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "INBOX_HIGH_WATER", 3)
    nodes = ["a", "b", "c", "d", "e", "f"]
    async with memory_engine() as engine:
        for node in nodes:  # connected; their frames stay queued in their outboxes
            engine.registry.open_session("o", node, idle_hello(), lambda code, why: None)
        job_id = await engine.runner.create("o", request(nodes), "admin")
        job = engine.runner.live[job_id]
        db = engine.db
        gate = trio.Event()
        stored: list[dict[str, Any]] = []
        commit = db.commit

        async def gated_commit(*records: dict[str, Any]) -> int:
            await gate.wait()
            stored.extend(records)
            return await commit(*records)

        monkeypatch.setattr(db, "commit", gated_commit)
        post = engine.runner.post
        # the first vote wakes the drive loop, which takes it and waits at the gate
        assert await post("o", job_id, AckCommit("a", now()))
        await trio.testing.wait_all_tasks_blocked()
        assert len(job.inbox) == 0 and stored == []
        # three more fill the inbox to its high-water mark
        for node in ("b", "c", "d"):
            assert await post("o", job_id, AckCommit(node, now()))
        assert len(job.inbox) == 3
        posted = trio.Event()

        async def flood() -> None:
            assert await post("o", job_id, AckCommit("e", now()))
            posted.set()

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                await trio.testing.wait_all_tasks_blocked()
                assert not posted.is_set() and len(job.inbox) == 3  # held back
                job.post(NodeDown("f", now()))  # connection changes are never held back
                assert len(job.inbox) == 4
                gate.set()  # the step is stored: the loop takes the next batch
        assert posted.is_set()
        await trio.testing.wait_all_tasks_blocked()
        # every event went through the machine, in order, in the batches the loop made
        entry = engine.jobs.jobs[job_id]
        votes = [(d["node"], d["status"]) for _, name, d in entry.events if name == "quorum_vote"]
        assert votes == [
            ("a", "success"),
            ("b", "success"),
            ("c", "success"),
            ("d", "success"),
            ("f", "down"),
            ("e", "success"),
        ]
        assert entry.status == "running"
        steps = [r for r in stored if r["t"] == "job.step"]
        counts = [sum(1 for e in r["events"] if e[1] == "quorum_vote") for r in steps]
        assert counts == [1, 4, 1]
