"""The bounded cache of archived jobs' details, pure.

A closed job's details (node table, feed events, output, results, file) live in the store's
archive; :class:`History` reads one through the reader it is given (the store's
``read_archived``: one ``pread``), decodes it, and keeps the decoded details of the most
recently read jobs, up to ``capacity`` bytes counted as their size uncompressed (msgpack);
the least recently read go first. Decoded details take about twice that in memory (a job's
feed events stay encoded; ``docs/PERFORMANCE.md``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from ..errors import StoreError

__all__ = ["History", "pack_ref", "unpack_ref"]

D = TypeVar("D")

_MASK32 = (1 << 32) - 1


def pack_ref(ref: tuple[int, int, int]) -> int:
    """A blob reference ``(archive, offset, length)`` as one integer (one object in memory).

    Raises:
        ValueError: offset or length does not fit 32 bits (archives are far smaller).
    """
    number, offset, length = ref
    if not (0 <= offset <= _MASK32 and 0 <= length <= _MASK32 and number >= 0):
        raise ValueError(f"blob reference {ref!r} out of range")
    return number << 64 | offset << 32 | length


def unpack_ref(packed: int) -> tuple[int, int, int]:
    """The ``(archive, offset, length)`` of :func:`pack_ref`."""
    return packed >> 64, (packed >> 32) & _MASK32, packed & _MASK32


class History(Generic[D]):
    """Archived jobs' details by job id: read through ``read``, decoded with ``decode``,
    the most recently read kept.

    Args:
        capacity: bytes of archived details kept decoded (counted as their size
            uncompressed); 0 keeps none.
        decode: builds the details of a blob's payload, with that size.
    """

    def __init__(self, capacity: int, decode: Callable[[bytes], tuple[D, int]]) -> None:
        self.capacity = capacity
        self.decode = decode
        self.read: Callable[[tuple[int, int, int]], bytes] | None = None
        """The archive's reader (``Store.read_archived``), attached by the database."""
        self._cache: OrderedDict[str, tuple[D, int]] = OrderedDict()
        self._bytes = 0
        self.reads = 0
        """Blobs read so far (cache misses)."""

    def cached(self, key: str) -> D | None:
        """The details of ``key`` if they are cached (then the most recently used)."""
        found = self._cache.get(key)
        if found is None:
            return None
        self._cache.move_to_end(key)
        return found[0]

    def load(self, ref: tuple[int, int, int]) -> tuple[D, int]:
        """Read and decode the blob ``ref``: the details and their size (not cached:
        :meth:`keep` them).

        Raises:
            StoreError: no archive is attached, or the blob cannot be read
                (``StoreCorruptError``: its bytes do not check out).
        """
        if self.read is None:
            raise StoreError("job details are archived, but no archive is attached")
        payload = self.read(ref)
        self.reads += 1
        return self.decode(payload)

    def get(self, key: str, ref: tuple[int, int, int]) -> D:
        """The details of ``key``, archived at ``ref``: from the cache, else read and kept."""
        found = self.cached(key)
        if found is not None:
            return found
        details, size = self.load(ref)
        self.keep(key, details, size)
        return details

    def keep(self, key: str, details: D, size: int) -> None:
        """Cache ``details`` of ``key`` (``size``: their uncompressed bytes); the least
        recently used go until the cache fits its capacity again."""
        self.drop(key)
        if size > self.capacity:
            return
        self._cache[key] = (details, size)
        self._bytes += size
        while self._bytes > self.capacity:
            _key, (_details, gone) = self._cache.popitem(last=False)
            self._bytes -= gone

    def clear(self) -> None:
        """Forget every cached job's details."""
        self._cache.clear()
        self._bytes = 0

    def drop(self, key: str) -> None:
        """Forget ``key``'s details (the job was purged)."""
        found = self._cache.pop(key, None)
        if found is not None:
            self._bytes -= found[1]

    def statistics(self) -> tuple[int, int]:
        """``(jobs cached, their uncompressed bytes)``."""
        return len(self._cache), self._bytes
