"""The syntax tree of a search query: what :func:`~pushy_appliance.search.parse` returns.

Leaves name a *field* (the flattened attribute key, dots already turned into ``_``) or
``None`` for "every field" (a bare term, or the field ``*``). Boolean nodes hold their
children in query order. The tree is plain frozen data: equal queries give equal trees, which
is what the table tests compare.
"""

from __future__ import annotations

import dataclasses
from typing import TypeAlias

__all__ = ["And", "MatchAll", "Node", "Not", "Or", "Phrase", "Range", "Term"]


@dataclasses.dataclass(frozen=True, slots=True)
class MatchAll:
    """``*:*``: every node, facts or not."""


@dataclasses.dataclass(frozen=True, slots=True)
class Term:
    """``field:text`` (unquoted).

    Attributes:
        field: the flattened key; ``None`` for every field. ``*`` and ``?`` in it are
            wildcards.
        text: the value with escapes resolved.
        wildcards: offsets in ``text`` of the unescaped ``*`` and ``?`` (the others are
            literal characters).
    """

    field: str | None
    text: str
    wildcards: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Phrase:
    """``field:"text"``: the whole value, literally (no wildcards, no address ranges)."""

    field: str | None
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """``field:[low TO high]`` (inclusive) or ``{low TO high}`` (exclusive), mixable.

    ``None`` is an open end (``*``). Numeric when every given end is a number, else string
    order.
    """

    field: str | None
    low: str | None
    high: str | None
    include_low: bool = True
    include_high: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Not:
    """Every node the child does not match."""

    child: Node


@dataclasses.dataclass(frozen=True, slots=True)
class And:
    """Every child matches (at least two children)."""

    children: tuple[Node, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Or:
    """Some child matches (at least two children)."""

    children: tuple[Node, ...]


Node: TypeAlias = MatchAll | Term | Phrase | Range | Not | And | Or
"""Any node of the tree."""
