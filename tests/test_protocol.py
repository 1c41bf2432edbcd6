"""The node protocol's frames: round trips, validation, sequence numbers, heartbeat template."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushy_appliance import protocol as p
from pushy_appliance.errors import FrameTooLargeError, ProtocolError
from pushy_appliance.facts import MAX_FACTS_BYTES

BODY = p.ResultBody(
    job_id="j-1",
    status="failed",
    exit_code=None,
    signal=9,
    stdout_bytes=10,
    stderr_bytes=0,
    truncated=True,
    duration_s=1.25,
)

SAMPLES: list[p.Frame] = [
    p.Hello(
        incarnation_id="inc-a",
        protocol_version=p.PROTOCOL_VERSION,
        agent_version="0.1.0",
        job_id="j-1",
        job_state="idle",
        pending_result=BODY,
        facts={"hostname": "n1", "cpus": 4, "load": 0.5, "vm": True, "rack": None},
        seq=1,
        ts=1700000000.5,
    ),
    p.Hello(
        incarnation_id="inc-b",
        protocol_version=1,
        agent_version="0.1.0",
        job_id=None,
        job_state="idle",
        pending_result=None,
        facts={},
        seq=1,
        ts=1.0,
    ),
    p.Welcome(
        server_incarnation_id="srv",
        heartbeat_interval=0.5,
        offline_threshold=3,
        voting_timeout=60.0,
        max_output_bytes=1_048_576,
        seq=1,
        ts=2.0,
    ),
    p.Heartbeat(job_id="j-1", job_state="running", seq=2, ts=3.0),
    p.Heartbeat(server_incarnation_id="srv", seq=2, ts=3.0),
    p.Heartbeat(seq=5, ts=3.0),
    p.Commit(
        job_id="j-1",
        command="chef-client",
        user="nobody",
        dir="/tmp",
        env={"A": "1", "B": ""},
        file="base64:AAE=",
        capture=True,
        run_timeout=3600,
        seq=3,
        ts=4.0,
    ),
    p.Commit(job_id="j-2", command="x", capture=False, run_timeout=1.5, seq=4, ts=4.0),
    p.AckCommit(job_id="j-1", seq=3, ts=5.0),
    p.NackCommit(job_id="j-1", reason="not_whitelisted", seq=3, ts=5.0),
    p.Run(job_id="j-1", seq=4, ts=6.0),
    p.AckRun(job_id="j-1", seq=4, ts=6.0),
    p.NackRun(job_id="j-1", reason="not the committed job", seq=4, ts=6.0),
    p.Output(job_id="j-1", channel="stderr", data=b"\xff\x00bytes", offset=65536, seq=5, ts=7.0),
    p.Result.from_body(BODY, seq=6, ts=8.0),
    p.ResultAck(job_id="j-1", seq=7, ts=9.0),
    p.Abort(seq=8, ts=10.0),
    p.Abort(job_id="j-1", seq=8, ts=10.0),
    p.Aborted(job_id=None, seq=9, ts=11.0),
    p.Aborted(job_id="j-1", seq=9, ts=11.0),
    p.Reload(seq=10, ts=12.0),
    p.Facts(
        facts={
            "kernel": {"machine": "x86_64", "release": "6.1.0"},
            "tags": ["web", "eu"],
            "app": {"ports": [80, 443], "tls": True, "weight": 0.5, "owner": None},
        },
        seq=11,
        ts=13.0,
    ),
]


def _wire(frame: p.Frame) -> dict[str, Any]:
    unpacked: dict[str, Any] = msgpack.unpackb(p.encode(frame), raw=False)
    return unpacked


def _pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


_BODY_WIRE = {k: v for k, v in _wire(SAMPLES[14]).items() if k not in ("type", "seq", "ts")}
"""The fields of a result (what ``hello.pending_result`` carries)."""


def test_every_frame_type_has_a_sample() -> None:
    assert {type(f) for f in SAMPLES} == set(p.FRAME_TYPES.values())
    assert len(p.FRAME_TYPES) == 16


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: type(f).__name__)
def test_round_trip(frame: p.Frame) -> None:
    assert p.decode(p.encode(frame)) == frame


def test_wire_shape() -> None:
    wire = _wire(SAMPLES[0])
    assert wire["type"] == "hello"
    assert wire["seq"] == 1
    assert wire["ts"] == 1700000000.5
    assert wire["pending_result"]["signal"] == 9
    assert "type" not in wire["pending_result"]
    output = p.encode(SAMPLES[13])
    # data goes as msgpack bin, the rest as str
    assert isinstance(msgpack.unpackb(output, raw=True)[b"data"], bytes)
    assert isinstance(msgpack.unpackb(output, raw=False)["channel"], str)
    assert b"\xc4\x07\xff\x00bytes" in output


def test_unset_optional_fields_are_left_out_but_required_nil_is_sent() -> None:
    assert set(_wire(p.Heartbeat(server_incarnation_id="s", seq=1, ts=0.0))) == {
        "type",
        "seq",
        "ts",
        "server_incarnation_id",
    }
    assert set(_wire(p.Abort(seq=1, ts=0.0))) == {"type", "seq", "ts"}
    assert _wire(p.Aborted(job_id=None, seq=1, ts=0.0))["job_id"] is None
    assert _wire(SAMPLES[1])["pending_result"] is None


def test_result_body_conversion() -> None:
    result = p.Result.from_body(BODY, seq=6, ts=8.0)
    assert result.body == BODY
    assert [f.name for f in dataclasses.fields(p.ResultBody)] == [
        f.name for f in dataclasses.fields(p.Result) if f.name not in ("seq", "ts")
    ]


def test_frames_are_frozen() -> None:
    frame = p.Run(job_id="j", seq=1, ts=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.job_id = "other"  # type: ignore[misc]


def test_unknown_keys_are_refused() -> None:
    wire = _wire(p.Run(job_id="j", seq=1, ts=0.0))
    wire["future_field"] = [1, 2, 3]
    with pytest.raises(ProtocolError, match="run: unknown field 'future_field'"):
        p.decode(_pack(wire))
    # a key of another frame type is no field of this one
    wire = _wire(p.Run(job_id="j", seq=1, ts=0.0))
    wire["facts"] = {}
    with pytest.raises(ProtocolError, match="run: unknown field 'facts'"):
        p.decode(_pack(wire))
    # nor inside the nested result
    wire = _sample("hello")
    wire["pending_result"] = {**_BODY_WIRE, "type": "result"}
    with pytest.raises(ProtocolError, match=r"hello\.pending_result: unknown field 'type'"):
        p.decode(_pack(wire))
    # and in a frame large enough to be scanned first, before its value is looked at
    big = _wire(p.Output(job_id="j", channel="stdout", data=b"x" * 4000, offset=0, seq=1, ts=0))
    big["extra"] = 1
    with pytest.raises(ProtocolError, match="unknown field 'extra'"):
        p.decode(_pack(big))
    big = _wire(p.Output(job_id="j", channel="stdout", data=b"x" * 4000, offset=0, seq=1, ts=0))
    big["facts"] = {}
    with pytest.raises(ProtocolError, match="output: unknown field 'facts'"):
        p.decode(_pack(big))


def _junk_frame() -> bytes:
    """A heartbeat carrying 1 MB of junk under an unknown key: 150,000 small lists."""
    wire = _wire(p.Heartbeat(job_id=None, job_state="idle", seq=2, ts=0.0))
    wire["junk"] = [[i] for i in range(150_000)]
    return _pack(wire)


def test_an_unknown_key_is_refused_before_its_value_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _junk_frame()
    assert len(data) > 700_000

    def refused() -> float:
        start = time.perf_counter()
        with pytest.raises(ProtocolError, match="unknown field 'junk'"):
            p.decode(data)
        return time.perf_counter() - start

    def decoded() -> float:
        start = time.perf_counter()
        msgpack.unpackb(data)
        return time.perf_counter() - start

    # refusing it costs a small part of what decoding it costs (the issue: 0.25 s a frame)
    assert min(refused() for _ in range(5)) * 20 < min(decoded() for _ in range(3))
    # nothing of it is decoded at all
    calls: list[int] = []
    real = msgpack.unpackb
    monkeypatch.setattr(msgpack, "unpackb", lambda *a, **k: calls.append(1) or real(*a, **k))
    refused()
    assert calls == []


def test_a_key_that_is_no_short_string_is_refused_before_it_is_decoded() -> None:
    huge_key = b"\x81\xdb" + (1_000_000).to_bytes(4, "big") + b"k" * 1_000_000 + b"\xc0"
    with pytest.raises(ProtocolError, match="undecodable frame: a key is not a string"):
        p.decode(huge_key, max_size=2_000_000)
    many = _pack({f"k{i}": i for i in range(200)})
    with pytest.raises(ProtocolError, match="frame has 200 keys, at most 16"):
        p.decode(many)


def test_integers_accepted_for_float_fields() -> None:
    wire = _wire(SAMPLES[2])
    wire["heartbeat_interval"] = 10
    wire["ts"] = 5
    frame = p.decode(_pack(wire))
    assert isinstance(frame, p.Welcome)
    assert frame.heartbeat_interval == 10.0
    assert isinstance(frame.heartbeat_interval, float)
    assert isinstance(frame.ts, float)


def test_optional_commit_fields_may_be_nil() -> None:
    wire = _wire(SAMPLES[7])
    wire.update(user=None, dir=None, env=None, file=None)
    assert p.decode(_pack(wire)) == SAMPLES[7]


# --- invalid frames -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "undecodable"),
        (b"\xc1", "undecodable"),
        (_pack({"type": "run"}) + b"\x00", "undecodable"),
        (b"\x81\xa4type\xa2\xff\xfe", "undecodable"),  # invalid UTF-8 in a str
        (_pack([1, 2]), "not a map"),
        (_pack("hello"), "not a map"),
        (_pack({"seq": 1}), "no string 'type'"),
        (_pack({"type": 7}), "no string 'type'"),
        (_pack({"type": "bogus", "seq": 1, "ts": 0.0}), "unknown frame type 'bogus'"),
        (_pack({1: 2}), "undecodable"),  # non-string map key
    ],
)
def test_garbage_is_a_protocol_error(data: bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        p.decode(data)


def _nested(levels: int) -> Any:
    """A value nested ``levels`` lists deep."""
    value: Any = "deep"
    for _ in range(levels):
        value = [value]
    return value


def _sample(kind: str) -> dict[str, Any]:
    for frame in SAMPLES:
        if kind == frame.TYPE:
            return _wire(frame)
    raise AssertionError(kind)


BAD_FIELDS: list[tuple[str, str, Any]] = [
    ("run", "seq", True),  # bool is not int
    ("run", "seq", 0),
    ("run", "seq", -3),
    ("run", "seq", "1"),
    ("run", "ts", "now"),
    ("run", "ts", float("nan")),
    ("run", "ts", True),
    ("run", "job_id", b"j-1"),  # bytes where text is expected
    ("run", "job_id", None),
    ("hello", "protocol_version", True),
    ("hello", "protocol_version", 1.0),
    ("hello", "job_state", "sleeping"),
    ("hello", "job_state", None),
    ("hello", "facts", None),
    ("hello", "facts", ["a"]),
    ("hello", "facts", {"k": b"bytes"}),
    ("hello", "facts", {"k": [1, {"deep": b"bytes"}]}),
    ("hello", "facts", {"k": _nested(34)}),
    ("hello", "facts", {"k": "x" * 65_536}),
    ("hello", "facts", {"k": float("inf")}),
    ("hello", "facts", {"k": [0.5, float("nan")]}),
    ("facts", "facts", None),
    ("facts", "facts", [{"k": 1}]),
    ("facts", "facts", {"k": {"a": [1, 2, {"b": float("-inf")}]}}),
    ("hello", "pending_result", "done"),
    ("hello", "pending_result", {"job_id": "j"}),
    ("hello", "pending_result", {**_BODY_WIRE, "status": "exploded"}),
    ("hello", "pending_result", {**_BODY_WIRE, "stdout_bytes": -1}),
    ("hello", "pending_result", {**_BODY_WIRE, "truncated": 1}),
    ("welcome", "heartbeat_interval", -1.0),
    ("welcome", "offline_threshold", 0),
    ("welcome", "max_output_bytes", 2.5),
    ("heartbeat", "job_state", "busy"),
    ("heartbeat", "server_incarnation_id", 3),
    ("commit", "env", {"A": 1}),
    ("commit", "env", ["A=1"]),
    ("commit", "capture", "yes"),
    ("commit", "capture", 1),
    ("commit", "run_timeout", "60"),
    ("commit", "file", b"raw:x"),
    ("nack_commit", "reason", "because"),
    ("nack_run", "reason", 5),
    ("output", "channel", "stdin"),
    ("output", "data", "text"),
    ("output", "offset", -1),
    ("output", "offset", False),
    ("result", "status", "ok"),
    ("result", "exit_code", "0"),
    ("result", "exit_code", False),
    ("result", "signal", 9.0),
    ("result", "duration_s", None),
    ("aborted", "job_id", 1),
]


@pytest.mark.parametrize(("kind", "field", "value"), BAD_FIELDS)
def test_wrong_field_value_names_type_and_field(kind: str, field: str, value: Any) -> None:
    wire = _sample(kind)
    wire[field] = value
    with pytest.raises(ProtocolError) as info:
        p.decode(_pack(wire))
    assert f"{kind}.{field}" in str(info.value)
    assert info.value.reason == str(info.value)


def test_facts_may_nest_to_the_depth_limit_and_fill_the_size_limit() -> None:
    """Nested maps and lists are facts (``[facts.attributes]``), up to ``MAX_FACTS_DEPTH``
    levels and ``facts.MAX_FACTS_BYTES`` encoded; one level or one byte more is refused."""
    deep: Any = "leaf"
    for _ in range(p.MAX_FACTS_DEPTH):
        deep = [deep]
    frame = p.Facts(facts={"k": deep}, seq=1, ts=1.0)
    assert p.decode(p.encode(frame)) == frame
    with pytest.raises(ProtocolError, match=r"facts\.facts\.k.*nested deeper than 32"):
        p.decode(p.encode(p.Facts(facts={"k": [deep]}, seq=1, ts=1.0)))
    overhead = len(msgpack.packb({"k": ""}))
    fits = {"k": "x" * (MAX_FACTS_BYTES - overhead - 2)}  # a str 8 header is 2 bytes longer
    assert len(msgpack.packb(fits)) == MAX_FACTS_BYTES
    assert p.decode(p.encode(p.Facts(facts=fits, seq=1, ts=1.0))).facts == fits
    over = {"k": fits["k"] + "x"}
    with pytest.raises(ProtocolError, match=r"facts\.facts: 65537 bytes encoded, at most 65536"):
        p.decode(p.encode(p.Facts(facts=over, seq=1, ts=1.0)))


def test_nested_error_names_the_nested_field() -> None:
    wire = _sample("hello")
    wire["pending_result"] = {**_BODY_WIRE, "status": "exploded"}
    with pytest.raises(ProtocolError, match=r"hello\.pending_result\.status"):
        p.decode(_pack(wire))


# --- limits ---------------------------------------------------------------------------------

_FRAME_BOUNDED = {("output", "data"), ("commit", "file"), ("commit", "env")}
"""The fields bounded by the frame cap alone: a job's payload."""


def test_every_field_of_every_frame_has_a_limit() -> None:
    for kind, cls in p.FRAME_TYPES.items():
        for spec in p._frames.SPECS[cls]:
            if (kind, spec.name) in _FRAME_BOUNDED:
                assert spec.max_bytes is None, (kind, spec.name)
            else:
                assert spec.max_bytes is not None, (kind, spec.name)
                assert spec.max_bytes <= 65_540, (kind, spec.name)
    for spec in p._frames.SPECS[p.ResultBody]:
        assert spec.max_bytes is not None and spec.max_bytes <= 100, spec.name


def test_the_limits_take_what_the_api_and_the_agent_send() -> None:
    from pushy_appliance.jobs import validation

    assert p.MAX_COMMAND_BYTES >= validation.MAX_COMMAND_BYTES
    assert p.MAX_DIR_BYTES >= validation.MAX_DIR_BYTES
    assert p.MAX_USER_BYTES >= 4 * validation.MAX_USER_CHARS
    assert p.MAX_ID_BYTES >= 36  # a job id is 32 hex digits, an incarnation a UUID
    assert len("0.1.0.dev123+g0123456789ab.d20260101") <= p.MAX_AGENT_VERSION_BYTES


_LONG = "é" * 40  # 80 bytes, 40 characters


OVER_LIMITS: list[tuple[str, str, Any, str]] = [
    ("hello", "incarnation_id", "i" * 65, "longer than 64 bytes"),
    ("hello", "incarnation_id", _LONG, "longer than 64 bytes"),
    ("hello", "agent_version", "v" * 65, "longer than 64 bytes"),
    ("hello", "job_id", "j" * 65, "longer than 64 bytes"),
    ("welcome", "server_incarnation_id", "s" * 65, "longer than 64 bytes"),
    ("heartbeat", "job_id", "j" * 65, "longer than 64 bytes"),
    ("run", "job_id", "j" * 65, "longer than 64 bytes"),
    ("commit", "command", "c" * 4097, "longer than 4096 bytes"),
    ("commit", "user", "u" * 257, "longer than 256 bytes"),
    ("commit", "dir", "d" * 4097, "longer than 4096 bytes"),
    ("nack_run", "reason", "r" * 1025, "longer than 1024 bytes"),
    ("result", "job_id", "j" * 65, "longer than 64 bytes"),
    ("aborted", "job_id", "j" * 65, "longer than 64 bytes"),
]


@pytest.mark.parametrize(
    ("kind", "field", "value", "needle"),
    OVER_LIMITS,
    ids=[f"{k}.{f}-{len(v)}" for k, f, v, _ in OVER_LIMITS],
)
def test_a_field_over_its_limit_is_refused(kind: str, field: str, value: Any, needle: str) -> None:
    wire = _sample(kind)
    at_limit = value[:-1] if value != _LONG else "é" * 32
    wire[field] = at_limit
    assert getattr(p.decode(_pack(wire)), field) == at_limit
    wire[field] = value
    with pytest.raises(ProtocolError, match=f"{kind}.{field}") as info:
        p.decode(_pack(wire))
    data = _pack(wire)
    if len(data) > p.SCAN_ABOVE:  # refused by its size before it is decoded
        assert "bytes encoded, at most" in str(info.value) or needle in str(info.value)
    else:
        assert needle in str(info.value)
    assert len(str(info.value)) < 200  # the message never holds the field in full


def test_a_hello_of_450_kb_fields_is_refused_by_their_size() -> None:
    wire = _sample("hello")
    wire["agent_version"] = "v" * 450_000
    wire["incarnation_id"] = "i" * 450_000
    with pytest.raises(ProtocolError, match=r"hello\.\w+: 450005 bytes encoded, at most"):
        p.decode(_pack(wire))
    wire = _sample("hello")
    wire["pending_result"] = {**_BODY_WIRE, "job_id": "j" * 2000}
    with pytest.raises(
        ProtocolError, match=r"hello\.pending_result: \d+ bytes encoded, at most 1024"
    ):
        p.decode(_pack(wire))


def _facts_of(size: int) -> dict[str, Any]:
    """Flat facts whose msgpack encoding is exactly ``size`` bytes."""
    from pushy_appliance.facts import encoded_size

    facts = {f"k{i:02}": "x" * 1020 for i in range(64)}
    facts["k63"] = "x" * (1020 - (encoded_size(facts) - size))
    assert encoded_size(facts) == size
    return facts


def test_facts_up_to_the_facts_limit_pass() -> None:
    from pushy_appliance.facts import MAX_FACTS_BYTES

    wire = _sample("hello")
    wire["facts"] = _facts_of(MAX_FACTS_BYTES)
    assert isinstance(p.decode(_pack(wire)), p.Hello)
    wire["facts"] = _facts_of(MAX_FACTS_BYTES + 1)
    with pytest.raises(ProtocolError, match=r"hello\.facts: 65537 bytes encoded, at most 65536"):
        p.decode(_pack(wire))


def test_payload_fields_take_up_to_the_frame_cap() -> None:
    for frame in (
        p.Output(job_id="j", channel="stdout", data=b"x" * 1_000_000, offset=0, seq=1, ts=0.0),
        p.Commit(
            job_id="j",
            command="x",
            env={f"V{i}": "v" * 100 for i in range(5000)},
            file="raw:" + "f" * 400_000,
            capture=True,
            run_timeout=1.0,
            seq=1,
            ts=0.0,
        ),
    ):
        assert p.decode(p.encode(frame)) == frame


REQUIRED = [
    (frame.TYPE, f.name)
    for frame in SAMPLES
    for f in dataclasses.fields(frame)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
]


@pytest.mark.parametrize(("kind", "field"), sorted(set(REQUIRED)))
def test_missing_required_field(kind: str, field: str) -> None:
    wire = _sample(kind)
    del wire[field]
    with pytest.raises(ProtocolError, match=f"{kind}: missing field '{field}'"):
        p.decode(_pack(wire))


def test_required_fields_cover_envelope_and_nullable_fields() -> None:
    assert ("hello", "job_id") in REQUIRED
    assert ("hello", "pending_result") in REQUIRED
    assert ("aborted", "job_id") in REQUIRED
    assert ("abort", "job_id") not in REQUIRED
    assert all((t, "seq") in REQUIRED and (t, "ts") in REQUIRED for t in p.FRAME_TYPES)


def test_size_cap() -> None:
    frame = p.Output(job_id="j", channel="stdout", data=b"x" * 2000, offset=0, seq=1, ts=0.0)
    data = p.encode(frame)
    assert p.decode(data, max_size=len(data)) == frame
    with pytest.raises(FrameTooLargeError) as info:
        p.decode(data, max_size=len(data) - 1)
    assert info.value.size == len(data)
    assert info.value.limit == len(data) - 1
    assert isinstance(info.value, ProtocolError)


def test_default_size_cap_is_one_mebibyte() -> None:
    big = p.Output(job_id="j", channel="stdout", data=b"x" * 1_048_576, offset=0, seq=1, ts=0.0)
    with pytest.raises(FrameTooLargeError):
        p.decode(p.encode(big))


# --- fuzz -----------------------------------------------------------------------------------


def _decode_only_protocol_errors(data: bytes) -> None:
    try:
        frame = p.decode(data)
    except ProtocolError:
        return
    assert type(frame) in p.FRAME_TYPES.values()
    # whatever decodes re-encodes to something that decodes to the same frame
    assert p.decode(p.encode(frame)) == frame


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_only_protocol_errors(data)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from(
    sorted(
        {f.name for cls in (p.ResultBody, *p.FRAME_TYPES.values()) for f in dataclasses.fields(cls)}
    )
)


@st.composite
def _frame_like_maps(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(p.FRAME_TYPES)) | st.text(max_size=8))
    base: dict[str, Any] = {"type": kind}
    if kind in p.FRAME_TYPES and draw(st.booleans()):
        base = _sample(kind)
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        name = draw(_field_names | st.text(max_size=6))
        if draw(st.booleans()) and name in base:
            del base[name]
        else:
            base[name] = draw(_values)
    return base


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(_frame_like_maps())
def test_fuzz_random_maps(obj: dict[str, Any]) -> None:
    _decode_only_protocol_errors(_pack(obj))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(st.text(max_size=10), _values, max_size=6))
def test_fuzz_arbitrary_maps(obj: dict[str, Any]) -> None:
    _decode_only_protocol_errors(_pack(obj))


def test_deeply_nested_input() -> None:
    with pytest.raises(ProtocolError):
        p.decode(b"\x91" * 100_000 + b"\xc0")


# --- sequence numbers -----------------------------------------------------------------------


def test_sequencer() -> None:
    seqs = p.Sequencer()
    assert seqs.last == 0
    assert [seqs.next() for _ in range(4)] == [1, 2, 3, 4]
    assert seqs.last == 4


def test_seq_tracker() -> None:
    tracker = p.SeqTracker()
    assert tracker.check(0) is False  # the first frame is seq 1 or more
    assert tracker.check(1) is True
    assert tracker.check(1) is False  # replay
    assert tracker.check(3) is True  # gaps are fine
    assert tracker.check(2) is False  # out of order
    assert tracker.check(4) is True
    assert tracker.last == 4


# --- the server heartbeat template ----------------------------------------------------------


@pytest.mark.parametrize("seq", [1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
def test_heartbeat_template_matches_encode(seq: int) -> None:
    template = p.encode_heartbeat_template("srv-incarnation")
    data = template.render(seq, 1700000000.25)
    frame = p.Heartbeat(server_incarnation_id="srv-incarnation", seq=seq, ts=1700000000.25)
    assert p.decode(data) == frame
    assert p.decode(data) == p.decode(p.encode(frame))
    # byte-identical up to key order: same length, same map
    assert len(data) == len(p.encode(frame))
    assert msgpack.unpackb(data) == msgpack.unpackb(p.encode(frame))


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    st.text(max_size=p.MAX_ID_BYTES // 4),  # any incarnation id within the limit
    st.integers(min_value=1, max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_heartbeat_template_fuzz(incarnation: str, seq: int, ts: float) -> None:
    data = p.encode_heartbeat_template(incarnation).render(seq, ts)
    assert p.decode(data) == p.Heartbeat(server_incarnation_id=incarnation, seq=seq, ts=ts)
