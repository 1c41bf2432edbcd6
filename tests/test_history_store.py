"""Finished jobs' details moved to the store's archive by the database: read back after a
reopen, re-archived when their archive grows sparse, and consistent whatever point a
``kill -9`` hits during archive and snapshot writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from test_jobs_history import create, finish

from pushy_appliance.db import Database
from pushy_appliance.jobs.model import JobsModel
from pushy_appliance.store import open_store, verify_store

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0


def jobs_db(store: Any) -> Database:
    return Database(store, {"jobs": JobsModel()})


def model(db: Database) -> JobsModel:
    jobs = db.models["jobs"]
    assert isinstance(jobs, JobsModel)
    return jobs


async def add_finished(db: Database, job_id: str, nodes: list[str]) -> None:
    """A job created and finished by two records, as the runner stores them."""
    await db.commit(create(job_id, nodes))
    scratch = JobsModel()  # the step as ``finish`` builds it for the job's model
    scratch.apply(create(job_id, nodes))
    steps: list[dict[str, Any]] = []
    scratch.apply = steps.append  # type: ignore[method-assign]
    finish(scratch, job_id, nodes)
    await db.commit(*steps)


def seen(jobs: JobsModel, job_id: str) -> tuple[Any, ...]:
    e = jobs.jobs[job_id]
    return (e.status, e.buckets(), e.results(), list(e.events), bytes(e.output["a"].stdout))


async def test_archived_jobs_are_read_from_the_archive_after_a_reopen(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    with trio.fail_after(TIMEOUT):
        async with open_store(directory) as store:
            db = jobs_db(store)
            db.recover()
            for n in range(5):
                await add_finished(db, f"j{n}", ["a", "b"])
            await db.commit(create("live", ["a"]))
            expected = {f"j{n}": seen(model(db), f"j{n}") for n in range(5)}
            assert await db.archive() == 5
            assert await db.archive() == 0
            assert all(model(db).jobs[f"j{n}"].archived for n in range(5))
            assert {j: seen(model(db), j) for j in expected} == expected
            await db.snapshot()
            assert store.statistics().archives == 1
        async with open_store(directory) as store:
            db = jobs_db(store)
            assert db.recover() == 0
            jobs = model(db)
            assert list(jobs.jobs) == [*expected, "live"]
            assert jobs.history.statistics() == (0, 0)
            assert {j: seen(jobs, j) for j in expected} == expected
            assert jobs.history.reads == 5
            assert not jobs.jobs["live"].archived
    report = verify_store(directory)
    assert report.ok and (report.archives, report.blobs) == (1, 5), report.lines()


async def test_a_crash_after_archiving_but_before_a_snapshot_replays_the_jobs(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "store"
    with trio.fail_after(TIMEOUT):
        async with open_store(directory) as store:
            db = jobs_db(store)
            db.recover()
            await add_finished(db, "j", ["a"])
            expected = seen(model(db), "j")
            await db.archive()  # no snapshot refers to it: the log still holds the job
        async with open_store(directory) as store:
            db = jobs_db(store)
            assert db.recover() == 2
            assert not model(db).jobs["j"].archived
            assert seen(model(db), "j") == expected
            await db.snapshot()  # archives the job again, in a new archive
            await store.append({"t": "noop"})
            await db.snapshot()  # the first archive, which nothing refers to, is deleted
            assert set(store.archive_sizes()) == {2}
            assert seen(model(db), "j") == expected
    assert verify_store(directory).ok


async def test_a_sparse_archive_is_rearchived_and_deleted(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    with trio.fail_after(TIMEOUT):
        async with open_store(directory, archive_bytes=4096) as store:
            db = jobs_db(store)
            db.recover()
            for n in range(12):
                await add_finished(db, f"j{n:02d}", ["a"])
                await db.archive()
            first = min(store.archive_sizes())
            in_first = [j for j, e in model(db).jobs.items() if e.ref and e.ref[0] == first]
            assert len(in_first) >= 3
            for job_id in in_first[1:]:
                await db.commit({"t": "job.purge", "id": job_id})
            keep = in_first[0]
            expected = seen(model(db), keep)
            await db.snapshot()
            ref = model(db).jobs[keep].ref
            assert ref is not None and ref[0] != first  # copied out of the sparse archive
            assert first not in store.archive_sizes()  # no snapshot refers to it
            model(db).history.drop(keep)
            assert seen(model(db), keep) == expected
    assert verify_store(directory).ok


_WRITER = """
import sys
import trio
from pushy_appliance.db import Database
from pushy_appliance.jobs.model import JobsModel
from pushy_appliance.store import open_store
sys.path.insert(0, sys.argv[2])
from test_history_store import add_finished

async def main():
    async with open_store(sys.argv[1], fsync=True, archive_bytes=8192) as store:
        db = Database(store, {"jobs": JobsModel()})
        db.recover()
        n = len(db.models["jobs"].jobs)

        async def compactor():
            while True:
                await db.archive()
                await trio.sleep(0.002)
                await db.snapshot()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(compactor)
            while True:
                await add_finished(db, f"job{n:05d}", ["a", "b", "c"])
                sys.stdout.write(f"job{n:05d}\\n")
                sys.stdout.flush()
                n += 1

trio.run(main)
"""


async def _run_until_killed(directory: Path, after: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    acknowledged: list[str] = []
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _WRITER, str(directory), str(REPO / "tests")],
        stdout=subprocess.PIPE,
        env=env,
    )
    stdout = proc.stdout
    assert stdout is not None
    try:
        buffer = b""
        killed = False
        while True:
            chunk = await stdout.receive_some(65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            acknowledged.extend(line.decode() for line in lines)
            if not killed and len(acknowledged) >= after:
                proc.send_signal(signal.SIGKILL)
                killed = True
        assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            await stdout.aclose()
    return acknowledged


async def test_kill_9_during_archive_and_snapshot_writes_loses_nothing(tmp_path: Path) -> None:
    """Jobs are stored while another task archives and snapshots without pause; the writer
    is killed three times at whatever point it is. Every acknowledged job is there after
    each restart with its details intact, and the store verifies clean."""
    directory = tmp_path / "store"
    acknowledged: list[str] = []
    with trio.fail_after(60):
        for after in (40, 30, 30):
            acknowledged += await _run_until_killed(directory, after)
            report = verify_store(directory)
            assert report.ok, report.lines()
        async with open_store(directory, archive_bytes=8192) as store:
            db = jobs_db(store)
            db.recover()
            jobs = model(db)
            assert store.statistics().archives > 1
            reference = JobsModel()
            for job_id in acknowledged:
                reference.apply(create(job_id, ["a", "b", "c"]))
                finish(reference, job_id, ["a", "b", "c"])
                assert seen(jobs, job_id) == seen(reference, job_id), job_id
            assert any(jobs.jobs[j].archived for j in acknowledged)
