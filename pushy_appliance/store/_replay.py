"""The records a file store recovered, read back one segment at a time.

Opening checks every record's frame (length and CRC; the newest segment's records are also
decoded, since a damaged one there is cut off rather than refused) but keeps none of them:
a log of 500,000 records decoded at once held about 4 GB. :class:`RecordLog` is what
``Recovered.records`` is then: a sequence that reads a segment and decodes its records as it
is iterated, so a replay holds one segment's bytes and one record at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from ..errors import StoreError
from ._format import iter_records

__all__ = ["RecordLog", "SegmentPart"]


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentPart:
    """The records of one segment to replay: those with seq above ``after``, up to ``end``."""

    path: Path
    first_seq: int
    end: int
    count: int
    after: int


class RecordLog(Sequence[tuple[int, dict[str, Any]]]):
    """``(seq, record)`` of every record recovered, in order, read when iterated.

    Each iteration reads the segments again; read it while the store is open and before
    its first snapshot (which may delete segments). Comparing with a list, indexing and
    slicing read the whole log (for tests and tools).

    Raises (when iterated):
        StoreCorruptError: a record checked by its CRC alone is not a msgpack map.
        StoreError: a segment cannot be read.
    """

    def __init__(self, parts: list[SegmentPart]) -> None:
        self._parts = parts
        self._len = sum(max(0, p.count - max(0, p.after - p.first_seq + 1)) for p in parts)

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for part in self._parts:
            try:
                data = part.path.read_bytes()
            except OSError as e:
                raise StoreError(f"cannot read {part.path}: {e.strerror or e}") from e
            records = iter_records(data, path=str(part.path), end=part.end)
            for seq, record in enumerate(records, part.first_seq):
                if seq > part.after:
                    yield seq, record

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> tuple[int, dict[str, Any]]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[int, dict[str, Any]]]: ...

    def __getitem__(
        self, index: int | slice
    ) -> tuple[int, dict[str, Any]] | list[tuple[int, dict[str, Any]]]:
        return list(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordLog | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
