"""Validation of a ``POST jobs`` body into a :class:`JobRequest`, pure.

The checks run in the order of ``API.md`` §3 "POST jobs" and the first failure wins, so a body
that breaks two rules reports the same message as the original server did::

    1. invalid command supplied                 command missing, not a string, empty, over
                                                4096 UTF-8 bytes, or holding NUL
    2. at least one node must be supplied       nodes missing, not a list of strings, or empty
                                                (unless ``search`` is given; see below)
    3. invalid type supplied for run_timeout (expected a number)
    4. invalid type supplied for quorum (expected a number)      (an "N%" string is a number)
    5. invalid type supplied for capture_output (expected a boolean)
    6. invalid key supplied                     a key outside the table, or a duplicated key
    7. invalid environment value (duplicate key)
    8. invalid file contents (expected 'base64:...' or 'raw:...')
    9. invalid file contents (couldn't decode base64 string)
   10. invalid file size (must be <= 100000 bytes)

then our own range checks, each naming its field, in this order: nodes (count, names,
duplicates), quorum, run_timeout, user, dir, env, max_concurrency, max_failures.

``null`` is not a value of any typed key: a key given as ``null`` is refused by its own rule,
naming it (``run_timeout``, ``quorum`` and ``capture_output`` by rules 3-5, ``file`` by rule 8,
the others by their range checks); only a key left out takes its default. A number with a
zero fraction (``300.0``) counts as the integer. A percentage quorum has at most
:data:`MAX_PERCENT_DECIMALS` decimals, so no quorum costs more than a small number to read.

``search`` (ours) names the nodes by a query instead (Chef's search syntax,
``docs/SEARCH.md``): exactly one of ``nodes`` and ``search`` (both: 400 ``supply either nodes
or search, not both``), a string that parses (else 400 with the query's syntax error, list
form). Its nodes are found once, at creation, by the caller (the inventory), and
:func:`with_matches` turns the request into one with those nodes: a percentage ``quorum`` then
applies to the match count, an integer one may not exceed it, and no match at all is 400
``{"error": ["no nodes match the search"]}``.

``file`` is decoded, and ``env`` names are checked, by :mod:`pushy_appliance.jobfile`, the
rules the agent applies to the same job.

Duplicate keys. A parsed JSON object cannot show a duplicated key, so the JSON decoder has to
report it: the HTTP layer decodes the body with
``jsonbody.parse_json_body(raw, mark_duplicates=True)``, which returns an object with a
repeated key as a :class:`~pushy_appliance.jsonbody.DuplicateKeyDict` (last value wins, like
``json.loads``) that remembers the duplicated names, and validation reports it at its place in
the order above: a duplicate inside ``env`` as rule 7, a duplicate top-level key as rule 6. A
body decoded without the marks simply keeps the last value.
"""

from __future__ import annotations

import dataclasses
import math
import re
from fractions import Fraction
from typing import Final

from ..errors import SearchRequestError, ValidationError
from ..jobfile import decode_job_file, valid_env_name
from ..jsonbody import MSG_JSON, DuplicateKeyDict
from ..model import valid_name
from ..search import compile_query

__all__ = [
    "ALLOWED_KEYS",
    "MAX_COMMAND_BYTES",
    "MAX_DIR_BYTES",
    "MAX_PERCENT_DECIMALS",
    "MAX_RUN_TIMEOUT",
    "MAX_USER_CHARS",
    "JobRequest",
    "resolve_quorum",
    "validate_job_request",
    "with_matches",
]

ALLOWED_KEYS: Final = frozenset(
    {
        "command",
        "nodes",
        "quorum",
        "run_timeout",
        "user",
        "dir",
        "env",
        "file",
        "capture_output",
        "max_concurrency",
        "max_failures",
        "search",
    }
)
"""The keys a ``POST jobs`` body may hold."""

MAX_COMMAND_BYTES: Final = 4096
MAX_RUN_TIMEOUT: Final = 86_400
MAX_USER_CHARS: Final = 32
MAX_DIR_BYTES: Final = 4096

MAX_PERCENT_DECIMALS: Final = 6
"""Most decimals of a percentage quorum (``"33.333333%"``)."""

_PERCENT_RE: Final = re.compile(r"([0-9]+)(?:\.([0-9]+))?%")

MSG_COMMAND: Final = "invalid command supplied"
MSG_NODES: Final = "at least one node must be supplied"
MSG_RUN_TIMEOUT_TYPE: Final = "invalid type supplied for run_timeout (expected a number)"
MSG_QUORUM_TYPE: Final = "invalid type supplied for quorum (expected a number)"
MSG_CAPTURE_TYPE: Final = "invalid type supplied for capture_output (expected a boolean)"
MSG_KEY: Final = "invalid key supplied"
MSG_ENV_DUPLICATE: Final = "invalid environment value (duplicate key)"
MSG_QUORUM_PERCENT: Final = "invalid quorum (percentage must be 0% .. 100%)"
MSG_QUORUM_DECIMALS: Final = f"invalid quorum (at most {MAX_PERCENT_DECIMALS} decimals)"
MSG_NODES_AND_SEARCH: Final = "supply either nodes or search, not both"
MSG_SEARCH_TYPE: Final = "invalid search (expected a string)"
MSG_NO_MATCH: Final = "no nodes match the search"
_ABSENT: Final = object()
"""A key the body does not hold (``null`` is a value, and a wrong one)."""


@dataclasses.dataclass(frozen=True, slots=True)
class JobRequest:
    """A validated ``POST jobs`` body, defaults applied.

    Attributes:
        command: the command, as given.
        nodes: node names, in request order, unique; ``()`` for a ``search`` not yet
            resolved (:func:`with_matches`).
        quorum: resolved quorum (0 … ``len(nodes)``).
        run_timeout: seconds (1 … 86,400).
        user: run-as user, or ``None``.
        dir: absolute working directory, or ``None``.
        env: extra environment, or ``None``.
        file: the file as given, with its ``raw:``/``base64:`` prefix, or ``None``.
        file_bytes: the decoded file, or ``None``.
        capture_output: whether output is captured.
        max_concurrency: most nodes running at once (≥ 1), or ``None`` (all).
        max_failures: failures tolerated before no further node starts (≥ 0), or ``None``.
        search: the query that named the nodes, or ``None`` when the request named them.
        quorum_asked: the ``quorum`` as given with a ``search`` (a count, ``"N%"``, or
            ``None`` for all), resolved against the matches by :func:`with_matches`.
    """

    command: str
    nodes: tuple[str, ...]
    quorum: int
    run_timeout: int
    user: str | None
    dir: str | None
    env: dict[str, str] | None
    file: str | None
    file_bytes: bytes | None
    capture_output: bool
    max_concurrency: int | None
    max_failures: int | None
    search: str | None = None
    quorum_asked: int | str | None = None


def with_matches(req: JobRequest, nodes: list[str], *, max_nodes: int = 100_000) -> JobRequest:
    """A ``search`` request with the nodes its query matched, its quorum resolved.

    Args:
        req: a request whose ``search`` is set.
        nodes: the names the search found, in the order the job lists them.
        max_nodes: most nodes in one job (``limits.max_nodes_per_job``).

    Raises:
        SearchRequestError: no node matched (list-form body).
        ValidationError: more matches than ``max_nodes``, or an integer quorum over the
            match count.
    """
    if not nodes:
        raise SearchRequestError(MSG_NO_MATCH)
    if len(nodes) > max_nodes:
        raise ValidationError(
            f"invalid search (matches {len(nodes)} nodes, at most {max_nodes} per job)"
        )
    asked = req.quorum_asked
    quorum = len(nodes) if asked is None else _check_quorum(asked, len(nodes))
    return dataclasses.replace(req, nodes=tuple(nodes), quorum=quorum, quorum_asked=None)


def resolve_quorum(quorum: int | str, node_count: int) -> int:
    """Turn a quorum as given (a count or ``"N%"``) into a node count.

    Args:
        quorum: an integer, or a percentage string ``"N%"`` (N from 0 to 100, decimals
            allowed).
        node_count: the job's node count.

    Returns:
        The count; a percentage is rounded up (``"50%"`` of 3 nodes is 2).

    Raises:
        ValidationError: a percentage outside 0 … 100 % or with more than
            :data:`MAX_PERCENT_DECIMALS` decimals, or a string that is not one.
    """
    if isinstance(quorum, int):
        return quorum
    match = _PERCENT_RE.fullmatch(quorum)
    if match is None:
        raise ValidationError(MSG_QUORUM_TYPE)
    # Checked on the text first: a number of thousands of digits is never converted.
    whole, decimals = match.group(1).lstrip("0"), match.group(2) or ""
    if len(whole) > 3:
        raise ValidationError(MSG_QUORUM_PERCENT)
    if len(decimals) > MAX_PERCENT_DECIMALS:
        raise ValidationError(MSG_QUORUM_DECIMALS)
    percent = Fraction(f"{whole or 0}.{decimals or 0}")
    if percent > 100:
        raise ValidationError(MSG_QUORUM_PERCENT)
    return math.ceil(percent * node_count / 100)


def validate_job_request(
    body: object,
    *,
    max_file_bytes: int = 100_000,
    max_nodes: int = 100_000,
    default_run_timeout: int = 3600,
) -> JobRequest:
    """Check a decoded ``POST jobs`` body and apply the defaults.

    Args:
        body: the decoded JSON body, duplicates marked (see the module docstring).
        max_file_bytes: largest decoded ``file`` (``limits.max_file_bytes``).
        max_nodes: most nodes in one job (``limits.max_nodes_per_job``).
        default_run_timeout: ``run_timeout`` when none is given (``jobs.default_run_timeout``).

    Returns:
        The request.

    Raises:
        ValidationError: the first rule the body breaks, in the order of the module docstring;
            ``invalid JSON body`` when ``body`` is not a JSON object.
    """
    if not isinstance(body, dict):
        raise ValidationError(MSG_JSON)

    # 1-5: the original server's schema checks.
    command = body.get("command")
    if (
        not isinstance(command, str)
        or not command
        or "\0" in command
        or len(command.encode("utf-8", "surrogatepass")) > MAX_COMMAND_BYTES
    ):
        raise ValidationError(MSG_COMMAND)
    search = body.get("search", _ABSENT)
    nodes = body.get("nodes")
    if search is not _ABSENT:
        if "nodes" in body:
            raise ValidationError(MSG_NODES_AND_SEARCH)
        if not isinstance(search, str):
            raise ValidationError(MSG_SEARCH_TYPE)
        nodes = []
    elif not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise ValidationError(MSG_NODES)
    run_timeout_raw = body.get("run_timeout", default_run_timeout)
    if not _is_number(run_timeout_raw):
        raise ValidationError(MSG_RUN_TIMEOUT_TYPE)
    quorum_raw = body.get("quorum", len(nodes))
    if not (_is_number(quorum_raw) or _is_percent(quorum_raw)):
        raise ValidationError(MSG_QUORUM_TYPE)
    capture = body.get("capture_output", False)
    if not isinstance(capture, bool):
        raise ValidationError(MSG_CAPTURE_TYPE)

    # 6-10: keys, env duplicates, file.
    if not ALLOWED_KEYS.issuperset(body) or isinstance(body, DuplicateKeyDict):
        raise ValidationError(MSG_KEY)
    env_raw = body.get("env")
    if isinstance(env_raw, DuplicateKeyDict):
        raise ValidationError(MSG_ENV_DUPLICATE)
    file, file_bytes = _check_file(body.get("file", _ABSENT), max_file_bytes)

    # Our own range checks.
    quorum_asked: int | str | None = None
    if isinstance(search, str):
        compile_query(search)  # its syntax error, now: before anything is looked up
        names: tuple[str, ...] = ()
        quorum = 0
        quorum_asked = _asked_quorum(body.get("quorum", _ABSENT))
    else:
        names = _check_nodes(nodes, max_nodes)
        quorum = _check_quorum(quorum_raw, len(names))
    run_timeout = _whole(run_timeout_raw, "run_timeout")
    if not 1 <= run_timeout <= MAX_RUN_TIMEOUT:
        raise ValidationError(f"invalid run_timeout (must be 1 .. {MAX_RUN_TIMEOUT})")
    user = _check_user(body.get("user", _ABSENT))
    workdir = _check_dir(body.get("dir", _ABSENT))
    env = _check_env(body.get("env", _ABSENT))
    max_concurrency = _check_limit(body.get("max_concurrency", _ABSENT), "max_concurrency", 1)
    max_failures = _check_limit(body.get("max_failures", _ABSENT), "max_failures", 0)
    return JobRequest(
        command=command,
        nodes=names,
        quorum=quorum,
        run_timeout=run_timeout,
        user=user,
        dir=workdir,
        env=env,
        file=file,
        file_bytes=file_bytes,
        capture_output=capture,
        max_concurrency=max_concurrency,
        max_failures=max_failures,
        search=search if isinstance(search, str) else None,
        quorum_asked=quorum_asked,
    )


def _asked_quorum(value: object) -> int | str | None:
    """A search's quorum before its nodes are known: checked as far as it can be."""
    if value is _ABSENT:
        return None
    if isinstance(value, str):
        resolve_quorum(value, 0)  # its format and range
        return value
    quorum = _whole(value, "quorum")
    if quorum < 0:
        raise ValidationError("invalid quorum (must be 0 or more)")
    return quorum


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_percent(value: object) -> bool:
    return isinstance(value, str) and _PERCENT_RE.fullmatch(value) is not None


def _whole(value: object, field: str) -> int:
    """``value`` (already known to be a number) as an int, if it has no fraction."""
    if isinstance(value, int):
        return value
    if not isinstance(value, float) or not value.is_integer():
        raise ValidationError(f"invalid {field} (must be a whole number)")
    return int(value)


def _check_file(value: object, max_file_bytes: int) -> tuple[str | None, bytes | None]:
    if value is _ABSENT:
        return None, None
    data = decode_job_file(value)
    assert isinstance(value, str)  # decode_job_file refuses anything else
    if len(data) > max_file_bytes:
        raise ValidationError(f"invalid file size (must be <= {max_file_bytes} bytes)")
    return value, data


def _show(name: str) -> str:
    """A name for an error message, cut short so a message stays small."""
    return repr(name if len(name) <= 64 else name[:64] + "…")


def _check_nodes(nodes: list[str], max_nodes: int) -> tuple[str, ...]:
    if len(nodes) > max_nodes:
        raise ValidationError(f"invalid nodes (at most {max_nodes} names)")
    for name in nodes:
        if not valid_name(name):
            raise ValidationError(f"invalid node name {_show(name)}")
    if len(set(nodes)) != len(nodes):
        seen: set[str] = set()
        for name in nodes:
            if name in seen:
                raise ValidationError(f"invalid nodes (duplicate node {_show(name)})")
            seen.add(name)
    return tuple(nodes)


def _check_quorum(value: object, node_count: int) -> int:
    if isinstance(value, str):
        return resolve_quorum(value, node_count)
    quorum = _whole(value, "quorum")
    if not 0 <= quorum <= node_count:
        raise ValidationError(f"invalid quorum (must be 0 .. {node_count})")
    return quorum


def _check_user(value: object) -> str | None:
    if value is _ABSENT:
        return None
    if not isinstance(value, str):
        raise ValidationError("invalid user (expected a string)")
    if not value:
        raise ValidationError("invalid user (must not be empty)")
    if len(value) > MAX_USER_CHARS:
        raise ValidationError(f"invalid user (at most {MAX_USER_CHARS} characters)")
    if "\0" in value:
        raise ValidationError("invalid user (contains NUL)")
    return value


def _check_dir(value: object) -> str | None:
    if value is _ABSENT:
        return None
    if not isinstance(value, str):
        raise ValidationError("invalid dir (expected a string)")
    if not value.startswith("/"):
        raise ValidationError("invalid dir (must be absolute)")
    if "\0" in value:
        raise ValidationError("invalid dir (contains NUL)")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_DIR_BYTES:
        raise ValidationError(f"invalid dir (at most {MAX_DIR_BYTES} bytes)")
    return value


def _check_env(value: object) -> dict[str, str] | None:
    if value is _ABSENT:
        return None
    if not isinstance(value, dict):
        raise ValidationError("invalid env (expected an object of strings)")
    env: dict[str, str] = {}
    for key, item in value.items():
        if not valid_env_name(key):
            raise ValidationError(f"invalid env name {_show(str(key))}")
        if not isinstance(item, str):
            raise ValidationError(f"invalid env value for {_show(key)} (expected a string)")
        if "\0" in item:
            raise ValidationError(f"invalid env value for {_show(key)} (contains NUL)")
        env[key] = item
    return env


def _check_limit(value: object, field: str, minimum: int) -> int | None:
    if value is _ABSENT:
        return None
    if not _is_number(value):
        raise ValidationError(f"invalid {field} (must be an integer >= {minimum})")
    number = _whole(value, field)
    if number < minimum:
        raise ValidationError(f"invalid {field} (must be an integer >= {minimum})")
    return number
