"""The job runner's timers on trio's autojump clock: voting timeout, reconnect grace, run
timeout and the wait for late results, each at its exact time. The runner, link, registry
and feeds are the real ones, on an in-memory store, with a clock that follows trio's; the
nodes are in-memory agents that answer the frames the runner writes to them."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from pushy_appliance import protocol
from pushy_appliance.jobs.validation import JobRequest
from pushy_appliance.nodes.registry import NodeSession

from helpers import Engine, idle_hello, memory_engine


class Agent:
    """An in-memory node. ``vote``: whether it acks commits; ``run``: what it does with
    ``run``: ``finish`` (a result at once) or ``hang`` (ack it, never finish); an abort of a
    hanging run is answered with output, the ``aborted`` result and ``aborted``, unless
    ``answer_abort`` is off."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        vote: bool = True,
        run: str = "finish",
        answer_abort: bool = True,
    ) -> None:
        self.engine = engine
        self.name = name
        self.vote = vote
        self.run = run
        self.answer_abort = answer_abort
        self.hello = idle_hello()
        self.seq = protocol.Sequencer()
        self.seq.next()  # hello was 1
        self.session: NodeSession | None = None
        self.job: str | None = None

    def frame(self, cls: type[Any], **fields: Any) -> Any:
        return cls(seq=self.seq.next(), ts=time.time(), **fields)

    async def connect(self, nursery: trio.Nursery, job_state: str = "idle") -> None:
        """Open a session (a new connection) and say ``hello``, holding the job in
        ``job_state``."""
        send, receive = trio.open_memory_channel[bytes](1000)

        async def wire(data: bytes) -> bool:
            send.send_nowait(data)
            return True

        registry = self.engine.registry
        self.session, _ = registry.open_session(
            "o", self.name, self.hello, lambda code, why: None, wire
        )
        self.session.previous_incarnation = self.hello.incarnation_id
        hello = self.hello
        if job_state != "idle":
            hello = dataclasses.replace(hello, job_id=self.job, job_state=job_state)
        await self.engine.link.node_hello(self.session, hello)
        nursery.start_soon(self.answer, self.session, receive)

    async def disconnect(self) -> None:
        assert self.session is not None
        session, self.session = self.session, None
        self.engine.registry.forget(session)
        await self.engine.link.node_lost(session)

    async def answer(self, session: NodeSession, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        """Answer the frames written to ``session`` while it is the agent's connection."""
        link = self.engine.link
        async for data in receive:
            if self.session is not session:
                return
            f = protocol.decode(data)
            if isinstance(f, protocol.Commit) and self.vote:
                self.job = f.job_id
                await link.node_frame(session, self.frame(protocol.AckCommit, job_id=f.job_id))
            elif isinstance(f, protocol.Run):
                await link.node_frame(session, self.frame(protocol.AckRun, job_id=f.job_id))
                if self.run == "finish":
                    await self.result(session, f.job_id, "succeeded", 0)
            elif isinstance(f, protocol.Abort) and self.answer_abort and self.job is not None:
                job, self.job = self.job, None
                output = self.frame(
                    protocol.Output, job_id=job, channel="stdout", data=b"bye\n", offset=0
                )
                await link.node_frame(session, output)
                await self.result(session, job, "aborted", None)
                await link.node_frame(session, self.frame(protocol.Aborted, job_id=job))

    async def result(
        self, session: NodeSession, job_id: str, status: str, code: int | None
    ) -> None:
        frame = self.frame(
            protocol.Result,
            job_id=job_id,
            status=status,
            exit_code=code,
            stdout_bytes=4 if status == "aborted" else 0,
            stderr_bytes=0,
            truncated=False,
            duration_s=1.0,
        )
        await self.engine.link.node_frame(session, frame)


def request(nodes: list[str], *, quorum: int | None = None, run_timeout: int = 300) -> JobRequest:
    return JobRequest(
        command="x",
        nodes=tuple(nodes),
        quorum=len(nodes) if quorum is None else quorum,
        run_timeout=run_timeout,
        user=None,
        dir=None,
        env=None,
        file=None,
        file_bytes=None,
        capture_output=True,
        max_concurrency=None,
        max_failures=None,
    )


@asynccontextmanager
async def running(**kw: Any) -> AsyncIterator[tuple[Engine, trio.Nursery]]:
    async with memory_engine(**kw) as engine, trio.open_nursery() as nursery:
        yield engine, nursery
        nursery.cancel_scope.cancel()


def events(engine: Engine, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The stored feed events, without timestamps."""
    return [
        (name, {k: v for k, v in data.items() if k != "timestamp"})
        for _, name, data in engine.jobs.jobs[job_id].events
    ]


async def finish(engine: Engine, job_id: str) -> float:
    """Wait for the job to close; returns the trio time it took."""
    began = trio.current_time()
    await engine.runner.live[job_id].done.wait()
    return trio.current_time() - began


async def test_voting_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with running(voting_timeout=60.0) as (engine, nursery):
        await Agent(engine, "a").connect(nursery)
        await Agent(engine, "b", vote=False).connect(nursery)
        job = await engine.runner.create("o", request(["a", "b"], quorum=1), "admin")
        assert await finish(engine, job) == 60.0
        entry = engine.jobs.jobs[job]
        assert entry.status == "complete"
        assert entry.buckets() == {"succeeded": ["a"], "unavailable": ["b"]}
        assert ("quorum_vote", {"node": "b", "status": "voting_timeout"}) in events(engine, job)
        assert entry.finished_at == engine.jobs.last_at


async def test_reconnect_grace(autojump_clock: trio.testing.MockClock) -> None:
    async with running(reconnect_grace=30.0) as (engine, nursery):
        gone = Agent(engine, "gone", run="hang")
        back = Agent(engine, "back", run="hang")
        for agent in (gone, back):
            await agent.connect(nursery)
        job = await engine.runner.create("o", request(["gone", "back"]), "admin")
        await trio.sleep(10)
        assert engine.jobs.jobs[job].buckets() == {"running": ["back", "gone"]}
        await gone.disconnect()
        await back.disconnect()
        await trio.sleep(29)
        back.run = "finish"
        await back.connect(nursery, job_state="running")  # within its grace
        assert back.session is not None
        await back.result(back.session, job, "succeeded", 0)
        assert await finish(engine, job) == 1.0  # gone's grace ends 30 s after it left
        entry = engine.jobs.jobs[job]
        assert entry.buckets() == {"succeeded": ["back"], "crashed": ["gone"]}
        assert entry.nodes["gone"][4] == "node did not reconnect within the reconnect grace"


async def test_run_timeout_and_the_late_result(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (engine, nursery):
        await Agent(engine, "a", run="hang").connect(nursery)
        job = await engine.runner.create("o", request(["a"], run_timeout=100), "admin")
        assert await finish(engine, job) == 100.0  # the result came at once after the abort
        entry = engine.jobs.jobs[job]
        assert (entry.status, entry.buckets()) == ("timed_out", {"timed_out": ["a"]})
        names = [name for name, _ in events(engine, job)]
        assert names[names.index("run_complete") :] == [
            "run_complete",
            "output",
            "late_result",
            "job_complete",
        ]
        assert bytes(entry.output["a"].stdout) == b"bye\n" and entry.output["a"].finished
        assert entry.results()["a"]["status"] == "aborted"


async def test_late_results_are_waited_for_until_the_late_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(late_result_timeout=30.0) as (engine, nursery):
        # connected, running the job, and it will never answer the abort
        await Agent(engine, "a", run="hang", answer_abort=False).connect(nursery)
        job = await engine.runner.create("o", request(["a"], run_timeout=100), "admin")
        await trio.sleep(50)
        agent_session = engine.registry.get("o", "a")
        assert agent_session is not None
        began = trio.current_time()
        await engine.runner.abort("o", job)  # returns once the end is stored
        assert trio.current_time() == began
        entry = engine.jobs.jobs[job]
        assert (entry.status, entry.finished, entry.closed) == ("aborted", True, False)
        assert not engine.link.available(agent_session)  # rehab, and still owing
        assert await finish(engine, job) == 30.0
        assert events(engine, job)[-1] == ("job_complete", {"status": "aborted"})
        assert entry.closed
