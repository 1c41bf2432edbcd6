"""Compact forms of a job's stored node table and feed events, pure.

A 100,000-node job names every node once in its table and once in a ``quorum_vote`` event
of its feed; held as small lists and dicts that cost about a kilobyte per node. Here:

* :class:`NodeTable`: node name → one small integer (:func:`.record.node_code`: status,
  launched, owes a result, reason number), plus the job's few distinct reasons and the
  away deadlines of the nodes that have one. The names are the strings of the record the
  table was built from, kept once. About 50 bytes per node beside the name.
* :class:`EventLog`: the events ``[n, name, data]`` msgpack-encoded back to back in one
  buffer, with the end of each; an event is decoded when read. About 100 bytes per
  ``quorum_vote`` instead of 400.

Both read like what they replace (a mapping of node entries, a sequence of events), so the
job document, the output route and the job feed read them unchanged.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import msgpack

from .record import STATUS_ORDER, code_entry, column_lists, columns_map, node_code

__all__ = ["EventLog", "NodeTable", "pack_event", "pack_events"]


def pack_event(event: Sequence[Any] | bytes) -> bytes:
    """One feed event ``[n, name, data]`` msgpack-encoded (``bytes`` are taken as they are)."""
    if isinstance(event, bytes):
        return event
    packed: bytes = msgpack.packb(event, use_bin_type=True)
    return packed


def _unpack(item: bytes | bytearray) -> list[Any]:
    event: list[Any] = msgpack.unpackb(item, raw=False, strict_map_key=False)
    return event


class NodeTable(Mapping[str, list[Any]]):
    """A job's node entries (``record.node_record``'s form), by name, in request order.

    Reading an entry builds it (``table[name]`` is a new list each time); entries change
    only through :meth:`set`.
    """

    __slots__ = ("_away", "_codes", "_reason_numbers", "_reasons")

    def __init__(
        self,
        codes: dict[str, int],
        reasons: list[str] | None = None,
        away: dict[str, float] | None = None,
    ) -> None:
        self._codes = codes
        self._reasons = reasons if reasons is not None else []
        self._reason_numbers = {r: i + 1 for i, r in enumerate(self._reasons)}
        self._away = away if away is not None else {}

    @classmethod
    def from_entries(cls, entries: Iterable[Sequence[Any]]) -> NodeTable:
        """The table of node entries (as a ``job.create`` of old stored them)."""
        table = cls({})
        for entry in entries:
            table.set(entry)
        return table

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> NodeTable:
        """The table of a ``node_columns`` map (``record.to_columns``).

        The codes are checked when an entry is read (``record.from_record`` checks a whole
        state before a job is resumed from it).

        Raises:
            ValueError, TypeError, KeyError: the map does not have the columns' shape.
        """
        names, codes = column_lists(columns)
        reasons, away = list(columns["reasons"]), dict(columns["away"])
        return cls(dict(zip(names, codes, strict=True)), reasons, away)

    def columns(self) -> dict[str, Any]:
        """The ``node_columns`` map of the table."""
        codes = list(self._codes.values())
        return columns_map(self._codes, codes, list(self._reasons), dict(self._away))

    def set(self, entry: Sequence[Any]) -> None:
        """Store one node entry (new, or replacing the node's entry in its place)."""
        name = entry[0]
        self._codes[name] = node_code(entry, self._reason_numbers)
        if len(self._reason_numbers) > len(self._reasons):
            self._reasons = list(self._reason_numbers)
        if entry[3] is None:
            self._away.pop(name, None)
        else:
            self._away[name] = entry[3]

    def __getitem__(self, name: str) -> list[Any]:
        return code_entry(name, self._codes[name], self._reasons, self._away.get(name))

    def __contains__(self, name: object) -> bool:
        return name in self._codes

    def __iter__(self) -> Iterator[str]:
        return iter(self._codes)

    def __len__(self) -> int:
        return len(self._codes)

    def statuses(self) -> Iterator[tuple[str, str]]:
        """``(name, status)`` of every node, in request order (without building entries)."""
        order = STATUS_ORDER
        return ((name, order[code & 0xF]) for name, code in self._codes.items())

    def with_reasons(self) -> Iterator[tuple[str, str, str | None]]:
        """``(name, status, reason)`` of every node, in request order."""
        order, reasons = STATUS_ORDER, self._reasons
        for name, code in self._codes.items():
            number = code >> 6
            yield name, order[code & 0xF], reasons[number - 1] if number else None


class EventLog(Sequence[list[Any]]):
    """A job's feed events, in ``n`` order, msgpack-encoded back to back in one buffer with
    the end offset of each.

    ``log[i]`` decodes event ``i`` (a new ``[n, name, data]`` each time); appending takes
    either form. Readers that index up to a length they read first see a consistent prefix
    while the log grows. Its stored form (:meth:`stored`, :meth:`from_stored`) is a map
    ``{"data": bytes, "ends": bytes}``, ``ends`` the events' end offsets as little-endian
    unsigned 64-bit integers: a job's 100,000 events are then two values for msgpack, not
    100,000 small lists.
    """

    __slots__ = ("_data", "_ends")

    def __init__(self, events: Iterable[Sequence[Any] | bytes] = ()) -> None:
        self._data = bytearray()
        self._ends = array("Q")
        self.extend(events)

    @classmethod
    def from_stored(cls, stored: Any) -> EventLog:
        """The log of a :meth:`stored` map, or of a list of events (lists, or encoded).

        Raises:
            ValueError: the map does not hold whole events.
        """
        if not isinstance(stored, Mapping):
            return cls(stored)
        log = cls()
        log._data = bytearray(stored["data"])
        log._ends = _ends_of(stored["ends"])
        if len(log._ends) and log._ends[-1] != len(log._data):
            raise ValueError("the event offsets do not end with the data")
        return log

    def stored(self) -> dict[str, bytes]:
        """The stored form (a copy)."""
        return {"data": bytes(self._data), "ends": _ends_bytes(self._ends)}

    def append(self, event: Sequence[Any] | bytes) -> None:
        self._data += pack_event(event)
        self._ends.append(len(self._data))

    def extend(self, events: Iterable[Sequence[Any] | bytes]) -> None:
        for event in events:
            self.append(event)

    def last_n(self) -> int:
        """``n`` of the newest event (0 when there is none)."""
        return int(self[-1][0]) if self._ends else 0

    def _item(self, index: int) -> list[Any]:
        start = self._ends[index - 1] if index else 0
        return _unpack(self._data[start : self._ends[index]])

    @overload
    def __getitem__(self, index: int) -> list[Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[list[Any]]: ...

    def __getitem__(self, index: int | slice) -> list[Any] | list[list[Any]]:
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(len(self._ends)))]
        if index < 0:
            index += len(self._ends)
        if not 0 <= index < len(self._ends):
            raise IndexError("event index out of range")
        return self._item(index)

    def __iter__(self) -> Iterator[list[Any]]:
        for i in range(len(self._ends)):
            yield self._item(i)

    def __len__(self) -> int:
        return len(self._ends)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EventLog):
            return self._data == other._data and self._ends == other._ends
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


def _ends_bytes(ends: array[int]) -> bytes:
    if sys.byteorder == "little":
        return ends.tobytes()
    swapped = array("Q", ends)
    swapped.byteswap()
    return swapped.tobytes()


def _ends_of(raw: bytes) -> array[int]:
    ends = array("Q")
    ends.frombytes(raw)
    if sys.byteorder != "little":
        ends.byteswap()
    return ends


def pack_events(events: Iterable[Sequence[Any] | bytes]) -> dict[str, bytes]:
    """Events in :class:`EventLog`'s stored form (what a ``job.create`` stores)."""
    return EventLog(events).stored()
