"""Compile a query tree into one predicate over a node, built from closures, once per query.

The predicate takes ``(name, status, availability, facts)``: the node name and its live state
as the registry knows them, and the node's facts from :func:`._flatten.flatten_facts`. It
never raises for facts in that form. How values compare (see ``docs/SEARCH.md``):

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
import re
import socket
from collections.abc import Callable
from typing import TypeAlias

from ._ast import And, MatchAll, Node, Not, Or, Phrase, Range, Term
from ._flatten import RESERVED_FIELDS, FlatFacts

__all__ = ["Predicate", "compile_tree"]

Predicate: TypeAlias = Callable[[str, str, str, FlatFacts], bool]
"""``predicate(name, status, availability, facts) -> bool``."""

_Test: TypeAlias = Callable[[str], bool]

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_ADDRESS = re.compile(r"[0-9A-Fa-f:.]+(?:/\d{1,3})?")
_KEY_MEMO_MAX = 4096


def compile_tree(node: Node) -> Predicate:
    """The predicate of a query tree.

    Args:
        node: a tree from :func:`~pushy_appliance.search.parse`.

    Returns:
        ``predicate(name, status, availability, facts)``.
    """
    if isinstance(node, MatchAll):
        return _always
    if isinstance(node, Not):
        inner = compile_tree(node.child)
        return lambda n, s, a, f: not inner(n, s, a, f)
    if isinstance(node, And):
        return _all([compile_tree(c) for c in node.children])
    if isinstance(node, Or):
        return _any([compile_tree(c) for c in node.children])
    if isinstance(node, Term):
        if node.wildcards:
            return _leaf(node.field, _glob(node.text, frozenset(node.wildcards)))
        network = _network(node.text)
        if network is None:
            return _equal(node.field, node.text)
        return _leaf(node.field, _address_test(node.text, network))
    if isinstance(node, Phrase):
        return _equal(node.field, node.text)
    return _leaf(node.field, _range_test(node))


def _always(n: str, s: str, a: str, f: FlatFacts) -> bool:
    return True


def _all(preds: list[Predicate]) -> Predicate:
    """Conjunction, folded pairwise: a chain of closures is faster than a loop over a list."""
    result = preds[0]
    for q in preds[1:]:
        result = _both(result, q)
    return result


def _both(p: Predicate, q: Predicate) -> Predicate:
    return lambda n, s, a, f: p(n, s, a, f) and q(n, s, a, f)


def _any(preds: list[Predicate]) -> Predicate:
    """Disjunction, folded pairwise."""
    result = preds[0]
    for q in preds[1:]:
        result = _either(result, q)
    return result


def _either(p: Predicate, q: Predicate) -> Predicate:
    return lambda n, s, a, f: p(n, s, a, f) or q(n, s, a, f)


# --- fields ---------------------------------------------------------------------------------


def _equal(field: str | None, text: str) -> Predicate:
    """Exact equality, with a dictionary look-up and ``in`` for the common case."""
    if field is None:
        return _every_field(text.__eq__, text)
    if "*" in field or "?" in field or field in RESERVED_FIELDS:
        return _leaf(field, text.__eq__)

    def pred(n: str, s: str, a: str, f: FlatFacts) -> bool:
        v = f.get(field)
        if v is None:
            return False
        return v == text or (v.__class__ is tuple and text in v)

    return pred


def _leaf(field: str | None, test: _Test) -> Predicate:
    """Apply ``test`` to the values of ``field`` (``None``: every field, ``*``/``?``: those
    whose key matches)."""
    if field is None:
        return _every_field(test)
    if "*" in field or "?" in field:
        return _matching_fields(field, test)
    if field in RESERVED_FIELDS:
        index = RESERVED_FIELDS.index(field)
        if index == 0:
            return lambda n, s, a, f: test(n)
        if index == 1:
            return lambda n, s, a, f: test(s)
        return lambda n, s, a, f: test(a)

    def pred(n: str, s: str, a: str, f: FlatFacts) -> bool:
        v = f.get(field)
        if v is None:
            return False
        if v.__class__ is str:
            return test(v)
        return any(map(test, v))

    return pred


def _any_value(test: _Test, v: str | tuple[str, ...]) -> bool:
    if isinstance(v, str):
        return test(v)
    return any(map(test, v))


def _every_field(test: _Test, text: str | None = None) -> Predicate:
    """Name, status, availability and every fact value; ``text``: plain equality with it."""
    if text is not None:
        return lambda n, s, a, f: text in (n, s, a) or text in f.every

    def pred(n: str, s: str, a: str, f: FlatFacts) -> bool:
        return test(n) or test(s) or test(a) or any(map(test, f.every))

    return pred


def _matching_fields(pattern: str, test: _Test) -> Predicate:
    """A field name with wildcards: the keys it matches are remembered across nodes (keys are
    shared by the fleet), up to a bound."""
    key_matches = _glob(pattern, frozenset(i for i, c in enumerate(pattern) if c in "*?"))
    reserved = tuple(i for i, name in enumerate(RESERVED_FIELDS) if key_matches(name))
    memo: dict[str, bool] = {}

    def pred(n: str, s: str, a: str, f: FlatFacts) -> bool:
        if reserved:
            live = (n, s, a)
            for i in reserved:
                if test(live[i]):
                    return True
        for key, v in f.items():
            hit = memo.get(key)
            if hit is None:
                hit = key_matches(key)
                if len(memo) < _KEY_MEMO_MAX:
                    memo[key] = hit
            if hit and _any_value(test, v):
                return True
        return False

    return pred


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
