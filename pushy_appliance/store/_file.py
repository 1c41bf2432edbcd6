"""FileStore: the append-only store in a directory (the format is in ``_format``).

Opening recovers, in a worker thread:

1. ``snapshot-*.msgpack.tmp`` left by a crash during a snapshot is removed.
2. The newest snapshot that passes its checks is loaded. One that fails is moved to
   ``quarantine/<name>.bad`` (logged as a warning) and the next older one is tried.
3. The segments holding records after that snapshot are read and every record is checked.
   Damage in the newest segment is a torn or corrupt tail: its bytes are copied to
   ``quarantine/<segment>.<offset>.bad`` and fsynced, then the segment is truncated there
   (removed if its header is the damaged part), with a warning naming the file and the byte
   count. Damage in any older segment, or a gap in the seqs, raises
   :class:`~pushy_appliance.errors.StoreCorruptError` and changes nothing: records after it
   were acknowledged, and silently dropping them is not an option.
4. Appends continue in the newest segment, or in a new one when there is none or its end
   does not meet the newest seq.

A process holds an exclusive ``flock`` on ``lock`` while the store is open, so a second
server on the same directory fails at open instead of interleaving writes.

Writing: each group is one ``write`` to the newest segment and one ``fsync``. A segment that
has reached ``segment_bytes`` is closed before the next group, and a new one is created with
its header fsynced and the directory fsynced, before any record in it is acknowledged.

A failed write or fsync (``ENOSPC``, ``EIO``, ``EFBIG`` past the file size limit) leaves the
segment in an unknown state past the end of the last durable group: a partial write put some
of the group's bytes there, and after a failed fsync the kernel may have dropped the dirty
pages or kept them, so a later fsync that succeeds proves nothing about them. The segment is
therefore cut back (``ftruncate`` to the durable size, then ``fsync``) before anything else is
written to it; when that fails too, each retry of the writer tries it again first. A retry
then writes as many zero bytes as the failed group had (at least 4 KiB, at most 1 MiB) at the
end of the segment, fsyncs them and cuts them off again: only when all of that succeeds does
the store take writes again, so a disk that is still full, or a file still at its size limit,
keeps refusing. (A crash in the middle of a retry leaves those zeros as a damaged tail,
which the next open cuts off into quarantine like any torn group.) A segment due to be rotated
is rotated by the retry, since that is what the next write would do.
A snapshot is written with :func:`~pushy_appliance.fsutil.write_durably` (staged as
``snapshot-<seq>.msgpack.tmp``, fsynced, renamed, the directory fsynced). After a snapshot the
writer rotates likewise, keeps the two newest snapshots, and deletes older snapshots and every
segment whose records are all covered by the older kept one.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import trio

from .. import fsutil
from ..errors import StoreCorruptError, StoreError, StoreUnavailableError
from ._base import GroupCommitStore, Recovered
from ._format import (
    decode_snapshot,
    encode_segment_header,
    parse_segment_name,
    parse_snapshot_name,
    scan_segment,
    segment_name,
    snapshot_name,
)

__all__ = ["LOCK_NAME", "QUARANTINE_DIR", "FileStore"]

log = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"
LOCK_NAME = "lock"
_TMP = fsutil.TEMP_SUFFIX


@dataclasses.dataclass(slots=True)
class _Segment:
    """A segment file; ``size`` is where its last complete (durable) group ends."""

    first_seq: int
    path: Path
    size: int


@dataclasses.dataclass(slots=True)
class _Opened:
    """Everything recovery found and opened, handed to :class:`FileStore`."""

    directory: Path
    lock_fd: int
    recovered: Recovered
    last_seq: int
    segments: list[_Segment]
    snapshots: list[int]
    fd: int
    current_records: int


# --- small file helpers ---------------------------------------------------------------------


def _write_new_file(path: Path, data: bytes, *, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fsutil.write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _quarantine_path(directory: Path, stem: str) -> Path:
    """A free ``quarantine/<stem>.bad`` (``<stem>.<n>.bad`` when taken)."""
    qdir = directory / QUARANTINE_DIR
    candidate = qdir / f"{stem}.bad"
    n = 1
    while candidate.exists():
        candidate = qdir / f"{stem}.{n}.bad"
        n += 1
    return candidate


def _lock(directory: Path) -> int:
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{directory} is already open (another pushy process?)") from None
    return fd


def _create_segment(directory: Path, first_seq: int, *, fsync: bool) -> tuple[int, _Segment]:
    """Create ``segment-<first_seq>.log`` with its header, durable with its directory entry."""
    path = directory / segment_name(first_seq)
    header = encode_segment_header(first_seq)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    try:
        fsutil.write_all(fd, header)
        if fsync:
            os.fsync(fd)
            fsutil.fsync_dir(directory)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return fd, _Segment(first_seq, path, len(header))


def _unavailable(e: OSError, path: Path) -> StoreUnavailableError:
    return StoreUnavailableError(e.strerror or str(e), str(path))


# --- recovery -------------------------------------------------------------------------------


def _cut_tail(
    directory: Path, path: Path, data: bytes, damage: StoreCorruptError, fsync: bool
) -> None:
    """Keep the damaged bytes in quarantine, then cut them off (or remove a headless file)."""
    offset = damage.offset
    bad = data[offset:]
    kept_in = "nowhere (empty)"
    if bad:
        target = _quarantine_path(directory, f"{path.name}.{offset}")
        _write_new_file(target, bad, fsync=fsync)
        if fsync:
            fsutil.fsync_dir(target.parent)
        kept_in = str(target)
    if offset == 0:
        path.unlink()
    else:
        os.truncate(path, offset)
        if fsync:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    if fsync:
        fsutil.fsync_dir(directory)
    log.warning(
        "store: %s: damaged at byte %d (%s); cut %d byte(s) to the end of the file, kept in %s",
        path,
        offset,
        damage.reason,
        len(bad),
        kept_in,
    )


def _load_snapshot(directory: Path, seqs: list[int], fsync: bool) -> tuple[Any | None, int]:
    """Load the newest valid snapshot; quarantine (and drop from ``seqs``) invalid newer ones."""
    for seq in reversed(list(seqs)):
        path = directory / snapshot_name(seq)
        try:
            return decode_snapshot(path.read_bytes(), path=str(path), seq=seq), seq
        except StoreCorruptError as e:
            target = _quarantine_path(directory, path.name)
            os.replace(path, target)
            if fsync:
                fsutil.fsync_dir(target.parent)
                fsutil.fsync_dir(directory)
            seqs.remove(seq)
            log.warning(
                "store: snapshot %s is damaged (%s); moved to %s, trying an older one",
                path,
                e.reason,
                target,
            )
    return None, 0


def _recover_locked(directory: Path, lock_fd: int, fsync: bool) -> _Opened:
    names = os.listdir(directory)
    for name in names:
        if name.endswith(_TMP) and parse_snapshot_name(name[: -len(_TMP)]) is not None:
            (directory / name).unlink()
            log.warning("store: removed %s, left by a snapshot that did not finish", name)
    snapshots = sorted(s for s in map(parse_snapshot_name, names) if s is not None)
    firsts = sorted(s for s in map(parse_segment_name, names) if s is not None)

    state, base = _load_snapshot(directory, snapshots, fsync)

    segments: list[_Segment] = []
    records: list[tuple[int, dict[str, Any]]] = []
    prev_end: int | None = None  # seq of the last record of the last segment read
    tail: tuple[_Segment, int] | None = None  # the newest segment read, with its record count
    for index, first in enumerate(firsts):
        path = directory / segment_name(first)
        newest = index == len(firsts) - 1
        if not newest and firsts[index + 1] - 1 <= base:
            # Every record in it is covered by the snapshot: not needed to recover.
            segments.append(_Segment(first, path, path.stat().st_size))
            continue
        data = path.read_bytes()
        scan = scan_segment(data, path=str(path), first_seq=first)
        if scan.damage is not None:
            if not newest:
                raise scan.damage
            _cut_tail(directory, path, data, scan.damage, fsync)
            if not scan.header_ok:
                continue
        if prev_end is None and first > base + 1:
            raise StoreCorruptError(
                str(path), 0, f"records {base + 1}..{first - 1} are missing before this segment"
            )
        if prev_end is not None and first != prev_end + 1:
            raise StoreCorruptError(
                str(path), 0, f"segment starts at seq {first}, expected {prev_end + 1}"
            )
        records.extend(
            (first + k, record) for k, record in enumerate(scan.records) if first + k > base
        )
        prev_end = first + len(scan.records) - 1
        segment = _Segment(first, path, scan.end)
        segments.append(segment)
        tail = (segment, len(scan.records))

    last_seq = max(base, prev_end if prev_end is not None else 0)
    if tail is not None and tail[0] is segments[-1] and prev_end == last_seq:
        fd = os.open(tail[0].path, os.O_WRONLY | os.O_APPEND)
        current_records = tail[1]
    else:
        fd, segment = _create_segment(directory, last_seq + 1, fsync=fsync)
        segments.append(segment)
        current_records = 0
    log.info(
        "store: opened %s: snapshot at seq %d, %d record(s) replayed, last seq %d",
        directory,
        base,
        len(records),
        last_seq,
    )
    return _Opened(
        directory=directory,
        lock_fd=lock_fd,
        recovered=Recovered(state, base, records),
        last_seq=last_seq,
        segments=segments,
        snapshots=snapshots,
        fd=fd,
        current_records=current_records,
    )


def _recover(directory: Path, fsync: bool) -> _Opened:
    """Create or lock the directory and recover; runs in a worker thread."""
    try:
        (directory / QUARANTINE_DIR).mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(directory)
    except OSError as e:
        raise StoreError(f"cannot open the store in {directory}: {e.strerror or e}") from e
    try:
        return _recover_locked(directory, lock_fd, fsync)
    except OSError as e:
        os.close(lock_fd)
        raise StoreError(f"cannot recover the store in {directory}: {e}") from e
    except BaseException:
        os.close(lock_fd)
        raise


# --- the store ------------------------------------------------------------------------------


class FileStore(GroupCommitStore):
    """The store in a directory. Create it with :meth:`open` (or ``open_store``).

    Args:
        opened: what recovery found.
        fsync: whether to fsync (``False`` only for fast unit tests).
        segment_bytes: size after which the writer starts a new segment.
        queue_size: capacity of the writer's request channel.
    """

    def __init__(
        self, opened: _Opened, *, fsync: bool, segment_bytes: int, queue_size: int
    ) -> None:
        super().__init__(opened.recovered, opened.last_seq, queue_size=queue_size)
        self._dir = opened.directory
        self._lock_fd: int | None = opened.lock_fd
        self._segments = opened.segments
        self._snapshots = opened.snapshots
        self._fd: int | None = opened.fd
        self._current_records = opened.current_records
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._bytes = sum(s.size for s in self._segments)
        self._dirty = False
        """The current segment may hold bytes past its durable size (a failed group's)."""

    @classmethod
    async def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        fsync: bool = True,
        segment_bytes: int = 64 * 1024 * 1024,
        queue_size: int = 4096,
    ) -> FileStore:
        """Create or open the store in ``directory`` and recover it (see the module doc).

        The caller owns the result: run :meth:`run` in a nursery, then :meth:`aclose` and
        :meth:`release`. ``open_store`` does all of that.

        Raises:
            ValueError: when ``segment_bytes`` or ``queue_size`` is below 1.
            StoreCorruptError: damage that recovery must not cut (see the module doc).
            StoreError: the directory cannot be created, locked, read or written.

        Cancellation: recovery runs to the end in a worker thread (shielded), so that the
        lock it takes is never leaked; cancellation takes effect at the caller's next
        checkpoint.
        """
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be at least 1")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        with trio.CancelScope(shield=True):
            opened = await trio.to_thread.run_sync(_recover, Path(directory), fsync)
        return cls(opened, fsync=fsync, segment_bytes=segment_bytes, queue_size=queue_size)

    @property
    def directory(self) -> Path:
        """The store's directory."""
        return self._dir

    def release(self) -> None:
        """Close the segment and give up the lock. Call after the writer has stopped."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- writing (each *_sync runs in a worker thread, called only by the writer task) ---------

    async def _commit(self, frames: list[bytes], first_seq: int) -> int | None:
        await trio.to_thread.run_sync(self._commit_sync, frames, first_seq)
        return None

    def _commit_sync(self, frames: list[bytes], first_seq: int) -> None:
        current = self._segments[-1]
        if self._current_records and current.size >= self._segment_bytes:
            try:
                self._rotate(first_seq)
            except OSError as e:
                raise _unavailable(e, self._dir / segment_name(first_seq)) from e
            current = self._segments[-1]
        data = b"".join(frames)
        assert self._fd is not None
        try:
            # From the first byte written until the group is durable (or cut off again),
            # the segment may hold bytes past its durable size.
            self._dirty = True
            fsutil.write_all(self._fd, data)
            if self._fsync:
                os.fsync(self._fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                self._cut_back()  # at once if it can; if not, the first retry does it
            raise _unavailable(e, current.path) from e
        self._dirty = False
        current.size += len(data)
        self._bytes += len(data)
        self._current_records += len(frames)

    def _cut_back(self) -> None:
        """Truncate the current segment to its durable size, durably.

        Raises:
            OSError: the truncation or its fsync failed; the segment is still dirty.
        """
        assert self._fd is not None
        os.ftruncate(self._fd, self._segments[-1].size)
        if self._fsync:
            os.fsync(self._fd)
        self._dirty = False

    async def _repair(self, probe_bytes: int) -> None:
        await trio.to_thread.run_sync(self._repair_sync, probe_bytes, self._last_seq)

    def _repair_sync(self, probe_bytes: int, last_seq: int) -> None:
        path = self._segments[-1].path
        try:
            if self._dirty:
                self._cut_back()
            current = self._segments[-1]
            if self._current_records and current.size >= self._segment_bytes:
                path = self._dir / segment_name(last_seq + 1)
                self._rotate(last_seq + 1)
            assert self._fd is not None
            self._dirty = True
            try:
                fsutil.write_all(self._fd, bytes(probe_bytes))
                if self._fsync:
                    os.fsync(self._fd)
            finally:
                self._cut_back()
        except OSError as e:
            raise _unavailable(e, path) from e

    def _rotate(self, first_seq: int) -> None:
        # A file of that name can only be what a rotation that failed half-way left (its
        # removal failing too): seq ``first_seq`` was never written, so it holds no record.
        (self._dir / segment_name(first_seq)).unlink(missing_ok=True)
        fd, segment = _create_segment(self._dir, first_seq, fsync=self._fsync)
        old, self._fd = self._fd, fd
        self._segments.append(segment)
        self._bytes += segment.size
        self._current_records = 0
        if old is not None:
            os.close(old)

    async def _save_snapshot(self, contents: bytes, seq: int) -> None:
        await trio.to_thread.run_sync(self._save_snapshot_sync, contents, seq)

    def _save_snapshot_sync(self, contents: bytes, seq: int) -> None:
        final = self._dir / snapshot_name(seq)
        try:
            fsutil.write_durably(final, contents, mode=0o600, fsync=self._fsync)
        except OSError as e:
            raise StoreError(f"cannot write snapshot {final}: {e.strerror or e}") from e

    async def _after_snapshot(self, seq: int) -> None:
        await trio.to_thread.run_sync(self._after_snapshot_sync, seq, self._last_seq)

    def _after_snapshot_sync(self, seq: int, last_seq: int) -> None:
        if seq not in self._snapshots:
            bisect.insort(self._snapshots, seq)
        if self._current_records:
            try:
                self._rotate(last_seq + 1)
            except OSError as e:
                raise StoreError(f"cannot start a new segment: {e.strerror or e}") from e
        obsolete, self._snapshots = self._snapshots[:-2], self._snapshots[-2:]
        removed = [self._dir / snapshot_name(s) for s in obsolete]
        if len(self._snapshots) == 2:
            older = self._snapshots[0]
            keep = len(self._segments) - 1  # the current segment always stays
            for index in range(len(self._segments) - 1):
                if self._segments[index + 1].first_seq - 1 > older:
                    keep = index
                    break
            for segment in self._segments[:keep]:
                removed.append(segment.path)
                self._bytes -= segment.size
            del self._segments[:keep]
        failed = 0
        for path in removed:
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                failed += 1
                log.warning("store: cannot remove obsolete %s: %s", path, e.strerror or e)
        if removed and self._fsync:
            try:
                fsutil.fsync_dir(self._dir)
            except OSError as e:
                log.warning("store: cannot fsync %s: %s", self._dir, e.strerror or e)
        log.info(
            "store: snapshot at seq %d; removed %d obsolete file(s)", seq, len(removed) - failed
        )

    def _segment_figures(self) -> tuple[int, int]:
        return len(self._segments), self._bytes
