"""A node's facts, flattened once per change into the form the matcher reads.

Chef Server indexes a node by *expanding* its attributes (``chef_index_expand.erl``): every
leaf value is filed under the whole key path joined with ``_`` **and** under its last key
alone, and every key of a nested map is itself a value of the map's path. So
``{"kernel": {"machine": "x86_64"}}`` answers ``kernel_machine:x86_64``, ``machine:x86_64``
and ``kernel:machine``; list elements are filed under the list's path, which is why
``tags:web`` matches a node whose tags include ``web``. We do the same, once, so a query costs
dictionary look-ups.

The result (:class:`FlatFacts`) maps each flattened key to one string, or to a tuple of
distinct strings when the key has several values. It is kept compact, since the server holds
one per node: a :class:`Shape` (the keys in order and how many values each has), shared by
every node whose facts have the same keys and counts, and one tuple of every value in the
shape's order (:attr:`FlatFacts.cells`). A query is specialised once per shape
(:mod:`._match`), so a fleet of a few shapes costs a few compilations and then a tuple index
per field per node, and a term without a field one ``in`` over the tuple. Keys and short
values are interned, so a thousand nodes on ``debian`` hold one ``"debian"``. Dots in keys
become ``_`` (queries do the same with ``kernel.machine``).
``name``, ``status`` and ``availability`` are the registry's facts, never a node's: such keys
are dropped.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Collection, Iterator, Mapping
from typing import Any

__all__ = [
    "EMPTY",
    "MAX_DEPTH",
    "RESERVED_FIELDS",
    "FlatFacts",
    "Shape",
    "flatten_facts",
    "value_text",
]


class Shape:
    """The keys of one or more nodes' flattened facts, shared by those nodes.

    Attributes:
        keys: the flattened keys, in the order their values are kept.
        counts: how many distinct values each key has.
        spans: key → ``(start, stop)``, where its values are in :attr:`FlatFacts.cells`.
    """

    __slots__ = ("__weakref__", "counts", "keys", "spans")

    def __init__(self, keys: tuple[str, ...], counts: tuple[int, ...]) -> None:
        self.keys = keys
        self.counts = counts
        self.spans: dict[str, tuple[int, int]] = {}
        start = 0
        for key, count in zip(keys, counts, strict=True):
            self.spans[key] = (start, start + count)
            start += count

    def __repr__(self) -> str:
        return f"Shape({self.keys!r}, {self.counts!r})"


_SHAPES: weakref.WeakValueDictionary[tuple[tuple[str, ...], tuple[int, ...]], Shape] = (
    weakref.WeakValueDictionary()
)
"""Every shape some facts hold, so nodes with the same keys share one."""


def _shape(keys: tuple[str, ...], counts: tuple[int, ...]) -> Shape:
    found = _SHAPES.get((keys, counts))
    if found is None:
        found = _SHAPES[(keys, counts)] = Shape(keys, counts)
    return found


class FlatFacts(Mapping[str, "str | tuple[str, ...]"]):
    """Flattened key → its value, or its distinct values in first-seen order.

    Attributes:
        shape: the keys (shared with other nodes that have the same ones).
        cells: every key's values one after the other, in the shape's order (a key with
            several values has a run of them: :attr:`Shape.spans`).
    """

    __slots__ = ("cells", "shape")

    def __init__(self, shape: Shape, cells: tuple[str, ...]) -> None:
        self.shape = shape
        self.cells = cells

    def __getitem__(self, key: str) -> str | tuple[str, ...]:
        start, stop = self.shape.spans[key]
        return self.cells[start] if stop - start == 1 else self.cells[start:stop]

    def __iter__(self) -> Iterator[str]:
        return iter(self.shape.keys)

    def __len__(self) -> int:
        return len(self.shape.keys)

    def __contains__(self, key: object) -> bool:
        return key in self.shape.spans

    @property
    def every(self) -> tuple[str, ...]:
        """Every distinct value of every key (what a term without a field is tested on)."""
        return tuple(dict.fromkeys(self.cells))

    def __repr__(self) -> str:
        return f"FlatFacts({dict(self)!r})"


EMPTY = FlatFacts(_shape((), ()), ())
"""The facts of a node that reported none."""

RESERVED_FIELDS = ("name", "status", "availability")
"""Fields answered from the node registry, in the matcher's argument order."""

MAX_DEPTH = 32
"""Nesting below this depth is not indexed (facts are bounded in size anyway)."""

_INTERN_MAX = 64
_RESERVED = frozenset(RESERVED_FIELDS)


def value_text(value: Any) -> str:
    """A scalar as Chef's index spells it: ``true``/``false``, numbers in decimal, nil as ``""``."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def flatten_facts(facts: Mapping[str, Any], unshared: Collection[str] = ()) -> FlatFacts:
    """Flatten one node's facts (nested maps, lists and scalars) for matching.

    Args:
        facts: the facts as the node reported them.
        unshared: top-level keys whose string values are the node's own (a host name, an
            address): kept as they are, not interned (interning would add one entry per node
            to the interpreter's table and share nothing).

    Returns:
        Flattened key → value or tuple of values (see the module docstring).
    """
    # module functions, not closures over ``acc``: nested functions that call each other
    # form a reference cycle, which kept every node's working lists alive until a full
    # collection (never, once the appliance's collector has frozen them)
    acc: dict[str, list[str]] = {}
    for k, v in facts.items():
        key = value_text(k).replace(".", "_")
        if v.__class__ is str and key in unshared:
            _put(acc, key, v)
        else:
            _walk(acc, (key,), v, 1)
    keys: list[str] = []
    counts: list[int] = []
    cells: list[str] = []
    for key, found in acc.items():
        distinct = list(dict.fromkeys(found)) if len(found) > 1 else found
        keys.append(key)
        counts.append(len(distinct))
        cells += distinct
    return FlatFacts(_shape(tuple(keys), tuple(counts)), tuple(cells))


def _walk(acc: dict[str, list[str]], path: tuple[str, ...], obj: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            key = value_text(k).replace(".", "_")
            if path:
                _add(acc, path, key)
            _walk(acc, (*path, key), v, depth + 1)
    elif isinstance(obj, list | tuple):
        for item in obj:
            _walk(acc, path, item, depth + 1)
    elif path:
        _add(acc, path, value_text(obj))


def _add(acc: dict[str, list[str]], path: tuple[str, ...], value: str) -> None:
    """File ``value`` under the whole path and under its last key."""
    if len(value) <= _INTERN_MAX:
        value = sys.intern(value)
    _put(acc, "_".join(path), value)
    if len(path) > 1:
        _put(acc, path[-1], value)


def _put(acc: dict[str, list[str]], key: str, value: str) -> None:
    if key in _RESERVED:
        return
    values = acc.get(key)
    if values is None:
        acc[sys.intern(key)] = [value]
    else:
        values.append(value)
