"""The search query parser: every construct to its tree, every error to its reason and
position, the limits, and a property test that no string makes it raise anything else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushy_appliance.errors import SearchSyntaxError, ValidationError
from pushy_appliance.search import (
    And,
    MatchAll,
    Node,
    Not,
    Or,
    Phrase,
    Range,
    SearchLimits,
    Term,
    parse,
)


def T(field: str | None, text: str, *wild: int) -> Term:
    return Term(field, text, tuple(wild))


CONSTRUCTS: list[tuple[str, Node]] = [
    # field:value, nested keys with _ or .
    ("platform:debian", T("platform", "debian")),
    ("kernel_machine:x86_64", T("kernel_machine", "x86_64")),
    ("kernel.machine:x86_64", T("kernel_machine", "x86_64")),
    ("  platform:debian  ", T("platform", "debian")),
    # bare terms: every field
    ("web01", T(None, "web01")),
    ("*:web01", T(None, "web01")),
    # match everything
    ("*:*", MatchAll()),
    ("(*:*)", MatchAll()),
    # wildcards, in values and field names
    ("name:web*", T("name", "web*", 3)),
    ("name:web-?1", T("name", "web-?1", 4)),
    ("fqdn:*.example.com", T("fqdn", "*.example.com", 0)),
    ("tags:*", T("tags", "*", 0)),
    ("kernel_*:Linux", T("kernel_*", "Linux")),
    ("*", T(None, "*", 0)),
    # escapes: the character is literal (no wildcard, no operator)
    (r"name:web\*", T("name", "web*")),
    (r"run_list:recipe\[foo\:\:bar\]", T("run_list", "recipe[foo::bar]")),
    (r"a\ b:c", T("a b", "c")),
    (r"\-x", T(None, "-x")),
    (r"\AND", T(None, "AND")),
    # values may hold ':' and brackets unescaped (addresses, run lists)
    ("macaddress:02:FC:00:00:00:01", T("macaddress", "02:FC:00:00:00:01")),
    ("ip6address:fd00::/8", T("ip6address", "fd00::/8")),
    ("ipaddress:10.0.0.0/8", T("ipaddress", "10.0.0.0/8")),
    ("run_list:recipe[nginx]", T("run_list", "recipe[nginx]")),
    ("version:1.2-3+deb", T("version", "1.2-3+deb")),
    ("a:b:c", T("a", "b:c")),
    # quoted values: literal, wildcards and operators included
    ('kernel_version:"#1 SMP"', Phrase("kernel_version", "#1 SMP")),
    ('name:"web*"', Phrase("name", "web*")),
    ('"AND OR"', Phrase(None, "AND OR")),
    (r'x:"say \"hi\""', Phrase("x", 'say "hi"')),
    ('x:""', Phrase("x", "")),
    # ranges: inclusive, exclusive, mixed, open, quoted ends
    ("cpu_total:[2 TO 8]", Range("cpu_total", "2", "8", True, True)),
    ("cpu_total:{2 TO 8}", Range("cpu_total", "2", "8", False, False)),
    ("cpu_total:[2 TO 8}", Range("cpu_total", "2", "8", True, False)),
    ("uptime_seconds:[3600 TO *]", Range("uptime_seconds", "3600", None)),
    ("x:[* TO *]", Range("x", None, None)),
    ("x:[  a   TO   b  ]", Range("x", "a", "b")),
    ('x:["*" TO "z z"]', Range("x", "*", "z z")),
    (r"x:[\* TO b]", Range("x", "*", "b")),
    ("x:[a TO b]AND y:c", And((Range("x", "a", "b"), T("y", "c")))),
    # AND / OR / NOT and their symbols
    ("a:1 AND b:2", And((T("a", "1"), T("b", "2")))),
    ("a:1 && b:2", And((T("a", "1"), T("b", "2")))),
    ("a:1 OR b:2", Or((T("a", "1"), T("b", "2")))),
    ("a:1 || b:2", Or((T("a", "1"), T("b", "2")))),
    ("NOT a:1", Not(T("a", "1"))),
    ("!a:1", Not(T("a", "1"))),
    ("! a:1", Not(T("a", "1"))),
    ("-a:1", Not(T("a", "1"))),
    ("+a:1", T("a", "1")),
    ("NOT NOT a:1", Not(Not(T("a", "1")))),
    ("a:1 AND b:2 AND c:3", And((T("a", "1"), T("b", "2"), T("c", "3")))),
    # precedence: NOT > AND > OR
    ("a OR b AND c", Or((T(None, "a"), And((T(None, "b"), T(None, "c")))))),
    ("a AND b OR c", Or((And((T(None, "a"), T(None, "b"))), T(None, "c")))),
    ("NOT a AND b", And((Not(T(None, "a")), T(None, "b")))),
    ("a OR NOT b", Or((T(None, "a"), Not(T(None, "b"))))),
    ("(a OR b) AND c", And((Or((T(None, "a"), T(None, "b"))), T(None, "c")))),
    ("NOT (a OR b)", Not(Or((T(None, "a"), T(None, "b"))))),
    ("((a))", T(None, "a")),
    # juxtaposition: Lucene's clause rules
    ("a b", Or((T(None, "a"), T(None, "b")))),
    ("a -b", And((T(None, "a"), Not(T(None, "b"))))),
    ("a NOT b", And((T(None, "a"), Not(T(None, "b"))))),
    ("+a b", T(None, "a")),
    ("+a +b c", And((T(None, "a"), T(None, "b")))),
    ("+a -b", And((T(None, "a"), Not(T(None, "b"))))),
    ("-a -b", And((Not(T(None, "a")), Not(T(None, "b"))))),
    ("a b -c", And((Or((T(None, "a"), T(None, "b"))), Not(T(None, "c"))))),
    ("a AND b c", Or((And((T(None, "a"), T(None, "b"))), T(None, "c")))),
    ("*:* -tags:db", And((MatchAll(), Not(T("tags", "db"))))),
    # operators are words: lower case, or glued to a term, they are text
    ("a and b", Or((T(None, "a"), T(None, "and"), T(None, "b")))),
    ("ANDROID", T(None, "ANDROID")),
    ("a&&b", T(None, "a&&b")),
    ("x86-64", T(None, "x86-64")),
    ("TO", T(None, "TO")),
    # field groups: the group's bare terms take the field
    ("tags:(web OR db)", Or((T("tags", "web"), T("tags", "db")))),
    ("tags:(web -db)", And((T("tags", "web"), Not(T("tags", "db"))))),
    ("tags:(web name:x)", Or((T("tags", "web"), T("name", "x")))),
    ('tags:("a b" c*)', Or((Phrase("tags", "a b"), T("tags", "c*", 1)))),
    ("a:(b:(c))", T("b", "c")),
    # reserved fields parse like any other
    (
        "status:online AND availability:available",
        And((T("status", "online"), T("availability", "available"))),
    ),
]


@pytest.mark.parametrize(("query", "tree"), CONSTRUCTS, ids=[q for q, _ in CONSTRUCTS])
def test_construct(query: str, tree: Node) -> None:
    assert parse(query) == tree


ERRORS: list[tuple[str, str, int]] = [
    ("", "empty query", 0),
    ("   ", "empty query", 3),
    ("()", "empty parentheses", 0),
    ("a AND ( )", "empty parentheses", 6),
    ("(a", "unclosed '('", 0),
    ("a AND (b OR (c)", "unclosed '('", 6),
    ("a)", "unmatched ')'", 1),
    ("(a))", "unmatched ')'", 3),
    ("a AND", "unexpected end of query, expected a term", 5),
    ("a OR ", "unexpected end of query, expected a term", 5),
    ("NOT", "unexpected end of query, expected a term", 3),
    ("!", "unexpected end of query, expected a term", 1),
    ("AND a", "expected a term before 'AND'", 0),
    ("a OR OR b", "expected a term before 'OR'", 5),
    ("a && || b", "expected a term before '||'", 5),
    ("(AND)", "expected a term before 'AND'", 1),
    ("a AND )", "expected a term before ')'", 6),
    ("- a", "'-' must be followed directly by a term", 0),
    ("a +", "'+' must be followed directly by a term", 2),
    (":x", "missing field name before ':'", 0),
    ("a AND :x", "missing field name before ':'", 6),
    ("platform:", "missing value after 'platform:'", 9),
    ("platform: debian", "missing value after 'platform:'", 9),
    ("(platform:)", "missing value after 'platform:'", 10),
    ('"abc', "unterminated quoted value", 0),
    ('x:"abc\\"', "unterminated quoted value", 2),
    ("a\\", "'\\' at the end of the query escapes nothing", 1),
    ("x:[a\\", "'\\' at the end of the query escapes nothing", 4),
    ("[a TO b]", "a range needs a field (field:[low TO high])", 0),
    ("x:[a TO", "unclosed range, expected ']' or '}'", 2),
    ("x:[a TO b", "unclosed range, expected ']' or '}'", 2),
    ("x:[a", "unclosed range, expected ']' or '}'", 2),
    ("x:[", "unclosed range, expected ']' or '}'", 2),
    ("x:[a b]", "expected 'TO' in the range", 5),
    ("x:[a]", "expected 'TO' in the range", 4),
    ("x:[a to b]", "expected 'TO' in the range", 5),
    ("x:[]", "expected a range bound", 3),
    ("x:[a TO ]", "expected a range bound", 8),
    ("x:[a TO b c]", "expected ']' or '}' to close the range", 10),
    ("a^2", "boost (^) is not supported", 1),
    ("name:web~", "fuzzy search (~) is not supported", 8),
    ('"abc"~2', "fuzzy search (~) is not supported", 5),
]


@pytest.mark.parametrize(("query", "reason", "position"), ERRORS, ids=[q for q, _, _ in ERRORS])
def test_error(query: str, reason: str, position: int) -> None:
    with pytest.raises(SearchSyntaxError) as info:
        parse(query)
    assert (info.value.reason, info.value.position) == (reason, position)


def test_error_is_a_400_with_chef_list_body() -> None:
    with pytest.raises(SearchSyntaxError) as info:
        parse("a AND")
    err = info.value
    assert isinstance(err, ValidationError)
    assert err.status == 400
    assert err.body() == {
        "error": ["invalid search query: unexpected end of query, expected a term at position 5"]
    }


def test_length_limit() -> None:
    limits = SearchLimits(max_length=20)
    assert parse("x" * 20, limits) == T(None, "x" * 20)
    with pytest.raises(SearchSyntaxError) as info:
        parse("x" * 21, limits)
    assert (info.value.reason, info.value.position) == ("query longer than 20 characters", 20)


def test_depth_limit_counts_groups_and_prefixes() -> None:
    limits = SearchLimits(max_depth=3)
    assert parse("((NOT a))", limits) == Not(T(None, "a"))
    assert parse("((( a)))", limits) == T(None, "a")
    for query, position in [("(((( a))))", 3), ("((NOT -a))", 6), ("x:(y:(NOT (a)))", 10)]:
        with pytest.raises(SearchSyntaxError) as info:
            parse(query, limits)
        assert (info.value.reason, info.value.position) == (
            "nesting deeper than 3 levels",
            position,
        )


def test_default_depth_limit_is_far_from_recursion_limit() -> None:
    deep = "(" * 32 + "a" + ")" * 32
    assert parse(deep) == T(None, "a")
    with pytest.raises(SearchSyntaxError, match="nesting deeper than 32 levels"):
        parse("(" * 33 + "a" + ")" * 33)
    with pytest.raises(SearchSyntaxError, match="nesting deeper than 32 levels"):
        parse("NOT " * 40 + "a")


def test_term_limit() -> None:
    limits = SearchLimits(max_terms=3)
    assert parse('a b:[1 TO 2] "c"', limits) == Or(
        (T(None, "a"), Range("b", "1", "2"), Phrase(None, "c"))
    )
    with pytest.raises(SearchSyntaxError) as info:
        parse("a b c d", limits)
    assert (info.value.reason, info.value.position) == ("more than 3 terms", 6)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_length": 0}, {"max_depth": 101}, {"max_terms": 0}, {"max_length": 1_000_001}],
)
def test_limits_are_checked(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="search limit"):
        SearchLimits(**kwargs)


QUERY_ALPHABET = st.sampled_from(
    [*'abcxyz019 :*?"\\()[]{}^~!+-&|.', "AND", "OR", "NOT", "TO", " AND ", " OR ", "*:*"]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(QUERY_ALPHABET, max_size=30).map("".join))
def test_any_query_string_parses_or_raises_syntax_error(query: str) -> None:
    try:
        parse(query, SearchLimits(max_depth=8))
    except SearchSyntaxError as e:
        assert 0 <= e.position <= len(query)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_syntax_error(query: str) -> None:
    try:
        parse(query)
    except SearchSyntaxError as e:
        assert 0 <= e.position <= len(query)
