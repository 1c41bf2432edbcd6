"""A node's facts, flattened once per change into the form the matcher reads.

Chef Server indexes a node by *expanding* its attributes (``chef_index_expand.erl``): every
leaf value is filed under the whole key path joined with ``_`` **and** under its last key
alone, and every key of a nested map is itself a value of the map's path. So
``{"kernel": {"machine": "x86_64"}}`` answers ``kernel_machine:x86_64``, ``machine:x86_64``
and ``kernel:machine``; list elements are filed under the list's path, which is why
``tags:web`` matches a node whose tags include ``web``. We do the same, once, so a query costs
dictionary look-ups.

The result (:class:`FlatFacts`) maps each flattened key to one string, or to a tuple of
distinct strings when the key has several values, and keeps every distinct value once more in
:attr:`FlatFacts.every` for the queries that name no field. Keys (shared by every node) and
short values are interned, so a thousand nodes on ``debian`` hold one ``"debian"``. Dots in
keys become ``_`` (queries do the same with ``kernel.machine``). ``name``, ``status`` and
``availability`` are the registry's facts, never a node's: such keys are dropped.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["EMPTY", "MAX_DEPTH", "RESERVED_FIELDS", "FlatFacts", "flatten_facts", "value_text"]


class FlatFacts(dict[str, str | tuple[str, ...]]):
    """Flattened key → its value, or its distinct values in first-seen order.

    Attributes:
        every: every distinct value of every key, for a term without a field.
    """

    __slots__ = ("every",)

    def __init__(self, items: dict[str, str | tuple[str, ...]], every: tuple[str, ...]) -> None:
        super().__init__(items)
        self.every = every


EMPTY = FlatFacts({}, ())
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


def flatten_facts(facts: Mapping[str, Any]) -> FlatFacts:
    """Flatten one node's facts (nested maps, lists and scalars) for matching.

    Args:
        facts: the facts as the node reported them.

    Returns:
        Flattened key → value or tuple of values (see the module docstring).
    """
    acc: dict[str, list[str]] = {}

    def put(key: str, value: str) -> None:
        if key in _RESERVED:
            return
        values = acc.get(key)
        if values is None:
            acc[sys.intern(key)] = [value]
        else:
            values.append(value)

    def add(path: tuple[str, ...], value: str) -> None:
        if len(value) <= _INTERN_MAX:
            value = sys.intern(value)
        put("_".join(path), value)
        if len(path) > 1:
            put(path[-1], value)

    def walk(path: tuple[str, ...], obj: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                key = value_text(k).replace(".", "_")
                if path:
                    add(path, key)
                walk((*path, key), v, depth + 1)
        elif isinstance(obj, list | tuple):
            for item in obj:
                walk(path, item, depth + 1)
        elif path:
            add(path, value_text(obj))

    walk((), facts, 0)
    out: dict[str, str | tuple[str, ...]] = {}
    every: dict[str, None] = {}
    for key, values in acc.items():
        distinct = tuple(dict.fromkeys(values)) if len(values) > 1 else tuple(values)
        out[key] = distinct[0] if len(distinct) == 1 else distinct
        every.update(dict.fromkeys(distinct))
    return FlatFacts(out, tuple(every))
