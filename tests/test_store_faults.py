"""The store when writes fail: refused, never acknowledged, nothing acknowledged lost, and
writable again on its own once the disk is.

Failures are injected at the OS boundary (``write``, ``fsync``, ``ftruncate``, ``open``) into
the file store, and made real by the kernel: a full tmpfs (``ENOSPC``, where this machine lets
the tests mount one) and a process's file size limit (``RLIMIT_FSIZE``: ``EFBIG``, anywhere).
The writer's retry schedule and its log lines are checked on the memory store under trio's
autojump clock (the file store's worker threads and a jumping clock do not mix).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from pushy_appliance import fsutil
from pushy_appliance.db import Database
from pushy_appliance.errors import StoreError, StoreUnavailableError
from pushy_appliance.store import (
    RETRY_MAX,
    FileStore,
    MemoryStore,
    Store,
    open_store,
    verify_store,
)

from helpers import small_tmpfs

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0


def newest_segment(directory: Path) -> Path:
    return sorted(directory.glob("segment-*.log"))[-1]


async def reopen_records(directory: Path) -> list[tuple[int, dict[str, Any]]]:
    async with open_store(directory, fsync=False) as store:
        return list(store.recovered.records)


class Flaky:
    """A stand-in for an ``os`` function that fails with ``errno`` while ``failing`` is set,
    for the file descriptors (or paths) ``match`` accepts; counts the failures."""

    def __init__(self, real: Callable[..., Any], err: int, match: Callable[[Any], bool]) -> None:
        self.real = real
        self.err = err
        self.match = match
        self.failing = True
        self.failures = 0
        self.failed = trio.Event()

    def __call__(self, target: Any, *args: Any) -> Any:
        if self.failing and self.match(target):
            trio.from_thread.run_sync(self._note_failure)
            raise OSError(self.err, os.strerror(self.err))
        return self.real(target, *args)

    def _note_failure(self) -> None:  # in trio's thread, like ``wait_failures``
        self.failures += 1
        self.failed.set()

    async def wait_failures(self, count: int) -> None:
        while self.failures < count:
            self.failed = trio.Event()
            await self.failed.wait()


def segment_fd(store: Store) -> Callable[[Any], bool]:
    assert isinstance(store, FileStore)
    return lambda fd: fd == store._fd


# --- injected at the OS boundary: the file store ----------------------------------------------


async def test_a_failed_fsync_cuts_the_group_off_and_the_store_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(tmp_path, fsync=True) as store:
            await store.append_many([{"n": 1}, {"n": 2}])
            durable = newest_segment(tmp_path).stat().st_size
            fsync = Flaky(os.fsync, errno.EIO, segment_fd(store))
            monkeypatch.setattr(os, "fsync", fsync)
            with pytest.raises(StoreUnavailableError) as refused:
                await store.append_many([{"n": 3}, {"n": 4}])
            assert str(refused.value) == "store unavailable: Input/output error"
            assert refused.value.path == str(newest_segment(tmp_path))
            # the write went through, its fsync did not: the group was cut off at once
            assert newest_segment(tmp_path).stat().st_size == durable
            assert store.statistics().bytes == durable
            with pytest.raises(StoreUnavailableError, match="Input/output error"):
                await store.append({"n": 5})
            await fsync.wait_failures(3)  # the retries fail while the disk does
            assert not store.writable
            fsync.failing = False
            await store.wait_writable()
            assert await store.append({"n": 6}) == 3
            assert store.statistics().refused == 3
        assert await reopen_records(tmp_path) == [(1, {"n": 1}), (2, {"n": 2}), (3, {"n": 6})]
    assert verify_store(tmp_path).ok


async def test_a_partial_write_on_a_full_disk_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write_all = fsutil.write_all
    full = True

    def write_half(fd: int, data: bytes) -> None:
        if full:
            real_write_all(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_all(fd, data)

    with trio.fail_after(TIMEOUT):
        async with open_store(tmp_path, fsync=True) as store:
            await store.append({"n": 1})
            durable = newest_segment(tmp_path).stat().st_size
            monkeypatch.setattr(fsutil, "write_all", write_half)
            with pytest.raises(StoreUnavailableError, match="No space left on device"):
                await store.append({"n": 2, "pad": b"x" * 10_000})
            assert newest_segment(tmp_path).stat().st_size == durable
            full = False
            await store.wait_writable()
            assert await store.append({"n": 3}) == 2
        assert await reopen_records(tmp_path) == [(1, {"n": 1}), (2, {"n": 3})]
    assert verify_store(tmp_path).ok


async def test_a_segment_that_cannot_be_cut_back_takes_no_write_until_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(tmp_path, fsync=True) as store:
            await store.append({"n": 1})
            durable = newest_segment(tmp_path).stat().st_size
            fsync = Flaky(os.fsync, errno.EIO, segment_fd(store))
            ftruncate = Flaky(os.ftruncate, errno.EIO, segment_fd(store))
            monkeypatch.setattr(os, "fsync", fsync)
            monkeypatch.setattr(os, "ftruncate", ftruncate)
            with pytest.raises(StoreUnavailableError):
                await store.append({"n": 2})
            # the failed group is still in the file: nothing may be written after it
            assert newest_segment(tmp_path).stat().st_size > durable
            await ftruncate.wait_failures(2)  # the first retry could not cut it either
            assert newest_segment(tmp_path).stat().st_size > durable
            fsync.failing = ftruncate.failing = False
            await store.wait_writable()
            assert newest_segment(tmp_path).stat().st_size == durable
            assert await store.append({"n": 3}) == 2
        assert await reopen_records(tmp_path) == [(1, {"n": 1}), (2, {"n": 3})]
    assert verify_store(tmp_path).ok


async def test_a_rotation_that_fails_half_way_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new segment whose header cannot be written, nor the file removed, is left behind;
    the retry removes it and starts the segment again."""
    real_write_all = fsutil.write_all
    real_unlink = Path.unlink
    failing = True

    def header_fails(fd: int, data: bytes) -> None:
        if failing and len(data) == 24:  # a segment header
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_all(fd, data)

    def unlink_fails(path: Path, missing_ok: bool = False) -> None:
        if failing and path.name.startswith("segment-") and path.exists():
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_unlink(path, missing_ok=missing_ok)

    with trio.fail_after(TIMEOUT):
        # segment_bytes=1: every group after the first starts a new segment
        async with open_store(tmp_path, fsync=True, segment_bytes=1) as store:
            await store.append({"n": 1})
            monkeypatch.setattr(fsutil, "write_all", header_fails)
            monkeypatch.setattr(Path, "unlink", unlink_fails)
            with pytest.raises(StoreUnavailableError) as refused:
                await store.append({"n": 2})
            assert refused.value.path == str(tmp_path / "segment-0000000000000002.log")
            leftover = tmp_path / "segment-0000000000000002.log"
            assert leftover.stat().st_size == 0
            failing = False
            await store.wait_writable()
            assert await store.append({"n": 3}) == 2
            assert await store.append({"n": 4}) == 3
        assert await reopen_records(tmp_path) == [(1, {"n": 1}), (2, {"n": 3}), (3, {"n": 4})]
    assert verify_store(tmp_path).ok


async def test_the_probe_keeps_refusing_while_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cutting back succeeds on a full disk (it frees space); only a write as large as the
    failed group proves the disk can take it again."""
    with trio.fail_after(TIMEOUT):
        async with open_store(tmp_path, fsync=False) as store:
            await store.append({"n": 1})
            write = Flaky(os.write, errno.ENOSPC, segment_fd(store))
            monkeypatch.setattr(os, "write", write)
            big = {"n": 2, "pad": b"x" * 100_000}
            with pytest.raises(StoreUnavailableError):
                await store.append(big)
            await write.wait_failures(3)  # two retries: each probe failed
            assert not store.writable
            write.failing = False
            await store.wait_writable()
            assert await store.append(big) == 2
        assert await reopen_records(tmp_path) == [(1, {"n": 1}), (2, big)]


async def test_no_rotation_after_a_snapshot_while_a_group_is_not_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(tmp_path, fsync=True) as store:
            await store.append_many([{"n": 1}, {"n": 2}])
            fsync = Flaky(os.fsync, errno.EIO, segment_fd(store))
            ftruncate = Flaky(os.ftruncate, errno.EIO, segment_fd(store))
            monkeypatch.setattr(os, "fsync", fsync)
            monkeypatch.setattr(os, "ftruncate", ftruncate)
            with pytest.raises(StoreUnavailableError):
                await store.append({"n": 3})
            with pytest.raises(StoreUnavailableError):
                await store.write_snapshot({"upto": 2}, 2)
            assert newest_segment(tmp_path).name == "segment-0000000000000001.log"  # not rotated
            fsync.failing = ftruncate.failing = False
            await store.wait_writable()
            await store.write_snapshot({"upto": 2}, 2)
            assert await store.append({"n": 4}) == 3
        async with open_store(tmp_path, fsync=False) as store:
            assert store.recovered.snapshot == {"upto": 2}
            assert store.recovered.records == [(3, {"n": 4})]
    assert verify_store(tmp_path).ok


# --- the writer's schedule, log and waiters: the memory store on the autojump clock ---------


@asynccontextmanager
async def failing_memory_store() -> AsyncIterator[tuple[Store, list[float]]]:
    """A memory store whose next commit fails and whose retries fail until the returned
    list of retry times is ``append``ed a ``-1.0`` (then the next retry succeeds)."""
    retries: list[float] = []
    async with open_store(None) as store:
        failed_once = False

        async def commit(frames: list[bytes], first_seq: int) -> None:
            nonlocal failed_once
            await trio.lowlevel.checkpoint()
            if not failed_once:
                failed_once = True
                raise StoreUnavailableError("No space left on device", "/data/store/seg")

        async def repair(probe_bytes: int) -> None:
            await trio.lowlevel.checkpoint()
            if retries and retries[-1] == -1.0:
                retries[-1] = trio.current_time()
                return
            retries.append(trio.current_time())
            raise StoreUnavailableError("No space left on device", "/data/store/seg")

        store._commit = commit  # type: ignore[attr-defined]
        store._repair = repair  # type: ignore[attr-defined]
        yield store, retries


async def test_retries_back_off_and_the_log_says_so_at_a_sane_rate(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pushy_appliance.store")
    async with failing_memory_store() as (store, retries):
        start = trio.current_time()
        with pytest.raises(StoreUnavailableError):
            await store.append({"n": 1})
        for n in range(3):
            with pytest.raises(StoreUnavailableError):
                await store.append({"n": n})
        await trio.sleep(130.0)
        retries.append(-1.0)  # the disk is back: the next retry succeeds
        await store.wait_writable()
        assert await store.append({"n": 9}) == 1

    delays = [round(t - start, 2) for t in retries]
    # 0.25 s, then doubling up to RETRY_MAX (5 s) between retries
    assert delays[:7] == [0.25, 0.75, 1.75, 3.75, 7.75, 12.75, 17.75]
    assert all(b - a == pytest.approx(RETRY_MAX) for a, b in itertools.pairwise(delays[5:]))
    assert delays[-1] == pytest.approx(132.75)  # the first retry after the disk came back
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines[0] == (
        "ERROR",
        "store: cannot write /data/store/seg: No space left on device; refusing writes until "
        "a retry succeeds (the first in 0.25 s); nothing of the failed group counts as written",
    )
    still = [m for level, m in lines if level == "WARNING" and "still cannot write" in m]
    # retries 1-5 while the backoff grows, then one line a minute (retries 17 and 29)
    assert [m.split("(retry ")[1].split(")")[0] for m in still] == [
        "1",
        "2",
        "3",
        "4",
        "5",
        "17",
        "29",
    ]
    assert still[0] == (
        "store: still cannot write /data/store/seg after 0.2 s (retry 1): No space left on "
        "device; 4 record(s) refused so far; next retry in 0.50 s"
    )
    assert lines[-1] == (
        "WARNING",
        "store: writable again after 132.8 s and 30 retries; 4 record(s) refused meanwhile",
    )
    assert len(lines) == 1 + 7 + 1


async def test_requests_queued_behind_a_failing_group_are_refused_not_written(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    outcomes: dict[int, object] = {}

    async def one(store: Store, n: int) -> None:
        try:
            outcomes[n] = await store.append({"n": n})
        except StoreError as e:
            outcomes[n] = type(e).__name__

    async with open_store(None) as store:
        commits: list[list[bytes]] = []

        async def commit(frames: list[bytes], first_seq: int) -> None:
            commits.append(frames)
            await gate.wait()
            raise StoreUnavailableError("Input/output error")

        store._commit = commit  # type: ignore[attr-defined]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, store, 0)
            await trio.testing.wait_all_tasks_blocked()
            for n in range(1, 4):  # queued while the first group is being written
                nursery.start_soon(one, store, n)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert len(commits) == 1  # only the first group reached the disk
        assert outcomes == dict.fromkeys(range(4), "StoreUnavailableError")
        assert store.statistics().pending == 0
        assert store.statistics().refused == 4


async def test_a_snapshot_whose_clean_up_meets_an_outage_is_kept_without_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A snapshot saved while a group fails: the snapshot stands, the rotation and deletions
    after it (in the writer, behind the failing group) are refused, and so is the call."""
    gate = trio.Event()
    outcomes: dict[str, str] = {}
    async with open_store(None) as store:
        assert isinstance(store, MemoryStore)
        await store.append({"n": 1})

        async def commit(frames: list[bytes], first_seq: int) -> None:
            await gate.wait()
            raise StoreUnavailableError("Input/output error")

        async def append() -> None:
            with pytest.raises(StoreUnavailableError) as e:
                await store.append({"n": 2})
            outcomes["append"] = str(e.value)

        async def snapshot() -> None:
            with pytest.raises(StoreUnavailableError) as e:
                await store.write_snapshot({"upto": 1}, 1)
            outcomes["snapshot"] = str(e.value)

        store._commit = commit  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(snapshot)  # saved, its clean-up queued behind the group
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert outcomes == dict.fromkeys(
            ("append", "snapshot"), "store unavailable: Input/output error"
        )
        assert store.snapshots == [(1, {"upto": 1})]
        assert store.statistics().snapshot_seq == 1


async def test_a_waiter_is_released_when_the_store_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    released = trio.Event()
    async with trio.open_nursery() as nursery:
        async with failing_memory_store() as (store, _):
            with pytest.raises(StoreUnavailableError):
                await store.append({"n": 1})

            async def waiter() -> None:
                await store.wait_writable()
                released.set()

            nursery.start_soon(waiter)
            await trio.sleep(30.0)
            assert not released.is_set()
        await released.wait()
    with pytest.raises(StoreError, match="closed"):
        await store.append({"n": 2})


async def test_commit_applies_nothing_when_the_store_refuses_and_retrying_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Counting:
        def __init__(self) -> None:
            self.applied: list[dict[str, Any]] = []

        def apply(self, record: dict[str, Any]) -> None:
            self.applied.append(record)

        def snapshot(self) -> Any:
            return list(self.applied)

        def load(self, snapshot: Any) -> None:
            self.applied = list(snapshot)

    async with failing_memory_store() as (store, retries):
        model = Counting()
        db = Database(store, {"m": model})
        with pytest.raises(StoreUnavailableError):
            await db.commit({"t": "a"}, {"t": "b"})
        assert model.applied == []
        assert store.last_seq == 0
        with pytest.raises(StoreUnavailableError):
            await db.commit({"t": "c"})
        assert not db.writable
        done: list[int] = []

        async def must_happen() -> None:
            done.append(await db.commit_retrying({"t": "step"}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(must_happen)
            await trio.sleep(20.0)
            assert done == []
            assert model.applied == []
            retries.append(-1.0)
        assert done == [1]
        assert model.applied == [{"t": "step"}]
        assert db.writable


# --- real kernel refusals -----------------------------------------------------------------------


async def test_a_real_full_tmpfs_refuses_and_loses_nothing(tmp_path: Path) -> None:
    """``ENOSPC`` from the kernel on a 1 MiB tmpfs, partial writes included; the space comes
    back when a ballast file is deleted."""
    acknowledged: list[tuple[int, dict[str, Any]]] = []
    with small_tmpfs(tmp_path / "mnt", "1m") as mnt, trio.fail_after(TIMEOUT):
        ballast = mnt / "ballast"
        ballast.write_bytes(b"\0" * 512 * 1024)
        directory = mnt / "store"
        async with open_store(directory, fsync=True) as store:
            n = 0
            with pytest.raises(StoreUnavailableError) as refused:
                while True:
                    record = {"n": n, "pad": os.urandom(7000)}
                    acknowledged.append((await store.append(record), record))
                    n += 1
            assert refused.value.reason == "No space left on device"
            assert len(acknowledged) > 10
            assert newest_segment(directory).stat().st_size == store.statistics().bytes
            with pytest.raises(StoreUnavailableError):
                await store.append({"n": n})
            ballast.unlink()
            await store.wait_writable()
            for m in range(n, n + 5):
                record = {"n": m, "pad": b"after"}
                acknowledged.append((await store.append(record), record))
        assert await reopen_records(directory) == acknowledged
        assert verify_store(directory).ok


_SIZE_LIMITED_WRITER = """
import resource
import sys

import trio

from pushy_appliance.errors import StoreUnavailableError
from pushy_appliance.store import open_store


async def main():
    async with open_store(sys.argv[1], fsync=True) as store:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), hard))
        print("ready", flush=True)
        n = 0
        while True:
            try:
                seq = await store.append({"n": n, "pad": b"x" * 1000})
            except StoreUnavailableError as e:
                print("refused", n, e.reason, flush=True)
                await store.wait_writable()
                print("writable", flush=True)
                continue  # the same record again
            print("ack", seq, n, flush=True)
            n += 1


trio.run(main)
"""


@asynccontextmanager
async def size_limited_writer(directory: Path, limit: int) -> AsyncIterator[Any]:
    """A subprocess appending ``{"n": 0, 1, …}`` as fast as it can, each record again after a
    refusal, with its file size limit (``RLIMIT_FSIZE``) at ``limit`` bytes; yields an
    object with ``lines()`` (an async iterator of its output lines) and ``process``."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _SIZE_LIMITED_WRITER, str(directory), str(limit)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    stdout = proc.stdout

    class Writer:
        process = proc

        @staticmethod
        async def lines() -> AsyncIterator[list[str]]:
            buffer = b""
            async for chunk in stdout:
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    yield line.decode().split(" ", 2)

    try:
        yield Writer
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            await stdout.aclose()


async def test_the_file_size_limit_refuses_until_it_is_raised_and_kill_9_loses_nothing(
    tmp_path: Path,
) -> None:
    """``EFBIG`` (issue 13 #8: the segment's size limit), raised from outside with
    ``prlimit`` as an operator would, then ``kill -9`` in the middle of the traffic."""
    directory = tmp_path / "store"
    acknowledged: dict[int, int] = {}
    refusals: list[tuple[int, str]] = []
    with trio.fail_after(TIMEOUT):
        async with size_limited_writer(directory, 40_000) as writer:
            async for fields in writer.lines():
                if fields[0] == "ack":
                    acknowledged[int(fields[1])] = int(fields[2])
                    if len(acknowledged) == 100:
                        writer.process.send_signal(signal.SIGKILL)
                elif fields[0] == "refused":
                    refusals.append((int(fields[1]), fields[2]))
                    segment = newest_segment(directory)
                    assert segment.stat().st_size < 40_000  # cut back, below the limit
                    pid = writer.process.pid
                    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
                    resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
            assert await writer.process.wait() == -signal.SIGKILL
        records = await reopen_records(directory)
    assert [reason for _, reason in refusals] == ["File too large"]
    assert 0 < refusals[0][0] < 100
    # every acknowledged record is there at its seq; the refused one exactly once (it was
    # appended again after the refusal), and nothing else
    by_seq = dict(records)
    for seq, n in acknowledged.items():
        assert by_seq[seq]["n"] == n
    assert [r["n"] for _, r in records] == list(range(len(records)))
    assert [seq for seq, _ in records] == list(range(1, len(records) + 1))
    assert len(records) >= 100
    assert verify_store(directory).ok


async def test_kill_9_in_the_middle_of_an_outage_loses_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    acknowledged: dict[int, int] = {}
    refused_n = -1
    with trio.fail_after(TIMEOUT):
        async with size_limited_writer(directory, 30_000) as writer:
            async for fields in writer.lines():
                if fields[0] == "ack":
                    acknowledged[int(fields[1])] = int(fields[2])
                elif fields[0] == "refused":
                    refused_n = int(fields[1])
                    writer.process.send_signal(signal.SIGKILL)
            assert await writer.process.wait() == -signal.SIGKILL
        records = await reopen_records(directory)
    assert refused_n == len(acknowledged) > 0
    assert records == [(seq, {"n": n, "pad": b"x" * 1000}) for seq, n in acknowledged.items()]
    assert verify_store(directory).ok


def test_store_unavailable_error_carries_its_fields() -> None:
    e = StoreUnavailableError("No space left on device", "/data/store/segment-1.log")
    assert (e.reason, e.path) == ("No space left on device", "/data/store/segment-1.log")
    assert str(e) == "store unavailable: No space left on device"
    assert isinstance(e, StoreError)
