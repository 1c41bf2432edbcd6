"""The node protocol's frames: frozen, typed records and their vocabulary (pure).

Each frame type is a frozen, slotted dataclass with keyword-only fields; ``TYPE`` is its tag
and each field's metadata names its checker (``_fields``). Optional fields (those with a
default of ``None``) are left out of the encoded map when unset and read back as ``None``
when missing or nil.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeAlias

from ..errors import ProtocolError
from ..facts import MAX_FACTS_BYTES
from ._facts import MAX_FACTS_DEPTH, FactValue, check_facts
from ._fields import (
    ID,
    OPT_ID,
    SEQ,
    TS,
    FieldSpec,
    bad,
    check_bool,
    check_bytes,
    check_count,
    check_duration,
    check_env,
    check_int,
    check_positive_int,
    check_str,
    checked,
    enum,
    field_specs,
    optional,
    show,
    text,
)

__all__ = [
    "CHANNELS",
    "FRAME_KEYS",
    "FRAME_TYPES",
    "FROM_AGENT",
    "FROM_SERVER",
    "JOB_STATES",
    "MAX_AGENT_VERSION_BYTES",
    "MAX_COMMAND_BYTES",
    "MAX_DIR_BYTES",
    "MAX_FACTS_DEPTH",
    "MAX_PENDING_RESULT_BYTES",
    "MAX_REASON_BYTES",
    "MAX_USER_BYTES",
    "NACK_COMMIT_REASONS",
    "PROTOCOL_VERSION",
    "RESULT_STATUSES",
    "SPECS",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "Abort",
    "Aborted",
    "AckCommit",
    "AckRun",
    "Commit",
    "FactValue",
    "Facts",
    "Frame",
    "Heartbeat",
    "Hello",
    "NackCommit",
    "NackRun",
    "Output",
    "Reload",
    "Result",
    "ResultAck",
    "ResultBody",
    "Run",
    "Welcome",
    "build",
]

PROTOCOL_VERSION = 1
"""The protocol version an agent announces in ``hello``."""

SUPPORTED_PROTOCOL_VERSIONS = frozenset({PROTOCOL_VERSION})
"""The ``hello.protocol_version`` values the server speaks; any other is refused at once."""

JOB_STATES = frozenset({"idle", "committed", "running"})
"""Values of ``job_state`` in ``hello`` and the agent's ``heartbeat``."""

CHANNELS = frozenset({"stdout", "stderr"})
"""Values of ``output.channel``."""

RESULT_STATUSES = frozenset({"succeeded", "failed", "aborted", "timed_out"})
"""Values of ``result.status``."""

NACK_COMMIT_REASONS = frozenset(
    {"busy", "not_whitelisted", "no_such_user", "no_such_dir", "bad_file", "lock_held"}
)
"""Values of ``nack_commit.reason``. ``nack_run.reason`` is free text."""

MAX_AGENT_VERSION_BYTES = 64
"""Longest ``hello.agent_version``, in bytes."""

MAX_COMMAND_BYTES = 4096
"""Longest ``commit.command``, in bytes (the API's limit)."""

MAX_USER_BYTES = 256
"""Longest ``commit.user``, in bytes (the API allows 32 characters)."""

MAX_DIR_BYTES = 4096
"""Longest ``commit.dir``, in bytes (the API's limit)."""

MAX_REASON_BYTES = 1024
"""Longest ``nack_run.reason``, in bytes."""

MAX_PENDING_RESULT_BYTES = 1024
"""Most bytes ``hello.pending_result`` takes encoded (a result is about 150)."""


def _check_pending_result(value: Any, where: str) -> ResultBody | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad(where, "a map or nil", value)
    body: ResultBody = build(ResultBody, value, where)
    return body


# --- records --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResultBody:
    """The outcome of a job on a node: the fields of ``result`` (also ``hello.pending_result``).

    Attributes:
        job_id: the job.
        status: ``succeeded``, ``failed``, ``aborted`` or ``timed_out``.
        exit_code: the process's exit code; ``None`` when it was killed by a signal or never ran.
        signal: the signal that killed it, if one did.
        stdout_bytes: bytes the process wrote to stdout (all of them, kept or not).
        stderr_bytes: likewise for stderr.
        truncated: whether output beyond the per-channel cap was dropped.
        duration_s: wall-clock seconds the process ran.
    """

    job_id: str = dataclasses.field(metadata=ID)
    status: str = dataclasses.field(metadata=enum(RESULT_STATUSES))
    exit_code: int | None = dataclasses.field(metadata=checked(optional(check_int)))
    signal: int | None = dataclasses.field(default=None, metadata=checked(optional(check_int)))
    stdout_bytes: int = dataclasses.field(metadata=checked(check_count))
    stderr_bytes: int = dataclasses.field(metadata=checked(check_count))
    truncated: bool = dataclasses.field(metadata=checked(check_bool))
    duration_s: float = dataclasses.field(metadata=checked(check_duration))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Agent → server, the agent's first frame: who it is and what job it holds."""

    TYPE: ClassVar[str] = "hello"
    incarnation_id: str = dataclasses.field(metadata=ID)
    protocol_version: int = dataclasses.field(metadata=checked(check_int))
    agent_version: str = dataclasses.field(metadata=text(MAX_AGENT_VERSION_BYTES))
    job_id: str | None = dataclasses.field(metadata=OPT_ID)
    job_state: str = dataclasses.field(metadata=enum(JOB_STATES))
    pending_result: ResultBody | None = dataclasses.field(
        metadata=checked(_check_pending_result, MAX_PENDING_RESULT_BYTES)
    )
    facts: dict[str, FactValue] = dataclasses.field(metadata=checked(check_facts, MAX_FACTS_BYTES))
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """Server → agent, the answer to ``hello``: the server's identity and the timings."""

    TYPE: ClassVar[str] = "welcome"
    server_incarnation_id: str = dataclasses.field(metadata=ID)
    heartbeat_interval: float = dataclasses.field(metadata=checked(check_duration))
    offline_threshold: int = dataclasses.field(metadata=checked(check_positive_int))
    voting_timeout: float = dataclasses.field(metadata=checked(check_duration))
    max_output_bytes: int = dataclasses.field(metadata=checked(check_count))
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """Both ways. The agent's carries ``job_id`` and ``job_state``; the server's its incarnation."""

    TYPE: ClassVar[str] = "heartbeat"
    job_id: str | None = dataclasses.field(default=None, metadata=OPT_ID)
    job_state: str | None = dataclasses.field(default=None, metadata=enum(JOB_STATES, nil=True))
    server_incarnation_id: str | None = dataclasses.field(default=None, metadata=OPT_ID)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    """Server → agent: hold yourself ready to run ``command`` for ``job_id``.

    ``file`` is the API's prefixed string (``raw:…`` or ``base64:…``); the agent decodes it.
    ``run_timeout`` is in seconds from the start of running.
    """

    TYPE: ClassVar[str] = "commit"
    job_id: str = dataclasses.field(metadata=ID)
    command: str = dataclasses.field(metadata=text(MAX_COMMAND_BYTES))
    user: str | None = dataclasses.field(default=None, metadata=text(MAX_USER_BYTES, nil=True))
    dir: str | None = dataclasses.field(default=None, metadata=text(MAX_DIR_BYTES, nil=True))
    env: dict[str, str] = dataclasses.field(default_factory=dict, metadata=checked(check_env, None))
    file: str | None = dataclasses.field(default=None, metadata=checked(optional(check_str), None))
    capture: bool = dataclasses.field(metadata=checked(check_bool))
    run_timeout: float = dataclasses.field(metadata=checked(check_duration))
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AckCommit:
    """Agent → server: committed to ``job_id``."""

    TYPE: ClassVar[str] = "ack_commit"
    job_id: str = dataclasses.field(metadata=ID)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NackCommit:
    """Agent → server: refuses ``job_id``; ``reason`` is one of :data:`NACK_COMMIT_REASONS`."""

    TYPE: ClassVar[str] = "nack_commit"
    job_id: str = dataclasses.field(metadata=ID)
    reason: str = dataclasses.field(metadata=enum(NACK_COMMIT_REASONS))
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """Server → agent: start the committed job."""

    TYPE: ClassVar[str] = "run"
    job_id: str = dataclasses.field(metadata=ID)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AckRun:
    """Agent → server: the job's process is starting."""

    TYPE: ClassVar[str] = "ack_run"
    job_id: str = dataclasses.field(metadata=ID)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NackRun:
    """Agent → server: will not run ``job_id``; ``reason`` is free text."""

    TYPE: ClassVar[str] = "nack_run"
    job_id: str = dataclasses.field(metadata=ID)
    reason: str = dataclasses.field(metadata=text(MAX_REASON_BYTES))
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Output:
    """Agent → server: ``data`` found at byte ``offset`` of ``channel`` while the job runs."""

    TYPE: ClassVar[str] = "output"
    job_id: str = dataclasses.field(metadata=ID)
    channel: str = dataclasses.field(metadata=enum(CHANNELS))
    data: bytes = dataclasses.field(metadata=checked(check_bytes, None))
    offset: int = dataclasses.field(metadata=checked(check_count))
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """Agent → server: the job ended. Fields as :class:`ResultBody`; kept until ``result_ack``."""

    TYPE: ClassVar[str] = "result"
    job_id: str = dataclasses.field(metadata=ID)
    status: str = dataclasses.field(metadata=enum(RESULT_STATUSES))
    exit_code: int | None = dataclasses.field(metadata=checked(optional(check_int)))
    signal: int | None = dataclasses.field(default=None, metadata=checked(optional(check_int)))
    stdout_bytes: int = dataclasses.field(metadata=checked(check_count))
    stderr_bytes: int = dataclasses.field(metadata=checked(check_count))
    truncated: bool = dataclasses.field(metadata=checked(check_bool))
    duration_s: float = dataclasses.field(metadata=checked(check_duration))
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)

    @classmethod
    def from_body(cls, body: ResultBody, *, seq: int, ts: float) -> Result:
        """The ``result`` frame that carries ``body``.

        Args:
            body: the outcome.
            seq: the frame's sequence number.
            ts: the frame's timestamp.

        Returns:
            The frame.
        """
        return cls(**_body_fields(body), seq=seq, ts=ts)

    @property
    def body(self) -> ResultBody:
        """The outcome without the envelope (what ``hello.pending_result`` carries)."""
        return ResultBody(**{name: getattr(self, name) for name in _RESULT_BODY_NAMES})


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResultAck:
    """Server → agent: the result of ``job_id`` is stored; the agent may forget it."""

    TYPE: ClassVar[str] = "result_ack"
    job_id: str = dataclasses.field(metadata=ID)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    """Server → agent: stop whatever runs (``job_id`` ``None``) or the named job, and report."""

    TYPE: ClassVar[str] = "abort"
    job_id: str | None = dataclasses.field(default=None, metadata=OPT_ID)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Aborted:
    """Agent → server: stopped; ``job_id`` is what it was doing, ``None`` when it was idle."""

    TYPE: ClassVar[str] = "aborted"
    job_id: str | None = dataclasses.field(metadata=OPT_ID)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Reload:
    """Server → agent: re-read the configuration from disk (whitelist, facts settings) and
    collect the facts again."""

    TYPE: ClassVar[str] = "reload"
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """Agent → server: the node's facts changed since it last sent them (``hello`` or
    ``facts``); the whole new set, never a difference."""

    TYPE: ClassVar[str] = "facts"
    facts: dict[str, FactValue] = dataclasses.field(metadata=checked(check_facts, MAX_FACTS_BYTES))
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


Frame: TypeAlias = (
    Hello
    | Welcome
    | Heartbeat
    | Commit
    | AckCommit
    | NackCommit
    | Run
    | AckRun
    | NackRun
    | Output
    | Result
    | ResultAck
    | Abort
    | Aborted
    | Reload
    | Facts
)
"""Any frame of the node protocol."""

_FRAME_CLASSES: tuple[type[Frame], ...] = (
    Hello,
    Welcome,
    Heartbeat,
    Commit,
    AckCommit,
    NackCommit,
    Run,
    AckRun,
    NackRun,
    Output,
    Result,
    ResultAck,
    Abort,
    Aborted,
    Reload,
    Facts,
)

FRAME_TYPES: Mapping[str, type[Frame]] = {cls.TYPE: cls for cls in _FRAME_CLASSES}
"""Frame classes by their ``type`` tag."""

FROM_AGENT: tuple[type[Frame], ...] = (
    AckCommit,
    NackCommit,
    AckRun,
    NackRun,
    Output,
    Result,
    Aborted,
    Facts,
)
"""The frames an agent sends after ``hello``, besides heartbeats (``NODES.md`` §2)."""

FROM_SERVER: tuple[type[Frame], ...] = (Commit, Run, ResultAck, Abort, Reload)
"""The frames the server sends after ``welcome``, besides heartbeats (``NODES.md`` §2)."""


SPECS: dict[type[Any], tuple[FieldSpec, ...]] = {
    cls: field_specs(cls) for cls in (ResultBody, *_FRAME_CLASSES)
}
"""The fields of every record class, read once."""
_RESULT_BODY_NAMES = tuple(spec.name for spec in SPECS[ResultBody])
_KEYS: dict[type[Any], frozenset[str]] = {
    cls: frozenset(spec.name for spec in specs) | ({"type"} if cls in _FRAME_CLASSES else set())
    for cls, specs in SPECS.items()
}
"""The keys a record's map may hold: its fields, and a frame's ``type``."""

FRAME_KEYS: frozenset[str] = frozenset().union(*(_KEYS[cls] for cls in _FRAME_CLASSES))
"""Every key of every frame type: a key outside it is refused before its value is read."""


def _body_fields(body: ResultBody) -> dict[str, Any]:
    return {name: getattr(body, name) for name in _RESULT_BODY_NAMES}


def build(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    """The record ``cls`` from a decoded map, every field checked.

    Raises:
        ProtocolError: a key that is no field of ``cls``, a required field is missing, or a
            field fails its check.
    """
    keys = _KEYS[cls]
    for key in data:
        if key not in keys:
            raise ProtocolError(f"{where}: unknown field {show(key)}")
    kwargs: dict[str, Any] = {}
    for spec in SPECS[cls]:
        if spec.name in data:
            kwargs[spec.name] = spec.check(data[spec.name], f"{where}.{spec.name}")
        elif spec.required:
            raise ProtocolError(f"{where}: missing field {spec.name!r}")
    return cls(**kwargs)
