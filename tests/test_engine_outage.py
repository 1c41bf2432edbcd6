"""The engines' half of "a store that refuses writes" (issue 13 #8, issue 12 §3), on the
autojump clock: the real runner, link, registry and retention on an in-memory store whose
writes fail while ``Disk.full`` is set (the store's own retries then fail too, and succeed
once it is cleared, as a full disk that was emptied).

- a job's step that cannot be stored is held, with its effects, and stored once the store
  writes again; the nodes whose frames wait meanwhile are not timed out for our silence;
- an abort, or a new job, while the store refuses is refused (503) with nothing changed;
- a node's status change is never an error: the latest of each node is stored later;
- the retention purge is put off until the store writes again.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from test_runner_timers import Agent, events, request, running

from pushy_appliance import protocol
from pushy_appliance.errors import StoreUnavailableError
from pushy_appliance.jobs import runner
from pushy_appliance.jobs.retention import Retention
from pushy_appliance.nodes.registry import NodeSession
from pushy_appliance.store import Store

from helpers import EPOCH, memory_registry

REASON = "No space left on device"


class Disk:
    """Makes a memory store's writes, and its writer's retries, fail while :attr:`full`."""

    def __init__(self, store: Store) -> None:
        self.full = False
        real = store._commit  # type: ignore[attr-defined]

        async def commit(frames: list[bytes], first_seq: int) -> None:
            await trio.lowlevel.checkpoint()
            if self.full:
                raise StoreUnavailableError(REASON, "/data/store/segment")
            await real(frames, first_seq)

        async def repair(probe_bytes: int) -> None:
            await trio.lowlevel.checkpoint()
            if self.full:
                raise StoreUnavailableError(REASON, "/data/store/segment")

        store._commit = commit  # type: ignore[attr-defined]
        store._repair = repair  # type: ignore[attr-defined]


def messages(caplog: pytest.LogCaptureFixture, part: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if part in r.getMessage()]


async def test_a_step_the_store_refuses_is_held_with_its_effects_then_stored(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running() as (engine, nursery):
        disk = Disk(engine.db.store)
        a = Agent(engine, "a", run="hang")
        await a.connect(nursery)
        job = await engine.runner.create("o", request(["a"]), "admin")
        await trio.sleep(1)
        assert engine.jobs.jobs[job].buckets() == {"running": ["a"]}

        disk.full = True
        assert a.session is not None
        chunk = a.frame(protocol.Output, job_id=job, channel="stdout", data=b"hi\n", offset=0)
        await engine.link.node_frame(a.session, chunk)
        await a.result(a.session, job, "succeeded", 0)
        await trio.sleep(600)  # ten minutes of a full disk
        # nothing of it is stored or visible, and nothing acted on: the node is still held
        entry = engine.jobs.jobs[job]
        assert entry.buckets() == {"running": ["a"]}
        assert "output" not in [name for name, _ in events(engine, job)]
        assert engine.link.held_by("o", "a") == {job}
        assert messages(caplog, "step held") == [
            f"job {job}: step held until the store can write ({REASON})"
        ]

        disk.full = False
        with trio.fail_after(10):  # the store's retries are at most 5 s apart
            await engine.runner.live[job].done.wait()
        entry = engine.jobs.jobs[job]
        assert (entry.status, entry.buckets()) == ("complete", {"succeeded": ["a"]})
        assert ("output", {"node": "a", "channel": "stdout", "data": "hi\n"}) in events(engine, job)
        assert engine.link.held_by("o", "a") == frozenset()
        assert len(messages(caplog, "step held")) == 1


async def test_nodes_whose_frames_wait_behind_a_held_step_are_not_timed_out(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held step stops the job's inbox; above its high-water mark the node's reader waits,
    so the node's heartbeats stay unread. Its silence is ours: the node is kept."""
    monkeypatch.setattr(runner, "INBOX_HIGH_WATER", 3)
    async with running(interval=1.0) as (engine, nursery):
        await nursery.start(engine.registry.run)
        disk = Disk(engine.db.store)
        a = Agent(engine, "a", run="hang")
        await a.connect(nursery)
        session = a.session
        assert session is not None
        stop_heartbeats = trio.Event()

        async def heartbeats(s: NodeSession) -> None:
            # what the node's frame reader does for each heartbeat it reads
            while not stop_heartbeats.is_set():
                s.last_received = trio.current_time()
                await trio.sleep(1.0)

        nursery.start_soon(heartbeats, session)
        job = await engine.runner.create("o", request(["a"]), "admin")
        await trio.sleep(1)
        disk.full = True
        sent = 0

        async def reader() -> None:
            # the node's reader: frames in order, each read refreshing its liveness
            nonlocal sent
            for offset in range(0, 40, 4):
                frame = a.frame(
                    protocol.Output, job_id=job, channel="stdout", data=b"abc\n", offset=offset
                )
                session.last_received = trio.current_time()
                await engine.link.node_frame(session, frame)
                sent += 1
            await a.result(session, job, "succeeded", 0)

        stop_heartbeats.set()  # from now on the node is heard only through ``reader``
        nursery.start_soon(reader)
        await trio.sleep(120)  # 40 heartbeat intervals: thrice the offline threshold, and more
        assert sent < 10  # the reader waits behind the held step
        assert session.close_code is None
        assert engine.registry.get("o", "a") is session

        disk.full = False
        with trio.fail_after(30):
            await engine.runner.live[job].done.wait()
        entry = engine.jobs.jobs[job]
        assert (entry.status, entry.buckets()) == ("complete", {"succeeded": ["a"]})
        assert sum(1 for name, _ in events(engine, job) if name == "output") == 10
        assert session.close_code is None


async def test_an_abort_while_the_store_refuses_is_refused_and_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (engine, nursery):
        disk = Disk(engine.db.store)
        a = Agent(engine, "a", run="hang")
        await a.connect(nursery)
        job = await engine.runner.create("o", request(["a"]), "admin")
        await trio.sleep(1)
        disk.full = True
        with pytest.raises(StoreUnavailableError, match="No space left on device"):
            await engine.db.commit({"t": "probe"})  # the store found out
        with trio.fail_after(1), pytest.raises(StoreUnavailableError, match=REASON):
            await engine.runner.abort("o", job)
        assert not engine.runner.live[job].inbox
        await trio.sleep(60)
        assert engine.jobs.jobs[job].status == "running"

        disk.full = False
        await engine.db.wait_writable()
        with trio.fail_after(10):
            await engine.runner.abort("o", job)
        assert engine.jobs.jobs[job].status == "aborted"


async def test_a_new_job_while_the_store_refuses_is_refused_with_nothing_half_made(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (engine, nursery):
        disk = Disk(engine.db.store)
        await Agent(engine, "a").connect(nursery)
        disk.full = True
        with pytest.raises(StoreUnavailableError, match=REASON):
            await engine.runner.create("o", request(["a"]), "admin")
        assert engine.jobs.jobs == {}
        assert engine.runner.live == {}
        assert engine.link.held_by("o", "a") == frozenset()
        assert engine.link.is_available("o", "a")
        disk.full = False
        await engine.db.wait_writable()
        job = await engine.runner.create("o", request(["a"]), "admin")
        with trio.fail_after(10):
            await engine.runner.live[job].done.wait()
        assert engine.jobs.jobs[job].status == "complete"


async def test_node_status_changes_are_held_and_the_latest_of_each_is_stored_later(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with memory_registry() as registry, trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        disk = Disk(registry.db.store)
        await registry.record_status("o", "a", "online", {"os": "linux"}, "i0")
        disk.full = True
        for n in range(3):  # none of it may raise
            await registry.record_status("o", "a", "offline")
            await registry.record_status("o", "a", "online", {"os": "linux"}, f"i{n + 1}")
            await registry.record_status("o", f"b{n}", "online", {}, "ib")
        await registry.record_status("o", "b0", "offline")
        await trio.sleep(60)
        assert registry.model.nodes[("o", "a")]["incarnation"] == "i0"
        assert ("o", "b0") not in registry.model.nodes
        held = messages(caplog, "node status")
        assert held == [
            f"node status changes held until the store can write ({REASON}); "
            "the latest of each node is stored then"
        ]

        disk.full = False
        await registry.db.wait_writable()
        await trio.sleep(1)
        stored = registry.model.nodes
        assert (stored[("o", "a")]["status"], stored[("o", "a")]["incarnation"]) == (
            "online",
            "i3",
        )
        assert stored[("o", "b0")]["status"] == "offline"
        assert [stored[("o", f"b{n}")]["status"] for n in (1, 2)] == ["online", "online"]
        assert messages(caplog, "held node status") == [
            "stored the held node status changes of 4 node(s)"
        ]
        # one log line per outage: the next one says so again
        disk.full = True
        await registry.record_status("o", "a", "offline")
        assert len(messages(caplog, "node status changes held")) == 2
        nursery.cancel_scope.cancel()


async def test_the_retention_purge_waits_for_the_store(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running() as (engine, nursery):
        await Agent(engine, "a").connect(nursery)
        job = await engine.runner.create("o", request(["a"]), "admin")
        with trio.fail_after(10):
            await engine.runner.live[job].done.wait()
        disk = Disk(engine.db.store)
        disk.full = True
        with pytest.raises(StoreUnavailableError):
            await engine.db.commit({"t": "probe"})

        def later() -> float:
            return EPOCH + trio.current_time() + 2 * 86400

        retention = Retention(engine.db, engine.feeds, retention_days=1, now=later)
        await nursery.start(retention.run)
        await trio.sleep(60)
        assert job in engine.jobs.jobs
        assert messages(caplog, "purge") == [
            f"retention: purge put off until the store can write ({REASON})"
        ]
        disk.full = False
        await engine.db.wait_writable()
        await trio.sleep(1)
        assert job not in engine.jobs.jobs
