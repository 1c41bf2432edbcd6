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

from ._base import GroupCommitStore, Recovered
from ._format import SNAPSHOT_HEADER, unpack

__all__ = ["MemoryStore"]


class MemoryStore(GroupCommitStore):
    """The store contract in memory; nothing survives the ``open_store`` block.

    Args:
        queue_size: capacity of the writer's request channel.
    """

    def __init__(self, *, queue_size: int = 4096) -> None:
        super().__init__(Recovered(None, 0, []), 0, queue_size=queue_size)
        # (seq, frame size) of the records a reopen would need, as the segments would hold.
        self._held: collections.deque[tuple[int, int]] = collections.deque()
        self._held_bytes = 0
        self._snapshots: list[tuple[int, Any]] = []

    @property
    def snapshots(self) -> list[tuple[int, Any]]:
        """``(seq, state)`` of the kept snapshots, oldest first (at most two)."""
        return list(self._snapshots)

    async def _commit(self, frames: list[bytes], first_seq: int) -> int | None:
        for offset, frame in enumerate(frames):
            self._held.append((first_seq + offset, len(frame)))
            self._held_bytes += len(frame)
        return None

    async def _repair(self, probe_bytes: int) -> None:
        await trio.lowlevel.checkpoint()  # memory has nothing to cut back or probe

    async def _save_snapshot(self, contents: bytes, seq: int) -> None:
        state = unpack(contents[SNAPSHOT_HEADER:])
        self._snapshots = [(s, st) for s, st in self._snapshots if s != seq]
        self._snapshots.append((seq, state))
        self._snapshots.sort(key=lambda item: item[0])

    async def _after_snapshot(self, seq: int) -> None:
        del self._snapshots[:-2]
        if len(self._snapshots) == 2:
            older = self._snapshots[0][0]
            while self._held and self._held[0][0] <= older:
                self._held_bytes -= self._held.popleft()[1]

    def _segment_figures(self) -> tuple[int, int]:
        return 0, self._held_bytes
