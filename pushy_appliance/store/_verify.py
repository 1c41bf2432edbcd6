"""``verify_store``: read every byte of a store and say what is wrong, changing nothing."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..errors import StoreCorruptError
from ._file import QUARANTINE_DIR
from ._format import (
    FRAME_HEADER,
    archive_name,
    decode_snapshot,
    parse_archive_name,
    parse_segment_name,
    parse_snapshot_name,
    scan_archive,
    scan_segment,
    segment_name,
    snapshot_name,
    unpack,
)

__all__ = ["VerifyReport", "verify_store"]


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of :func:`verify_store`.

    Attributes:
        ok: no problem found (notes do not count).
        segments: number of segment files.
        records: number of intact records in them.
        bytes: total size of the segment files.
        snapshots: number of snapshot files (valid or not).
        problems: one line per problem, naming the file and the byte offset.
        directory: the store's directory.
        notes: harmless findings (leftover temporary files, quarantined files, unreferenced
            bytes at the end of an archive).
        archives: number of archive files.
        blobs: number of intact blobs in them.
        archive_bytes: their total size.
    """

    ok: bool
    segments: int
    records: int
    bytes: int
    snapshots: int
    problems: list[str]
    directory: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    archives: int = 0
    blobs: int = 0
    archive_bytes: int = 0

    def lines(self) -> list[str]:
        """The report as operator-readable lines, verdict first."""
        verdict = "OK" if self.ok else f"DAMAGED ({len(self.problems)} problem(s))"
        out = [
            f"store {self.directory}: {verdict}",
            f"  {self.segments} segment(s), {self.records} record(s), {self.bytes} byte(s), "
            f"{self.snapshots} snapshot(s)",
        ]
        if self.archives:
            out.append(
                f"  {self.archives} archive(s), {self.blobs} blob(s), {self.archive_bytes} byte(s)"
            )
        out.extend(f"  problem: {p}" for p in self.problems)
        out.extend(f"  note: {n}" for n in self.notes)
        return out


def verify_store(directory: str | os.PathLike[str]) -> VerifyReport:
    """Check every snapshot, every record's CRC and every archived blob of the store in
    ``directory`` (each blob's CRC and msgpack; the archives each snapshot refers to are
    there and intact up to the end it needs).

    Read-only: it neither locks nor repairs; what opening the store would do about each
    problem is said in its line. It may run next to a live server, whose newest segment can
    then show a group that is being written as a torn tail.

    Args:
        directory: the store's directory (``DATA/store``).

    Returns:
        The report; ``ok`` is false when any record, snapshot or referenced blob is
        damaged, seqs are missing that no valid snapshot covers, or an archive a valid
        snapshot refers to is missing.
    """
    root = Path(directory)
    problems: list[str] = []
    notes: list[str] = []
    try:
        names = sorted(os.listdir(root))
    except OSError as e:
        return VerifyReport(False, 0, 0, 0, 0, [f"{root}: {e.strerror or e}"], str(root))

    for name in names:
        if name.endswith(".tmp"):
            notes.append(f"{name}: left by an unfinished snapshot; removed at the next open")
    qdir = root / QUARANTINE_DIR
    try:
        quarantined = len(os.listdir(qdir)) if qdir.is_dir() else 0
    except OSError as e:
        problems.append(f"{qdir}: {e.strerror or e}")
        quarantined = 0
    if quarantined:
        notes.append(f"{quarantined} file(s) of cut-off bytes in {qdir}")

    valid_snapshots: list[int] = []
    needed: dict[int, tuple[int, int]] = {}  # archive → (end needed, by the snapshot at seq)
    snapshot_seqs = sorted(s for s in map(parse_snapshot_name, names) if s is not None)
    for seq in snapshot_seqs:
        path = root / snapshot_name(seq)
        try:
            snapshot = decode_snapshot(path.read_bytes(), path=str(path), seq=seq)
            for number, end in snapshot.archives.items():
                if end > needed.get(number, (0, 0))[0]:
                    needed[number] = (end, seq)
            del snapshot
        except StoreCorruptError as e:
            problems.append(f"{e}; the next open moves it to {QUARANTINE_DIR}/")
            continue
        except OSError as e:
            problems.append(f"{path}: {e.strerror or e}")
            continue
        valid_snapshots.append(seq)
    base = max(valid_snapshots, default=0)

    firsts = sorted(s for s in map(parse_segment_name, names) if s is not None)
    records = 0
    size = 0
    expected: int | None = 1  # seq the next segment should start at; None after damage
    for index, first in enumerate(firsts):
        path = root / segment_name(first)
        newest = index == len(firsts) - 1
        try:
            data = path.read_bytes()
        except OSError as e:
            problems.append(f"{path}: {e.strerror or e}")
            expected = None
            continue
        size += len(data)
        scan = scan_segment(data, path=str(path), first_seq=first)
        records += len(scan.records)
        if expected is not None and scan.header_ok and first != expected:
            if first < expected:
                problems.append(
                    f"{path}: starts at seq {first}, overlapping seqs up to {expected - 1}"
                )
            elif first - 1 > base:
                problems.append(
                    f"{path}: records {expected}..{first - 1} are missing and no valid "
                    "snapshot covers them"
                )
        if scan.damage is not None:
            cut = len(data) - scan.damage.offset
            if newest:
                action = f"the next open cuts these {cut} byte(s) off into {QUARANTINE_DIR}/"
            elif firsts[index + 1] - 1 <= base:
                action = (
                    f"{cut} byte(s) to the end of this older segment, whose records the "
                    f"snapshot at seq {base} covers; it is deleted by a coming compaction"
                )
            else:
                action = f"{cut} byte(s) to the end of this older segment; the store will not open"
            problems.append(f"{scan.damage}; {action}")
            expected = None
        else:
            expected = first + len(scan.records)
    archives, blobs, archive_bytes = _verify_archives(root, names, needed, problems, notes)
    return VerifyReport(
        ok=not problems,
        segments=len(firsts),
        records=records,
        bytes=size,
        snapshots=len(snapshot_seqs),
        problems=problems,
        directory=str(root),
        notes=notes,
        archives=archives,
        blobs=blobs,
        archive_bytes=archive_bytes,
    )


def _verify_archives(
    root: Path,
    names: list[str],
    needed: dict[int, tuple[int, int]],
    problems: list[str],
    notes: list[str],
) -> tuple[int, int, int]:
    """Check every archive file; ``(archives, intact blobs, bytes)``."""
    numbers = sorted(n for n in map(parse_archive_name, names) if n is not None)
    for number in sorted(set(needed) - set(numbers)):
        end, seq = needed[number]
        problems.append(
            f"{root / archive_name(number)}: missing, and the snapshot at seq {seq} refers to "
            f"it (up to byte {end}); a store whose newest snapshot needs it does not open"
        )
    blobs = 0
    size = 0
    for number in numbers:
        path = root / archive_name(number)
        try:
            data = path.read_bytes()
        except OSError as e:
            problems.append(f"{path}: {e.strerror or e}")
            continue
        size += len(data)
        scan = scan_archive(data, path=str(path), number=number)
        for offset, length in scan.blobs:
            start = offset + FRAME_HEADER
            try:
                unpack(data[start : start + length])
            except ValueError as e:
                problems.append(f"{path} at byte {offset}: the blob is not msgpack ({e})")
            blobs += 1
        end, seq = needed.get(number, (0, 0))
        if scan.damage is not None:
            cut = len(data) - scan.damage.offset
            if scan.damage.offset < end:
                problems.append(
                    f"{scan.damage}; the snapshot at seq {seq} refers to blobs up to byte "
                    f"{end}: the jobs archived there cannot be read"
                )
            else:
                notes.append(
                    f"{path}: {cut} byte(s) after the last intact blob ({scan.damage.reason}), "
                    "left by a write cut short; nothing refers to them"
                )
        elif len(data) < end:
            problems.append(
                f"{path}: {len(data)} bytes, but the snapshot at seq {seq} refers to blobs up "
                f"to byte {end}"
            )
    return len(numbers), blobs, size
