"""Huge jobs: creating a 100,000-node job never holds the event loop for long, and the caps
on live jobs and their nodes refuse a job clearly (``JobCapacityError``: 503 with
``Retry-After`` over HTTP)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from pushy_appliance.errors import JobCapacityError
from pushy_appliance.jobs import runner as runner_module
from pushy_appliance.jobs.validation import JobRequest

from helpers import admin_client, idle_hello, memory_engine, running_server, test_config


def request(nodes: list[str], quorum: int | None = None) -> JobRequest:
    return JobRequest(
        command="chef-client",
        nodes=tuple(nodes),
        quorum=len(nodes) if quorum is None else quorum,
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


class StepCPU(trio.abc.Instrument):
    """The event loop thread's CPU time of each task step (CPU, not wall time: the machine
    may be busy with other work; what counts here is how much work one step does), but for
    the steps of the ``ignored`` tasks."""

    def __init__(self, *ignored: trio.lowlevel.Task) -> None:
        self.ignored = ignored
        self.started: dict[trio.lowlevel.Task, float] = {}
        self.steps: list[tuple[float, str]] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task not in self.ignored:
            self.started[task] = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        began = self.started.pop(task, None)
        if began is not None:
            self.steps.append((time.thread_time() - began, task.name))

    def worst(self) -> tuple[float, str]:
        return max(self.steps)


async def test_a_100000_node_job_never_holds_the_event_loop_for_long() -> None:
    """Its state, first events and record are built in a worker thread; its 100,001 first
    events and the commits to its 5,000 online nodes go out in chunks. Before, one step of
    the creating task took about a second of CPU."""
    nodes = [f"huge-node-{i:06d}" for i in range(100_000)]
    async with memory_engine() as engine:
        outboxes = [  # connected; their commits stay queued in their outboxes
            engine.registry.open_session("o", node, idle_hello(), lambda code, why: None)[1]
            for node in nodes[:5000]
        ]
        steps = StepCPU()
        trio.lowlevel.add_instrument(steps)
        try:
            await trio.lowlevel.checkpoint()  # from here every step is timed
            job_id = await engine.runner.create("o", request(nodes, quorum=5000), "admin")
            await trio.sleep(0.1)  # the job's task writes its commits
        finally:
            trio.lowlevel.remove_instrument(steps)
        entry = engine.jobs.jobs[job_id]
        assert entry.status == "voting"
        assert len(entry.events) == 1 + 95_000  # start, and a vote for each node that was down
        assert entry.buckets().keys() == {"new", "unavailable"}
        assert sum(o.statistics().current_buffer_used for o in outboxes) == 5000
        seconds, task = steps.worst()
        assert seconds < 0.05, f"a step of {task} took {seconds * 1000:.0f} ms of CPU"


async def test_posting_a_100000_node_job_never_holds_the_server_for_long(
    tmp_path: Path,
) -> None:
    """Over HTTP: the body's 100,000 names are decoded and checked in a worker thread (50-80
    ms of CPU at once before), then the job is built as above; its nodes are all offline, so
    it ends ``quorum_failed``; once archived, its document is read back the same way. The
    test's own task (the client) is not timed."""
    nodes = [f"huge-node-{i:06d}" for i in range(100_000)]
    config = test_config(tmp_path / "data", **{"limits.max_body_bytes": 4_000_000})
    with trio.fail_after(120):
        async with running_server(config) as info, admin_client(info) as admin:
            runner = info.services.jobs
            steps = StepCPU(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(steps)
            try:
                r = await admin.post(
                    "/organizations/default/pushy/jobs", {"command": "x", "nodes": nodes}
                )
                assert r.status_code == 201, r.text
                job_id = r.json()["id"]
                live = runner.live.get(job_id)
                if live is not None:  # ends once its votes are in
                    await live.ended.wait()
            finally:
                trio.lowlevel.remove_instrument(steps)
            assert runner.model.jobs[job_id].status == "quorum_failed"
            seconds, task = steps.worst()
            assert seconds < 0.05, f"a step of {task} took {seconds * 1000:.0f} ms of CPU"
            # archived, its first read: the blob is read and decoded, and the document's
            # buckets computed, in a worker thread (66 ms of the event loop before)
            if live is not None:  # closed (no late result owed): ready for the archive
                await live.done.wait()
            assert await info.services.db.archive() == 1
            assert runner.model.history.statistics() == (0, 0)
            steps = StepCPU(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(steps)
            try:
                r = await admin.get(f"/organizations/default/pushy/jobs/{job_id}")
            finally:
                trio.lowlevel.remove_instrument(steps)
            assert r.status_code == 200
            assert len(r.json()["nodes"]["unavailable"]) == len(nodes)
            seconds, task = steps.worst()
            assert seconds < 0.05, f"a step of {task} took {seconds * 1000:.0f} ms of CPU"


async def test_live_jobs_are_capped_and_a_finished_one_makes_room() -> None:
    async with memory_engine() as engine:
        engine.runner.max_live_jobs = 2
        engine.runner.max_live_job_nodes = 5
        for node in ("a", "b", "c"):
            engine.registry.open_session("o", node, idle_hello(), lambda code, why: None)
        first = await engine.runner.create("o", request(["a", "b"]), "admin")
        await engine.runner.create("o", request(["c"]), "admin")
        with pytest.raises(JobCapacityError, match="too many live jobs \\(2, at most 2\\)"):
            await engine.runner.create("o", request(["c"]), "admin")
        await engine.runner.abort("o", first)
        with pytest.raises(JobCapacityError, match="nodes in live jobs \\(6, at most 5\\)"):
            await engine.runner.create("o", request(["a", "b", "c", "d", "e"]), "admin")
        await engine.runner.create("o", request(["x", "y", "z"]), "admin")  # down: ends at once
        assert len(engine.runner.live_job_ids()) == 1


async def test_concurrent_creations_count_against_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job being built (in its worker thread) already counts: two creations cannot both
    pass a cap that has room for one."""
    monkeypatch.setattr(runner_module, "BUILD_IN_THREAD_NODES", 0)
    async with memory_engine() as engine:
        engine.runner.max_live_jobs = 1
        engine.registry.open_session("o", "a", idle_hello(), lambda code, why: None)
        outcomes: list[str] = []

        async def create() -> None:
            try:
                await engine.runner.create("o", request(["a"]), "admin")
                outcomes.append("created")
            except JobCapacityError:
                outcomes.append("refused")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(create)
            nursery.start_soon(create)
        assert sorted(outcomes) == ["created", "refused"]


async def test_the_link_holds_a_node_for_one_job_or_several() -> None:
    """A node held by one job costs the link its job id, not a set: the same answers."""
    async with memory_engine() as engine:
        link = engine.link
        link.hold("o", "j1", ["a", "b"])
        link.hold("o", "j2", ["a"])
        link.hold("o", "j1", ["a"])  # again: nothing changes
        assert link.held_by("o", "a") == {"j1", "j2"} and link.held_by("o", "b") == {"j1"}
        link.release("o", "j1", ["a", "b", "c"])
        assert link.held_by("o", "a") == {"j2"} and link.held_by("o", "b") == frozenset()
        link.release("o", "j1", ["a"])  # not held by j1 any more: nothing changes
        assert link.held_by("o", "a") == {"j2"}
        link.release("o", "j2", ["a"])
        assert link.held_by("o", "a") == frozenset()
        assert link._held == {}
