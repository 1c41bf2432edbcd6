"""The store's archive: blobs appended once, read back by reference, referred to by snapshots
and deleted once neither kept snapshot refers to them; on both stores where the contract is
the same, on files for reopening, damage, failed writes and ``verify_store``."""

from __future__ import annotations

import errno
import os
import struct
import zlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from pushy_appliance.errors import StoreCorruptError, StoreError
from pushy_appliance.store import FileStore, Store, open_store, verify_store
from pushy_appliance.store._format import (
    ARCHIVE_HEADER,
    FRAME_HEADER,
    SNAPSHOT_HEADER,
    archive_name,
    decode_snapshot,
    encode_snapshot,
    snapshot_archives,
)

Opener = Callable[..., AbstractAsyncContextManager[Store]]

TIMEOUT = 10.0


def blob(n: int, size: int = 100) -> bytes:
    return msgpack.packb({"n": n, "pad": b"\xcd" * size})


def ends(refs: list[tuple[int, int, int]]) -> dict[int, int]:
    """The ``archives`` map of a state that refers to ``refs``."""
    out: dict[int, int] = {}
    for number, offset, length in refs:
        out[number] = max(out.get(number, 0), offset + FRAME_HEADER + length)
    return out


@pytest.fixture(params=["memory", "file"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    def open_it(**kwargs: Any) -> AbstractAsyncContextManager[Store]:
        if request.param == "memory":
            return open_store(None, **kwargs)
        kwargs.setdefault("fsync", False)
        return open_store(tmp_path / "store", **kwargs)

    return open_it


def archives(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("archive-*"))


# --- the contract ---------------------------------------------------------------------------


async def test_blobs_are_read_back_by_reference(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            refs = await store.archive([blob(1), blob(2, 5000)])
            more = await store.archive([blob(3)])
            assert [r[0] for r in refs + more] == [1, 1, 1]
            assert refs[0][1] == ARCHIVE_HEADER
            assert refs[1][1] == refs[0][1] + FRAME_HEADER + refs[0][2]
            assert [store.read_archived(r) for r in refs + more] == [
                blob(1),
                blob(2, 5000),
                blob(3),
            ]
            assert await store.archive([]) == []
            stats = store.statistics()
            assert stats.archives == 1
            assert stats.archive_bytes == more[0][1] + FRAME_HEADER + more[0][2]
            assert store.archive_sizes() == {1: stats.archive_bytes}


async def test_an_archive_goes_on_in_a_new_one_past_its_size(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener(archive_bytes=1000) as store:
            refs = [(await store.archive([blob(n, 600)]))[0] for n in range(3)]
            assert [r[0] for r in refs] == [1, 1, 2]  # the second group still fits the first
            assert [store.read_archived(r) for r in refs] == [blob(n, 600) for n in range(3)]


async def test_an_archive_is_deleted_once_no_kept_snapshot_refers_to_it(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener(archive_bytes=100) as store:
            a = await store.archive([blob(1)])  # archive 1
            b = await store.archive([blob(2)])  # archive 2: the first is full
            await store.append({"r": 1})
            await store.write_snapshot({"s": 1}, 1, ends(a + b))
            await store.append({"r": 2})
            await store.write_snapshot({"s": 2}, 2, ends(b))  # 1 is still the older's
            assert set(store.archive_sizes()) == {1, 2}
            await store.append({"r": 3})
            await store.write_snapshot({"s": 3}, 3, ends(b))
            assert set(store.archive_sizes()) == {2}
            assert store.read_archived(b[0]) == blob(2)
            with pytest.raises(StoreCorruptError, match="missing"):
                store.read_archived(a[0])


async def test_the_archive_being_appended_to_is_never_deleted(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            refs = await store.archive([blob(1)])
            for seq in (1, 2):
                await store.append({"r": seq})
                await store.write_snapshot({"s": seq}, seq, {})
            assert set(store.archive_sizes()) == {1}
            assert store.read_archived(refs[0]) == blob(1)


async def test_a_snapshot_may_not_refer_past_an_archive_end(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            refs = await store.archive([blob(1)])
            await store.append({"r": 1})
            with pytest.raises(ValueError, match="archive 1"):
                await store.write_snapshot({}, 1, {1: ends(refs)[1] + 1})
            with pytest.raises(ValueError, match="archive 7"):
                await store.write_snapshot({}, 1, {7: 30})


async def test_blobs_that_are_not_blobs_are_refused(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            with pytest.raises(ValueError):
                await store.archive([b""])
            assert store.archive_sizes() == {}


async def test_a_closed_store_takes_no_blob(opener: Opener) -> None:
    with trio.fail_after(TIMEOUT):
        async with opener() as store:
            pass
        with pytest.raises(StoreError, match="closed"):
            await store.archive([blob(1)])


# --- files ----------------------------------------------------------------------------------


async def test_blobs_survive_reopen_and_a_reopened_store_starts_a_new_archive(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "store"
    with trio.fail_after(TIMEOUT):
        async with open_store(directory) as store:
            refs = await store.archive([blob(1), blob(2)])
            await store.append({"r": 1})
            await store.write_snapshot({"refs": refs}, 1, ends(refs))
        async with open_store(directory) as store:
            state = store.recovered.snapshot
            again = [tuple(r) for r in state["refs"]]
            assert [store.read_archived(r) for r in again] == [blob(1), blob(2)]
            more = await store.archive([blob(3)])
            assert more[0][0] == 2
            assert archives(directory) == [archive_name(1), archive_name(2)]
    report = verify_store(directory)
    assert report.ok, report.problems
    assert (report.archives, report.blobs) == (2, 3)
    assert report.lines()[2] == f"  2 archive(s), 3 blob(s), {report.archive_bytes} byte(s)"


async def test_a_store_whose_snapshot_needs_a_missing_archive_does_not_open(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "store"
    with trio.fail_after(TIMEOUT):
        async with open_store(directory, fsync=False) as store:
            refs = await store.archive([blob(1)])
            await store.append({"r": 1})
            await store.write_snapshot({}, 1, ends(refs))
        path = directory / archive_name(1)
        data = path.read_bytes()
        path.write_bytes(data[:-1])
        with pytest.raises(StoreCorruptError, match="has only"):
            async with open_store(directory, fsync=False):
                pass
        report = verify_store(directory)
        assert not report.ok
        assert any("refers to blobs up to byte" in p for p in report.problems), report.problems
        path.unlink()
        with pytest.raises(StoreCorruptError, match="is missing"):
            async with open_store(directory, fsync=False):
                pass
        assert any("missing" in p for p in verify_store(directory).problems)


async def test_a_torn_group_at_an_archive_end_is_noted_not_a_problem(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    with trio.fail_after(TIMEOUT):
        async with open_store(directory, fsync=False) as store:
            refs = await store.archive([blob(1)])
            await store.append({"r": 1})
            await store.write_snapshot({}, 1, ends(refs))
        with (directory / archive_name(1)).open("ab") as f:
            f.write(b"\x00\x00\x01\x00torn")  # a group's first bytes, cut off by a crash
        report = verify_store(directory)
        assert report.ok, report.problems
        assert any("nothing refers to them" in n for n in report.notes)
        async with open_store(directory, fsync=False) as store:
            assert store.read_archived(refs[0]) == blob(1)


async def test_a_damaged_blob_fails_its_read_and_verify(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    with trio.fail_after(TIMEOUT):
        async with open_store(directory, fsync=False) as store:
            refs = await store.archive([blob(1), blob(2)])
            await store.append({"r": 1})
            await store.write_snapshot({}, 1, ends(refs))
        path = directory / archive_name(1)
        data = bytearray(path.read_bytes())
        data[refs[0][1] + FRAME_HEADER + 3] ^= 0x40
        path.write_bytes(bytes(data))
        async with open_store(directory, fsync=False) as store:
            with pytest.raises(StoreCorruptError, match="CRC"):
                store.read_archived(refs[0])
        report = verify_store(directory)
        assert any("cannot be read" in p for p in report.problems), report.problems


async def test_a_failed_archive_write_is_abandoned_and_the_next_group_starts_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "store"
    with trio.fail_after(TIMEOUT):
        async with open_store(directory) as store:
            assert isinstance(store, FileStore)
            first = await store.archive([blob(1)])
            real_fsync = os.fsync
            archive_fd = store._archive_fd

            def failing_fsync(fd: int) -> None:
                if fd == archive_fd:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                real_fsync(fd)

            monkeypatch.setattr(os, "fsync", failing_fsync)
            with pytest.raises(StoreError, match="cannot write the archive"):
                await store.archive([blob(2)])
            monkeypatch.setattr(os, "fsync", real_fsync)
            second = await store.archive([blob(3)])
            assert second[0][0] == 2
            assert store.read_archived(first[0]) == blob(1)
            assert store.read_archived(second[0]) == blob(3)
            await store.append({"r": 1})
            await store.write_snapshot({}, 1, ends(first + second))
    report = verify_store(directory)
    assert report.ok, report.problems


async def test_the_older_kept_snapshot_protects_its_archives_after_a_reopen(
    tmp_path: Path,
) -> None:
    """After a reopen the store knows only the loaded snapshot's archives; it reads the older
    kept snapshot's from its file before deleting anything."""
    directory = tmp_path / "store"
    with trio.fail_after(TIMEOUT):
        async with open_store(directory, fsync=False, archive_bytes=100) as store:
            a = await store.archive([blob(1)])
            await store.append({"r": 1})
            await store.write_snapshot({}, 1, ends(a))
            b = await store.archive([blob(2)])
            await store.append({"r": 2})
            await store.write_snapshot({}, 2, ends(b))
        async with open_store(directory, fsync=False, archive_bytes=100) as store:
            await store.append({"r": 3})
            await store.write_snapshot({}, 3, ends(b))  # kept: 2 and 3, neither needs 1
            assert set(store.archive_sizes()) == {2}
            await store.append({"r": 4})
            await store.write_snapshot({}, 4, {})
            assert set(store.archive_sizes()) == {2}  # snapshot 3 still needs it
        assert archives(directory) == [archive_name(2)]


def test_snapshots_of_version_1_still_load() -> None:
    state = {"identity": {"users": []}}
    payload = msgpack.packb(state, use_bin_type=True)
    current = encode_snapshot(state, 5)
    assert decode_snapshot(current, path="x", seq=5).state == state
    assert snapshot_archives(encode_snapshot(state, 5, {3: 99}), path="x", seq=5) == {3: 99}
    # a version 1 file: the same header with version 1 and the state alone as payload
    head = struct.pack(">8sHHQQ", b"PUSHYSNP", 1, 0, 5, len(payload))
    old = head + struct.pack(">I", zlib.crc32(payload, zlib.crc32(head))) + payload
    assert len(old) == SNAPSHOT_HEADER + len(payload)
    decoded = decode_snapshot(old, path="x", seq=5)
    assert (decoded.state, decoded.archives) == (state, {})
    assert snapshot_archives(old, path="x", seq=5) == {}
