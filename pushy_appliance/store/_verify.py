"""``verify_store``: read every byte of a store and say what is wrong, changing nothing."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..errors import StoreCorruptError
from ._file import QUARANTINE_DIR
from ._format import (
    decode_snapshot,
    parse_segment_name,
    parse_snapshot_name,
    scan_segment,
    segment_name,
    snapshot_name,
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
        notes: harmless findings (leftover temporary files, quarantined files).
    """

    ok: bool
    segments: int
    records: int
    bytes: int
    snapshots: int
    problems: list[str]
    directory: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as operator-readable lines, verdict first."""
        verdict = "OK" if self.ok else f"DAMAGED ({len(self.problems)} problem(s))"
        out = [
            f"store {self.directory}: {verdict}",
            f"  {self.segments} segment(s), {self.records} record(s), {self.bytes} byte(s), "
            f"{self.snapshots} snapshot(s)",
        ]
        out.extend(f"  problem: {p}" for p in self.problems)
        out.extend(f"  note: {n}" for n in self.notes)
        return out


def verify_store(directory: str | os.PathLike[str]) -> VerifyReport:
    """Check every snapshot and every record's CRC of the store in ``directory``.

    Read-only: it neither locks nor repairs; what opening the store would do about each
    problem is said in its line. It may run next to a live server, whose newest segment can
    then show a group that is being written as a torn tail.

    Args:
        directory: the store's directory (``DATA/store``).

    Returns:
        The report; ``ok`` is false when any record or snapshot is damaged, or seqs are
        missing that no valid snapshot covers.
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
    snapshot_seqs = sorted(s for s in map(parse_snapshot_name, names) if s is not None)
    for seq in snapshot_seqs:
        path = root / snapshot_name(seq)
        try:
            decode_snapshot(path.read_bytes(), path=str(path), seq=seq)
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
    return VerifyReport(
        ok=not problems,
        segments=len(firsts),
        records=records,
        bytes=size,
        snapshots=len(snapshot_seqs),
        problems=problems,
        directory=str(root),
        notes=notes,
    )
