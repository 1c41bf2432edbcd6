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
from ._facts import MAX_FACTS_DEPTH, FactValue, check_facts
from ._fields import (
    OPT_STR,
    SEQ,
    STR,
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
    checked,
    field_specs,
    one_of,
    optional,
)

__all__ = [
    "CHANNELS",
    "FRAME_TYPES",
    "FROM_AGENT",
    "FROM_SERVER",
    "JOB_STATES",
    "MAX_FACTS_DEPTH",
    "NACK_COMMIT_REASONS",
    "PROTOCOL_VERSION",
    "RESULT_STATUSES",
    "SPECS",
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

    job_id: str = dataclasses.field(metadata=STR)
    status: str = dataclasses.field(metadata=checked(one_of(RESULT_STATUSES)))
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
    incarnation_id: str = dataclasses.field(metadata=STR)
    protocol_version: int = dataclasses.field(metadata=checked(check_int))
    agent_version: str = dataclasses.field(metadata=STR)
    job_id: str | None = dataclasses.field(metadata=OPT_STR)
    job_state: str = dataclasses.field(metadata=checked(one_of(JOB_STATES)))
    pending_result: ResultBody | None = dataclasses.field(metadata=checked(_check_pending_result))
    facts: dict[str, FactValue] = dataclasses.field(metadata=checked(check_facts))
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """Server → agent, the answer to ``hello``: the server's identity and the timings."""

    TYPE: ClassVar[str] = "welcome"
    server_incarnation_id: str = dataclasses.field(metadata=STR)
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
    job_id: str | None = dataclasses.field(default=None, metadata=OPT_STR)
    job_state: str | None = dataclasses.field(
        default=None, metadata=checked(optional(one_of(JOB_STATES)))
    )
    server_incarnation_id: str | None = dataclasses.field(default=None, metadata=OPT_STR)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    """Server → agent: hold yourself ready to run ``command`` for ``job_id``.

    ``file`` is the API's prefixed string (``raw:…`` or ``base64:…``); the agent decodes it.
    ``run_timeout`` is in seconds from the start of running.
    """

    TYPE: ClassVar[str] = "commit"
    job_id: str = dataclasses.field(metadata=STR)
    command: str = dataclasses.field(metadata=STR)
    user: str | None = dataclasses.field(default=None, metadata=OPT_STR)
    dir: str | None = dataclasses.field(default=None, metadata=OPT_STR)
    env: dict[str, str] = dataclasses.field(default_factory=dict, metadata=checked(check_env))
    file: str | None = dataclasses.field(default=None, metadata=OPT_STR)
    capture: bool = dataclasses.field(metadata=checked(check_bool))
    run_timeout: float = dataclasses.field(metadata=checked(check_duration))
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AckCommit:
    """Agent → server: committed to ``job_id``."""

    TYPE: ClassVar[str] = "ack_commit"
    job_id: str = dataclasses.field(metadata=STR)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NackCommit:
    """Agent → server: refuses ``job_id``; ``reason`` is one of :data:`NACK_COMMIT_REASONS`."""

    TYPE: ClassVar[str] = "nack_commit"
    job_id: str = dataclasses.field(metadata=STR)
    reason: str = dataclasses.field(metadata=checked(one_of(NACK_COMMIT_REASONS)))
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """Server → agent: start the committed job."""

    TYPE: ClassVar[str] = "run"
    job_id: str = dataclasses.field(metadata=STR)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AckRun:
    """Agent → server: the job's process is starting."""

    TYPE: ClassVar[str] = "ack_run"
    job_id: str = dataclasses.field(metadata=STR)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NackRun:
    """Agent → server: will not run ``job_id``; ``reason`` is free text."""

    TYPE: ClassVar[str] = "nack_run"
    job_id: str = dataclasses.field(metadata=STR)
    reason: str = dataclasses.field(metadata=STR)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Output:
    """Agent → server: ``data`` found at byte ``offset`` of ``channel`` while the job runs."""

    TYPE: ClassVar[str] = "output"
    job_id: str = dataclasses.field(metadata=STR)
    channel: str = dataclasses.field(metadata=checked(one_of(CHANNELS)))
    data: bytes = dataclasses.field(metadata=checked(check_bytes))
    offset: int = dataclasses.field(metadata=checked(check_count))
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """Agent → server: the job ended. Fields as :class:`ResultBody`; kept until ``result_ack``."""

    TYPE: ClassVar[str] = "result"
    job_id: str = dataclasses.field(metadata=STR)
    status: str = dataclasses.field(metadata=checked(one_of(RESULT_STATUSES)))
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
    job_id: str = dataclasses.field(metadata=STR)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    """Server → agent: stop whatever runs (``job_id`` ``None``) or the named job, and report."""

    TYPE: ClassVar[str] = "abort"
    job_id: str | None = dataclasses.field(default=None, metadata=OPT_STR)
    seq: int = dataclasses.field(metadata=SEQ)
    ts: float = dataclasses.field(metadata=TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Aborted:
    """Agent → server: stopped; ``job_id`` is what it was doing, ``None`` when it was idle."""

    TYPE: ClassVar[str] = "aborted"
    job_id: str | None = dataclasses.field(metadata=OPT_STR)
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
    facts: dict[str, FactValue] = dataclasses.field(metadata=checked(check_facts))
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


def _body_fields(body: ResultBody) -> dict[str, Any]:
    return {name: getattr(body, name) for name in _RESULT_BODY_NAMES}


def build(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    """The record ``cls`` from a decoded map, every field checked.

    Raises:
        ProtocolError: a required field is missing or a field fails its check.
    """
    kwargs: dict[str, Any] = {}
    for spec in SPECS[cls]:
        if spec.name in data:
            kwargs[spec.name] = spec.check(data[spec.name], f"{where}.{spec.name}")
        elif spec.required:
            raise ProtocolError(f"{where}: missing field {spec.name!r}")
    return cls(**kwargs)
