"""The store contract, run against both MemoryStore and FileStore.

Every test that does not need files takes the ``opener`` fixture and so runs twice. Tests of
durability across a reopen need files and take ``tmp_path`` directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from pushy_appliance import fsutil
from pushy_appliance.errors import StoreError, StoreUnavailableError
from pushy_appliance.store import (
    FileStore,
    MemoryStore,
    Store,
    StoreStatistics,
    open_postgres_store,
    open_store,
    verify_store,
)
from pushy_appliance.store._format import (
    SEGMENT_HEADER,
    encode_record,
    encode_segment_header,
    scan_segment,
)

Opener = Callable[..., AbstractAsyncContextManager[Store]]

TIMEOUT = 10.0


@pytest.fixture(params=["memory", "file", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """``opener(**kwargs)`` opens a fresh store of the parametrized kind (``postgres``: in a
    new schema of the session's private PostgreSQL server; the file store's ``fsync`` and
    ``segment_bytes`` mean nothing there)."""
    pg_url = request.getfixturevalue("pg_url") if request.param == "postgres" else ""

    def open_it(**kwargs: Any) -> AbstractAsyncContextManager[Store]:
        if request.param == "memory":
            return open_store(None, **kwargs)
        if request.param == "postgres":
            kwargs.pop("fsync", None)
            kwargs.pop("segment_bytes", None)
            return open_postgres_store(pg_url, **kwargs)
        kwargs.setdefault("fsync", False)
        return open_store(tmp_path / "store", **kwargs)

    return open_it


async def reopen(directory: Path, **kwargs: Any) -> tuple[Any, int, list[tuple[int, Any]], int]:
    """Open, read what was recovered, close: ``(snapshot, snapshot_seq, records, last_seq)``."""
    kwargs.setdefault("fsync", False)
    async with open_store(directory, **kwargs) as store:
        r = store.recovered
        return r.snapshot, r.snapshot_seq, r.records, store.last_seq


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("segment-*.log"))


def snapshot_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("snapshot-*"))


# --- the contract, for both implementations -------------------------------------------------


async def test_append_returns_increasing_seqs(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            assert store.last_seq == 0
            assert store.recovered.records == []
            assert store.recovered.snapshot is None
            seqs = [await store.append({"n": n}) for n in range(3)]
            assert seqs == [1, 2, 3]
            assert store.last_seq == 3


async def test_the_head_covers_every_acknowledged_append(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            assert await store.head() == 0
            seq = await store.append_many([{"n": n} for n in range(3)])
            assert await store.head() == seq == 3
            assert await store.append({"n": 3}) == 4
            assert await store.head() == 4


async def test_append_many_is_one_group(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            assert await store.append_many([{"n": n} for n in range(5)]) == 5
            assert store.statistics().fsyncs == 1
            assert await store.append({"n": 5}) == 6
            assert store.statistics().fsyncs == 2


async def test_append_many_of_nothing_writes_nothing(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            assert await store.append_many([]) == 0
            await store.append({"a": 1})
            assert await store.append_many([]) == 1
            assert store.statistics().fsyncs == 1


async def test_statistics_values(opener: Opener, request: pytest.FixtureRequest) -> None:
    is_file = "file" in request.node.callspec.id
    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            empty = store.statistics()
            assert empty == StoreStatistics(
                records=0,
                bytes=SEGMENT_HEADER if is_file else 0,
                segments=1 if is_file else 0,
                last_seq=0,
                snapshot_seq=0,
                fsyncs=0,
                pending=0,
            )
            records = [{"n": n, "blob": b"\x00" * n} for n in range(3)]
            for r in records:
                await store.append(r)
            framed = sum(len(encode_record(r)) for r in records)
            assert store.statistics() == StoreStatistics(
                records=3,
                bytes=framed + (SEGMENT_HEADER if is_file else 0),
                segments=1 if is_file else 0,
                last_seq=3,
                snapshot_seq=0,
                fsyncs=3,
                pending=0,
            )
            await store.write_snapshot({"upto": 2}, 2)
            after = store.statistics()
            assert (after.records, after.last_seq, after.snapshot_seq) == (1, 3, 2)
            if is_file:
                assert after.segments == 2  # rotated after the snapshot
                assert isinstance(store, FileStore)
                on_disk = sum(p.stat().st_size for p in store.directory.glob("segment-*"))
                assert after.bytes == on_disk


async def test_concurrent_appends_are_group_committed(opener: Opener) -> None:
    seqs: list[int] = []

    async def one(store: Store, n: int) -> None:
        seqs.append(await store.append({"task": n}))

    with trio.fail_after(TIMEOUT):
        async with opener(fsync=True) as store:
            async with trio.open_nursery() as nursery:
                for n in range(50):
                    nursery.start_soon(one, store, n)
            stats = store.statistics()
    assert sorted(seqs) == list(range(1, 51))
    assert stats.last_seq == 50
    assert stats.pending == 0
    assert 1 <= stats.fsyncs < 50


async def test_record_that_msgpack_cannot_hold_fails_only_its_caller(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            with pytest.raises(TypeError):
                await store.append({"when": object()})
            with pytest.raises(TypeError):
                await store.append(["not", "a", "dict"])  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await store.append_many([{"ok": 1}, {"bad": {1, 2}}])
            assert store.statistics().pending == 0
            assert await store.append({"ok": True}) == 1


async def test_snapshot_seq_must_lie_between_the_last_snapshot_and_last_seq(
    opener: Opener,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            await store.append_many([{"n": n} for n in range(3)])
            with pytest.raises(ValueError, match="outside"):
                await store.write_snapshot({}, 4)
            await store.write_snapshot({"at": 2}, 2)
            with pytest.raises(ValueError, match="outside"):
                await store.write_snapshot({}, 1)
            with pytest.raises(TypeError):
                await store.write_snapshot({"x": object()}, 3)
            await store.write_snapshot({"at": 2, "again": True}, 2)  # same seq: replaced
            assert store.statistics().snapshot_seq == 2


async def test_only_two_snapshots_are_kept(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener(segment_bytes=1) as store:
            for n in range(1, 10):
                await store.append({"n": n})
                if n % 3 == 0:
                    await store.write_snapshot({"upto": n}, n)
            stats = store.statistics()
            assert stats.snapshot_seq == 9
            assert stats.records == 0
            if isinstance(store, MemoryStore):
                assert store.snapshots == [(6, {"upto": 6}), (9, {"upto": 9})]
                # records 7..9 are still held for a recovery from snapshot 6
                assert stats.bytes == sum(len(encode_record({"n": n})) for n in (7, 8, 9))


async def test_failed_commit_fails_every_waiter_and_refuses_writes_until_a_retry_succeeds(
    opener: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes: list[object] = []

    async def one(store: Store, n: int) -> None:
        try:
            outcomes.append(await store.append({"n": n}))
        except StoreError as e:
            outcomes.append(e)

    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            assert await store.append({"n": -1}) == 1
            original = store._commit  # type: ignore[attr-defined]

            async def broken(frames: list[bytes], first_seq: int) -> None:
                await trio.lowlevel.checkpoint()
                raise StoreError("disk on fire")

            monkeypatch.setattr(store, "_commit", broken)
            async with trio.open_nursery() as nursery:
                for n in range(5):
                    nursery.start_soon(one, store, n)
            assert len(outcomes) == 5
            assert all(isinstance(o, StoreUnavailableError) for o in outcomes)
            assert all(str(o) == "store unavailable: disk on fire" for o in outcomes)
            assert not store.writable
            with pytest.raises(StoreUnavailableError, match="disk on fire"):
                await store.append({"n": 99})
            with pytest.raises(StoreUnavailableError, match="disk on fire"):
                await store.write_snapshot({}, 1)
            stats = store.statistics()
            assert (stats.last_seq, stats.pending, stats.writable, stats.refused) == (
                1,
                0,
                False,
                6,
            )
            # the disk is back: the writer's retry finds out, and the failed seqs are reused
            monkeypatch.setattr(store, "_commit", original)
            await store.wait_writable()
            assert store.writable
            assert await store.append({"n": 5}) == 2
            assert store.statistics().refused == 6


async def test_exit_commits_what_is_still_queued(
    opener: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = trio.Event()
    seqs: list[int] = []

    async def one(store: Store, n: int) -> None:
        seqs.append(await store.append({"n": n}))

    async def open_gate_when_stuck() -> None:
        await trio.testing.wait_all_tasks_blocked()
        gate.set()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as outer:
            async with opener() as store:
                original = store._commit  # type: ignore[attr-defined]

                async def gated(frames: list[bytes], first_seq: int) -> None:
                    await gate.wait()
                    await original(frames, first_seq)

                monkeypatch.setattr(store, "_commit", gated)
                for n in range(10):
                    outer.start_soon(one, store, n)
                await trio.testing.wait_all_tasks_blocked()
                assert store.statistics().pending == 10
                assert store.statistics().last_seq == 0
                outer.start_soon(open_gate_when_stuck)
            assert store.last_seq == 10
    assert sorted(seqs) == list(range(1, 11))
    with pytest.raises(StoreError, match="closed"):
        await store.append({"late": True})


async def test_a_stuck_writer_is_given_up_after_close_timeout(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes: list[object] = []

    async def one(store: Store, n: int) -> None:
        try:
            outcomes.append(await store.append({"n": n}))
        except StoreError as e:
            outcomes.append(str(e))

    async def stuck(frames: list[bytes], first_seq: int) -> None:
        await trio.sleep_forever()

    with trio.fail_after(60):
        async with trio.open_nursery() as outer:
            async with open_store(None, close_timeout=5.0) as store:
                monkeypatch.setattr(store, "_commit", stuck)
                for n in range(4):
                    outer.start_soon(one, store, n)
                await trio.testing.wait_all_tasks_blocked()
                start = trio.current_time()
            assert trio.current_time() - start == pytest.approx(5.0)
    assert outcomes == ["the store closed before the record was durable"] * 4
    assert store.statistics().pending == 0
    assert any("not flushed within 5.0 s" in r.getMessage() for r in caplog.records)


async def test_an_error_in_the_block_propagates_unwrapped(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(KeyError, match="boom"):
        async with opener() as store:
            await store.append({"n": 1})
            raise KeyError("boom")


async def test_cancelling_the_block_still_closes_the_store(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        with trio.CancelScope() as scope:
            async with opener() as store:
                await store.append({"n": 1})
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        with pytest.raises(StoreError, match="closed"):
            await store.append({"n": 2})


async def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_bytes"):
        async with open_store(tmp_path, segment_bytes=0):
            pass
    with pytest.raises(ValueError, match="queue_size"):
        async with open_store(None, queue_size=0):
            pass


# --- durability: file store only -----------------------------------------------------------


async def test_records_survive_reopen(tmp_path: Path) -> None:
    records = [
        {"n": n, "b": b"\xff" * n, "f": 0.5, "none": None, "l": [1, {"k": "v"}]} for n in range(20)
    ]
    with trio.fail_after(TIMEOUT):
        async with open_store(tmp_path, fsync=False, segment_bytes=300) as store:
            for r in records[:10]:
                await store.append(r)
            await store.append_many(records[10:])
        assert len(segment_files(tmp_path)) > 1
        snapshot, snapshot_seq, recovered, last_seq = await reopen(tmp_path)
        assert (snapshot, snapshot_seq, last_seq) == (None, 0, 20)
        assert recovered == list(enumerate(records, start=1))
        async with open_store(tmp_path, fsync=False) as store:
            assert await store.append({"n": "next"}) == 21
        assert (await reopen(tmp_path))[2][-1] == (21, {"n": "next"})
    assert verify_store(tmp_path).ok


async def test_snapshot_then_reopen_yields_snapshot_and_later_records_only(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(tmp_path, fsync=True) as store:
            await store.append_many([{"n": n} for n in range(1, 6)])
            await store.write_snapshot({"sum": 15, "keys": {1: "int keys too"}}, 5)
            await store.append({"n": 6})
            await store.append({"n": 7})
        snapshot, snapshot_seq, records, last_seq = await reopen(tmp_path)
    assert snapshot == {"sum": 15, "keys": {1: "int keys too"}}
    assert snapshot_seq == 5
    assert records == [(6, {"n": 6}), (7, {"n": 7})]
    assert last_seq == 7


async def test_snapshot_behind_last_seq_replays_the_rest(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(tmp_path, fsync=False) as store:
            await store.append_many([{"n": n} for n in range(1, 6)])
            await store.write_snapshot({"upto": 3}, 3)
        _, snapshot_seq, records, last_seq = await reopen(tmp_path)
    assert snapshot_seq == 3
    assert records == [(4, {"n": 4}), (5, {"n": 5})]
    assert last_seq == 5


async def test_old_segments_and_snapshots_are_deleted_after_two_snapshots(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        # segment_bytes=1: every group lands in its own segment, so the layout is exact.
        async with open_store(tmp_path, fsync=False, segment_bytes=1) as store:
            for n in range(1, 11):
                await store.append({"n": n})
                if n in (3, 6, 9):
                    await store.write_snapshot({"upto": n}, n)
            stats = store.statistics()
    assert snapshot_files(tmp_path) == [
        "snapshot-0000000000000006.msgpack",
        "snapshot-0000000000000009.msgpack",
    ]
    # Records 1..6 are in the older kept snapshot; 7.. stay for a recovery from it.
    assert segment_files(tmp_path) == [f"segment-{n:016d}.log" for n in (7, 8, 9, 10)]
    assert stats.segments == 4
    snapshot, snapshot_seq, records, last_seq = await reopen(tmp_path)
    assert (snapshot, snapshot_seq, records, last_seq) == ({"upto": 9}, 9, [(10, {"n": 10})], 10)
    assert verify_store(tmp_path).ok


async def test_a_second_open_of_the_same_directory_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(tmp_path, fsync=False) as store:
            await store.append({"n": 1})
            with pytest.raises(StoreError, match="already open"):
                async with open_store(tmp_path, fsync=False):
                    pass
        # Released on exit: it opens again.
        assert (await reopen(tmp_path))[3] == 1


async def test_a_failing_disk_makes_the_file_store_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    with trio.fail_after(TIMEOUT):
        async with open_store(tmp_path, fsync=False) as store:
            await store.append({"n": 1})
            monkeypatch.setattr(fsutil, "write_all", no_space)
            with pytest.raises(StoreUnavailableError, match="No space left"):
                await store.append({"n": 2})
            with pytest.raises(StoreUnavailableError, match="No space left"):
                await store.append({"n": 3})
        monkeypatch.undo()
        assert (await reopen(tmp_path))[2] == [(1, {"n": 1})]


async def test_the_directory_is_created_with_its_quarantine(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "store"
    with trio.fail_after(TIMEOUT):
        async with open_store(directory, fsync=False):
            pass
    assert (directory / "quarantine").is_dir()
    assert segment_files(directory) == ["segment-0000000000000001.log"]
    assert (directory / "segment-0000000000000001.log").read_bytes() == encode_segment_header(1)
    assert os.stat(directory / "segment-0000000000000001.log").st_mode & 0o077 == 0


# --- the framing, for any record ------------------------------------------------------------

_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
_value = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(st.text(), _value, max_size=5), max_size=8))
def test_any_records_survive_framing_and_scanning(records: list[dict[str, Any]]) -> None:
    data = encode_segment_header(7) + b"".join(encode_record(r) for r in records)
    scan = scan_segment(data, path="mem", first_seq=7)
    assert scan.damage is None
    assert scan.end == len(data)
    assert scan.records == records
