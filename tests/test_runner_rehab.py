"""The runner's rehab of a node of a job that speaks out of turn (``jobs/runner.py``): the
node is sent ``abort {job_id: nil}`` and the link's observer (the audit recorder, in the
appliance) is told which job sent it there. The real runner, link and registry on an
in-memory store, on the autojump clock."""

from __future__ import annotations

import trio
import trio.testing
from test_runner_timers import Agent, request, running

from pushy_appliance.jobs.events import AckCommit


async def test_a_node_speaking_out_of_turn_is_rehabbed_and_the_observer_told(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (engine, nursery):
        told: list[tuple[str, str, str | None]] = []
        engine.link.on_rehab = lambda org, node, job: told.append((org, node, job))
        await Agent(engine, "a", run="finish").connect(nursery)
        await Agent(engine, "c", run="hang").connect(nursery)
        job = await engine.runner.create("o", request(["a", "c"]), "admin")
        await trio.sleep(1)
        assert engine.jobs.jobs[job].buckets() == {"succeeded": ["a"], "running": ["c"]}
        # a running node's duplicate ack changes nothing and rehabs nobody
        assert await engine.runner.post("o", job, AckCommit("c", trio.current_time()))
        await trio.sleep(1)
        assert told == []

        # "a" finished, then acks a commit of the job again: rehab, and the observer hears
        # which job sent it there
        assert await engine.runner.post("o", job, AckCommit("a", trio.current_time()))
        await trio.sleep(1)
        assert told == [("o", "a", job)]
        # the job itself did not change
        assert engine.jobs.jobs[job].buckets() == {"succeeded": ["a"], "running": ["c"]}
