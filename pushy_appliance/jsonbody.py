"""The one JSON decoder policy for request bodies, pure.

Every JSON body the API reads (identity routes, ``POST jobs``, ``abort``) is decoded by
:func:`parse_json_body`, so they all agree on what JSON is:

* UTF-8 only; anything else is ``invalid JSON body``.
* Strict JSON: ``NaN``, ``Infinity`` and ``-Infinity`` (which ``json.loads`` accepts) are
  ``invalid JSON body``.
* No lone surrogate (a ``"\\ud800"`` escape without its pair): such a string is not text, no
  name or value may carry one, and the store (UTF-8 msgpack) could not encode it. ``invalid
  JSON body``.
* Nested at most :data:`MAX_DEPTH` arrays and objects deep (the API's bodies need three);
  deeper is ``invalid JSON body``, whatever the interpreter's recursion limit.
* Duplicate keys. A decoded object cannot show a repeated key, so the decoder reports it. By
  default the first one found is refused: ``invalid JSON body (duplicate key 'NAME')``. A
  caller whose schema places duplicates among its own rules (``POST jobs``: a repeated
  top-level key is ``invalid key supplied``, a repeated ``env`` key ``invalid environment
  value (duplicate key)``, each at its place in the order of checks) asks for
  ``mark_duplicates``: objects with a repeated key then come back as
  :class:`DuplicateKeyDict` (the last value wins, as in ``json.loads``) for the schema to
  report.

Whether the body must be an object is the caller's rule.
"""

from __future__ import annotations

import json
from typing import Any, Final

from .errors import ValidationError

__all__ = [
    "MAX_DEPTH",
    "MSG_JSON",
    "DuplicateKeyDict",
    "detect_duplicates",
    "parse_json_body",
]

MAX_DEPTH: Final = 64
"""Most arrays and objects nested in one body."""
MSG_JSON: Final = "invalid JSON body"


class DuplicateKeyDict(dict[str, Any]):
    """A JSON object in which some key appeared more than once (the last value is kept).

    Attributes:
        duplicates: the repeated keys, in order of first repetition.
    """

    duplicates: tuple[str, ...]


def detect_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads`` that remembers duplicated keys.

    Args:
        pairs: the object's members in document order.

    Returns:
        A plain ``dict`` when every key is unique, else a :class:`DuplicateKeyDict`.
    """
    result: dict[str, Any] = dict(pairs)
    if len(result) == len(pairs):
        return result
    seen: set[str] = set()
    repeated: dict[str, None] = {}
    for key, _ in pairs:
        if key in seen:
            repeated[key] = None
        seen.add(key)
    marked = DuplicateKeyDict(result)
    marked.duplicates = tuple(repeated)
    return marked


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_json_body(raw: bytes | str, *, mark_duplicates: bool = False) -> object:
    """Decode a request body by the policy of this module.

    Args:
        raw: the body (UTF-8 when bytes).
        mark_duplicates: return objects with a repeated key as :class:`DuplicateKeyDict`
            instead of refusing them.

    Returns:
        The decoded value.

    Raises:
        ValidationError: ``invalid JSON body`` for bytes that are not UTF-8 or not strict
            JSON, a lone surrogate, or nesting deeper than :data:`MAX_DEPTH`;
            ``invalid JSON body (duplicate key 'NAME')`` for a repeated key, unless
            ``mark_duplicates``.
    """
    repeated: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = detect_duplicates(pairs)
        if isinstance(obj, DuplicateKeyDict):
            repeated.extend(obj.duplicates)
        return obj

    try:
        # A str may hold a lone surrogate itself: encoding refuses it like an escaped one.
        data = raw.encode("utf-8") if isinstance(raw, str) else raw
        text = data.decode("utf-8")
        value = json.loads(text, object_pairs_hook=pairs_hook, parse_constant=_reject_constant)
    except (UnicodeError, ValueError, RecursionError):
        raise ValidationError(MSG_JSON) from None
    # Both checks walk the value: skipped when the text shows they cannot fail.
    if text.count("[") + text.count("{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise ValidationError(MSG_JSON)
    if "\\u" in text and _has_lone_surrogates(value):
        raise ValidationError(MSG_JSON)
    if repeated and not mark_duplicates:
        raise ValidationError(f"{MSG_JSON} (duplicate key '{repeated[0][:300]}')")
    return value


def _deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` arrays and objects (iterative: no
    recursion on a hostile body)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children: Any
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > limit:
            return True
        stack.extend((child, depth) for child in children if isinstance(child, dict | list))
    return False


def _has_lone_surrogates(value: object) -> bool:
    """Whether a decoded value holds a lone surrogate (in a key or a string)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
