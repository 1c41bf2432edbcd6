"""Search: Chef's query language over node facts, pure (no I/O, no clock).

The public face:

* :func:`compile_query` — parse a query once (:class:`SearchSyntaxError` if it does not) into a
  :class:`Query`, whose :meth:`Query.matches` (or raw :attr:`Query.predicate`) answers for one
  node;
* :func:`flatten_facts` — a node's facts in the form the matcher reads; call it when the facts
  change, keep the result beside the node;
* :func:`parse` and the tree classes, :class:`SearchLimits`.

``name``, ``status`` (``online``/``offline``) and ``availability``
(``available``/``unavailable``) come from the caller — the node registry owns them — never
from facts. The language and where it follows Chef are in ``docs/SEARCH.md``.
"""

from __future__ import annotations

from ..errors import SearchSyntaxError
from ._ast import And, MatchAll, Node, Not, Or, Phrase, Range, Term
from ._flatten import EMPTY, RESERVED_FIELDS, FlatFacts, flatten_facts
from ._match import Predicate, compile_tree
from ._parser import DEFAULT_LIMITS, SearchLimits, parse

__all__ = [
    "DEFAULT_LIMITS",
    "EMPTY",
    "RESERVED_FIELDS",
    "And",
    "FlatFacts",
    "MatchAll",
    "Node",
    "Not",
    "Or",
    "Phrase",
    "Predicate",
    "Query",
    "Range",
    "SearchLimits",
    "SearchSyntaxError",
    "Term",
    "compile_query",
    "compile_tree",
    "flatten_facts",
    "parse",
]


class Query:
    """A parsed, compiled query.

    Attributes:
        text: the query as given.
        tree: its syntax tree.
        predicate: ``predicate(name, status, availability, facts) -> bool`` — the fastest way
            to test many nodes.
    """

    __slots__ = ("predicate", "text", "tree")

    def __init__(self, text: str, tree: Node) -> None:
        self.text = text
        self.tree = tree
        self.predicate: Predicate = compile_tree(tree)

    def matches(
        self, name: str, facts: FlatFacts, *, status: str = "", availability: str = ""
    ) -> bool:
        """Whether one node matches.

        Args:
            name: the node name.
            facts: the node's facts from :func:`flatten_facts` (:data:`EMPTY` when it reported
                none).
            status: ``online`` or ``offline``.
            availability: ``available`` or ``unavailable``.
        """
        return self.predicate(name, status, availability, facts)

    def __repr__(self) -> str:
        return f"Query({self.text!r})"


def compile_query(text: str, limits: SearchLimits = DEFAULT_LIMITS) -> Query:
    """Parse and compile a query.

    Args:
        text: the query.
        limits: caps on its length, nesting and number of terms.

    Raises:
        SearchSyntaxError: the query does not parse or is over a limit.
    """
    return Query(text, parse(text, limits))
