"""The database's archive: the bulk of items that no longer change, kept in the store's
archive instead of in memory.

A model may keep the bulk of items that no longer change in the store's archive
(:class:`ArchivingModel`: the jobs model, for closed jobs' details). :meth:`Archiver.archive`
moves what such a model offers there: the items are packed in a worker thread (they no
longer change, and the event loop goes on), appended to the archive in groups of about
:data:`ARCHIVE_GROUP_BYTES`, and handed back to the model with their references, which then
reads them back through the store (``read_archived``). Before each snapshot
(:meth:`Archiver.before_snapshot`, from ``Database.snapshot``) it does the same, then
re-archives the items of archives that are mostly unused (purged jobs) or small, so that the
archives a snapshot needs stay dense; the store deletes an archive once neither kept
snapshot refers to it. Nothing in the log refers to the archive: a crash before the next
snapshot loses only the archive's new copies, and replay rebuilds the items in memory from
their records.

The :class:`~.db.Database` owns one :class:`Archiver` over its models; nothing else uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import trio

from .errors import StoreCorruptError, StoreError, StoreUnavailableError
from .store import BlobRef, Store

__all__ = ["ARCHIVE_GROUP_BYTES", "Archivable", "Archiver", "ArchivingModel"]

log = logging.getLogger(__name__)

ARCHIVE_GROUP_BYTES = 8 * 1024 * 1024
"""Blob bytes appended to the archive with one write and fsync (and held at once)."""
SPARSE_ARCHIVE = 0.5
"""An archive whose blobs in use are less than this share of its size is re-archived."""
SMALL_ARCHIVE = 1024 * 1024
"""An archive smaller than this (not the newest) is re-archived into the newest."""


class Archivable(Protocol):
    """An item an :class:`ArchivingModel` offers for the archive."""

    def pack(self) -> bytes:
        """Its bulk as one msgpack blob; must be safe to call from a worker thread."""
        ...


@runtime_checkable
class ArchivingModel(Protocol):
    """A model that keeps the bulk of items that no longer change in the store's archive."""

    def attach_archive(self, read: Callable[[BlobRef], bytes]) -> None:
        """Read archived bulk with ``read`` from now on."""
        ...

    def to_archive(self) -> Sequence[Archivable]:
        """The items to archive now (they no longer change)."""
        ...

    def archived(self, item: Any, ref: BlobRef) -> bool:
        """``item``'s bulk is at ``ref`` now; ``False`` if the item is gone meanwhile."""
        ...

    def archive_use(self) -> dict[int, int]:
        """Archive number → end of the last blob the model refers to there."""
        ...

    def compact(self) -> int:
        """Hold the items to archive in their packed form until they are (a replay)."""
        ...

    def archived_bytes(self) -> dict[int, int]:
        """Archive number → bytes of the blobs the model refers to there."""
        ...

    def archived_in(self, numbers: set[int]) -> Sequence[tuple[Any, BlobRef]]:
        """The archived items whose blobs are in archives ``numbers``, with their refs."""
        ...


def _pack_group(items: Sequence[Archivable], start: int) -> tuple[list[bytes], int]:
    """Pack items from ``start`` until about :data:`ARCHIVE_GROUP_BYTES`; the blobs and the
    index of the first item not packed. Runs in a worker thread."""
    blobs: list[bytes] = []
    size = 0
    index = start
    while index < len(items) and size < ARCHIVE_GROUP_BYTES:
        blob = items[index].pack()
        blobs.append(blob)
        size += len(blob)
        index += 1
    return blobs, index


class Archiver:
    """Moves the archiving models' items to the store's archive.

    Args:
        store: the database's open store.
        models: the database's models; those that are :class:`ArchivingModel` read their
            archived bulk through ``store`` from now on.
    """

    def __init__(self, store: Store, models: Iterable[object]) -> None:
        self._store = store
        self.models = [m for m in models if isinstance(m, ArchivingModel)]
        """The archiving models."""
        self.lock = trio.Lock()
        """Held while items move to the archive (and by ``Database.snapshot`` until its
        snapshot, which refers to them, is written)."""
        for model in self.models:
            model.attach_archive(store.read_archived)

    def compact(self) -> None:
        """Have every archiving model hold its items to archive packed (a replay)."""
        for model in self.models:
            model.compact()

    def archive_use(self) -> dict[int, int]:
        """Archive number → end of the last blob any model refers to there (what a snapshot
        needs of the archives)."""
        archives: dict[int, int] = {}
        for model in self.models:
            for number, end in model.archive_use().items():
                archives[number] = max(end, archives.get(number, 0))
        return archives

    async def archive(self) -> int:
        """Move what the archiving models offer to the store's archive.

        Returns:
            How many items were archived.

        Raises:
            StoreError: the archive could not be written (``StoreUnavailableError`` while
                the store is not writable); the items not archived stay in memory and are
                offered again next time.

        Cancellation: a group being written is written to its end; its items are handed
        back to their model only if the call was not cancelled (their blobs are then never
        referred to).
        """
        async with self.lock:
            return await self._archive()

    async def before_snapshot(self) -> None:
        """Archive what the models offer, then re-archive sparse and small archives; the
        caller holds :attr:`lock` until its snapshot is written.

        Raises:
            StoreUnavailableError: the store is not writable (nor will the snapshot be).
                Any other ``StoreError`` is logged: the snapshot goes on without it.
        """
        try:
            await self._archive()
            for model in self.models:
                await self._rearchive(model)
        except StoreUnavailableError:
            raise
        except StoreError as e:
            log.warning("archive: not written before the snapshot (%s)", e)

    async def _archive(self) -> int:
        moved = 0
        if not self._store.keeps_archive:
            return moved
        for model in self.models:
            items = model.to_archive()
            index = 0
            while index < len(items):
                blobs, end = await trio.to_thread.run_sync(_pack_group, items, index)
                refs = await self._store.archive(blobs)
                moved += sum(
                    model.archived(i, r) for i, r in zip(items[index:end], refs, strict=True)
                )
                index = end
        return moved

    async def _rearchive(self, model: ArchivingModel) -> int:
        """Copy the blobs in use of sparse and small archives to the newest one."""
        sizes = self._store.archive_sizes()
        if len(sizes) < 2:
            return 0
        newest = max(sizes)
        used = model.archived_bytes()
        victims = {
            n
            for n, size in sizes.items()
            if n != newest
            and used.get(n, 0) > 0
            and (used[n] < SPARSE_ARCHIVE * size or size < SMALL_ARCHIVE)
        }
        if not victims:
            return 0
        pairs = list(model.archived_in(victims))
        moved = 0
        index = 0
        while index < len(pairs):
            group, index = await trio.to_thread.run_sync(self._read_group, pairs, index)
            refs = await self._store.archive([blob for _item, blob in group])
            moved += sum(
                model.archived(item, ref) for (item, _), ref in zip(group, refs, strict=True)
            )
        log.info(
            "archive: %d item(s) copied out of %d sparse or small archive(s)", moved, len(victims)
        )
        return moved

    def _read_group(
        self, pairs: Sequence[tuple[Any, BlobRef]], start: int
    ) -> tuple[list[tuple[Any, bytes]], int]:
        """Read blobs from ``start`` until about :data:`ARCHIVE_GROUP_BYTES` (a worker
        thread); a blob that does not check out stays where it is."""
        group: list[tuple[Any, bytes]] = []
        size = 0
        index = start
        while index < len(pairs) and size < ARCHIVE_GROUP_BYTES:
            item, ref = pairs[index]
            index += 1
            try:
                blob = self._store.read_archived(ref)
            except StoreCorruptError as e:
                log.error("archive: a blob in use is damaged, left where it is: %s", e)
                continue
            group.append((item, blob))
            size += len(blob)
        return group, index
