"""The check of a node's facts, as ``hello.facts`` and ``facts.facts`` carry them (pure).

Facts are a map of text keys to values that are strings, integers, booleans, finite floats,
nil, lists or maps of the same, nested at most :data:`MAX_FACTS_DEPTH` levels, and at most
:data:`~pushy_appliance.facts.MAX_FACTS_BYTES` bytes msgpack-encoded (the agent cuts its
facts to that size before sending them: ``facts.fit_to_limit``). Byte strings are refused:
facts are text.
"""

from __future__ import annotations

import math
from typing import Any, TypeAlias

from ..errors import ProtocolError
from ..facts import MAX_FACTS_BYTES, encoded_size
from ._fields import bad, show

__all__ = ["MAX_FACTS_DEPTH", "FactValue", "check_facts"]

MAX_FACTS_DEPTH = 32
"""Deepest nesting of maps and lists under the facts map."""

FactValue: TypeAlias = "str | int | float | bool | list[FactValue] | dict[str, FactValue] | None"
"""A node fact's value: a scalar, or a list or map of values."""


def check_facts(value: Any, where: str) -> dict[str, FactValue]:
    """Check a facts map (see the module docstring).

    Args:
        value: the decoded field.
        where: ``type.field``, for the error message.

    Returns:
        The map as decoded.

    Raises:
        ProtocolError: not a map, a key that is not text, a value of another kind, nesting
            deeper than :data:`MAX_FACTS_DEPTH`, or more than ``MAX_FACTS_BYTES`` encoded.
    """
    if not isinstance(value, dict):
        raise bad(where, "a map", value)
    # An explicit stack, not recursion: the depth is checked before anything is walked.
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, at, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_FACTS_DEPTH:
                raise ProtocolError(f"{at}: nested deeper than {MAX_FACTS_DEPTH} levels")
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise bad(f"{at} key", "a string", key)
                stack.append((sub, f"{at}.{key[:40]}", depth + 1))
        elif isinstance(item, list):
            if depth > MAX_FACTS_DEPTH:
                raise ProtocolError(f"{at}: nested deeper than {MAX_FACTS_DEPTH} levels")
            stack.extend((sub, f"{at}[{i}]", depth + 1) for i, sub in enumerate(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise bad(at, "a finite number", item)
        elif item is not None and not isinstance(item, str | int):  # bool is an int: allowed
            raise ProtocolError(
                f"{at}: expected a string, number, boolean, nil, list or map, got "
                f"{type(item).__name__} {show(item)}"
            )
    size = encoded_size(value)
    if size > MAX_FACTS_BYTES:
        raise ProtocolError(f"{where}: {size} bytes encoded, at most {MAX_FACTS_BYTES} allowed")
    return value
