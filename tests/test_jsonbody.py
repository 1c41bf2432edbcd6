"""The one JSON decoder policy (``jsonbody.parse_json_body``): every rule, both duplicate modes."""

from __future__ import annotations

import pytest

from pushy_appliance.errors import ValidationError
from pushy_appliance.jsonbody import MAX_DEPTH, DuplicateKeyDict, parse_json_body


def refusal(raw: bytes | str, **kw: bool) -> str:
    with pytest.raises(ValidationError) as info:
        parse_json_body(raw, **kw)
    assert info.value.status == 400
    return info.value.message


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"\xff\xfe",
        b"\xed\xa0\x80",  # an encoded surrogate is not UTF-8
        b'{"a": NaN}',
        b"[Infinity]",
        b'{"a": -Infinity}',
        b'{"a": "\\ud800"}',
        b'{"\\udfff": 1}',
        b'["ok", ["\\ud83d"]]',
        "\ud800",
        "[" * 100_000,
        "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
        '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1),
    ],
)
@pytest.mark.parametrize("mark", [False, True])
def test_not_json_by_the_policy(raw: bytes | str, mark: bool) -> None:
    assert refusal(raw, mark_duplicates=mark) == "invalid JSON body"


def test_accepted() -> None:
    assert parse_json_body('{"command": "é"}') == {"command": "é"}
    assert parse_json_body(b"[1, 2.5, null]") == [1, 2.5, None]
    assert parse_json_body(b'"\\ud83d\\ude00"') == "\U0001f600"  # a paired escape is text
    deepest = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_json_body(deepest) is not None
    # brackets inside strings are not nesting
    assert parse_json_body(b'["' + b"[{" * MAX_DEPTH + b'"]') == ["[{" * MAX_DEPTH]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"name": "x", "name": "y"}', "name"),  # a string value, as in a client body
        (b'{"name": 1, "name": 2}', "name"),
        (b'{"actors": {"users": [], "users": []}}', "users"),
        (b'[{"a": 1}, {"b": {"c": 1, "c": 1}}]', "c"),
        (b'{"env": {"A": "1", "A": "2"}}', "A"),
    ],
)
def test_a_duplicate_key_is_refused_by_name(raw: bytes, key: str) -> None:
    assert refusal(raw) == f"invalid JSON body (duplicate key '{key}')"


def test_a_duplicate_key_in_a_body_that_is_not_json_is_not_json() -> None:
    assert refusal(b'{"a": 1, "a": 2, }') == "invalid JSON body"


def test_marked_duplicates_are_left_to_the_schema() -> None:
    value = parse_json_body(
        b'{"command": "x", "env": {"A": "1", "A": "2"}, "command": "y"}', mark_duplicates=True
    )
    assert isinstance(value, DuplicateKeyDict)
    assert value == {"command": "y", "env": {"A": "2"}}
    assert value.duplicates == ("command",)
    assert isinstance(value["env"], DuplicateKeyDict)
    assert value["env"].duplicates == ("A",)
    assert type(parse_json_body(b'{"a": 1}', mark_duplicates=True)) is dict
