"""Field checkers of the frame records (pure).

A checker takes a decoded value and the ``type.field`` it came from, and returns the value to
store in the record, raising :class:`~pushy_appliance.errors.ProtocolError` (naming the
field) when it is not acceptable. A record names each field's checker in the field's
metadata (:func:`checked`); :func:`field_specs` reads them back for encoding and decoding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from ..errors import ProtocolError

__all__ = [
    "OPT_STR",
    "SEQ",
    "STR",
    "TS",
    "Check",
    "FieldSpec",
    "bad",
    "check_bool",
    "check_bytes",
    "check_count",
    "check_duration",
    "check_env",
    "check_float",
    "check_int",
    "check_positive_int",
    "check_str",
    "checked",
    "field_specs",
    "one_of",
    "optional",
    "show",
]

_MAX_REPR = 60

Check = Callable[[Any, str], Any]


def show(value: Any) -> str:
    """A short repr of untrusted input, for error messages."""
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def bad(where: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{where}: expected {expected}, got {type(value).__name__} {show(value)}")


def check_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise bad(where, "a string", value)
    return value


def check_bytes(value: Any, where: str) -> bytes:
    if not isinstance(value, bytes):
        raise bad(where, "bytes (msgpack bin)", value)
    return value


def check_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise bad(where, "a boolean", value)
    return value


def check_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad(where, "an integer", value)
    return value


def check_count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise bad(where, "a non-negative integer", value)
    return value


def check_positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad(where, "a positive integer", value)
    return value


def check_float(value: Any, where: str) -> float:
    # Integers are accepted for float fields: a peer may well encode 10.0 as 10.
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise bad(where, "a number", value)
    number = float(value)
    if not math.isfinite(number):
        raise bad(where, "a finite number", value)
    return number


def check_duration(value: Any, where: str) -> float:
    number = check_float(value, where)
    if number < 0:
        raise bad(where, "a non-negative number", value)
    return number


def optional(check: Check) -> Check:
    def check_optional(value: Any, where: str) -> Any:
        return None if value is None else check(value, where)

    return check_optional


def one_of(allowed: frozenset[str]) -> Check:
    listed = ", ".join(sorted(allowed))

    def check_one_of(value: Any, where: str) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise bad(where, f"one of {listed}", value)
        return value

    return check_one_of


def check_env(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(where, "a map of strings", value)
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ProtocolError(
                f"{where}: expected a map of strings, got {show(key)}: {show(item)}"
            )
    return dict(value)


def checked(check: Check) -> dict[str, Check]:
    """Field metadata naming the field's checker."""
    return {"check": check}


STR = checked(check_str)
OPT_STR = checked(optional(check_str))
SEQ = checked(check_positive_int)
TS = checked(check_float)


@dataclasses.dataclass(frozen=True, slots=True)
class FieldSpec:
    """How one field of a record is checked and encoded."""

    name: str
    check: Check
    required: bool
    omit_when_none: bool


def field_specs(cls: type[Any]) -> tuple[FieldSpec, ...]:
    """The fields of the record class ``cls``, in order, with their checkers."""
    out = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append(
            FieldSpec(
                name=f.name,
                check=f.metadata["check"],
                required=required,
                omit_when_none=f.default is None,
            )
        )
    return tuple(out)
