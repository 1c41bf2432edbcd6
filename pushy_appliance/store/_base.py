"""What every store is, and the group-commit writer both implementations share.

One writer task owns the log. :meth:`GroupCommitStore.append_many` frames the records in the
caller's task (so a record msgpack cannot represent fails right there), puts them on a
bounded channel with an event, and waits. The writer takes everything queued at that moment,
commits it as ONE group (one write, one fsync), assigns the seqs, then wakes every caller of
the group.

A failed commit (a write or fsync error: disk full, I/O error, the file size limit) makes the
store *unavailable*:

- Every caller of the group gets :class:`~pushy_appliance.errors.StoreUnavailableError`, and
  none of its records counts as written: after a failed fsync nobody knows which of the
  group's bytes reached the disk, so the subclass cuts the log back to the end of the last
  group that *was* made durable (:meth:`GroupCommitStore._commit` and ``_repair``). Groups
  committed before keep their seqs and stay durable; the failed group's seqs are reused.
- Later appends and snapshots are refused at once with the same error (requests queued
  before the failure are refused by the writer), so callers learn of it without waiting on
  a disk that cannot take their records. Reads of the models above never touch the store.
- The writer retries on its own, with a backoff from ``RETRY_FIRST`` doubling to
  ``RETRY_MAX`` seconds (``_outage``, which also logs the outage): each retry repairs the log
  and proves a write as large as the failed group succeeds (``_repair``). Once a retry
  succeeds the store takes writes again; :meth:`GroupCommitStore.wait_writable` waits for
  that.

Work that must not interleave with appends (rotating the segment after a snapshot, deleting
what the snapshot made obsolete) travels down the same channel as a control item and runs in
the writer, between two groups.

The archive (finished jobs' details, read back by reference) is written beside the log, not
through it: :meth:`GroupCommitStore.archive` appends a group of blobs with one fsync under
its own lock and returns their references once they are durable. Nothing in the log refers
to the archive; a snapshot does (``write_snapshot(..., archives=...)``), and an archive is
deleted after a snapshot once neither kept snapshot refers to it. A snapshot holds the
archive lock from start to clean-up, so no reference is handed out in between.

Why one module of about 700 lines: the ``Store`` protocol and the group-commit writer that
every backend shares (queue, seqs, outage and retry, snapshot and archive locks) are one
state machine; splitting it would split its locks' rules across files.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import trio

from ..errors import StaleLeaseError, StoreError, StoreUnavailableError
from ._format import BlobRef, encode_blob, encode_record, encode_snapshot
from ._outage import Outage, unavailable

__all__ = ["Fence", "GroupCommitStore", "Recovered", "Store", "StoreStatistics"]

log = logging.getLogger(__name__)

_CLOSED_BEFORE_DURABLE = "the store closed before the record was durable"

Fence = Sequence[tuple[str, int]]
"""``(job_id, epoch)`` pairs an append is fenced with (``docs/SCALE-OUT.md`` §4)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Recovered:
    """What replay found when the store was opened.

    Attributes:
        snapshot: the state of the newest valid snapshot, or ``None`` if there was none.
        snapshot_seq: the seq that snapshot is as of (0 without one).
        records: ``(seq, record)`` for every record with seq > ``snapshot_seq``, in order
            (the file store's reads its segments again each time it is iterated).
    """

    snapshot: Any | None
    snapshot_seq: int
    records: Sequence[tuple[int, dict[str, Any]]]


@dataclasses.dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A cheap picture of a store (see :meth:`Store.statistics`).

    Attributes:
        records: records with seq > ``snapshot_seq``: what a reopen would replay.
        bytes: total size of the segment files (MemoryStore: of the frames it holds).
        segments: number of segment files (0 for MemoryStore).
        last_seq: seq of the newest durable record (0 when empty).
        snapshot_seq: seq of the newest snapshot (0 without one).
        fsyncs: groups committed since open; each is one fsync when ``fsync=True``.
        pending: records handed to ``append``/``append_many`` that are not durable yet.
        writable: the store takes writes (false while a failed write is being retried).
        refused: records refused since open because the store could not write them.
        archives: number of archive files (MemoryStore: of archives held).
        archive_bytes: their total size.
    """

    records: int
    bytes: int
    segments: int
    last_seq: int
    snapshot_seq: int
    fsyncs: int
    pending: int
    writable: bool = True
    refused: int = 0
    archives: int = 0
    archive_bytes: int = 0


class Store(Protocol):
    """The append-only store, as :func:`~pushy_appliance.store.open_store` yields it."""

    @property
    def recovered(self) -> Recovered:
        """What replay found at open."""
        ...

    def release_recovered(self) -> None:
        """Let go of what replay found (the snapshot's state, the records) once the caller
        rebuilt its models from it: ``recovered`` keeps only its ``snapshot_seq``."""
        ...

    @property
    def last_seq(self) -> int:
        """Seq of the newest durable record (0 when empty)."""
        ...

    @property
    def writable(self) -> bool:
        """Whether the store takes writes (false while it retries a failed one)."""
        ...

    @property
    def keeps_archive(self) -> bool:
        """Whether :meth:`archive` keeps blobs (the PostgreSQL store's does not: closed jobs'
        details stay in memory there)."""
        ...

    async def wait_writable(self) -> None:
        """Wait until the store takes writes (at once if it does, or once it is closed)."""
        ...

    @property
    def appliance_id(self) -> str | None:
        """The appliance's id in a cluster sharing the log (the PostgreSQL store's writer
        UUID, new at every open); ``None`` when the store is its log's only appender."""
        ...

    def follow(self) -> AsyncGenerator[list[tuple[int, dict[str, Any]]], None]:
        """Batches of ``(seq, record)`` other appenders appended, in seq order (only when
        :attr:`appliance_id` is not ``None``)."""
        ...

    def key_lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold ``key`` against every other appender of the log for the block."""
        ...

    async def take_compactor(self) -> bool:
        """Whether this store is (now) the one of its log's appenders that snapshots."""
        ...

    async def head(self) -> int:
        """Seq of the newest record in the log, whoever appended it (read-your-writes: every
        append acknowledged before the call started is at or below it)."""
        ...

    async def append(self, record: dict[str, Any]) -> int:
        """Append one record; return its seq once it is durable."""
        ...

    async def append_many(self, records: list[dict[str, Any]], *, fence: Fence = ()) -> int:
        """Append records as one group; return the last seq once all are durable.
        ``fence``: refuse them (``StaleLeaseError``) unless each job's lease still has that
        epoch (checked by a store shared by several appliances; ignored by the others)."""
        ...

    async def write_snapshot(
        self, state: Any, seq: int, archives: Mapping[int, int] | None = None
    ) -> None:
        """Persist ``state`` as everything up to ``seq`` and drop what it makes obsolete;
        ``archives``: the archives it refers to (number → end of the last blob used)."""
        ...

    async def archive(self, blobs: Sequence[bytes]) -> list[BlobRef]:
        """Append blobs to the archive as one group; their references once durable."""
        ...

    def read_archived(self, ref: BlobRef) -> bytes:
        """The payload of an archived blob (one read)."""
        ...

    def archive_sizes(self) -> dict[int, int]:
        """Archive number → its size in bytes, without I/O."""
        ...

    def statistics(self) -> StoreStatistics:
        """Counters, without I/O."""
        ...


@dataclasses.dataclass(eq=False, slots=True)
class _Append:
    frames: list[bytes]
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    last_seq: int = 0
    error: str | StoreUnavailableError | StaleLeaseError | None = None
    fence: Fence = ()


@dataclasses.dataclass(eq=False, slots=True)
class _Control:
    action: Callable[[], Awaitable[None]]
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    error: BaseException | None = None


class GroupCommitStore(abc.ABC):
    """Base of both stores: the request channel, the writer task, seqs and counters.

    Subclasses implement :meth:`_commit` (make frames durable), :meth:`_repair` (after a
    failed commit: undo what it left, prove a write succeeds), :meth:`_save_snapshot` (make a
    snapshot file durable, outside the writer) and :meth:`_after_snapshot` (run in the writer
    once the snapshot is durable), plus :meth:`_segment_figures`.

    Args:
        recovered: what the subclass's recovery found.
        last_seq: the newest seq on disk after recovery.
        queue_size: capacity of the request channel (requests, not records).
    """

    keeps_archive: bool = True
    """Whether :meth:`archive` keeps blobs (see :class:`Store`)."""

    def __init__(self, recovered: Recovered, last_seq: int, *, queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._recovered = recovered
        self._last_seq = last_seq
        self._snapshot_seq = recovered.snapshot_seq
        self._send, self._receive = trio.open_memory_channel[_Append | _Control](queue_size)
        self._snapshot_lock = trio.Lock()
        self._archive_lock = trio.Lock()
        self._writer_done = trio.Event()
        self._closed = False
        self._groups = 0
        self._pending = 0
        self._refused = 0
        self._outage: Outage | None = None
        self._writable_event = trio.Event()
        self._writable_event.set()

    # --- the public face ---------------------------------------------------------------------

    @property
    def recovered(self) -> Recovered:
        """What replay found at open."""
        return self._recovered

    def release_recovered(self) -> None:
        """Let go of what replay found (the snapshot's state, the records) once the caller
        rebuilt its models from it: ``recovered`` keeps only its ``snapshot_seq``."""
        self._recovered = Recovered(None, self._recovered.snapshot_seq, [])

    @property
    def last_seq(self) -> int:
        """Seq of the newest durable record (0 when empty)."""
        return self._last_seq

    @property
    def writable(self) -> bool:
        """Whether the store takes writes (false from a failed commit until a retry succeeds)."""
        return self._outage is None

    @property
    def appliance_id(self) -> str | None:
        """``None``: this store is its log's only appender (the PostgreSQL store says
        otherwise)."""
        return None

    async def follow(self) -> AsyncGenerator[list[tuple[int, dict[str, Any]]], None]:
        """Nothing to follow: this store is its log's only appender.

        Raises:
            StoreError: always (check :attr:`appliance_id` first).
        """
        raise StoreError("this store is its log's only appender: there is nothing to follow")
        yield []  # an async generator, as the PostgreSQL store's

    @asynccontextmanager
    async def key_lock(self, key: str) -> AsyncIterator[None]:
        """Nothing to hold: no other appender shares this log (``Database.exclusive``'s
        in-process lock is enough)."""
        await trio.lowlevel.checkpoint()
        yield

    async def take_compactor(self) -> bool:
        """``True``: this store is its log's only appender, so its owner snapshots it."""
        await trio.lowlevel.checkpoint()
        return True

    async def head(self) -> int:
        """Seq of the newest record in the log: here :attr:`last_seq`, since this store is
        its log's one appender (the PostgreSQL store, which shares its log, asks the
        database).

        Returns:
            The seq (0 when empty); every append acknowledged before the call is at or below.
        """
        await trio.lowlevel.checkpoint()
        return self._last_seq

    async def wait_writable(self) -> None:
        """Wait until the store takes writes: at once if it does, else until a retry of the
        writer succeeds (or the store closes: the next append then says so).

        Cancellation: safe; nothing is changed.
        """
        if self._outage is None:
            await trio.lowlevel.checkpoint()
            return
        await self._writable_event.wait()

    async def append(self, record: dict[str, Any]) -> int:
        """Append one record and wait until it is durable.

        Args:
            record: a dict with string keys whose values msgpack can represent (bytes, str,
                int, float, bool, None, lists and maps of those).

        Returns:
            The record's seq.

        Raises:
            TypeError: when the record is not a msgpack-serializable dict.
            ValueError: when the record is larger than ``MAX_RECORD_BYTES``.
            StoreUnavailableError: the store could not write it (this call's group failed, or
                an earlier one did and the store is not writable yet). The record is not
                stored, and may be appended again once :meth:`wait_writable` returns. (Only
                if the process dies before the writer has cut a failed group off the log may
                a restart find it there, as it may any record whose call had not returned.)
            StoreError: when the store is closed.

        Cancellation: cancelled while the queue is full, nothing was appended. Cancelled
        while waiting for the fsync, the record may still become durable (and be replayed),
        but its seq is not returned.
        """
        return await self.append_many([record])

    async def append_many(self, records: list[dict[str, Any]], *, fence: Fence = ()) -> int:
        """Append records as one group: all become durable with the same fsync.

        Args:
            records: dicts as for :meth:`append`. An empty list writes nothing.
            fence: ``(job_id, epoch)`` pairs: a store whose log several appliances share
                (PostgreSQL) stores the records only if each job's lease still has that
                epoch, checked in the transaction that appends them (``docs/SCALE-OUT.md``
                §4); the file and memory stores ignore it.

        Returns:
            The seq of the last record (``last_seq`` for an empty list).

        Raises:
            TypeError, ValueError, StoreUnavailableError, StoreError: as for :meth:`append`;
            a record that cannot be encoded fails the call before anything is queued. When
            the call fails, none of its records is stored.
            StaleLeaseError: a job of ``fence`` is leased with another epoch now (or not at
                all): nothing of the call was stored; the rest of its group was.

        Cancellation: as for :meth:`append`.
        """
        try:
            self._check_usable()
        except StoreUnavailableError:
            self._count_refused(len(records))
            raise
        frames = [encode_record(r) for r in records]
        if not frames:
            await trio.lowlevel.checkpoint()
            return self._last_seq
        request = _Append(frames, fence=fence)
        # Counted before the send: the writer may commit it before send() returns.
        self._pending += len(frames)
        try:
            await self._send.send(request)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._pending -= len(frames)
            raise StoreError("the store is closed") from None
        except BaseException:
            self._pending -= len(frames)  # cancelled while the queue was full: not queued
            raise
        await request.done.wait()
        if isinstance(request.error, StoreUnavailableError):
            raise StoreUnavailableError(request.error.reason, request.error.path)
        if isinstance(request.error, StaleLeaseError):
            raise StaleLeaseError(request.error.job_id, request.error.epoch)
        if request.error is not None:
            raise StoreError(request.error)
        return request.last_seq

    async def write_snapshot(
        self, state: Any, seq: int, archives: Mapping[int, int] | None = None
    ) -> None:
        """Persist ``state`` as the state after every record up to and including ``seq``.

        The state is serialized in the calling task, so the caller may go on mutating its
        objects once this returns or is cancelled. Then the snapshot file is written and
        made durable, the writer starts a new segment, and only the newest two snapshots are
        kept, with the segments the older one still needs, and the archives one of them
        refers to (or that is still being appended to).

        Args:
            state: a msgpack-serializable object.
            seq: the seq it is as of: ``statistics().snapshot_seq <= seq <= last_seq``.
            archives: archive number → end of the last blob ``state`` refers to there.

        Raises:
            ValueError: when ``seq`` is out of that range.
            TypeError: when ``state`` is not msgpack-serializable.
            StoreUnavailableError: the store is not writable (a failed commit is being
                retried): nothing was written, or, when the outage began while the snapshot
                was being written, the snapshot is durable but the log was not rotated and
                nothing was deleted.
            StoreError: when the store is closed, or a file operation failed (the log and
                the older snapshots are then as they were).

        Cancellation: the state is encoded before anything is written; from then on the work
        is shielded (file I/O in a worker thread cannot be interrupted anyway), so a
        cancellation takes effect once the snapshot and its clean-up are done.
        """
        self._check_usable()
        async with self._snapshot_lock, self._archive_lock:
            if not self._snapshot_seq <= seq <= self._last_seq:
                raise ValueError(
                    f"snapshot seq {seq} outside {self._snapshot_seq}..{self._last_seq}"
                )
            sizes = self.archive_sizes()
            used = dict(archives or {})
            for number, end in used.items():
                if end > sizes.get(number, 0):
                    raise ValueError(f"the state refers to archive {number} up to {end}")
            contents = encode_snapshot(state, seq, used)
            control = _Control(lambda: self._after_snapshot(seq, used))
            with trio.CancelScope(shield=True):
                await self._save_snapshot(contents, seq)
                self._snapshot_seq = seq
                try:
                    await self._send.send(control)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    raise StoreError("the store closed during a snapshot") from None
                await control.done.wait()
            if isinstance(control.error, StoreUnavailableError):
                raise StoreUnavailableError(control.error.reason, control.error.path)
            if control.error is not None:
                raise StoreError(f"after the snapshot: {control.error}") from control.error

    async def archive(self, blobs: Sequence[bytes]) -> list[BlobRef]:
        """Append ``blobs`` to the archive as one group (one write, one fsync).

        Args:
            blobs: payloads, each one msgpack object of 1 .. ``MAX_RECORD_BYTES`` bytes.

        Returns:
            Their references, in order, once all of them are durable; read a payload back
            with :meth:`read_archived`. Nothing refers to them until a snapshot does: keep
            them in the state of the next :meth:`write_snapshot`.

        Raises:
            ValueError: a blob is empty or too large (nothing was written).
            StoreUnavailableError: the store is not writable (a failed commit is being
                retried); nothing was written.
            StoreError: the store is closed, or the write failed (the archive then goes on
                in a new file; the bytes of the failed group are never referred to).

        Cancellation: the write runs to its end (shielded: file I/O in a worker thread
        cannot be interrupted), and its references are lost if the caller was cancelled.
        """
        self._check_usable()
        frames = [encode_blob(b) for b in blobs]
        async with self._archive_lock:
            with trio.CancelScope(shield=True):
                refs = await self._append_blobs(frames) if frames else []
        await trio.lowlevel.checkpoint()
        return refs

    def read_archived(self, ref: BlobRef) -> bytes:
        """The payload of the blob ``ref`` (one read; cheap for a small blob, so the caller
        may stay on the event loop; read a large one from a worker thread).

        Raises:
            StoreCorruptError: the bytes read are not that blob (or the archive is gone).
            StoreError: the archive cannot be read.
        """
        return self._read_blob(ref)

    def statistics(self) -> StoreStatistics:
        """Counters of the store. Cheap: no I/O.

        Returns:
            A frozen :class:`StoreStatistics`.
        """
        segments, size = self._segment_figures()
        archives = self.archive_sizes()
        return StoreStatistics(
            records=self._last_seq - self._snapshot_seq,
            bytes=size,
            segments=segments,
            last_seq=self._last_seq,
            snapshot_seq=self._snapshot_seq,
            fsyncs=self._groups,
            pending=self._pending,
            writable=self._outage is None,
            refused=self._refused,
            archives=len(archives),
            archive_bytes=sum(archives.values()),
        )

    # --- for subclasses ----------------------------------------------------------------------

    @abc.abstractmethod
    async def _commit(self, frames: list[bytes], first_seq: int) -> int | None:
        """Make ``frames`` durable as seqs ``first_seq``…

        Returns:
            ``None`` when the frames got seqs ``first_seq``…; a store whose log other
            writers share (:class:`~._postgres.PostgresStore`) returns the first seq the log
            gave them instead (after every record the others appended meanwhile).

        Raises:
            StoreUnavailableError: a write or fsync failed. None of ``frames`` may count as
                written: the log must end where it ended before the call, or be marked for
                :meth:`_repair` to cut it back there before anything else is written.
        """

    async def _commit_fenced(
        self, requests: list[tuple[list[bytes], Fence]], first_seq: int
    ) -> tuple[int | None, dict[int, StaleLeaseError]]:
        """:meth:`_commit` for a group of which some requests carry a fence: here (a store
        that is its log's only appender) every fence holds and the group is committed whole.

        Returns:
            What :meth:`_commit` returns, and the requests refused (by index in
            ``requests``) with their error; the others got consecutive seqs in order.
        """
        frames = [f for request_frames, _fence in requests for f in request_frames]
        return await self._commit(frames, first_seq), {}

    @abc.abstractmethod
    async def _repair(self, probe_bytes: int) -> None:
        """In the writer, after a failed commit: cut the log back to its last durable group
        if that is still to do, then prove that a write of ``probe_bytes`` succeeds now.

        Raises:
            StoreUnavailableError: still unable to write; the writer retries later.
        """

    @abc.abstractmethod
    async def _save_snapshot(self, contents: bytes, seq: int) -> None:
        """Make a snapshot file durable (outside the writer); raise StoreError on failure."""

    @abc.abstractmethod
    async def _after_snapshot(self, seq: int, archives: dict[int, int]) -> None:
        """In the writer, once snapshot ``seq`` (referring to ``archives``) is durable:
        rotate and drop the obsolete (segments, snapshots, archives)."""

    @abc.abstractmethod
    def _segment_figures(self) -> tuple[int, int]:
        """``(segments, bytes)`` for :meth:`statistics`; no I/O."""

    @abc.abstractmethod
    async def _append_blobs(self, frames: list[bytes]) -> list[BlobRef]:
        """Make framed blobs durable in the archive (under the archive lock); their refs.

        Raises:
            StoreError: the write failed; none of the frames may be referred to.
        """

    @abc.abstractmethod
    def _read_blob(self, ref: BlobRef) -> bytes:
        """The payload of blob ``ref``; StoreCorruptError when the bytes do not check out."""

    @abc.abstractmethod
    def archive_sizes(self) -> dict[int, int]:
        """Archive number → its size in bytes, without I/O."""

    def release(self) -> None:  # noqa: B027 - a hook: only the file store holds anything
        """Give back what the store holds (files, locks); call once the writer stopped."""

    # --- the writer --------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")
        if self._outage is not None:
            raise StoreUnavailableError(self._outage.error.reason, self._outage.error.path)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: commit queued groups until the channel is closed.

        Start-up: ready at once (``task_status.started()``).

        Cancellation: a group being committed finishes its thread call first; its callers and
        everything still queued are told the store closed. Normal shutdown is
        :meth:`aclose`, which lets the writer drain the queue instead.
        """
        task_status.started()
        try:
            while True:
                batch = await self._next_batch()
                if batch is None:
                    break
                if batch:
                    await self._process(batch)
        finally:
            # Tell everyone still queued before closing, or their waits would never end.
            self._abandon_queued()
            self._receive.close()
            self._writable_event.set()
            self._writer_done.set()

    async def _next_batch(self) -> list[_Append | _Control] | None:
        """Everything queued now, once there is something; ``[]`` when a retry was due (and
        ran) instead; ``None`` once the channel is closed and drained."""
        if self._outage is not None and trio.current_time() >= self._outage.retry_at:
            await self._retry(self._outage)
            return []
        first: _Append | _Control | None = None
        with trio.move_on_at(self._outage.retry_at if self._outage is not None else math.inf):
            try:
                first = await self._receive.receive()
            except trio.EndOfChannel:
                return None
        if first is None:
            return []
        batch = [first]
        while True:
            try:
                batch.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return batch

    async def _process(self, batch: list[_Append | _Control]) -> None:
        group: list[_Append] = []
        for index, item in enumerate(batch):
            if isinstance(item, _Append):
                group.append(item)
                continue
            try:
                await self._commit_group(group)
                group = []
                await self._control(item)
            except BaseException:
                self._abandon([*group, *batch[index:]])
                raise
        try:
            await self._commit_group(group)
        except BaseException:
            self._abandon(group)
            raise

    async def _commit_group(self, group: list[_Append]) -> None:
        if not group:
            return
        frames = [f for request in group for f in request.frames]
        error: str | StoreUnavailableError | None = _CLOSED_BEFORE_DURABLE
        stale: dict[int, StaleLeaseError] = {}
        try:
            if self._outage is None:
                first = self._last_seq + 1
                try:
                    # a shared log (PostgreSQL) gives the group the seqs after other writers'
                    if any(request.fence for request in group):
                        pairs = [(request.frames, request.fence) for request in group]
                        assigned, stale = await self._commit_fenced(pairs, first)
                    else:
                        assigned = await self._commit(frames, first)
                    if assigned is not None:
                        first = assigned
                except StoreError as e:
                    # the writer's retries end it (_retry)
                    outage = Outage(unavailable(e), sum(map(len, frames)), trio.current_time())
                    self._outage = outage
                    self._writable_event = trio.Event()
            if self._outage is not None:
                error = self._outage.error
                self._count_refused(len(frames))
                return
            error = None
            self._groups += 1
            stored = len(frames) - sum(len(group[i].frames) for i in stale)
            if stored:
                self._last_seq = max(self._last_seq, first + stored - 1)
            seq = first - 1
            for index, request in enumerate(group):
                if index not in stale:
                    seq += len(request.frames)
                    request.last_seq = seq
        finally:
            # Whatever happened (even cancellation), every caller of the group hears of it.
            self._pending -= len(frames)
            for index, request in enumerate(group):
                request.error = stale.get(index, error)
                request.frames = []  # the writer's batch outlives the group: let them go
                request.done.set()

    async def _control(self, item: _Control) -> None:
        if self._outage is not None:
            # after a snapshot: rotating now would leave the failed group's bytes in a
            # segment that is no longer the newest (recovery cuts torn tails of the newest)
            item.error = self._outage.error
            item.done.set()
            return
        try:
            await item.action()
        except StoreError as e:
            item.error = e
        item.done.set()

    # --- outages -----------------------------------------------------------------------------

    def _count_refused(self, records: int) -> None:
        self._refused += records
        if self._outage is not None:
            self._outage.refused += records

    async def _retry(self, outage: Outage) -> None:
        """One retry of an outage: repair and probe; writable again if that succeeds."""
        try:
            await self._repair(outage.probe_bytes)
        except StoreError as e:
            outage.retry_failed(unavailable(e), trio.current_time())
            return
        outage.ended(trio.current_time())
        self._outage = None
        self._writable_event.set()

    def _abandon(self, items: Sequence[_Append | _Control]) -> None:
        """Answer every item not answered yet with "closed" (the writer is going away)."""
        for item in items:
            if item.done.is_set():
                continue
            if isinstance(item, _Append):
                self._pending -= len(item.frames)
                item.error = _CLOSED_BEFORE_DURABLE
            else:
                item.error = StoreError("the store closed")
            item.done.set()

    def _abandon_queued(self) -> None:
        leftovers: list[_Append | _Control] = []
        while True:
            try:
                leftovers.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        self._abandon(leftovers)

    async def aclose(self) -> None:
        """Stop taking requests, let the writer commit what is queued, and wait for it.

        Cancellation: if cancelled, the writer goes on draining the queue in its own task;
        ``open_store`` calls this under a shielded scope bounded by its ``close_timeout``.
        """
        self._closed = True
        await self._send.aclose()
        await self._writer_done.wait()
