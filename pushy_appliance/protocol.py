"""The node protocol's frames: typed records, one ``encode`` and one ``decode`` (pure).

Wire format (``NODES.md`` §2): every WebSocket binary message is one msgpack map with

* ``type`` — the frame type, a string (``hello``, ``welcome``, ``heartbeat``, …);
* ``seq`` — a positive integer, per sender and per connection, starting at 1 and strictly
  increasing (:class:`Sequencer` hands them out, :class:`SeqTracker` checks them);
* ``ts`` — the sender's clock, float seconds since the epoch;
* the fields of that type, with byte strings as msgpack ``bin`` and all other text as ``str``.

Each frame type is a frozen, slotted dataclass below with keyword-only fields; ``TYPE`` is
its tag. Optional fields (those with a default of ``None``) are left out of the encoded map
when unset and read back as ``None`` when missing or nil. Keys a decoder does not know are
ignored, so a newer peer may add fields. :func:`decode` is the one place where every msgpack
failure and every schema violation becomes :class:`~pushy_appliance.errors.ProtocolError`
(whose message names the frame type and the field), and where a frame over the size cap
becomes :class:`~pushy_appliance.errors.FrameTooLargeError`.

The server sends the same heartbeat to every node on every tick; only ``seq`` differs per
connection. :class:`HeartbeatTemplate` packs the shared part once and renders each frame by
appending the few bytes of ``seq`` and ``ts``.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeAlias

import msgpack

from .errors import FrameTooLargeError, ProtocolError

__all__ = [
    "CHANNELS",
    "FRAME_TYPES",
    "JOB_STATES",
    "MAX_FACTS",
    "MAX_FACT_CHARS",
    "NACK_COMMIT_REASONS",
    "PROTOCOL_VERSION",
    "RESULT_STATUSES",
    "Abort",
    "Aborted",
    "AckCommit",
    "AckRun",
    "Commit",
    "FactValue",
    "Frame",
    "Heartbeat",
    "HeartbeatTemplate",
    "Hello",
    "NackCommit",
    "NackRun",
    "Output",
    "Reload",
    "Result",
    "ResultAck",
    "ResultBody",
    "Run",
    "SeqTracker",
    "Sequencer",
    "Welcome",
    "decode",
    "encode",
    "encode_heartbeat_template",
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

MAX_FACTS = 64
"""Most keys a ``hello``'s ``facts`` may hold."""

MAX_FACT_CHARS = 1024
"""Longest fact name or string value, in characters."""

FactValue: TypeAlias = str | int | float | bool | None
"""A node fact's value."""

_MAX_REPR = 60

# --- field checkers -------------------------------------------------------------------------
# A checker takes the decoded value and the "type.field" it came from, and returns the value
# to store in the dataclass, raising ProtocolError when it is not acceptable.

_Check = Callable[[Any, str], Any]


def _show(value: Any) -> str:
    """A short repr of untrusted input, for error messages."""
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _bad(where: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{where}: expected {expected}, got {type(value).__name__} {_show(value)}")


def _check_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(where, "a string", value)
    return value


def _check_bytes(value: Any, where: str) -> bytes:
    if not isinstance(value, bytes):
        raise _bad(where, "bytes (msgpack bin)", value)
    return value


def _check_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(where, "a boolean", value)
    return value


def _check_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(where, "an integer", value)
    return value


def _check_count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(where, "a non-negative integer", value)
    return value


def _check_positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _bad(where, "a positive integer", value)
    return value


def _check_float(value: Any, where: str) -> float:
    # Integers are accepted for float fields: a peer may well encode 10.0 as 10.
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(where, "a number", value)
    number = float(value)
    if not math.isfinite(number):
        raise _bad(where, "a finite number", value)
    return number


def _check_duration(value: Any, where: str) -> float:
    number = _check_float(value, where)
    if number < 0:
        raise _bad(where, "a non-negative number", value)
    return number


def _optional(check: _Check) -> _Check:
    def check_optional(value: Any, where: str) -> Any:
        return None if value is None else check(value, where)

    return check_optional


def _one_of(allowed: frozenset[str]) -> _Check:
    listed = ", ".join(sorted(allowed))

    def check_one_of(value: Any, where: str) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise _bad(where, f"one of {listed}", value)
        return value

    return check_one_of


def _check_env(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(where, "a map of strings", value)
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ProtocolError(
                f"{where}: expected a map of strings, got {_show(key)}: {_show(item)}"
            )
    return dict(value)


def _check_facts(value: Any, where: str) -> dict[str, FactValue]:
    if not isinstance(value, dict):
        raise _bad(where, "a map", value)
    if len(value) > MAX_FACTS:
        raise ProtocolError(f"{where}: {len(value)} keys, at most {MAX_FACTS} allowed")
    for key, item in value.items():
        if not isinstance(key, str):
            raise _bad(f"{where} key", "a string", key)
        if len(key) > MAX_FACT_CHARS:
            raise ProtocolError(f"{where}: key {_show(key)} longer than {MAX_FACT_CHARS} chars")
        if isinstance(item, str):
            if len(item) > MAX_FACT_CHARS:
                raise ProtocolError(f"{where}.{key}: longer than {MAX_FACT_CHARS} chars")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise _bad(f"{where}.{key}", "a finite number", item)
        elif item is not None and not isinstance(item, int):  # bool is an int: allowed
            raise _bad(f"{where}.{key}", "a string, number, boolean or nil", item)
    return dict(value)


def _check_pending_result(value: Any, where: str) -> ResultBody | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(where, "a map or nil", value)
    body: ResultBody = _build(ResultBody, value, where)
    return body


def _f(check: _Check) -> dict[str, _Check]:
    """Field metadata naming the field's checker."""
    return {"check": check}


_STR = _f(_check_str)
_OPT_STR = _f(_optional(_check_str))
_SEQ = _f(_check_positive_int)
_TS = _f(_check_float)

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

    job_id: str = dataclasses.field(metadata=_STR)
    status: str = dataclasses.field(metadata=_f(_one_of(RESULT_STATUSES)))
    exit_code: int | None = dataclasses.field(metadata=_f(_optional(_check_int)))
    signal: int | None = dataclasses.field(default=None, metadata=_f(_optional(_check_int)))
    stdout_bytes: int = dataclasses.field(metadata=_f(_check_count))
    stderr_bytes: int = dataclasses.field(metadata=_f(_check_count))
    truncated: bool = dataclasses.field(metadata=_f(_check_bool))
    duration_s: float = dataclasses.field(metadata=_f(_check_duration))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Agent → server, the agent's first frame: who it is and what job it holds."""

    TYPE: ClassVar[str] = "hello"
    incarnation_id: str = dataclasses.field(metadata=_STR)
    protocol_version: int = dataclasses.field(metadata=_f(_check_int))
    agent_version: str = dataclasses.field(metadata=_STR)
    job_id: str | None = dataclasses.field(metadata=_OPT_STR)
    job_state: str = dataclasses.field(metadata=_f(_one_of(JOB_STATES)))
    pending_result: ResultBody | None = dataclasses.field(metadata=_f(_check_pending_result))
    facts: dict[str, FactValue] = dataclasses.field(metadata=_f(_check_facts))
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """Server → agent, the answer to ``hello``: the server's identity and the timings."""

    TYPE: ClassVar[str] = "welcome"
    server_incarnation_id: str = dataclasses.field(metadata=_STR)
    heartbeat_interval: float = dataclasses.field(metadata=_f(_check_duration))
    offline_threshold: int = dataclasses.field(metadata=_f(_check_positive_int))
    voting_timeout: float = dataclasses.field(metadata=_f(_check_duration))
    max_output_bytes: int = dataclasses.field(metadata=_f(_check_count))
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """Both ways. The agent's carries ``job_id`` and ``job_state``; the server's its incarnation."""

    TYPE: ClassVar[str] = "heartbeat"
    job_id: str | None = dataclasses.field(default=None, metadata=_OPT_STR)
    job_state: str | None = dataclasses.field(
        default=None, metadata=_f(_optional(_one_of(JOB_STATES)))
    )
    server_incarnation_id: str | None = dataclasses.field(default=None, metadata=_OPT_STR)
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    """Server → agent: hold yourself ready to run ``command`` for ``job_id``.

    ``file`` is the API's prefixed string (``raw:…`` or ``base64:…``); the agent decodes it.
    ``run_timeout`` is in seconds from the start of running.
    """

    TYPE: ClassVar[str] = "commit"
    job_id: str = dataclasses.field(metadata=_STR)
    command: str = dataclasses.field(metadata=_STR)
    user: str | None = dataclasses.field(default=None, metadata=_OPT_STR)
    dir: str | None = dataclasses.field(default=None, metadata=_OPT_STR)
    env: dict[str, str] = dataclasses.field(default_factory=dict, metadata=_f(_check_env))
    file: str | None = dataclasses.field(default=None, metadata=_OPT_STR)
    capture: bool = dataclasses.field(metadata=_f(_check_bool))
    run_timeout: float = dataclasses.field(metadata=_f(_check_duration))
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AckCommit:
    """Agent → server: committed to ``job_id``."""

    TYPE: ClassVar[str] = "ack_commit"
    job_id: str = dataclasses.field(metadata=_STR)
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NackCommit:
    """Agent → server: refuses ``job_id``; ``reason`` is one of :data:`NACK_COMMIT_REASONS`."""

    TYPE: ClassVar[str] = "nack_commit"
    job_id: str = dataclasses.field(metadata=_STR)
    reason: str = dataclasses.field(metadata=_f(_one_of(NACK_COMMIT_REASONS)))
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """Server → agent: start the committed job."""

    TYPE: ClassVar[str] = "run"
    job_id: str = dataclasses.field(metadata=_STR)
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AckRun:
    """Agent → server: the job's process is starting."""

    TYPE: ClassVar[str] = "ack_run"
    job_id: str = dataclasses.field(metadata=_STR)
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NackRun:
    """Agent → server: will not run ``job_id``; ``reason`` is free text."""

    TYPE: ClassVar[str] = "nack_run"
    job_id: str = dataclasses.field(metadata=_STR)
    reason: str = dataclasses.field(metadata=_STR)
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Output:
    """Agent → server: ``data`` found at byte ``offset`` of ``channel`` while the job runs."""

    TYPE: ClassVar[str] = "output"
    job_id: str = dataclasses.field(metadata=_STR)
    channel: str = dataclasses.field(metadata=_f(_one_of(CHANNELS)))
    data: bytes = dataclasses.field(metadata=_f(_check_bytes))
    offset: int = dataclasses.field(metadata=_f(_check_count))
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """Agent → server: the job ended. Fields as :class:`ResultBody`; kept until ``result_ack``."""

    TYPE: ClassVar[str] = "result"
    job_id: str = dataclasses.field(metadata=_STR)
    status: str = dataclasses.field(metadata=_f(_one_of(RESULT_STATUSES)))
    exit_code: int | None = dataclasses.field(metadata=_f(_optional(_check_int)))
    signal: int | None = dataclasses.field(default=None, metadata=_f(_optional(_check_int)))
    stdout_bytes: int = dataclasses.field(metadata=_f(_check_count))
    stderr_bytes: int = dataclasses.field(metadata=_f(_check_count))
    truncated: bool = dataclasses.field(metadata=_f(_check_bool))
    duration_s: float = dataclasses.field(metadata=_f(_check_duration))
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)

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
    job_id: str = dataclasses.field(metadata=_STR)
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    """Server → agent: stop whatever runs (``job_id`` ``None``) or the named job, and report."""

    TYPE: ClassVar[str] = "abort"
    job_id: str | None = dataclasses.field(default=None, metadata=_OPT_STR)
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Aborted:
    """Agent → server: stopped; ``job_id`` is what it was doing, ``None`` when it was idle."""

    TYPE: ClassVar[str] = "aborted"
    job_id: str | None = dataclasses.field(metadata=_OPT_STR)
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Reload:
    """Server → agent: re-read the whitelist from disk."""

    TYPE: ClassVar[str] = "reload"
    seq: int = dataclasses.field(metadata=_SEQ)
    ts: float = dataclasses.field(metadata=_TS)


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
)

FRAME_TYPES: Mapping[str, type[Frame]] = {cls.TYPE: cls for cls in _FRAME_CLASSES}
"""Frame classes by their ``type`` tag."""


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    check: _Check
    required: bool
    omit_when_none: bool


def _specs(cls: type[Any]) -> tuple[_FieldSpec, ...]:
    out = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append(
            _FieldSpec(
                name=f.name,
                check=f.metadata["check"],
                required=required,
                omit_when_none=f.default is None,
            )
        )
    return tuple(out)


_SPECS: dict[type[Any], tuple[_FieldSpec, ...]] = {
    cls: _specs(cls) for cls in (ResultBody, *_FRAME_CLASSES)
}
_RESULT_BODY_NAMES = tuple(spec.name for spec in _SPECS[ResultBody])


def _body_fields(body: ResultBody) -> dict[str, Any]:
    return {name: getattr(body, name) for name in _RESULT_BODY_NAMES}


def _build(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    kwargs: dict[str, Any] = {}
    for spec in _SPECS[cls]:
        if spec.name in data:
            kwargs[spec.name] = spec.check(data[spec.name], f"{where}.{spec.name}")
        elif spec.required:
            raise ProtocolError(f"{where}: missing field {spec.name!r}")
    return cls(**kwargs)


# --- encode / decode ------------------------------------------------------------------------


def _plain(frame: Frame | ResultBody) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in _SPECS[type(frame)]:
        value = getattr(frame, spec.name)
        if value is None and spec.omit_when_none:
            continue
        if isinstance(value, ResultBody):
            value = _plain(value)
        out[spec.name] = value
    return out


def encode(frame: Frame) -> bytes:
    """Pack a frame into its wire form.

    Args:
        frame: any frame; its own ``seq`` and ``ts`` are the envelope.

    Returns:
        One msgpack map with ``type``, ``seq``, ``ts`` and the frame's fields.
    """
    data = {"type": frame.TYPE, **_plain(frame)}
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


def decode(data: bytes, *, max_size: int = 1_048_576) -> Frame:
    """Unpack and validate one frame.

    Args:
        data: the WebSocket message.
        max_size: the largest acceptable message in bytes.

    Returns:
        The frame, with every field checked against the protocol.

    Raises:
        FrameTooLargeError: when ``data`` is longer than ``max_size``.
        ProtocolError: when ``data`` is not msgpack, not a map, has an unknown ``type``, or a
            field is missing, of the wrong type or out of its allowed values; the message
            names the frame type and the field.
    """
    if len(data) > max_size:
        raise FrameTooLargeError(len(data), max_size)
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, timestamp=0)
    except Exception as exc:
        # msgpack raises a zoo (FormatError, StackError, ExtraData, OutOfData, ValueError,
        # UnicodeDecodeError, TypeError for unhashable keys, …): all mean "not a frame".
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame is not a map but {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(f"frame has no string 'type' (got {_show(kind)})")
    cls = FRAME_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown frame type {_show(kind)}")
    frame: Frame = _build(cls, obj, kind)
    return frame


# --- sequence numbers -----------------------------------------------------------------------


class Sequencer:
    """Hands out one sender's ``seq`` numbers on one connection: 1, 2, 3, …"""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        """The next sequence number.

        Returns:
            1 on the first call, then one more each call.
        """
        self._last += 1
        return self._last

    @property
    def last(self) -> int:
        """The number handed out last; 0 before the first."""
        return self._last


class SeqTracker:
    """Checks the ``seq`` of frames received on one connection."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def check(self, seq: int) -> bool:
        """Accept ``seq`` if it is higher than every one accepted before.

        Args:
            seq: the received frame's ``seq`` (the first frame's must be at least 1).

        Returns:
            ``True`` when the frame is new; ``False`` for a replayed or out-of-order frame,
            which the caller drops and logs.
        """
        if seq <= self._last:
            return False
        self._last = seq
        return True

    @property
    def last(self) -> int:
        """The highest ``seq`` accepted so far; 0 before the first."""
        return self._last


# --- the server's heartbeat, packed once per tick -------------------------------------------

_FLOAT64 = struct.Struct(">Bd")
_SEQ_KEY = msgpack.packb("seq")
_TS_KEY = msgpack.packb("ts")


def _pack_uint(value: int) -> bytes:
    """Msgpack's smallest encoding of a non-negative integer (as ``msgpack.packb`` chooses)."""
    if value < 0x80:
        return bytes((value,))
    if value <= 0xFF:
        return b"\xcc" + value.to_bytes(1, "big")
    if value <= 0xFFFF:
        return b"\xcd" + value.to_bytes(2, "big")
    if value <= 0xFFFF_FFFF:
        return b"\xce" + value.to_bytes(4, "big")
    return b"\xcf" + value.to_bytes(8, "big")


class HeartbeatTemplate:
    """The server's heartbeat with everything but ``seq`` and ``ts`` packed in advance."""

    __slots__ = ("_prefix",)

    def __init__(self, server_incarnation_id: str) -> None:
        body = {"type": Heartbeat.TYPE, "server_incarnation_id": server_incarnation_id}
        # A map header for the body's entries plus seq and ts (a fixmap holds up to 15), then
        # the body's key/value pairs without their own header.
        packed_body = msgpack.packb(body, use_bin_type=True)
        self._prefix = bytes((0x80 | (len(body) + 2),)) + packed_body[1:]

    def render(self, seq: int, ts: float) -> bytes:
        """The heartbeat frame for one connection.

        Args:
            seq: that connection's next ``seq`` (positive).
            ts: the timestamp.

        Returns:
            Bytes that :func:`decode` reads as ``Heartbeat(server_incarnation_id=…, seq=seq,
            ts=ts)``.
        """
        return b"".join((self._prefix, _SEQ_KEY, _pack_uint(seq), _TS_KEY, _FLOAT64.pack(0xCB, ts)))


def encode_heartbeat_template(server_incarnation_id: str) -> HeartbeatTemplate:
    """Pack the server's heartbeat once, for rendering per connection with its own ``seq``.

    Args:
        server_incarnation_id: the server's incarnation.

    Returns:
        The template; :meth:`HeartbeatTemplate.render` makes each frame.
    """
    return HeartbeatTemplate(server_incarnation_id)
