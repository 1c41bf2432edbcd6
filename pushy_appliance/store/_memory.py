"""MemoryStore: the store contract without files, for tests of the layers above.

It keeps the same group-commit writer, seqs, snapshot rules and counters as the file store,
so code tested against it behaves the same against the real one; only durability is
missing. Records are encoded exactly as the file store would encode them (a record msgpack
cannot represent fails the same way), and snapshots are kept decoded, as copies.
"""

from __future__ import annotations

import collections
from typing import Any

import trio

from ..errors import StoreCorruptError
from ._base import GroupCommitStore, Recovered
from ._format import FRAME_HEADER, BlobRef, Snapshot, check_blob, decode_snapshot

__all__ = ["MemoryStore"]


class MemoryStore(GroupCommitStore):
    """The store contract in memory; nothing survives the ``open_store`` block.

    Args:
        queue_size: capacity of the writer's request channel.
        archive_bytes: size after which the archive goes on in a new one (as files would).
    """

    def __init__(self, *, queue_size: int = 4096, archive_bytes: int = 64 * 1024 * 1024) -> None:
        super().__init__(Recovered(None, 0, []), 0, queue_size=queue_size)
        # (seq, frame size) of the records a reopen would need, as the segments would hold.
        self._held: collections.deque[tuple[int, int]] = collections.deque()
        self._held_bytes = 0
        self._snapshots: list[tuple[int, Snapshot]] = []
        self._archive_bytes = archive_bytes
        self._archives: dict[int, bytearray] = {}
        self._archive_current = 0

    @property
    def snapshots(self) -> list[tuple[int, Any]]:
        """``(seq, state)`` of the kept snapshots, oldest first (at most two)."""
        return [(seq, snap.state) for seq, snap in self._snapshots]

    async def _commit(self, frames: list[bytes], first_seq: int) -> int | None:
        for offset, frame in enumerate(frames):
            self._held.append((first_seq + offset, len(frame)))
            self._held_bytes += len(frame)
        return None

    async def _repair(self, probe_bytes: int) -> None:
        await trio.lowlevel.checkpoint()  # memory has nothing to cut back or probe

    async def _save_snapshot(self, contents: bytes, seq: int) -> None:
        snapshot = decode_snapshot(contents, path="memory", seq=seq)
        self._snapshots = [(s, st) for s, st in self._snapshots if s != seq]
        self._snapshots.append((seq, snapshot))
        self._snapshots.sort(key=lambda item: item[0])

    async def _after_snapshot(self, seq: int, archives: dict[int, int]) -> None:
        del self._snapshots[:-2]
        if len(self._snapshots) == 2:
            older = self._snapshots[0][0]
            while self._held and self._held[0][0] <= older:
                self._held_bytes -= self._held.popleft()[1]
        referenced = {n for _seq, snap in self._snapshots for n in snap.archives}
        for number in list(self._archives):
            if number not in referenced and number != self._archive_current:
                del self._archives[number]

    def _segment_figures(self) -> tuple[int, int]:
        return 0, self._held_bytes

    def archive_sizes(self) -> dict[int, int]:
        return {n: len(data) for n, data in self._archives.items()}

    async def _append_blobs(self, frames: list[bytes]) -> list[BlobRef]:
        await trio.lowlevel.checkpoint()
        current = self._archives.get(self._archive_current)
        if current is None or len(current) >= self._archive_bytes:
            self._archive_current += 1
            # an archive's header, so that offsets are those of a file
            current = self._archives[self._archive_current] = bytearray(24)
        refs: list[BlobRef] = []
        for frame in frames:
            refs.append((self._archive_current, len(current), len(frame) - FRAME_HEADER))
            current += frame
        return refs

    def _read_blob(self, ref: BlobRef) -> bytes:
        number, offset, length = ref
        data = self._archives.get(number)
        if data is None:
            raise StoreCorruptError(f"archive {number}", offset, "the archive is missing")
        frame = bytes(data[offset : offset + FRAME_HEADER + length])
        return check_blob(frame, path=f"archive {number}", offset=offset, length=length)
