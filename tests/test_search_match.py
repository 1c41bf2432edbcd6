"""Matching queries against realistic node facts: a table of queries and the exact set of
nodes each selects, the flattening Chef does, and a property test that matching never
raises."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushy_appliance.search import (
    EMPTY,
    FlatFacts,
    SearchLimits,
    SearchSyntaxError,
    compile_query,
    flatten_facts,
)


def ohai_like(
    host: str,
    *,
    platform: str,
    version: str,
    family: str,
    ip: str,
    ip6: str | None,
    machine: str,
    cpus: int,
    tags: list[str],
    roles: list[str],
    env: str,
    uptime: int,
    **extra: Any,
) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "hostname": host,
        "fqdn": f"{host}.eu.example.com",
        "domain": "eu.example.com",
        "platform": platform,
        "platform_version": version,
        "platform_family": family,
        "os": "linux",
        "os_version": "6.1.0-18-amd64",
        "ipaddress": ip,
        "macaddress": "02:FC:00:00:00:01",
        "kernel": {"name": "Linux", "release": "6.1.0-18-amd64", "machine": machine},
        "cpu": {"total": cpus},
        "memory": {"total": "16318480kB"},
        "virtualization": {"system": "kvm", "role": "guest"},
        "uptime_seconds": uptime,
        "pushy_agent_version": "0.1.0",
        "tags": tags,
        "roles": roles,
        "chef_environment": env,
        **extra,
    }
    if ip6 is not None:
        facts["ip6address"] = ip6
    return facts


NODES: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    # name: (status, availability, facts)
    "web1": (
        "online",
        "available",
        ohai_like(
            "web1",
            platform="ubuntu",
            version="22.04",
            family="debian",
            ip="10.1.2.3",
            ip6="fd00::10",
            machine="x86_64",
            cpus=4,
            tags=["web", "eu"],
            roles=["base", "web"],
            env="production",
            uptime=86_400,
            app={"name": "shop", "port": 8080, "debug": False, "weights": [1.5, 2]},
        ),
    ),
    "web2": (
        "online",
        "unavailable",
        ohai_like(
            "web2",
            platform="ubuntu",
            version="20.04",
            family="debian",
            ip="10.1.9.9",
            ip6=None,
            machine="aarch64",
            cpus=16,
            tags=["web", "canary"],
            roles=["base", "web"],
            env="staging",
            uptime=120,
        ),
    ),
    "db1": (
        "offline",
        "unavailable",
        ohai_like(
            "db1",
            platform="redhat",
            version="9.3",
            family="rhel",
            ip="192.168.7.20",
            ip6="2001:db8::7",
            machine="x86_64",
            cpus=32,
            tags=["db"],
            roles=["base", "db"],
            env="production",
            uptime=9_000_000,
            path_like={"a.b": "dotted key"},
        ),
    ),
    "bare": ("online", "available", None),  # connected, reported no facts
}

FLAT = {name: flatten_facts(f) if f is not None else EMPTY for name, (_, _, f) in NODES.items()}


def select(query: str) -> set[str]:
    q = compile_query(query)
    return {
        name
        for name, (status, availability, _) in NODES.items()
        if q.matches(name, FLAT[name], status=status, availability=availability)
    }


ALL = set(NODES)
WITH_FACTS = ALL - {"bare"}

CASES: list[tuple[str, set[str]]] = [
    # match everything, and the fields every node has
    ("*:*", ALL),
    ("name:*", ALL),
    ("platform:*", WITH_FACTS),
    # exact and case-sensitive values and keys
    ("platform:ubuntu", {"web1", "web2"}),
    ("platform:Ubuntu", set()),
    ("Platform:ubuntu", set()),
    ("platform_family:rhel", {"db1"}),
    ("platform_version:22.04", {"web1"}),
    ("hostname:web1", {"web1"}),
    # nested attributes: flattened with _ or written with .
    ("kernel_machine:x86_64", {"web1", "db1"}),
    ("kernel.machine:x86_64", {"web1", "db1"}),
    ("kernel_machine:aarch64", {"web2"}),
    ("cpu_total:4", {"web1"}),
    ("virtualization_system:kvm", WITH_FACTS),
    ("app_port:8080", {"web1"}),
    ("app.port:8080", {"web1"}),
    ("app_debug:false", {"web1"}),
    ("app_weights:1.5", {"web1"}),
    ("path_like_a_b:*key", {"db1"}),
    ("path_like.a.b:*key", {"db1"}),
    # Chef's expansion: a leaf under its last key too, and a map's keys as its values
    ("machine:aarch64", {"web2"}),
    ("port:8080", {"web1"}),
    ("kernel:machine", WITH_FACTS),
    ("app:port", {"web1"}),
    ("total:16318480kB", WITH_FACTS),
    # list values: any element
    ("tags:web", {"web1", "web2"}),
    ("tags:canary", {"web2"}),
    ("roles:db", {"db1"}),
    ("roles:base", WITH_FACTS),
    ("tags:web AND tags:eu", {"web1"}),
    # the registry's fields, never a fact of the same name
    ("name:web1", {"web1"}),
    ("name:web*", {"web1", "web2"}),
    ("status:online", {"web1", "web2", "bare"}),
    ("status:offline", {"db1"}),
    ("availability:available", {"web1", "bare"}),
    ("availability:unavailable AND status:online", {"web2"}),
    ("name:shop", set()),  # app.name is not the node name
    ("kernel_name:Linux", WITH_FACTS),
    ("name:Linux", set()),
    # wildcards over the whole value
    ("platform:ub*", {"web1", "web2"}),
    ("platform:*tu", {"web1", "web2"}),
    ("platform:u*u", {"web1", "web2"}),
    ("platform:*bun*", {"web1", "web2"}),
    ("platform:ubunt?", {"web1", "web2"}),
    ("platform:ubun?", set()),
    ("platform_version:2?.04", {"web1", "web2"}),
    ("fqdn:*.eu.example.com", WITH_FACTS),
    ("fqdn:web?.*.com", {"web1", "web2"}),
    ("hostname:*1", {"web1", "db1"}),
    ("hostname:w*b*2", {"web2"}),
    ("hostname:w**2", {"web2"}),
    ("hostname:?", set()),
    (r"hostname:web\*", set()),
    ('hostname:"web*"', set()),
    # wildcard field names
    ("kernel_*:aarch64", {"web2"}),
    ("*_system:kvm", WITH_FACTS),
    ("na*:db1", {"db1"}),
    ("app_*:shop", {"web1"}),
    # a bare term searches every field (the name and live state too)
    ("aarch64", {"web2"}),
    ("db1", {"db1"}),
    ("online", {"web1", "web2", "bare"}),
    ("*canary*", {"web2"}),
    ("shop", {"web1"}),
    ("nothing-has-this", set()),
    # quoted values: the whole value, literally
    ('path_like_a_b:"dotted key"', {"db1"}),
    ('path_like_a_b:"dotted"', set()),
    ('"dotted key"', {"db1"}),
    # addresses: CIDR blocks and single addresses, v4 and v6
    ("ipaddress:10.0.0.0/8", {"web1", "web2"}),
    ("ipaddress:10.1.2.0/24", {"web1"}),
    ("ipaddress:192.168.0.0/16", {"db1"}),
    ("ipaddress:10.1.2.3", {"web1"}),
    ("ipaddress:10.1.2.3/32", {"web1"}),
    ("ipaddress:0.0.0.0/0", WITH_FACTS),
    ("ipaddress:172.16.0.0/12", set()),
    ("ip6address:fd00::/8", {"web1"}),
    ("ip6address:2001:db8::/32", {"db1"}),
    ("ip6address:FD00::10", {"web1"}),
    ("ip6address:fd00:0:0::10", {"web1"}),
    ("ip6address:::/0", {"web1", "db1"}),
    ("ipaddress:fd00::/8", set()),  # a v6 block never holds a v4 address
    ("ip6address:10.0.0.0/8", set()),
    ("ipaddress:10.1.*", {"web1", "web2"}),
    ("*:10.0.0.0/8", {"web1", "web2"}),
    # ranges: numeric when the ends are numbers
    ("cpu_total:[4 TO 16]", {"web1", "web2"}),
    ("cpu_total:{4 TO 16]", {"web2"}),
    ("cpu_total:[4 TO 16}", {"web1"}),
    ("cpu_total:{4 TO 16}", set()),
    ("cpu_total:[10 TO *]", {"web2", "db1"}),
    ("cpu_total:[* TO 4]", {"web1"}),
    ("cpu_total:[1e1 TO 3.2e1]", {"web2", "db1"}),
    ("uptime_seconds:[0 TO 3600]", {"web2"}),
    ("platform_version:[20 TO 22.04]", {"web1", "web2"}),
    ("platform_version:[9 TO 10]", {"db1"}),  # numeric: "9.3" is between 9 and 10
    ("platform_version:[-1 TO +100]", WITH_FACTS),
    ("memory_total:[1 TO *]", set()),  # "16318480kB" is not a number
    ("cpu_total:[* TO *]", WITH_FACTS),
    ("nosuch:[* TO *]", set()),
    # string ranges when an end is not a number
    ("hostname:[a TO m]", {"db1"}),
    ("hostname:[web1 TO web2]", {"web1", "web2"}),
    ("hostname:{web1 TO web2}", set()),
    ("hostname:[w TO *]", {"web1", "web2"}),
    ("platform_version:[a TO z]", set()),
    ("platform_version:[1 TO 3x]", {"web1", "web2"}),  # string order: "20.04" < "22.04" < "3x"
    # boolean logic and precedence
    ("platform:ubuntu AND NOT tags:canary", {"web1"}),
    ("platform:ubuntu -tags:canary", {"web1"}),
    ("platform:ubuntu !tags:canary", {"web1"}),
    ("NOT platform:ubuntu", {"db1", "bare"}),
    ("-platform:ubuntu", {"db1", "bare"}),
    ("tags:db OR tags:canary", {"web2", "db1"}),
    ("tags:db || tags:canary && status:online", {"web2", "db1"}),
    ("(tags:db || tags:canary) && status:online", {"web2"}),
    ("tags:db OR NOT status:online", {"db1"}),
    ("NOT (platform:ubuntu OR platform:redhat)", {"bare"}),
    ("tags:(db OR canary)", {"web2", "db1"}),
    ("tags:(web -canary)", {"web1"}),
    ("platform:redhat tags:canary", {"web2", "db1"}),
    ("+platform:ubuntu tags:db", {"web1", "web2"}),
    ("+platform:ubuntu +tags:canary", {"web2"}),
    ("-tags:web -tags:db", {"bare"}),
    ("*:* -tags:web", {"db1", "bare"}),
    # a field a node does not have never matches; NOT of it does
    ("ip6address:*", {"web1", "db1"}),
    ("nosuch:x", set()),
    ("nosuch:*", set()),
    ("NOT nosuch:x", ALL),
    ("domain:eu.example.com", WITH_FACTS),
]


@pytest.mark.parametrize(("query", "expected"), CASES, ids=[q for q, _ in CASES])
def test_select(query: str, expected: set[str]) -> None:
    assert select(query) == expected


def test_flatten_follows_chef_expansion() -> None:
    flat = flatten_facts(
        {
            "kernel": {"name": "Linux", "machine": "x86_64"},
            "tags": ["web", "web", "db"],
            "n": 3,
            "f": 2.5,
            "yes": True,
            "nil": None,
            "deep": {"a": {"b": {"c": 1}}},
            "list_of_maps": [{"k": "v1"}, {"k": "v2"}],
            "name": "spoofed",
            "status": "online",
            "dot.ted": {"x.y": "z"},
        }
    )
    assert dict(flat) == {
        "kernel": ("name", "machine"),
        "kernel_name": "Linux",
        "kernel_machine": "x86_64",
        "machine": "x86_64",
        "tags": ("web", "db"),
        "n": "3",
        "f": "2.5",
        "yes": "true",
        "nil": "",
        "deep": "a",
        "deep_a": "b",
        "a": "b",
        "deep_a_b": "c",
        "b": "c",
        "deep_a_b_c": "1",
        "c": "1",
        "list_of_maps": "k",
        "list_of_maps_k": ("v1", "v2"),
        "k": ("v1", "v2"),
        "dot_ted": "x_y",
        "dot_ted_x_y": "z",
        "x_y": "z",
    }
    assert set(flat.every) == {
        "name", "machine", "Linux", "x86_64", "web", "db", "3", "2.5", "true", "",
        "a", "b", "c", "1", "k", "v1", "v2", "x_y", "z",
    }  # fmt: skip


def test_flatten_shares_keys_and_short_values_between_nodes() -> None:
    one = flatten_facts({"platform": "".join(["deb", "ian"]), "kernel": {"machine": "x86_64"}})
    two = flatten_facts({"platform": "".join(["debi", "an"]), "kernel": {"machine": "x86_64"}})
    assert one["platform"] is two["platform"]
    k1 = next(k for k in one if k == "kernel_machine")
    k2 = next(k for k in two if k == "kernel_machine")
    assert k1 is k2


def test_flatten_leaves_no_garbage_for_the_collector() -> None:
    # the server flattens every node's facts and its collector freezes what is alive: a
    # reference cycle here (closures calling each other) kept every node's work lists
    gc.collect()
    gc.disable()
    try:
        flatten_facts({"kernel": {"machine": "x86_64"}, "tags": ["a", "b"], "l": [{"k": 1}]})
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_flatten_keeps_a_node_s_own_values_uninterned_and_the_same() -> None:
    def facts() -> dict[str, Any]:
        return {"hostname": "".join(["web", "-7"]), "os": "".join(["lin", "ux"])}

    one, two = flatten_facts(facts(), {"hostname"}), flatten_facts(facts(), {"hostname"})
    assert dict(one) == dict(flatten_facts(facts())) == {"hostname": "web-7", "os": "linux"}
    assert one["hostname"] is not two["hostname"]  # its own, not interned
    assert one["os"] is two["os"]
    assert flatten_facts(facts())["hostname"] is flatten_facts(facts())["hostname"]


def test_flatten_stops_at_depth() -> None:
    deep: dict[str, Any] = {"leaf": "x"}
    for _ in range(40):
        deep = {"d": deep}
    flat = flatten_facts(deep)
    assert "leaf" not in flat
    assert flat["d"] == "d"


def test_query_keeps_text_and_tree() -> None:
    q = compile_query("tags:web")
    assert q.text == "tags:web"
    assert repr(q) == "Query('tags:web')"
    assert q.predicate("n", "online", "available", FLAT["web1"]) is True
    assert q.matches("n", EMPTY) is False


@pytest.mark.parametrize(
    ("query", "reads"),
    [
        ("web", False),
        ("kernel_*:aarch64", False),
        ("name:web* AND platform:debian", False),
        ("status:nonsense OR availability:x", False),
        ("NOT (tags:web OR roles:db)", False),
        ("*:*", False),
        ("status:online", True),
        ("NOT availability:unavailable", True),
        ("st*:online", True),
        ("*line", True),
        ("available", True),
        ("*:[a TO p]", True),
        ("tags:web AND (status:offline OR x)", True),
    ],
)
def test_query_says_whether_it_reads_the_live_state(query: str, reads: bool) -> None:
    assert compile_query(query).reads_live is reads


def test_one_query_over_many_shapes_answers_as_a_fresh_one() -> None:
    # a query specialises itself to each facts shape it meets, and keeps the specialisation:
    # going over every node twice, in both orders, must answer as a new query per node
    for text, _ in CASES:
        q = compile_query(text)
        order = [*NODES, *reversed(NODES)]
        for name in order:
            status, availability, _ = NODES[name]
            fresh = compile_query(text).matches(
                name, FLAT[name], status=status, availability=availability
            )
            assert q.matches(name, FLAT[name], status=status, availability=availability) is (
                fresh
            ), (text, name)


def test_flat_facts_share_their_shape_and_read_like_a_map() -> None:
    one = flatten_facts({"kernel": {"machine": "x86_64"}, "tags": ["a", "b"]})
    two = flatten_facts({"kernel": {"machine": "aarch64"}, "tags": ["c", "d"]})
    three = flatten_facts({"kernel": {"machine": "aarch64"}, "tags": "c"})
    assert one.shape is two.shape and three.shape is not one.shape
    assert dict(two) == {"kernel": "machine", "kernel_machine": "aarch64", "machine": "aarch64",
                         "tags": ("c", "d")}  # fmt: skip
    assert len(two) == 4 and "tags" in two and "nope" not in two and two.get("nope") is None
    assert compile_query("tags:d").matches("n", two) and not compile_query("tags:d").matches(
        "n", three
    )


def test_compile_query_applies_limits() -> None:
    with pytest.raises(SearchSyntaxError, match="more than 1 terms"):
        compile_query("a b", SearchLimits(max_terms=1))


# --- never raises ---------------------------------------------------------------------------

SCALARS = st.one_of(
    st.text(max_size=12),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.sampled_from(["10.1.2.3", "fd00::1", "::", "1.2.3", "999.1.1.1", "1e309", "-0"]),
)
FACTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)
QUERY_PARTS = st.sampled_from(
    [
        *'abz019 :*?."\\()[]{}!+-/',
        *("AND", "OR", "NOT", "TO", " AND ", " OR ", "*:*", "[1 TO 2]", "{a TO *}"),
        *("10.0.0.0/8", "fd00::/8", "name:", "status:", "x.y:", "ip:"),
    ]
)


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(QUERY_PARTS, max_size=16).map("".join),
    st.dictionaries(st.text(max_size=8), FACTS, max_size=6),
    st.text(max_size=8),
)
def test_matching_never_raises(query: str, facts: dict[str, Any], name: str) -> None:
    try:
        q = compile_query(query)
    except SearchSyntaxError:
        return
    flat: FlatFacts = flatten_facts(facts)
    assert q.matches(name, flat, status="online", availability="available") in (True, False)
    assert q.matches(name, EMPTY) in (True, False)
