"""``POST jobs`` validation: one row per rule of API.md §3, their order, and the defaults."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from pushy_appliance.errors import ValidationError
from pushy_appliance.jobs.validation import (
    JobRequest,
    resolve_quorum,
    validate_job_request,
)
from pushy_appliance.jsonbody import DuplicateKeyDict, detect_duplicates, parse_json_body

NODES = ["n1", "n2", "n3"]


def body(**fields: Any) -> dict[str, Any]:
    """A valid body with ``fields`` replaced; a value of ``...`` removes the key."""
    result: dict[str, Any] = {"command": "chef-client", "nodes": list(NODES)}
    for key, value in fields.items():
        if value is ...:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def dup_env() -> dict[str, Any]:
    parsed = parse_json_body(
        b'{"command":"x","nodes":["n1"],"env":{"A":"1","A":"2"}}', mark_duplicates=True
    )
    assert isinstance(parsed, dict)
    assert isinstance(parsed["env"], DuplicateKeyDict)
    return parsed


PREFIX = "invalid file contents (expected 'base64:...' or 'raw:...')"
BASE64 = "invalid file contents (couldn't decode base64 string)"
SIZE = "invalid file size (must be <= 100000 bytes)"


# (id, body, expected message). Rows marked "order" break two rules: the first one wins.
ERROR_ROWS: list[tuple[str, object, str]] = [
    # not an object
    ("not-object-list", ["chef-client"], "invalid JSON body"),
    ("not-object-string", "chef-client", "invalid JSON body"),
    ("not-object-null", None, "invalid JSON body"),
    # 1. command
    ("command-missing", body(command=...), "invalid command supplied"),
    ("command-not-string", body(command=5), "invalid command supplied"),
    ("command-null", body(command=None), "invalid command supplied"),
    ("command-empty", body(command=""), "invalid command supplied"),
    ("command-too-long", body(command="é" * 2049), "invalid command supplied"),
    ("command-nul", body(command="a\0b"), "invalid command supplied"),
    # 2. nodes
    ("nodes-missing", body(nodes=...), "at least one node must be supplied"),
    ("nodes-empty", body(nodes=[]), "at least one node must be supplied"),
    ("nodes-not-list", body(nodes="n1"), "at least one node must be supplied"),
    ("nodes-not-strings", body(nodes=["n1", 2]), "at least one node must be supplied"),
    # 3. run_timeout type
    (
        "run-timeout-string",
        body(run_timeout="300"),
        "invalid type supplied for run_timeout (expected a number)",
    ),
    (
        "run-timeout-null",
        body(run_timeout=None),
        "invalid type supplied for run_timeout (expected a number)",
    ),
    (
        "run-timeout-bool",
        body(run_timeout=True),
        "invalid type supplied for run_timeout (expected a number)",
    ),
    # 4. quorum type
    ("quorum-word", body(quorum="most"), "invalid type supplied for quorum (expected a number)"),
    ("quorum-bool", body(quorum=False), "invalid type supplied for quorum (expected a number)"),
    ("quorum-null", body(quorum=None), "invalid type supplied for quorum (expected a number)"),
    ("quorum-list", body(quorum=[2]), "invalid type supplied for quorum (expected a number)"),
    ("quorum-bad-pct", body(quorum="5 %"), "invalid type supplied for quorum (expected a number)"),
    (
        "quorum-number-string",
        body(quorum="2"),
        "invalid type supplied for quorum (expected a number)",
    ),
    # 5. capture_output type
    (
        "capture-string",
        body(capture_output="yes"),
        "invalid type supplied for capture_output (expected a boolean)",
    ),
    (
        "capture-int",
        body(capture_output=1),
        "invalid type supplied for capture_output (expected a boolean)",
    ),
    # 6. keys
    ("unknown-key", body(timeout=5), "invalid key supplied"),
    (
        "duplicate-top-key",
        parse_json_body(b'{"command":"x","command":"y","nodes":["n1"]}', mark_duplicates=True),
        "invalid key supplied",
    ),
    # 7. env duplicate
    ("env-duplicate", dup_env(), "invalid environment value (duplicate key)"),
    # 8-10. file
    ("file-no-prefix", body(file="echo hi"), PREFIX),
    ("file-uppercase-prefix", body(file="RAW:echo hi"), PREFIX),
    ("file-not-string", body(file=5), PREFIX),
    ("file-bad-base64", body(file="base64:!!!!"), BASE64),
    ("file-base64-padding", body(file="base64:abc"), BASE64),
    ("file-base64-non-ascii", body(file="base64:é"), BASE64),
    ("file-raw-too-big", body(file="raw:" + "x" * 100_001), SIZE),
    ("file-raw-too-big-utf8", body(file="raw:" + "é" * 50_001), SIZE),
    (
        "file-base64-too-big",
        body(file="base64:" + base64.b64encode(b"\0" * 100_001).decode()),
        SIZE,
    ),
    # our range checks: nodes
    ("node-name-slash", body(nodes=["n1", "x/y"]), "invalid node name 'x/y'"),
    ("node-name-empty", body(nodes=[""]), "invalid node name ''"),
    ("node-name-too-long", body(nodes=["a" * 256]), "invalid node name '" + "a" * 64 + "…'"),
    ("node-duplicate", body(nodes=["n1", "n2", "n1"]), "invalid nodes (duplicate node 'n1')"),
    # quorum
    ("quorum-too-big", body(quorum=4), "invalid quorum (must be 0 .. 3)"),
    ("quorum-negative", body(quorum=-1), "invalid quorum (must be 0 .. 3)"),
    ("quorum-fraction", body(quorum=1.5), "invalid quorum (must be a whole number)"),
    ("quorum-pct-over", body(quorum="101%"), "invalid quorum (percentage must be 0% .. 100%)"),
    (
        "quorum-pct-5000-digits",
        body(quorum="1" * 5000 + "%"),
        "invalid quorum (percentage must be 0% .. 100%)",
    ),
    (
        "quorum-pct-5000-decimals",
        body(quorum="50." + "1" * 5000 + "%"),
        "invalid quorum (at most 6 decimals)",
    ),
    # run_timeout
    ("run-timeout-zero", body(run_timeout=0), "invalid run_timeout (must be 1 .. 86400)"),
    ("run-timeout-over", body(run_timeout=86_401), "invalid run_timeout (must be 1 .. 86400)"),
    ("run-timeout-fraction", body(run_timeout=1.5), "invalid run_timeout (must be a whole number)"),
    (
        "run-timeout-nan",
        body(run_timeout=float("nan")),
        "invalid run_timeout (must be a whole number)",
    ),
    # user
    ("user-not-string", body(user=5), "invalid user (expected a string)"),
    ("user-empty", body(user=""), "invalid user (must not be empty)"),
    ("user-too-long", body(user="u" * 33), "invalid user (at most 32 characters)"),
    ("user-nul", body(user="a\0"), "invalid user (contains NUL)"),
    # dir
    ("dir-not-string", body(dir=["/"]), "invalid dir (expected a string)"),
    ("dir-relative", body(dir="tmp"), "invalid dir (must be absolute)"),
    ("dir-nul", body(dir="/tmp\0"), "invalid dir (contains NUL)"),
    ("dir-too-long", body(dir="/" + "d" * 4096), "invalid dir (at most 4096 bytes)"),
    # env
    ("env-not-object", body(env=["A=1"]), "invalid env (expected an object of strings)"),
    ("env-name-equals", body(env={"A=B": "1"}), "invalid env name 'A=B'"),
    ("env-name-empty", body(env={"": "1"}), "invalid env name ''"),
    ("env-name-nul", body(env={"A\0": "1"}), "invalid env name 'A\\x00'"),
    ("env-name-newline", body(env={"A\nB": "1"}), "invalid env name 'A\\nB'"),
    ("env-name-trailing-newline", body(env={"A\n": "1"}), "invalid env name 'A\\n'"),
    ("env-name-del", body(env={"A\x7f": "1"}), "invalid env name 'A\\x7f'"),
    ("env-name-nel", body(env={"A\x85": "1"}), "invalid env name 'A\\x85'"),
    ("env-value-number", body(env={"A": 1}), "invalid env value for 'A' (expected a string)"),
    ("env-value-nul", body(env={"A": "x\0"}), "invalid env value for 'A' (contains NUL)"),
    # max_concurrency / max_failures
    ("maxc-zero", body(max_concurrency=0), "invalid max_concurrency (must be an integer >= 1)"),
    ("maxc-string", body(max_concurrency="2"), "invalid max_concurrency (must be an integer >= 1)"),
    ("maxc-bool", body(max_concurrency=True), "invalid max_concurrency (must be an integer >= 1)"),
    (
        "maxc-fraction",
        body(max_concurrency=2.5),
        "invalid max_concurrency (must be a whole number)",
    ),
    ("maxf-negative", body(max_failures=-1), "invalid max_failures (must be an integer >= 0)"),
    ("maxf-list", body(max_failures=[]), "invalid max_failures (must be an integer >= 0)"),
    # order: the first broken rule wins
    ("order-command-nodes", {"nodes": []}, "invalid command supplied"),
    (
        "order-nodes-run-timeout",
        body(nodes=[], run_timeout="x"),
        "at least one node must be supplied",
    ),
    (
        "order-run-timeout-quorum",
        body(run_timeout="x", quorum="y"),
        "invalid type supplied for run_timeout (expected a number)",
    ),
    (
        "order-quorum-capture",
        body(quorum="y", capture_output="z"),
        "invalid type supplied for quorum (expected a number)",
    ),
    (
        "order-capture-key",
        body(capture_output="z", bogus=1),
        "invalid type supplied for capture_output (expected a boolean)",
    ),
    ("order-key-env-duplicate", {**dup_env(), "bogus": 1}, "invalid key supplied"),
    (
        "order-env-duplicate-file",
        {**dup_env(), "file": "nope"},
        "invalid environment value (duplicate key)",
    ),
    ("order-file-prefix-quorum", body(file="nope", quorum=99), PREFIX),
    ("order-file-size-node-name", body(file="raw:" + "x" * 100_001, nodes=["x/y"]), SIZE),
    ("order-key-node-name", body(nodes=["x/y"], bogus=1), "invalid key supplied"),
    ("order-node-name-quorum", body(nodes=["x/y"], quorum=5), "invalid node name 'x/y'"),
    ("order-quorum-run-timeout", body(quorum=5, run_timeout=0), "invalid quorum (must be 0 .. 3)"),
    (
        "order-run-timeout-user",
        body(run_timeout=0, user=""),
        "invalid run_timeout (must be 1 .. 86400)",
    ),
    ("order-user-dir", body(user="", dir="x"), "invalid user (must not be empty)"),
    ("order-dir-env", body(dir="x", env=[]), "invalid dir (must be absolute)"),
    (
        "order-env-maxc",
        body(env=[], max_concurrency=0),
        "invalid env (expected an object of strings)",
    ),
    (
        "order-maxc-maxf",
        body(max_concurrency=0, max_failures=-1),
        "invalid max_concurrency (must be an integer >= 1)",
    ),
]


@pytest.mark.parametrize(
    ("body_", "message"), [r[1:] for r in ERROR_ROWS], ids=[r[0] for r in ERROR_ROWS]
)
def test_rejects_with_exact_message(body_: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_job_request(body_)
    assert info.value.message == message
    assert info.value.status == 400
    assert info.value.body() == {"error": message}


def test_env_duplicate_comes_before_file_errors() -> None:
    raw = b'{"command":"x","nodes":["n1"],"env":{"A":"1","A":"2"},"file":"nope"}'
    with pytest.raises(ValidationError) as info:
        validate_job_request(parse_json_body(raw, mark_duplicates=True))
    assert info.value.message == "invalid environment value (duplicate key)"


def test_limits_are_parameters() -> None:
    with pytest.raises(ValidationError) as info:
        validate_job_request(body(nodes=["a", "b", "c"]), max_nodes=2)
    assert info.value.message == "invalid nodes (at most 2 names)"
    with pytest.raises(ValidationError) as info:
        validate_job_request(body(file="raw:12345"), max_file_bytes=4)
    assert info.value.message == "invalid file size (must be <= 4 bytes)"
    assert validate_job_request(body(file="raw:1234"), max_file_bytes=4).file_bytes == b"1234"


def test_defaults_applied() -> None:
    request = validate_job_request(body())
    assert request == JobRequest(
        command="chef-client",
        nodes=("n1", "n2", "n3"),
        quorum=3,
        run_timeout=3600,
        user=None,
        dir=None,
        env=None,
        file=None,
        file_bytes=None,
        capture_output=False,
        max_concurrency=None,
        max_failures=None,
    )
    assert validate_job_request(body(), default_run_timeout=60).run_timeout == 60


def test_every_field_given() -> None:
    payload = b"#!/bin/sh\necho \xff\n"
    encoded = base64.encodebytes(payload).decode()  # line-wrapped, with a trailing newline
    request = validate_job_request(
        body(
            command="c" * 4096,
            quorum=0,
            run_timeout=86_400.0,
            user="u" * 32,
            dir="/srv/app",
            env={"FOO": "bears", "EMPTY": ""},
            file="base64:" + encoded,
            capture_output=True,
            max_concurrency=2,
            max_failures=0,
        )
    )
    assert request.command == "c" * 4096
    assert request.quorum == 0
    assert request.run_timeout == 86_400
    assert isinstance(request.run_timeout, int)
    assert request.user == "u" * 32
    assert request.dir == "/srv/app"
    assert request.env == {"FOO": "bears", "EMPTY": ""}
    assert request.file == "base64:" + encoded
    assert request.file_bytes == payload
    assert request.capture_output is True
    assert (request.max_concurrency, request.max_failures) == (2, 0)


def test_raw_file_at_the_size_limit() -> None:
    request = validate_job_request(body(file="raw:" + "x" * 100_000))
    assert request.file_bytes == b"x" * 100_000


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("user", "invalid user (expected a string)"),
        ("dir", "invalid dir (expected a string)"),
        ("env", "invalid env (expected an object of strings)"),
        ("file", "invalid file contents (expected 'base64:...' or 'raw:...')"),
        ("max_concurrency", "invalid max_concurrency (must be an integer >= 1)"),
        ("max_failures", "invalid max_failures (must be an integer >= 0)"),
        ("run_timeout", "invalid type supplied for run_timeout (expected a number)"),
        ("quorum", "invalid type supplied for quorum (expected a number)"),
        ("capture_output", "invalid type supplied for capture_output (expected a boolean)"),
    ],
)
def test_null_is_not_a_value_of_a_typed_key(key: str, message: str) -> None:
    """``API.md`` §3: ``null`` is not a value of any typed key; the 400 names the key."""
    with pytest.raises(ValidationError) as err:
        validate_job_request(body(**{key: None}))
    assert err.value.message == message
    # left out, the same key takes its default
    assert key not in body()
    assert validate_job_request(body()).run_timeout == 3600


@pytest.mark.parametrize(
    ("quorum", "nodes", "expected"),
    [
        ("50%", 3, 2),
        ("0%", 3, 0),
        ("100%", 3, 3),
        ("80%", 5, 4),
        ("34%", 3, 2),
        ("33.4%", 3, 2),
        ("1%", 1000, 10),
        ("0.1%", 1000, 1),
        (2, 3, 2),
    ],
)
def test_quorum_forms(quorum: int | str, nodes: int, expected: int) -> None:
    names = [f"n{i}" for i in range(nodes)]
    assert validate_job_request(body(nodes=names, quorum=quorum)).quorum == expected
    assert resolve_quorum(quorum, nodes) == expected


def test_quorum_float_with_no_fraction() -> None:
    assert validate_job_request(body(quorum=2.0)).quorum == 2


def test_node_names_chef_rule() -> None:
    names = ["web-1.example.com", "A_b:c", "x" * 255]
    assert validate_job_request(body(nodes=names, quorum=1)).nodes == tuple(names)


def test_resolve_quorum_rejects_non_percentage() -> None:
    with pytest.raises(ValidationError) as info:
        resolve_quorum("half", 4)
    assert info.value.message == "invalid type supplied for quorum (expected a number)"


def test_detect_duplicates_marks_only_duplicates() -> None:
    plain = detect_duplicates([("a", 1), ("b", 2)])
    assert type(plain) is dict
    assert plain == {"a": 1, "b": 2}
    marked = detect_duplicates([("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5)])
    assert isinstance(marked, DuplicateKeyDict)
    assert marked == {"a": 5, "b": 4}
    assert marked.duplicates == ("a", "b")


def test_duplicate_keys_elsewhere_are_harmless() -> None:
    # A duplicate inside a value the schema rejects anyway reports that rule.
    parsed = parse_json_body(b'{"command":"x","nodes":[{"a":1,"a":2}]}', mark_duplicates=True)
    with pytest.raises(ValidationError) as info:
        validate_job_request(parsed)
    assert info.value.message == "at least one node must be supplied"


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"\xff\xfe", b'{"a": NaN}', b"[Infinity]", b'{"a": -Infinity}', "[" * 100_000],
)
def test_parse_json_body_rejects(raw: bytes | str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_json_body(raw)
    assert info.value.message == "invalid JSON body"


def test_parse_json_body_accepts() -> None:
    assert parse_json_body('{"command": "é"}') == {"command": "é"}
    assert parse_json_body(b"[1, 2.5, null]") == [1, 2.5, None]
