"""A job's inbox is bounded: node frames wait (back-pressure) above the high-water mark."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pushy_appliance.jobs import events as m
from pushy_appliance.jobs import runner
from pushy_appliance.jobs.model import JobEntry
from pushy_appliance.jobs.record import job_record
from pushy_appliance.jobs.state import new_job


def _job() -> runner._LiveJob:
    state = new_job("j", ["a"], quorum=1, run_timeout=9, voting_timeout=9, reconnect_grace=9)
    entry = JobEntry(id="j", org="o", spec={}, job=job_record(state), created_at=0, updated_at=0)
    return runner._LiveJob(entry, state)


async def test_node_frames_wait_above_the_high_water_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "INBOX_HIGH_WATER", 3)
    job = _job()
    for _ in range(3):
        await job.post_from_node(m.AckCommit("a", 0.0))
    assert len(job.inbox) == 3
    posted = trio.Event()

    async def flood() -> None:
        await job.post_from_node(m.AckCommit("a", 0.0))
        posted.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await trio.testing.wait_all_tasks_blocked()
            assert not posted.is_set() and len(job.inbox) == 3  # held back
            job.post(m.Abort(0.0))  # timers and operators are never held back
            assert len(job.inbox) == 4
            job.inbox.clear()
            job.room.set()  # what a drained batch does
    assert posted.is_set() and len(job.inbox) == 1
