"""Recovery of a FileStore from real files damaged in the ways crashes and disks damage them.

Each test writes a store, damages its files, reopens it and asserts exactly which records
survive, what went to ``quarantine/`` and what ``verify_store`` says.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from pushy_appliance.db import Database
from pushy_appliance.errors import StoreCorruptError
from pushy_appliance.store import open_store, verify_store
from pushy_appliance.store._format import SEGMENT_HEADER, encode_record

TIMEOUT = 10.0
REPO = Path(__file__).resolve().parent.parent


def rec(n: int) -> dict[str, Any]:
    return {"n": n, "pad": b"\xab" * 20}


def seg(directory: Path, first: int) -> Path:
    return directory / f"segment-{first:016d}.log"


def snap(directory: Path, seq: int) -> Path:
    return directory / f"snapshot-{seq:016d}.msgpack"


def offset_of(n: int, first: int = 1) -> int:
    """Byte offset of record ``n`` (made by :func:`rec`) in a segment starting at ``first``."""
    return SEGMENT_HEADER + sum(len(encode_record(rec(k))) for k in range(first, n))


def quarantine(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / "quarantine").iterdir())


async def write(directory: Path, numbers: range, **kwargs: Any) -> None:
    kwargs.setdefault("fsync", False)
    async with open_store(directory, **kwargs) as store:
        for n in numbers:
            assert await store.append(rec(n)) == n


async def reopen(directory: Path) -> tuple[Any, int, list[tuple[int, Any]], int]:
    async with open_store(directory, fsync=False) as store:
        r = store.recovered
        return r.snapshot, r.snapshot_seq, r.records, store.last_seq


def expect(numbers: range) -> list[tuple[int, Any]]:
    return [(n, rec(n)) for n in numbers]


def segment_contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.glob("segment-*")}


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# --- a damaged newest segment: cut, kept aside, logged ---------------------------------------


async def test_truncated_mid_record_is_cut_and_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pushy_appliance.store")
    with trio.fail_after(TIMEOUT):
        await write(tmp_path, range(1, 11))
        path = seg(tmp_path, 1)
        original = path.read_bytes()
        cut_at = offset_of(10)
        os.truncate(path, cut_at + 5)

        report = verify_store(tmp_path)
        assert not report.ok
        assert report.records == 9
        assert any(f"at byte {cut_at}: torn frame header" in p for p in report.problems)

        _, _, records, last_seq = await reopen(tmp_path)
    assert records == expect(range(1, 10))
    assert last_seq == 9
    assert path.stat().st_size == cut_at
    name = f"{path.name}.{cut_at}.bad"
    assert quarantine(tmp_path) == [name]
    assert (tmp_path / "quarantine" / name).read_bytes() == original[cut_at : cut_at + 5]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in w and "cut 5 byte(s)" in w for w in warnings)

    with trio.fail_after(TIMEOUT):
        await write(tmp_path, range(10, 12))
        assert (await reopen(tmp_path))[2] == expect(range(1, 12))
    report = verify_store(tmp_path)
    assert report.ok
    assert any("quarantine" in n for n in report.notes)


async def test_a_flipped_byte_in_the_newest_segment_cuts_from_that_record(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        await write(tmp_path, range(1, 11))
        path = seg(tmp_path, 1)
        bad_at = offset_of(5)
        flip(path, bad_at + 12)  # inside record 5's payload
        original = path.read_bytes()
        _, _, records, last_seq = await reopen(tmp_path)
    assert records == expect(range(1, 5))
    assert last_seq == 4
    assert path.stat().st_size == bad_at
    kept = tmp_path / "quarantine" / f"{path.name}.{bad_at}.bad"
    assert kept.read_bytes() == original[bad_at:]


async def test_garbage_appended_is_cut_and_every_record_survives(tmp_path: Path) -> None:
    garbage = b"\x00\x00\x00\x07garbage!" + os.urandom(3)
    with trio.fail_after(TIMEOUT):
        await write(tmp_path, range(1, 6))
        path = seg(tmp_path, 1)
        end = path.stat().st_size
        with path.open("ab") as f:
            f.write(garbage)
        _, _, records, last_seq = await reopen(tmp_path)
    assert records == expect(range(1, 6))
    assert last_seq == 5
    assert path.stat().st_size == end
    assert quarantine(tmp_path) == [f"{path.name}.{end}.bad"]
    assert (tmp_path / "quarantine" / f"{path.name}.{end}.bad").read_bytes() == garbage


async def test_a_zero_filled_tail_is_cut(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        await write(tmp_path, range(1, 4))
        path = seg(tmp_path, 1)
        end = path.stat().st_size
        os.truncate(path, end + 4096)  # what some filesystems leave after a crash
        _, _, records, _ = await reopen(tmp_path)
    assert records == expect(range(1, 4))
    assert path.stat().st_size == end
    assert (tmp_path / "quarantine" / f"{path.name}.{end}.bad").read_bytes() == bytes(4096)


async def test_the_same_damage_twice_gets_two_quarantine_files(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        await write(tmp_path, range(1, 3))
        path = seg(tmp_path, 1)
        end = path.stat().st_size
        for _ in range(2):
            with path.open("ab") as f:
                f.write(b"junk")
            await reopen(tmp_path)
    assert quarantine(tmp_path) == [f"{path.name}.{end}.1.bad", f"{path.name}.{end}.bad"]


async def test_a_bad_header_on_the_newest_segment_drops_that_segment_only(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        # segment_bytes=1: one group per segment, so segment N holds exactly record N.
        await write(tmp_path, range(1, 6), segment_bytes=1)
        newest = seg(tmp_path, 5)
        original = newest.read_bytes()
        flip(newest, 2)  # in the magic
        damaged = newest.read_bytes()
        assert original != damaged
        _, _, records, last_seq = await reopen(tmp_path)
        assert records == expect(range(1, 5))
        assert last_seq == 4
        assert quarantine(tmp_path) == [f"{newest.name}.0.bad"]
        assert (tmp_path / "quarantine" / f"{newest.name}.0.bad").read_bytes() == damaged
        # Recovery started a fresh segment where the bad one was; appends go on from 5.
        await write(tmp_path, range(5, 7))
        assert (await reopen(tmp_path))[2] == expect(range(1, 7))
    assert verify_store(tmp_path).ok


async def test_a_torn_header_left_by_a_crash_during_rotation(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        await write(tmp_path, range(1, 4))
        torn = seg(tmp_path, 4)
        torn.write_bytes(b"PUSHYL")
        _, _, records, last_seq = await reopen(tmp_path)
    assert records == expect(range(1, 4))
    assert last_seq == 3
    assert quarantine(tmp_path) == [f"{torn.name}.0.bad"]
    assert (tmp_path / "quarantine" / f"{torn.name}.0.bad").read_bytes() == b"PUSHYL"


# --- damage that must not be cut: refuse to open ---------------------------------------------


async def test_damage_in_an_older_segment_refuses_to_open(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        await write(tmp_path, range(1, 6), segment_bytes=1)
        older = seg(tmp_path, 2)
        flip(older, SEGMENT_HEADER + 10)
        before = segment_contents(tmp_path)
        with pytest.raises(StoreCorruptError) as caught:
            await reopen(tmp_path)
    assert caught.value.path == str(older)
    assert caught.value.offset == SEGMENT_HEADER
    assert "CRC" in caught.value.reason
    # Nothing was cut or moved.
    assert segment_contents(tmp_path) == before
    assert quarantine(tmp_path) == []
    report = verify_store(tmp_path)
    assert not report.ok
    assert report.segments == 5
    assert report.records == 4
    assert any(older.name in p and "will not open" in p for p in report.problems)
    assert report.lines()[0].startswith(f"store {tmp_path}: DAMAGED")


async def test_an_older_record_whose_crc_holds_but_that_is_no_record_refuses_replay(
    tmp_path: Path,
) -> None:
    """Opening checks older segments' frames by CRC; their records are decoded when they
    are replayed, and one that is not a map refuses the replay (as damage there refuses the
    open): the server does not start on it."""
    with trio.fail_after(TIMEOUT):
        await write(tmp_path, range(1, 6), segment_bytes=1)
        older = seg(tmp_path, 2)
        payload = msgpack.packb([2, "not a map"])
        length = struct.pack(">I", len(payload))
        frame = length + struct.pack(">I", zlib.crc32(payload, zlib.crc32(length))) + payload
        older.write_bytes(older.read_bytes()[:SEGMENT_HEADER] + frame)
        async with open_store(tmp_path, fsync=False) as store:
            assert len(store.recovered.records) == 5
            with pytest.raises(StoreCorruptError, match="record is a list") as caught:
                Database(store, {}).recover()
    assert caught.value.path == str(older)
    assert any(older.name in p and "record is a list" in p for p in verify_store(tmp_path).problems)


async def test_a_missing_middle_segment_refuses_to_open(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        await write(tmp_path, range(1, 6), segment_bytes=1)
        seg(tmp_path, 3).unlink()
        with pytest.raises(StoreCorruptError, match="expected 3"):
            await reopen(tmp_path)
    report = verify_store(tmp_path)
    assert not report.ok
    assert any("records 3..3 are missing" in p for p in report.problems)


# --- snapshots -----------------------------------------------------------------------------


async def _two_snapshots(directory: Path) -> None:
    """Records 1..12; snapshots at 4 and 8."""
    async with open_store(directory, fsync=False) as store:
        for n in range(1, 13):
            await store.append(rec(n))
            if n in (4, 8):
                await store.write_snapshot({"upto": n}, n)


async def test_deleting_the_newest_snapshot_recovers_from_the_older(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        await _two_snapshots(tmp_path)
        snap(tmp_path, 8).unlink()
        snapshot, snapshot_seq, records, last_seq = await reopen(tmp_path)
    assert (snapshot, snapshot_seq, last_seq) == ({"upto": 4}, 4, 12)
    assert records == expect(range(5, 13))


async def test_a_corrupt_newest_snapshot_is_quarantined_and_the_older_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pushy_appliance.store")
    with trio.fail_after(TIMEOUT):
        await _two_snapshots(tmp_path)
        newest = snap(tmp_path, 8)
        flip(newest, newest.stat().st_size - 1)
        damaged = newest.read_bytes()
        report = verify_store(tmp_path)
        assert not report.ok
        assert any(newest.name in p and "CRC" in p for p in report.problems)
        snapshot, snapshot_seq, records, last_seq = await reopen(tmp_path)
    assert (snapshot, snapshot_seq, last_seq) == ({"upto": 4}, 4, 12)
    assert records == expect(range(5, 13))
    assert not newest.exists()
    assert (tmp_path / "quarantine" / f"{newest.name}.bad").read_bytes() == damaged
    assert any(newest.name in r.getMessage() for r in caplog.records)
    assert verify_store(tmp_path).ok


async def test_no_usable_snapshot_and_compacted_segments_refuses_to_open(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(tmp_path, fsync=False, segment_bytes=1) as store:
            for n in range(1, 11):
                await store.append(rec(n))
                if n in (3, 6, 9):
                    await store.write_snapshot({"upto": n}, n)
        assert not seg(tmp_path, 1).exists()
        for seq in (6, 9):
            flip(snap(tmp_path, seq), 0)
        with pytest.raises(StoreCorruptError, match=r"records 1\.\.6 are missing"):
            await reopen(tmp_path)


async def test_a_leftover_tmp_snapshot_is_removed(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(tmp_path, fsync=False) as store:
            for n in range(1, 6):
                await store.append(rec(n))
            await store.write_snapshot({"upto": 3}, 3)
        # A crash while writing the snapshot at 5: only part of the temporary file exists.
        tmp = tmp_path / (snap(tmp_path, 5).name + ".tmp")
        tmp.write_bytes(b"PUSHYSNP\x00\x01")
        assert any(".tmp" in n for n in verify_store(tmp_path).notes)
        snapshot, snapshot_seq, records, last_seq = await reopen(tmp_path)
    assert not tmp.exists()
    assert (snapshot, snapshot_seq, last_seq) == ({"upto": 3}, 3, 5)
    assert records == expect(range(4, 6))
    assert quarantine(tmp_path) == []


# --- verify ---------------------------------------------------------------------------------


async def test_verify_a_healthy_store(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        await _two_snapshots(tmp_path)
    report = verify_store(tmp_path)
    assert report.ok
    assert report.problems == []
    assert report.snapshots == 2
    # Segments 1 (1..4), 5 (5..8), 9 (9..12); the first is covered by snapshot 4: deleted.
    assert report.segments == 2
    assert report.records == 8
    assert report.bytes == sum(len(b) for b in segment_contents(tmp_path).values())
    assert report.lines() == [
        f"store {tmp_path}: OK",
        f"  2 segment(s), 8 record(s), {report.bytes} byte(s), 2 snapshot(s)",
    ]


def test_verify_a_missing_directory(tmp_path: Path) -> None:
    report = verify_store(tmp_path / "nope")
    assert not report.ok
    assert "nope" in report.problems[0]


# --- kill -9 --------------------------------------------------------------------------------

_WRITER = """
import sys
import trio
from pushy_appliance.store import open_store

async def writer(store, w):
    i = 0
    while True:
        seq = await store.append({"w": w, "i": i, "pad": b"x" * 64})
        sys.stdout.write(f"{seq} {w} {i}\\n")
        sys.stdout.flush()
        i += 1

async def main():
    async with open_store(sys.argv[1], fsync=True, segment_bytes=2048) as store:
        sys.stdout.write(f"ready {store.last_seq}\\n")
        sys.stdout.flush()
        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, store, w)

trio.run(main)
"""


async def test_every_acknowledged_record_survives_kill_9(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    acknowledged: list[tuple[int, int, int]] = []
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", _WRITER, str(directory)],
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
                for line in lines:
                    fields = line.split()
                    if fields[0] != b"ready":
                        seq, w, i = map(int, fields)
                        acknowledged.append((seq, w, i))
                if not killed and len(acknowledged) >= 400:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
            assert await proc.wait() == -signal.SIGKILL
        finally:
            if proc.returncode is None:
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
                await stdout.aclose()

        _, _, records, last_seq = await reopen(directory)

    assert len(acknowledged) >= 400
    by_seq = dict(records)
    assert [seq for seq, _ in records] == list(range(1, last_seq + 1))
    for seq, w, i in acknowledged:
        assert by_seq[seq] == {"w": w, "i": i, "pad": b"x" * 64}
    assert last_seq >= max(seq for seq, _, _ in acknowledged)
    assert len(list(directory.glob("segment-*.log"))) > 1
