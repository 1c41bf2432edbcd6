"""FileStore: the append-only store in a directory (the format is in ``_format``).

Opening recovers, in a worker thread:

1. ``snapshot-*.msgpack.tmp`` left by a crash during a snapshot is removed.
2. The newest snapshot that passes its checks is loaded. One that fails is moved to
   ``quarantine/<name>.bad`` (logged as a warning) and the next older one is tried.
3. The segments holding records after that snapshot are read and every record's frame is
   checked (length and CRC; the newest segment's records are decoded too). The records are
   not kept: ``recovered.records`` reads them back one segment at a time when it is
   iterated (``_replay``). Damage in the newest segment is a torn or corrupt tail: its
   bytes are copied to ``quarantine/<segment>.<offset>.bad`` and fsynced, then the segment
   is truncated there (removed if its header is the damaged part), with a warning naming
   the file and the byte count. Damage in any older segment, or a gap in the seqs, raises
   :class:`~pushy_appliance.errors.StoreCorruptError` and changes nothing: records after it
   were acknowledged, and silently dropping them is not an option (a record of an older
   segment whose CRC holds but which does not decode raises it when it is replayed).
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
segment whose records are all covered by the older kept one, and every archive that neither
kept snapshot refers to (except the one being appended to).

Archives: blobs are appended to the newest archive, one group per ``write`` and ``fsync``; an
archive that reached ``archive_bytes`` is left, and a new one is created (header fsynced, the
directory fsynced) before any of its blobs is referred to. Opening never appends to an
archive written before: the first group after an open starts a new one, so a torn group a
crash left at the end of an archive stays there, unreferenced (``verify_store`` notes it).
A group whose write or fsync fails is abandoned with its archive: the next group starts a
new one. Opening refuses a store whose snapshot refers to an archive that is missing or
shorter than the end the snapshot needs (:class:`~pushy_appliance.errors.StoreCorruptError`).
A blob is read with one ``pread`` and its CRC checked.

Why one module of about 700 lines: the file store's segments, recovery of a torn tail,
snapshots and archives share one directory's invariants (what a crash may leave where), and
keeping them together keeps those invariants readable in one place.
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
    FRAME_HEADER,
    BlobRef,
    archive_name,
    check_blob,
    decode_snapshot,
    encode_archive_header,
    encode_segment_header,
    parse_archive_name,
    parse_segment_name,
    parse_snapshot_name,
    scan_frames,
    segment_name,
    snapshot_archives,
    snapshot_name,
)
from ._replay import RecordLog, SegmentPart

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
    archives: dict[int, int]
    """Archive number → size of every archive file."""
    snapshot_archives: dict[int, dict[int, int]]
    """Snapshot seq → the archives it refers to, for the snapshot that was loaded."""


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


def _load_snapshot(
    directory: Path, seqs: list[int], fsync: bool
) -> tuple[Any | None, int, dict[int, int]]:
    """Load the newest valid snapshot (state, seq, archives); quarantine (and drop from
    ``seqs``) invalid newer ones."""
    for seq in reversed(list(seqs)):
        path = directory / snapshot_name(seq)
        try:
            snapshot = decode_snapshot(path.read_bytes(), path=str(path), seq=seq)
            return snapshot.state, seq, snapshot.archives
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
    return None, 0, {}


def _check_archives(directory: Path, seq: int, used: dict[int, int], sizes: dict[int, int]) -> None:
    """Refuse a snapshot whose archives are missing or cut short."""
    for number, end in sorted(used.items()):
        size = sizes.get(number)
        if size is None or size < end:
            found = "is missing" if size is None else f"has only {size} bytes"
            raise StoreCorruptError(
                str(directory / archive_name(number)),
                0,
                f"snapshot {seq} refers to it up to byte {end}, but it {found}",
            )


def _recover_locked(directory: Path, lock_fd: int, fsync: bool) -> _Opened:
    names = os.listdir(directory)
    for name in names:
        if name.endswith(_TMP) and parse_snapshot_name(name[: -len(_TMP)]) is not None:
            (directory / name).unlink()
            log.warning("store: removed %s, left by a snapshot that did not finish", name)
    snapshots = sorted(s for s in map(parse_snapshot_name, names) if s is not None)
    firsts = sorted(s for s in map(parse_segment_name, names) if s is not None)
    archives = {
        n: (directory / archive_name(n)).stat().st_size
        for n in (parse_archive_name(name) for name in names)
        if n is not None
    }

    state, base, used = _load_snapshot(directory, snapshots, fsync)
    _check_archives(directory, base, used, archives)

    segments: list[_Segment] = []
    parts: list[SegmentPart] = []
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
        # records are decoded when replayed (_replay); the newest segment's are decoded here
        # too, as one that does not decode there is damage to cut, not to refuse
        scan = scan_frames(data, path=str(path), first_seq=first, decode=newest)
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
        parts.append(SegmentPart(path, first, scan.end, scan.count, base))
        prev_end = first + scan.count - 1
        segment = _Segment(first, path, scan.end)
        segments.append(segment)
        tail = (segment, scan.count)

    last_seq = max(base, prev_end if prev_end is not None else 0)
    if tail is not None and tail[0] is segments[-1] and prev_end == last_seq:
        fd = os.open(tail[0].path, os.O_WRONLY | os.O_APPEND)
        current_records = tail[1]
    else:
        fd, segment = _create_segment(directory, last_seq + 1, fsync=fsync)
        segments.append(segment)
        current_records = 0
    records = RecordLog(parts)
    log.info(
        "store: opened %s: snapshot at seq %d, %d record(s) to replay, last seq %d",
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
        archives=archives,
        snapshot_archives={base: used} if state is not None else {},
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
        archive_bytes: size after which the archive goes on in a new file.
    """

    def __init__(
        self,
        opened: _Opened,
        *,
        fsync: bool,
        segment_bytes: int,
        queue_size: int,
        archive_bytes: int = 64 * 1024 * 1024,
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
        self._archive_bytes = archive_bytes
        self._archives = dict(opened.archives)
        self._archive_fd: int | None = None
        """The archive groups are appended to; none until the first group after open."""
        self._archive_current = 0
        self._next_archive = max(self._archives, default=0) + 1
        self._snapshot_archives = dict(opened.snapshot_archives)

    @classmethod
    async def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        fsync: bool = True,
        segment_bytes: int = 64 * 1024 * 1024,
        queue_size: int = 4096,
        archive_bytes: int = 64 * 1024 * 1024,
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
        if segment_bytes < 1 or archive_bytes < 1:
            raise ValueError("segment_bytes and archive_bytes must be at least 1")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        with trio.CancelScope(shield=True):
            opened = await trio.to_thread.run_sync(_recover, Path(directory), fsync)
        return cls(
            opened,
            fsync=fsync,
            segment_bytes=segment_bytes,
            queue_size=queue_size,
            archive_bytes=archive_bytes,
        )

    @property
    def directory(self) -> Path:
        """The store's directory."""
        return self._dir

    def release(self) -> None:
        """Close the segment and give up the lock. Call after the writer has stopped."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._archive_fd is not None:
            os.close(self._archive_fd)
            self._archive_fd = None
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

    async def _after_snapshot(self, seq: int, archives: dict[int, int]) -> None:
        await trio.to_thread.run_sync(self._after_snapshot_sync, seq, self._last_seq, archives)

    def _after_snapshot_sync(self, seq: int, last_seq: int, archives: dict[int, int]) -> None:
        self._snapshot_archives[seq] = archives
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
        for s in obsolete:
            self._snapshot_archives.pop(s, None)
        for number in self._unreferenced_archives():
            removed.append(self._dir / archive_name(number))
            del self._archives[number]
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

    def _unreferenced_archives(self) -> list[int]:
        """Archives neither kept snapshot refers to, but not the one being appended to
        (nothing is appended during a snapshot: it holds the archive lock)."""
        referenced: set[int] = set()
        for seq in self._snapshots:
            used = self._snapshot_archives.get(seq)
            if used is None:
                path = self._dir / snapshot_name(seq)
                try:
                    used = snapshot_archives(path.read_bytes(), path=str(path), seq=seq)
                except (OSError, StoreCorruptError) as e:
                    log.warning("store: keeping every archive: cannot read %s: %s", path, e)
                    return []
                self._snapshot_archives[seq] = used
            referenced.update(used)
        current = self._archive_current if self._archive_fd is not None else None
        return sorted(n for n in self._archives if n not in referenced and n != current)

    def _segment_figures(self) -> tuple[int, int]:
        return len(self._segments), self._bytes

    # --- the archive (each *_sync runs in a worker thread, under the archive lock) -----------

    def archive_sizes(self) -> dict[int, int]:
        return dict(self._archives)

    async def _append_blobs(self, frames: list[bytes]) -> list[BlobRef]:
        return await trio.to_thread.run_sync(self._append_blobs_sync, frames)

    def _new_archive(self) -> None:
        number = self._next_archive
        path = self._dir / archive_name(number)
        header = encode_archive_header(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fsutil.write_all(fd, header)
            if self._fsync:
                os.fsync(fd)
                fsutil.fsync_dir(self._dir)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._next_archive = number + 1
        if self._archive_fd is not None:
            os.close(self._archive_fd)
        self._archive_fd = fd
        self._archive_current = number
        self._archives[number] = len(header)

    def _append_blobs_sync(self, frames: list[bytes]) -> list[BlobRef]:
        path = self._dir / archive_name(self._next_archive)
        try:
            if self._archive_fd is None or self._archives[self._archive_current] >= (
                self._archive_bytes
            ):
                self._new_archive()
            number = self._archive_current
            path = self._dir / archive_name(number)
            assert self._archive_fd is not None
            data = b"".join(frames)
            fsutil.write_all(self._archive_fd, data)
            if self._fsync:
                os.fsync(self._archive_fd)
        except OSError as e:
            if self._archive_fd is not None:
                # what this group left in it is never referred to: go on in a new archive
                os.close(self._archive_fd)
                self._archive_fd = None
                current = self._dir / archive_name(self._archive_current)
                with contextlib.suppress(OSError):
                    self._archives[self._archive_current] = current.stat().st_size
            raise StoreError(f"cannot write the archive {path}: {e.strerror or e}") from e
        refs: list[BlobRef] = []
        offset = self._archives[number]
        for frame in frames:
            refs.append((number, offset, len(frame) - FRAME_HEADER))
            offset += len(frame)
        self._archives[number] = offset
        return refs

    def _read_blob(self, ref: BlobRef) -> bytes:
        number, offset, length = ref
        path = self._dir / archive_name(number)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StoreCorruptError(str(path), offset, "the archive is missing") from None
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror or e}") from e
        try:
            frame = os.pread(fd, FRAME_HEADER + length, offset)
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror or e}") from e
        finally:
            os.close(fd)
        return check_blob(frame, path=str(path), offset=offset, length=length)
