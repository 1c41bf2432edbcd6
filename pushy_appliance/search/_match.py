"""Compile a query tree into a test of one node, specialised once per facts shape.

A query is compiled once (:class:`Matcher`): each leaf's value test is built then. The test of
a node takes ``(name, live, facts)``: the node name, ``live(name) -> (status, availability)``
(asked only when the query can read them), and the node's facts from
:func:`._flatten.flatten_facts`. The first time it meets a facts :class:`~._flatten.Shape` it
specialises the tree to it: a field the shape lacks is a constant ``False`` folded away, a
field it has is a tuple index (or slice), a wildcard field name is matched against the
shape's keys once, and parts that read the live state are tested after the others in ``AND``
and ``OR``. It never raises for facts in that form. How values compare (see ``docs/SEARCH.md``):

* exact and case-sensitive, like Chef Server's Elasticsearch index;
* ``*`` and ``?`` wildcards over the whole value, matched in linear time (segments found in
  order with ``str.find``; no backtracking regex a query could make slow);
* a term that is an IP address or a CIDR block also matches addresses inside it
  (``ipaddress:10.0.0.0/8``, ``ip6address:fd00::/8``);
* a range is numeric when its given ends are numbers (values that are not numbers never
  match it), else it compares strings;
* a list matches when any element matches; a field the node lacks never matches.
"""

from __future__ import annotations

import ipaddress
import operator
import re
import socket
from collections.abc import Callable
from typing import TypeAlias

from ._ast import And, MatchAll, Node, Not, Or, Phrase, Range, Term
from ._flatten import RESERVED_FIELDS, FlatFacts, Shape

__all__ = ["LIVE_VALUES", "Live", "Matcher", "Predicate", "compile_tree"]

Predicate: TypeAlias = Callable[[str, str, str, FlatFacts], bool]
"""``predicate(name, status, availability, facts) -> bool``."""

Live: TypeAlias = Callable[[str], tuple[str, str]]
"""``live(name) -> (status, availability)``."""

_Test: TypeAlias = Callable[[str], bool]
_Values: TypeAlias = tuple[str, ...]
_Row: TypeAlias = Callable[[str, Live, _Values], bool]
_Spec: TypeAlias = "_Row | bool"
"""A tree specialised to a shape: a test of ``(name, live, values)``, or a constant."""

LIVE_VALUES = ("online", "offline", "available", "unavailable")
"""Every value ``status`` and ``availability`` can have."""

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_ADDRESS = re.compile(r"[0-9A-Fa-f:.]+(?:/\d{1,3})?")
_SHAPES_MAX = 1024
"""Shapes a matcher keeps its specialisations for (a fleet has a few)."""


class _Leaf:
    """One leaf, compiled once: its field, its value test, and its text when the test is
    plain equality (then ``in`` and ``==`` do the work)."""

    __slots__ = ("equal", "field", "key_matches", "reads_live", "reserved", "test")

    def __init__(self, node: Term | Phrase | Range) -> None:
        self.field = field = node.field
        self.equal: str | None = None
        if isinstance(node, Term) and node.wildcards:
            self.test = _glob(node.text, frozenset(node.wildcards))
        elif isinstance(node, Term | Phrase):
            network = _network(node.text) if isinstance(node, Term) else None
            if network is None:
                self.equal = node.text
                self.test = node.text.__eq__
            else:
                self.test = _address_test(node.text, network)
        else:
            self.test = _range_test(node)
        self.key_matches: _Test | None = None
        self.reserved: tuple[int, ...]
        if field is None:
            self.reserved = (0, 1, 2)
        elif "*" in field or "?" in field:
            self.key_matches = _glob(field, frozenset(i for i, c in enumerate(field) if c in "*?"))
            self.reserved = tuple(
                i for i, name in enumerate(RESERVED_FIELDS) if self.key_matches(name)
            )
        elif field in RESERVED_FIELDS:
            self.reserved = (RESERVED_FIELDS.index(field),)
        else:
            self.reserved = ()
        # the live state can change the answer only if a value it can have passes the test
        self.reads_live = any(i > 0 for i in self.reserved) and any(map(self.test, LIVE_VALUES))


class Matcher:
    """A query compiled for testing many nodes.

    Args:
        tree: a tree from :func:`~pushy_appliance.search.parse`.

    Attributes:
        reads_live: whether the answer can depend on a node's ``status`` or
            ``availability`` (if not, ``live`` is never called).
    """

    __slots__ = ("_leaves", "_specs", "reads_live", "tree")

    def __init__(self, tree: Node) -> None:
        self.tree = tree
        self._leaves: dict[int, _Leaf] = {}
        self._specs: dict[Shape, _Spec] = {}
        self.reads_live = self._compile(tree)

    def _compile(self, node: Node) -> bool:
        if isinstance(node, MatchAll):
            return False
        if isinstance(node, Not):
            return self._compile(node.child)
        if isinstance(node, And | Or):
            return any([self._compile(c) for c in node.children])
        leaf = self._leaves[id(node)] = _Leaf(node)
        return leaf.reads_live

    def test(self, name: str, live: Live, facts: FlatFacts) -> bool:
        """Whether the node matches.

        Args:
            name: the node name.
            live: ``live(name) -> (status, availability)``.
            facts: the node's flattened facts.
        """
        spec = self._specs.get(facts.shape)
        if spec is None:
            spec = self._specialise(self.tree, facts.shape)
            if len(self._specs) < _SHAPES_MAX:
                self._specs[facts.shape] = spec
        if spec is True or spec is False:
            return spec
        return spec(name, live, facts.cells)

    def predicate(self, name: str, status: str, availability: str, facts: FlatFacts) -> bool:
        """:meth:`test` with the live state given."""
        state = (status, availability)
        return self.test(name, lambda n: state, facts)

    # --- specialisation ---------------------------------------------------------------------

    def _specialise(self, node: Node, shape: Shape) -> _Spec:
        if isinstance(node, MatchAll):
            return True
        if isinstance(node, Not):
            inner = self._specialise(node.child, shape)
            if inner is True or inner is False:
                return not inner
            return lambda n, live, v: not inner(n, live, v)
        if isinstance(node, And | Or):
            return self._combine(node, shape)
        return _leaf_spec(self._leaves[id(node)], shape)

    def _combine(self, node: And | Or, shape: Shape) -> _Spec:
        conj = isinstance(node, And)
        rows: list[tuple[bool, _Row]] = []
        for child in node.children:
            spec = self._specialise(child, shape)
            if spec is True or spec is False:
                if spec is not conj:
                    return spec  # False in an AND, True in an OR: decided
                continue
            rows.append((self._reads_live(child), spec))
        if not rows:
            return conj
        # the live state costs a look-up per node: test what the facts decide first
        ordered = [r for lv, r in rows if not lv] + [r for lv, r in rows if lv]
        result = ordered[0]
        for q in ordered[1:]:
            result = _both(result, q) if conj else _either(result, q)
        return result

    def _reads_live(self, node: Node) -> bool:
        if isinstance(node, MatchAll):
            return False
        if isinstance(node, Not):
            return self._reads_live(node.child)
        if isinstance(node, And | Or):
            return any(self._reads_live(c) for c in node.children)
        return self._leaves[id(node)].reads_live


def compile_tree(node: Node) -> Predicate:
    """The predicate of a query tree.

    Args:
        node: a tree from :func:`~pushy_appliance.search.parse`.

    Returns:
        ``predicate(name, status, availability, facts)``.
    """
    return Matcher(node).predicate


def _both(p: _Row, q: _Row) -> _Row:
    return lambda n, live, v: p(n, live, v) and q(n, live, v)


def _either(p: _Row, q: _Row) -> _Row:
    return lambda n, live, v: p(n, live, v) or q(n, live, v)


# --- leaves ---------------------------------------------------------------------------------


def _leaf_spec(leaf: _Leaf, shape: Shape) -> _Spec:
    """A leaf on the facts of ``shape``: the values it reads, by position."""
    test, equal, field = leaf.test, leaf.equal, leaf.field
    if field is not None and leaf.key_matches is None:
        if field in RESERVED_FIELDS:
            return _reserved_spec(leaf)
        span = shape.spans.get(field)
        if span is None:
            return False  # a field the node lacks never matches
        return _values_spec(test, equal, list(range(*span)))
    # every field, or the fields whose key matches the pattern
    key_matches = leaf.key_matches
    if key_matches is None:
        facts = _values_spec(test, equal, None)
    else:
        at = [i for k in shape.keys if key_matches(k) for i in range(*shape.spans[k])]
        facts = _values_spec(test, equal, at)
    reserved = [_reserved_spec(leaf)] if leaf.reserved else []
    parts = [p for p in (facts, *reserved) if p is not False]
    if not parts:
        return False
    if len(parts) == 1:
        return parts[0]
    p, q = parts
    assert p is not True and q is not True
    return _either(p, q)


def _values_spec(test: _Test, equal: str | None, at: list[int] | None) -> _Spec:
    """``test`` over the values at positions ``at`` (``None``: every value)."""
    if at is None:
        if equal is not None:
            return lambda n, live, v: equal in v
        return lambda n, live, v: any(map(test, v))
    if not at:
        return False
    if len(at) == 1:
        (i,) = at
        if equal is not None:
            return lambda n, live, v: v[i] == equal
        return lambda n, live, v: test(v[i])
    if at == list(range(at[0], at[-1] + 1)):
        start, stop = at[0], at[-1] + 1
        if equal is not None:
            return lambda n, live, v: equal in v[start:stop]
        return lambda n, live, v: any(map(test, v[start:stop]))
    pick = operator.itemgetter(*at)
    if equal is not None:
        return lambda n, live, v: equal in pick(v)
    return lambda n, live, v: any(map(test, pick(v)))


def _reserved_spec(leaf: _Leaf) -> _Spec:
    """The leaf's test on the name and, when the test can pass one of their values, on the
    status and availability."""
    test = leaf.test
    name = 0 in leaf.reserved
    live_at = tuple(i - 1 for i in leaf.reserved if i > 0) if leaf.reads_live else ()
    if not live_at:
        return (lambda n, live, v: test(n)) if name else False
    if len(live_at) == 1:
        (j,) = live_at
        if name:
            return lambda n, live, v: test(n) or test(live(n)[j])
        return lambda n, live, v: test(live(n)[j])
    if name:
        return lambda n, live, v: test(n) or any(map(test, live(n)))
    return lambda n, live, v: any(map(test, live(n)))


# --- values ---------------------------------------------------------------------------------


def _glob(text: str, wild: frozenset[int]) -> _Test:
    """Whole-value wildcard match: ``*`` any run of characters, ``?`` exactly one.

    The pattern is cut at its ``*`` into fixed-length segments; the first must start the
    value, the last end it, and the others are found left to right — the leftmost place is
    always a right choice, so this never backtracks.
    """
    segments: list[list[tuple[str, bool]]] = [[]]
    for i, c in enumerate(text):
        if i in wild and c == "*":
            segments.append([])
        else:
            segments[-1].append((c, i in wild))
    if segments == [[], []]:
        return lambda v: True
    compiled = [_segment(seg) for seg in segments]
    if len(compiled) == 1:
        size, at, _find = compiled[0]
        return lambda v: len(v) == size and at(v, 0)
    head_size, head_at, _ = compiled[0]
    tail_size, tail_at, _ = compiled[-1]
    middle = [c for c in compiled[1:-1] if c[0]]
    fixed = head_size + tail_size + sum(c[0] for c in middle)

    def test(v: str) -> bool:
        end = len(v) - tail_size
        if len(v) < fixed or not head_at(v, 0) or not tail_at(v, end):
            return False
        pos = head_size
        for size, _at, find in middle:
            found = find(v, pos, end)
            if found < 0:
                return False
            pos = found + size
        return True

    return test


_At: TypeAlias = Callable[[str, int], bool]
_Find: TypeAlias = Callable[[str, int, int], int]


def _segment(seg: list[tuple[str, bool]]) -> tuple[int, _At, _Find]:
    """A fixed-length piece of a pattern: its length, "does it match at i", "where first in
    [start, end)"."""
    literal = "".join(c for c, _ in seg)
    if not any(q for _, q in seg):
        return (
            len(literal),
            lambda v, i: v.startswith(literal, i),
            lambda v, start, end: v.find(literal, start, end),
        )
    rx = re.compile("".join("." if q else re.escape(c) for c, q in seg), re.DOTALL)

    def find(v: str, start: int, end: int) -> int:
        m = rx.search(v, start, end)
        return -1 if m is None else m.start()

    return len(seg), lambda v, i: rx.match(v, i) is not None, find


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The address block a term names (a bare address is a block of one), if it names one."""
    if ("." not in text and ":" not in text) or not _ADDRESS.fullmatch(text):
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _address_test(text: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> _Test:
    """The term's text itself, or an address inside ``network``. Addresses are read with
    ``socket.inet_pton`` — a pure conversion, no I/O, ten times as fast as ``ipaddress``."""
    v6 = network.version == 6
    family = socket.AF_INET6 if v6 else socket.AF_INET
    base = int(network.network_address)
    mask = int(network.netmask)

    def test(v: str) -> bool:
        if v == text:
            return True
        if (":" in v) != v6:
            return False
        try:
            packed = socket.inet_pton(family, v)
        except (OSError, ValueError):
            return False
        return int.from_bytes(packed, "big") & mask == base

    return test


def _range_test(r: Range) -> _Test:
    low, high = r.low, r.high
    if low is None and high is None:
        return lambda v: True
    if all(b is None or _NUMBER.fullmatch(b) for b in (low, high)):
        lo = None if low is None else float(low)
        hi = None if high is None else float(high)
        return _bounded(lo, hi, r.include_low, r.include_high, numeric=True)
    return _bounded(low, high, r.include_low, r.include_high, numeric=False)


def _bounded(
    lo: float | str | None, hi: float | str | None, incl_lo: bool, incl_hi: bool, *, numeric: bool
) -> _Test:
    number = _NUMBER.fullmatch

    def test(v: str) -> bool:
        x: float | str
        if numeric:
            if not number(v):
                return False
            x = float(v)
        else:
            x = v
        if lo is not None and (x < lo if incl_lo else x <= lo):  # type: ignore[operator]
            return False
        return not (hi is not None and (x > hi if incl_hi else x >= hi))  # type: ignore[operator]

    return test
