"""The query parser: Chef's search syntax (a Lucene subset) into a :mod:`._ast` tree.

A hand-written recursive-descent parser over the string, with a cursor. The grammar (also in
``docs/SEARCH.md``)::

    query    = ws seq ws EOF
    seq      = or_expr { ws or_expr }                 juxtaposition: Lucene clause rules
    or_expr  = and_expr { ws ("OR" | "||") ws and_expr }
    and_expr = unary { ws ("AND" | "&&") ws unary }
    unary    = ("NOT" | "!") ws unary | ("-" | "+") unary | primary
    primary  = "(" seq ")" | phrase | field ":" value | term
    value    = "(" seq ")" | phrase | range | term      (the group's terms take the field)
    range    = ("[" | "{") ws bound ws "TO" ws bound ws ("]" | "}")

Precedence: NOT binds tightest, then AND, then OR, then juxtaposition (which follows Lucene:
``+x`` is required, ``-x``/``NOT x``/``!x`` excluded, the rest optional — optional clauses
count only when nothing is required). Every error is a
:class:`~pushy_appliance.errors.SearchSyntaxError` with the 0-based offset where it went
wrong; nothing else escapes :func:`parse` for any input string.
"""

from __future__ import annotations

import dataclasses
from typing import NoReturn

from ..errors import SearchSyntaxError
from ._ast import And, MatchAll, Node, Not, Or, Phrase, Range, Term

__all__ = ["DEFAULT_LIMITS", "SearchLimits", "parse"]

_DELIMS = frozenset('()"')
_UNSUPPORTED = {"^": "boost (^)", "~": "fuzzy search (~)"}


@dataclasses.dataclass(frozen=True, slots=True)
class SearchLimits:
    """Caps on what one query may ask, so a request cannot make the server work without end.

    Attributes:
        max_length: most characters in a query (1 … 1,000,000).
        max_depth: deepest nesting of parentheses, field groups and NOT/-/+ prefixes (1 … 100;
            the parser recurses once per level).
        max_terms: most leaf terms (values and ranges) in a query (1 … 100,000).

    Raises:
        ValueError: a limit out of its range.
    """

    max_length: int = 4096
    max_depth: int = 32
    max_terms: int = 256

    def __post_init__(self) -> None:
        for name, value, top in (
            ("max_length", self.max_length, 1_000_000),
            ("max_depth", self.max_depth, 100),
            ("max_terms", self.max_terms, 100_000),
        ):
            if not 1 <= value <= top:
                raise ValueError(f"search limit {name} must be 1 … {top}, not {value}")


DEFAULT_LIMITS = SearchLimits()


def parse(query: str, limits: SearchLimits = DEFAULT_LIMITS) -> Node:
    """Parse one search query.

    Args:
        query: the query text (``platform:debian AND tags:web``).
        limits: the caps on length, nesting and terms.

    Returns:
        The syntax tree.

    Raises:
        SearchSyntaxError: the query is empty, malformed or over a limit; ``position`` is the
            0-based character offset of the problem.
    """
    if len(query) > limits.max_length:
        raise SearchSyntaxError(
            f"query longer than {limits.max_length} characters", limits.max_length
        )
    return _Parser(query, limits).query()


@dataclasses.dataclass(frozen=True, slots=True)
class _Required:
    """``+x`` while its clause list is being read; never left in a finished tree."""

    child: Node


_Item = Node | _Required


def _plain(node: _Item) -> Node:
    return node.child if isinstance(node, _Required) else node


def _joined(cls: type[And] | type[Or], parts: list[_Item]) -> Node:
    """``cls`` of ``parts``, splicing children of nested nodes of the same kind."""
    children: list[Node] = []
    for part in parts:
        node = _plain(part)
        if isinstance(node, cls):
            children.extend(node.children)
        else:
            children.append(node)
    return children[0] if len(children) == 1 else cls(tuple(children))


def _clauses(items: list[_Item]) -> Node:
    """Lucene's rule for juxtaposed clauses: required ones must all match, excluded ones must
    not, optional ones count (at least one must match) only when nothing is required."""
    if len(items) == 1:
        return _plain(items[0])
    required = [i.child for i in items if isinstance(i, _Required)]
    excluded = [i for i in items if isinstance(i, Not)]
    optional = [i for i in items if not isinstance(i, _Required | Not)]
    parts: list[_Item] = list(required)
    if not required and optional:
        parts.append(_joined(Or, list(optional)))
    parts.extend(excluded)
    return _joined(And, parts)


class _Parser:
    __slots__ = ("depth", "i", "limits", "n", "s", "terms")

    def __init__(self, text: str, limits: SearchLimits) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0
        self.depth = 0
        self.terms = 0
        self.limits = limits

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def fail(reason: str, position: int) -> NoReturn:
        raise SearchSyntaxError(reason, position)

    def skip_ws(self) -> None:
        s, n, i = self.s, self.n, self.i
        while i < n and s[i].isspace():
            i += 1
        self.i = i

    def delimited(self, j: int) -> bool:
        """Whether a token may end just before offset ``j``."""
        return j >= self.n or self.s[j].isspace() or self.s[j] in _DELIMS

    def operator(self) -> str | None:
        """The operator token at the cursor (``AND``, ``&&``, ``OR``, ``||``, ``NOT``, ``!``)."""
        s, i = self.s, self.i
        if s.startswith("!", i):
            return "!"
        for word in ("AND", "OR", "NOT", "&&", "||"):
            if s.startswith(word, i) and self.delimited(i + len(word)):
                return word
        return None

    def enter(self, position: int) -> None:
        self.depth += 1
        if self.depth > self.limits.max_depth:
            self.fail(f"nesting deeper than {self.limits.max_depth} levels", position)

    def count_term(self, position: int) -> None:
        self.terms += 1
        if self.terms > self.limits.max_terms:
            self.fail(f"more than {self.limits.max_terms} terms", position)

    # --- grammar ----------------------------------------------------------------------------

    def query(self) -> Node:
        node = self.seq(None, None)
        if self.i < self.n:  # seq stops only at the end or at a ')'
            self.fail("unmatched ')'", self.i)
        return node

    def seq(self, field: str | None, opened: int | None) -> Node:
        items: list[_Item] = []
        while True:
            self.skip_ws()
            if self.i >= self.n or self.s[self.i] == ")":
                break
            items.append(self.or_expr(field))
        if not items:
            if opened is None:
                self.fail("empty query", self.i)
            self.fail("empty parentheses", opened)
        return _clauses(items)

    def or_expr(self, field: str | None) -> _Item:
        parts = [self.and_expr(field)]
        while True:
            back = self.i
            self.skip_ws()
            op = self.operator()
            if op not in ("OR", "||"):
                self.i = back
                break
            self.i += len(op)
            parts.append(self.and_expr(field))
        return parts[0] if len(parts) == 1 else _joined(Or, parts)

    def and_expr(self, field: str | None) -> _Item:
        parts = [self.unary(field)]
        while True:
            back = self.i
            self.skip_ws()
            op = self.operator()
            if op not in ("AND", "&&"):
                self.i = back
                break
            self.i += len(op)
            parts.append(self.unary(field))
        return parts[0] if len(parts) == 1 else _joined(And, parts)

    def unary(self, field: str | None) -> _Item:
        self.skip_ws()
        start = self.i
        op = self.operator()
        if op in ("NOT", "!"):
            self.i += len(op)
            self.enter(start)
            child = self.unary(field)
            self.depth -= 1
            return Not(_plain(child))
        if start < self.n and self.s[start] in "+-":
            sign = self.s[start]
            self.i += 1
            if self.i >= self.n or self.s[self.i].isspace():
                self.fail(f"'{sign}' must be followed directly by a term", start)
            self.enter(start)
            child = self.unary(field)
            self.depth -= 1
            return Not(_plain(child)) if sign == "-" else _Required(_plain(child))
        return self.primary(field)

    def primary(self, field: str | None) -> Node:
        self.skip_ws()
        i = self.i
        if i >= self.n:
            self.fail("unexpected end of query, expected a term", i)
        c = self.s[i]
        if c == "(":
            return self.group(field)
        if c == ")":
            self.fail("expected a term before ')'", i)
        op = self.operator()
        if op is not None:
            self.fail(f"expected a term before '{op}'", i)
        if c == '"':
            self.count_term(i)
            return Phrase(field, self.quoted())
        if c in "[{":
            self.fail("a range needs a field (field:[low TO high])", i)
        text, wildcards, stop = self.word(i, stop_at_colon=True)
        if stop < self.n and self.s[stop] == ":":
            if not text:
                self.fail("missing field name before ':'", stop)
            self.i = stop + 1
            return self.value(text, stop)
        self.i = stop
        self.count_term(i)
        return Term(field, text, wildcards)

    def value(self, field_text: str, colon: int) -> Node:
        """What follows ``field:``; the field ``*`` means every field."""
        field = None if field_text == "*" else field_text.replace(".", "_")
        i = self.i
        if i >= self.n or self.s[i].isspace() or self.s[i] == ")":
            self.fail(f"missing value after '{field_text}:'", i)
        c = self.s[i]
        if c == "(":
            return self.group(field)
        if c == '"':
            self.count_term(i)
            return Phrase(field, self.quoted())
        if c in "[{":
            return self.range(field)
        text, wildcards, stop = self.word(i, stop_at_colon=False)
        self.i = stop
        if field is None and text == "*" and wildcards == (0,):
            return MatchAll()
        self.count_term(i)
        return Term(field, text, wildcards)

    def group(self, field: str | None) -> Node:
        opened = self.i
        self.enter(opened)
        self.i += 1
        node = self.seq(field, opened)
        if self.i >= self.n:
            self.fail("unclosed '('", opened)
        self.i += 1
        self.depth -= 1
        return node

    def word(self, start: int, *, stop_at_colon: bool) -> tuple[str, tuple[int, ...], int]:
        """Read an unquoted word from ``start``.

        Returns:
            The text with escapes resolved, the offsets of its unescaped ``*``/``?`` in that
            text, and the offset just past the word.
        """
        s, n = self.s, self.n
        chars: list[str] = []
        wildcards: list[int] = []
        j = start
        while j < n:
            c = s[j]
            if c.isspace() or c in _DELIMS or (c == ":" and stop_at_colon):
                break
            if c == "\\":
                if j + 1 >= n:
                    self.fail("'\\' at the end of the query escapes nothing", j)
                chars.append(s[j + 1])
                j += 2
                continue
            if c in _UNSUPPORTED:
                self.fail(f"{_UNSUPPORTED[c]} is not supported", j)
            if c in "*?":
                wildcards.append(len(chars))
            chars.append(c)
            j += 1
        return "".join(chars), tuple(wildcards), j

    def quoted(self) -> str:
        """Read ``"…"`` at the cursor (backslash escapes the next character)."""
        s, n = self.s, self.n
        opened = self.i
        chars: list[str] = []
        j = opened + 1
        while j < n:
            c = s[j]
            if c == "\\" and j + 1 < n:
                chars.append(s[j + 1])
                j += 2
                continue
            if c == '"':
                self.i = j + 1
                return "".join(chars)
            chars.append(c)
            j += 1
        self.fail("unterminated quoted value", opened)

    def range(self, field: str | None) -> Node:
        s, n = self.s, self.n
        opened = self.i
        include_low = s[opened] == "["
        self.i += 1
        self.skip_ws()
        low = self.bound(opened)
        if self.i < n and s[self.i] in "]}":
            self.fail("expected 'TO' in the range", self.i)
        self.skip_ws()
        after = self.i + 2
        if self.i >= n:
            self.fail("unclosed range, expected ']' or '}'", opened)
        if not s.startswith("TO", self.i) or not (
            after >= n or s[after].isspace() or s[after] in "]}"
        ):
            self.fail("expected 'TO' in the range", self.i)
        self.i += 2
        self.skip_ws()
        high = self.bound(opened)
        self.skip_ws()
        if self.i >= n:
            self.fail("unclosed range, expected ']' or '}'", opened)
        if s[self.i] not in "]}":
            self.fail("expected ']' or '}' to close the range", self.i)
        include_high = s[self.i] == "]"
        self.i += 1
        self.count_term(opened)
        return Range(field, low, high, include_low, include_high)

    def bound(self, opened: int) -> str | None:
        """One end of a range: ``*`` (open), a quoted value or a word; ``None`` when open."""
        s, n = self.s, self.n
        start = self.i
        if start >= n:
            self.fail("unclosed range, expected ']' or '}'", opened)
        if s[start] == '"':
            return self.quoted()
        if s[start] in "]}":
            self.fail("expected a range bound", start)
        chars: list[str] = []
        escaped = False
        j = start
        while j < n and not s[j].isspace() and s[j] not in "]}":
            if s[j] == "\\":
                if j + 1 >= n:
                    self.fail("'\\' at the end of the query escapes nothing", j)
                chars.append(s[j + 1])
                escaped = True
                j += 2
                continue
            chars.append(s[j])
            j += 1
        self.i = j
        text = "".join(chars)
        return None if text == "*" and not escaped else text
