"""Search: Chef's query language over node facts, pure (no I/O, no clock).

The public face:

* :func:`compile_query` — parse a query once (:class:`SearchSyntaxError` if it does not) into a
  :class:`Query`, whose :meth:`Query.matches` answers for one node, and :meth:`Query.test`
  for many (the live state asked only when the query can read it);
* :func:`flatten_facts` — a node's facts in the form the matcher reads (:class:`FlatFacts`,
  whose keys are a :class:`Shape` shared by nodes with the same keys); call it when the facts
  change, keep the result beside the node;
* :func:`parse` and the tree classes, :class:`SearchLimits`.

``name``, ``status`` (``online``/``offline``) and ``availability``
(``available``/``unavailable``) come from the caller — the node registry owns them — never
from facts. The language and where it follows Chef are in ``docs/SEARCH.md``.
"""

from __future__ import annotations

from ..errors import SearchSyntaxError
from ._ast import And, MatchAll, Node, Not, Or, Phrase, Range, Term
from ._flatten import EMPTY, RESERVED_FIELDS, FlatFacts, Shape, flatten_facts
from ._match import Live, Matcher, Predicate, compile_tree
from ._parser import DEFAULT_LIMITS, SearchLimits, parse

__all__ = [
    "DEFAULT_LIMITS",
    "EMPTY",
    "RESERVED_FIELDS",
    "And",
    "FlatFacts",
    "Live",
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
    "Shape",
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
        predicate: ``predicate(name, status, availability, facts) -> bool``.
        test: ``test(name, live, facts) -> bool``, ``live(name) -> (status, availability)``
            asked only when the query can read them — the fastest way to test many nodes.
        reads_live: whether the answer can depend on ``status`` or ``availability``.
    """

    __slots__ = ("predicate", "reads_live", "test", "text", "tree")

    def __init__(self, text: str, tree: Node) -> None:
        self.text = text
        self.tree = tree
        matcher = Matcher(tree)
        self.predicate: Predicate = matcher.predicate
        self.test = matcher.test
        self.reads_live = matcher.reads_live

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
