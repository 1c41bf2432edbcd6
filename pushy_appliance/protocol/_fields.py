"""Field checkers and limits of the frame records (pure).

A checker takes a decoded value and the ``type.field`` it came from, and returns the value to
store in the record, raising :class:`~pushy_appliance.errors.ProtocolError` (naming the
field) when it is not acceptable. A record names each field's checker and its *limit* in the
field's metadata (:func:`checked`, :func:`text`, :func:`enum`); :func:`field_specs` reads
them back for encoding and decoding.

Every field has a type and a limit: ``max_bytes``, the most bytes its value may take
*encoded* (msgpack header included). Texts are limited in UTF-8 bytes (:func:`text`: the
checker refuses a longer one, whatever the frame's size); enumerations by their longest value;
numbers, booleans and nil by :data:`SCALAR_BYTES`; maps (``hello.facts``,
``hello.pending_result``) by their encoded size. A field whose ``max_bytes`` is ``None`` is
bounded by the frame cap alone: the byte strings and texts that carry a job's payload
(``output.data``, ``commit.file``, ``commit.env``). The decoder measures every field's encoded
size before it decodes anything of a frame larger than a few hundred bytes (see
:mod:`._codec`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from ..errors import ProtocolError

__all__ = [
    "ID",
    "MAX_ID_BYTES",
    "MAX_TEXT_BYTES",
    "OPT_ID",
    "OPT_STR",
    "SCALAR_BYTES",
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
    "check_text",
    "checked",
    "encoded_text_bytes",
    "enum",
    "field_specs",
    "one_of",
    "optional",
    "show",
    "text",
]

_MAX_REPR = 60

Check = Callable[[Any, str], Any]

MAX_ID_BYTES = 64
"""Longest identifier (``job_id``, ``incarnation_id``, ``server_incarnation_id``), in bytes:
ours are 32 hex digits or a 36-character UUID."""

MAX_TEXT_BYTES = 256
"""Longest short text (:data:`STR`), in bytes."""

SCALAR_BYTES = 9
"""Most bytes a number, boolean or nil takes encoded (a 64-bit integer or float and its
type byte)."""


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


def check_text(max_bytes: int) -> Check:
    """A checker of strings of at most ``max_bytes`` bytes in UTF-8."""

    def check_text_(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise bad(where, "a string", value)
        # a character is 1 to 4 bytes: encode only when the count of characters cannot tell
        if len(value) > max_bytes or (
            len(value) * 4 > max_bytes and len(value.encode("utf-8", "surrogatepass")) > max_bytes
        ):
            raise ProtocolError(f"{where}: longer than {max_bytes} bytes ({show(value)})")
        return value

    return check_text_


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


def encoded_text_bytes(max_bytes: int) -> int:
    """The most bytes a string of ``max_bytes`` UTF-8 bytes takes msgpack-encoded."""
    if max_bytes < 32:
        header = 1
    elif max_bytes < 256:
        header = 2
    elif max_bytes < 65_536:
        header = 3
    else:
        header = 5
    return max_bytes + header


def checked(check: Check, max_bytes: int | None = SCALAR_BYTES) -> dict[str, Any]:
    """Field metadata naming the field's checker and its limit.

    Args:
        check: the checker.
        max_bytes: the most bytes the value may take encoded; ``None``: the frame cap.
    """
    return {"check": check, "max_bytes": max_bytes}


def text(max_bytes: int, *, nil: bool = False) -> dict[str, Any]:
    """Field metadata of a string of at most ``max_bytes`` bytes (``nil``: or nil)."""
    check = check_text(max_bytes)
    return checked(optional(check) if nil else check, encoded_text_bytes(max_bytes))


def enum(allowed: frozenset[str], *, nil: bool = False) -> dict[str, Any]:
    """Field metadata of a string that is one of ``allowed`` (``nil``: or nil)."""
    check = one_of(allowed)
    longest = max(len(v.encode()) for v in allowed)
    return checked(optional(check) if nil else check, encoded_text_bytes(longest))


STR = text(MAX_TEXT_BYTES)
OPT_STR = text(MAX_TEXT_BYTES, nil=True)
ID = text(MAX_ID_BYTES)
OPT_ID = text(MAX_ID_BYTES, nil=True)
SEQ = checked(check_positive_int)
TS = checked(check_float)


@dataclasses.dataclass(frozen=True, slots=True)
class FieldSpec:
    """How one field of a record is checked and encoded."""

    name: str
    check: Check
    required: bool
    omit_when_none: bool
    max_bytes: int | None
    """The most bytes the value may take encoded; ``None``: bounded by the frame cap."""


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
                max_bytes=f.metadata.get("max_bytes", SCALAR_BYTES),
            )
        )
    return tuple(out)
