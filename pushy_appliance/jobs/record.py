"""The stored form of a job's state, pure: :func:`to_record` and :func:`from_record`.

The runner stores a job as maps of plain values (str, int, float, bool, None, list, dict),
so that msgpack can hold them and a restart can rebuild the state exactly. The format:

::

    to_record(state) is a msgpack-able map (str, int, float, bool, None, list, dict):

      format           1
      job_id           str
      status           job status
      quorum           int
      run_timeout, voting_timeout, reconnect_grace       numbers (seconds)
      max_concurrency, max_failures                      int or None
      stopped          bool
      voting_deadline, run_started_at, run_deadline      float or None (epoch seconds)
      late_result_timeout   number (seconds)             (absent before late results: 30)
      late_deadline    float or None                     (absent before late results: None)
      version          int
      nodes            list, in request order, of node records:
                       [name, status, launched (bool), away_deadline or None, reason or None]
                       and a sixth item, true, for a node that owes a late result

    job_record(state) is the same map without "nodes"; node_record(state, node) one entry of
    "nodes", so a runner may store the job map and the touched nodes' entries separately and
    reassemble the full map for from_record. The queue of ready nodes waiting for a slot is not
    stored: from_record rebuilds it in request order.

    The format number stays 1: the late-result keys are additions, and records stored
    before them (no late keys, five-item node entries) load as jobs that owe nothing.

    to_columns(state) is the same job map with "node_columns" in place of "nodes": the node
    entries as columns, what a job.create stores (a 100,000-node job is then a list of
    names and a list of small integers, not 100,000 small lists):

      node_columns     map:
        names          the node names in request order, joined by "\n" into one string
                       (a node name has no newline); a list of str is read too
        codes          one int per name: status | launched << 4 | owes << 5 |
                       reason << 6, where status indexes STATUS_ORDER and reason is 0 for
                       none, else 1 + an index into reasons; bytes (one byte per
                       name) when every code is below 256, else a list of int
        reasons        list of str: the distinct reasons
        away           map name -> away_deadline, for the nodes that have one

    from_record takes either form.

:func:`from_record` checks every field and the consistency of node and job statuses, and
raises :class:`~pushy_appliance.errors.StoreError` for anything else: a damaged or foreign
record never becomes a state the machine could trip over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

from ..errors import StoreError
from .state import DEFAULT_LATE_RESULT_TIMEOUT, JobState, NodeTables, check_params
from .status import FINISHED_JOB_STATUSES, LIVE_NODE_STATUSES, JobStatus, NodeStatus

__all__ = [
    "RECORD_FORMAT",
    "STATUS_ORDER",
    "clone",
    "code_entry",
    "column_entries",
    "column_lists",
    "columns_map",
    "from_record",
    "job_record",
    "node_code",
    "node_columns",
    "node_record",
    "to_columns",
    "to_record",
]

RECORD_FORMAT: Final = 1
"""Version of the :func:`to_record` format."""

_JOB_KEYS: Final = (
    "format",
    "job_id",
    "status",
    "quorum",
    "run_timeout",
    "voting_timeout",
    "reconnect_grace",
    "max_concurrency",
    "max_failures",
    "stopped",
    "voting_deadline",
    "run_started_at",
    "run_deadline",
    "late_result_timeout",
    "late_deadline",
    "version",
)
_OPTIONAL_KEYS: Final = {
    "late_result_timeout": DEFAULT_LATE_RESULT_TIMEOUT,
    "late_deadline": None,
}
"""Keys added after format 1 was first written, with the value a record without them means."""


def job_record(state: JobState) -> dict[str, Any]:
    """The job-level fields of :func:`to_record` (everything but ``nodes``).

    Args:
        state: the job.

    Returns:
        A msgpack-able map.
    """
    return {
        "format": RECORD_FORMAT,
        "job_id": state.job_id,
        "status": str(state.status),
        "quorum": state.quorum,
        "run_timeout": state.run_timeout,
        "voting_timeout": state.voting_timeout,
        "reconnect_grace": state.reconnect_grace,
        "max_concurrency": state.max_concurrency,
        "max_failures": state.max_failures,
        "stopped": state.stopped,
        "voting_deadline": state.voting_deadline,
        "run_started_at": state.run_started_at,
        "run_deadline": state.run_deadline,
        "late_result_timeout": state.late_result_timeout,
        "late_deadline": state.late_deadline,
        "version": state.version,
    }


def node_record(state: JobState, node: str) -> list[Any]:
    """One entry of :func:`to_record`'s ``nodes``.

    Args:
        state: the job.
        node: one of its nodes.

    Returns:
        ``[name, status, launched, away_deadline, reason]``, and ``True`` after them when the
        node owes the job a late result.

    Raises:
        KeyError: ``node`` is not part of the job.
    """
    t = state.tables
    entry = [node, str(t.nodes[node]), node in t.launched, t.away.get(node), t.reasons.get(node)]
    if node in t.owed:
        entry.append(True)
    return entry


def to_record(state: JobState) -> dict[str, Any]:
    """The whole state as a msgpack-able map (format in the comment above this function).

    Args:
        state: the job.

    Returns:
        A new map; it shares nothing with ``state``.
    """
    record = job_record(state)
    record["nodes"] = [node_record(state, n) for n in state.tables.nodes]
    return record


STATUS_ORDER: Final = tuple(str(s) for s in NodeStatus)
"""Node statuses by their number in a node code (the order of :class:`.status.NodeStatus`)."""
_STATUS_NUMBER: Final = {status: i for i, status in enumerate(STATUS_ORDER)}
_LAUNCHED: Final = 1 << 4
_OWES: Final = 1 << 5
_REASON_SHIFT: Final = 6


def node_code(entry: Sequence[Any], reasons: dict[str, int]) -> int:
    """The code of one node entry (see ``node_columns`` above).

    Args:
        entry: ``[name, status, launched, away_deadline, reason]`` (and ``True``).
        reasons: reason → its number (from 1) so far; a new reason is added.

    Raises:
        KeyError: the status is not a node status.
    """
    code = _STATUS_NUMBER[entry[1]]
    if entry[2]:
        code |= _LAUNCHED
    if len(entry) > 5 and entry[5]:
        code |= _OWES
    reason = entry[4]
    if reason is not None:
        number = reasons.get(reason)
        if number is None:
            number = reasons[reason] = len(reasons) + 1
        code |= number << _REASON_SHIFT
    return code


def code_entry(
    name: str, code: int, reasons: Sequence[str], away_deadline: float | None
) -> list[Any]:
    """The node entry of a code (the inverse of :func:`node_code`).

    Raises:
        IndexError: the code names a status or reason that does not exist.
    """
    entry = [
        name,
        STATUS_ORDER[code & 0xF],
        bool(code & _LAUNCHED),
        away_deadline,
        reasons[(code >> _REASON_SHIFT) - 1] if code >> _REASON_SHIFT else None,
    ]
    if code & _OWES:
        entry.append(True)
    return entry


def node_columns(entries: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """Node entries as the ``node_columns`` map.

    Args:
        entries: node entries (:func:`node_record`'s form), in request order.
    """
    reasons: dict[str, int] = {}
    names: list[str] = []
    codes: list[int] = []
    away: dict[str, float] = {}
    for entry in entries:
        names.append(entry[0])
        codes.append(node_code(entry, reasons))
        if entry[3] is not None:
            away[entry[0]] = entry[3]
    return columns_map(names, codes, list(reasons), away)


def columns_map(
    names: Iterable[str], codes: list[int], reasons: list[str], away: dict[str, float]
) -> dict[str, Any]:
    """The ``node_columns`` map of its columns (names joined, codes as bytes if they fit)."""
    packed: bytes | list[int]
    try:
        packed = bytes(codes)
    except ValueError:
        packed = codes
    return {"names": "\n".join(names), "codes": packed, "reasons": reasons, "away": away}


def column_lists(columns: Mapping[str, Any]) -> tuple[list[str], list[int]]:
    """The names and codes of a ``node_columns`` map, as lists.

    Raises:
        TypeError, ValueError: they are not a names string (or list) and codes of one
            length.
    """
    names, codes = columns["names"], columns["codes"]
    if isinstance(names, str):
        names = names.split("\n") if names else []
    if isinstance(codes, bytes):
        codes = list(codes)
    if not isinstance(names, list) or not isinstance(codes, list) or len(names) != len(codes):
        raise ValueError("node_columns needs names and codes of one length")
    return names, codes


def to_columns(state: JobState) -> dict[str, Any]:
    """:func:`to_record` with the nodes as ``node_columns``: what a ``job.create`` stores.

    Args:
        state: the job.

    Returns:
        A new map; it shares nothing with ``state`` but the node names.
    """
    t = state.tables
    number = {status: _STATUS_NUMBER[str(status)] for status in NodeStatus}
    launched, owed, reasons_of = t.launched, t.owed, t.reasons
    reasons: dict[str, int] = {}
    codes: list[int] = []
    for name, status in t.nodes.items():
        code = number[status]
        if name in launched:
            code |= _LAUNCHED
        if name in owed:
            code |= _OWES
        reason = reasons_of.get(name)
        if reason is not None:
            n = reasons.get(reason)
            if n is None:
                n = reasons[reason] = len(reasons) + 1
            code |= n << _REASON_SHIFT
        codes.append(code)
    record = job_record(state)
    record["node_columns"] = columns_map(t.nodes, codes, list(reasons), dict(t.away))
    return record


def column_entries(columns: object, bad: Callable[[str], StoreError] | None = None) -> list[Any]:
    """The node entries of a ``node_columns`` map (the inverse of :func:`node_columns`).

    Raises:
        StoreError: the map is not valid node columns.
    """
    fail = bad or StoreError
    if not isinstance(columns, Mapping):
        raise fail("node_columns is not a map")
    reasons, away = columns.get("reasons"), columns.get("away")
    try:
        names, codes = column_lists(columns)
    except (KeyError, TypeError, ValueError):
        raise fail("node_columns needs names and codes of one length") from None
    if not isinstance(reasons, list) or not isinstance(away, Mapping):
        raise fail("node_columns needs reasons (a list) and away (a map)")
    try:
        return [
            code_entry(name, code, reasons, away.get(name))
            for name, code in zip(names, codes, strict=True)
        ]
    except (IndexError, TypeError) as e:
        raise fail(f"invalid node code ({e})") from None


def from_record(record: Mapping[str, Any]) -> JobState:
    """Rebuild a state from :func:`to_record`'s map.

    Args:
        record: the map, as stored.

    Returns:
        A state equal to the one recorded (``to_record`` of it gives ``record`` back; a
        record from before late results gains their keys, with the values they mean).

    Raises:
        StoreError: the map is not a valid job record.
    """
    if not isinstance(record, Mapping):
        raise StoreError(f"job record is a {type(record).__name__}, not a map")
    job_id = record.get("job_id")
    if not isinstance(job_id, str):
        raise StoreError("job record without a job_id")

    def bad(reason: str) -> StoreError:
        return StoreError(f"job {job_id}: invalid job record: {reason}")

    unknown = set(record) - set(_JOB_KEYS) - {"nodes", "node_columns"}
    if unknown:
        raise bad(f"unknown keys {sorted(unknown)}")
    if record.get("format") != RECORD_FORMAT:
        raise bad(f"format {record.get('format')!r} is not {RECORD_FORMAT}")
    raw_status = record.get("status")
    if not isinstance(raw_status, str) or raw_status not in JobStatus.__members__.values():
        raise bad(f"status {raw_status!r}")
    status = JobStatus(raw_status)
    quorum = _int_field(record, "quorum", bad)
    version = _int_field(record, "version", bad)
    max_concurrency = _opt_int_field(record, "max_concurrency", bad)
    max_failures = _opt_int_field(record, "max_failures", bad)
    run_timeout = _num_field(record, "run_timeout", bad)
    voting_timeout = _num_field(record, "voting_timeout", bad)
    reconnect_grace = _num_field(record, "reconnect_grace", bad)
    full = {**_OPTIONAL_KEYS, **record}
    late_result_timeout = _num_field(full, "late_result_timeout", bad)
    late_deadline = _opt_num_field(full, "late_deadline", bad)
    stopped = record.get("stopped")
    if not isinstance(stopped, bool):
        raise bad("stopped is not a boolean")
    try:
        check_params(
            quorum,
            run_timeout,
            voting_timeout,
            reconnect_grace,
            max_concurrency,
            max_failures,
            late_result_timeout,
        )
    except ValueError as exc:
        raise bad(str(exc)) from None

    entries: Any = record.get("nodes")
    if "node_columns" in record:
        if "nodes" in record:
            raise bad("both nodes and node_columns")
        entries = column_entries(record["node_columns"], bad)
    if not isinstance(entries, list):
        raise bad("nodes is not a list")
    nodes: dict[str, NodeStatus] = {}
    launched: set[str] = set()
    away: dict[str, float] = {}
    reasons: dict[str, str] = {}
    owed: dict[str, None] = {}
    for entry in entries:
        name, node_status, is_launched, away_deadline, reason, owes = _node_entry(entry, bad)
        if name in nodes:
            raise bad(f"duplicate node {name!r}")
        nodes[name] = node_status
        live = node_status in LIVE_NODE_STATUSES
        if is_launched:
            if status is not JobStatus.RUNNING or node_status is NodeStatus.NEW or not live:
                raise bad(f"node {name!r} cannot be launched while {node_status}")
            launched.add(name)
        if away_deadline is not None:
            if not live or status in FINISHED_JOB_STATUSES:
                raise bad(f"node {name!r} cannot be away while {node_status}")
            away[name] = away_deadline
        if reason is not None:
            reasons[name] = reason
        if owes:
            if status not in _STOPPED_JOBS or node_status not in _STOPPED:
                raise bad(
                    f"node {name!r} cannot owe a result while {node_status} in a {status} job"
                )
            owed[name] = None
        if not _node_fits(status, node_status, is_launched):
            raise bad(f"node {name!r} is {node_status} in a {status} job")

    if (late_deadline is None) != (not owed):
        raise bad("late_deadline must be set exactly while nodes owe results")
    tables = NodeTables(nodes, version)
    tables.launched = launched
    tables.away = away
    tables.reasons = reasons
    tables.owed = owed
    if status is JobStatus.RUNNING and not stopped:
        tables.pending.extend(
            n
            for n, s in nodes.items()
            if s is NodeStatus.READY and n not in launched and n not in away
        )
    return JobState(
        job_id=job_id,
        status=status,
        quorum=quorum,
        run_timeout=run_timeout,
        voting_timeout=voting_timeout,
        reconnect_grace=reconnect_grace,
        max_concurrency=max_concurrency,
        max_failures=max_failures,
        stopped=stopped,
        voting_deadline=_opt_num_field(record, "voting_deadline", bad),
        run_started_at=_opt_num_field(record, "run_started_at", bad),
        run_deadline=_opt_num_field(record, "run_deadline", bad),
        late_result_timeout=late_result_timeout,
        late_deadline=late_deadline,
        version=version,
        touched=(),
        tables=tables,
    )


def clone(state: JobState) -> JobState:
    """An independent copy of ``state`` (O(nodes)), e.g. to keep a snapshot.

    Args:
        state: the job; not consumed.

    Returns:
        A state with the same record and its own tables.
    """
    return from_record(to_record(state))


def _node_fits(job: JobStatus, node: NodeStatus, launched: bool) -> bool:
    """Whether a node status can occur in a job status (keeps restored states consistent)."""
    if job is JobStatus.NEW:
        return node is NodeStatus.NEW
    if job is JobStatus.VOTING:
        return node in _VOTING_NODE_STATUSES
    if job is JobStatus.RUNNING:
        if node is NodeStatus.RUNNING:
            return launched
        return node is not NodeStatus.NEW and node is not NodeStatus.WAS_READY
    return node not in LIVE_NODE_STATUSES


_VOTING_NODE_STATUSES: Final = frozenset(
    {NodeStatus.NEW, NodeStatus.READY, NodeStatus.UNAVAILABLE, NodeStatus.NACKED}
)
_STOPPED: Final = frozenset({NodeStatus.ABORTED, NodeStatus.TIMED_OUT})
"""Statuses of nodes the server stopped: the only ones that may owe a late result."""
_STOPPED_JOBS: Final = frozenset({JobStatus.ABORTED, JobStatus.TIMED_OUT})
"""Statuses of the jobs that stop nodes as they end."""


_Bad: TypeAlias = Callable[[str], StoreError]


def _int_field(record: Mapping[str, Any], key: str, bad: _Bad) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad(f"{key} is not an integer")
    return value


def _opt_int_field(record: Mapping[str, Any], key: str, bad: _Bad) -> int | None:
    return None if record.get(key) is None else _int_field(record, key, bad)


def _num_field(record: Mapping[str, Any], key: str, bad: _Bad) -> float:
    value = record.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise bad(f"{key} is not a number")
    return value


def _opt_num_field(record: Mapping[str, Any], key: str, bad: _Bad) -> float | None:
    return None if record.get(key) is None else _num_field(record, key, bad)


def _node_entry(
    entry: object, bad: _Bad
) -> tuple[str, NodeStatus, bool, float | None, str | None, bool]:
    if not isinstance(entry, (list, tuple)) or len(entry) not in (5, 6):
        raise bad(f"node entry {entry!r} is not [name, status, launched, away, reason, owes?]")
    name, status, launched, away_deadline, reason = entry[:5]
    if not isinstance(name, str):
        raise bad(f"node name {name!r} is not a string")
    if not isinstance(status, str) or status not in NodeStatus.__members__.values():
        raise bad(f"node {name!r} has status {status!r}")
    node_status = NodeStatus(status)
    if not isinstance(launched, bool):
        raise bad(f"node {name!r}: launched is not a boolean")
    if away_deadline is not None and (
        not isinstance(away_deadline, (int, float)) or isinstance(away_deadline, bool)
    ):
        raise bad(f"node {name!r}: away deadline is not a number")
    if reason is not None and not isinstance(reason, str):
        raise bad(f"node {name!r}: reason is not a string")
    if len(entry) == 6 and entry[5] is not True:
        raise bad(f"node {name!r}: the sixth item (owes a result) is not true")
    return name, node_status, launched, away_deadline, reason, len(entry) == 6
