"""SSE encoding, timestamps and the incremental parser."""

from __future__ import annotations

import calendar
import itertools
import json
from collections import OrderedDict
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pushy_appliance.sse import (
    KEEPALIVE,
    Event,
    MonotonicStamper,
    SSEParser,
    encode_comment,
    encode_event,
    format_timestamp,
    parse_stream,
)

# --- timestamps -------------------------------------------------------------------------


def test_format_timestamp_exact() -> None:
    t = calendar.timegm((2024, 5, 1, 12, 34, 56)) + 0.000789
    assert format_timestamp(t) == "2024-05-01 12:34:56.000789Z"


def test_format_timestamp_epoch_and_rounding() -> None:
    assert format_timestamp(0.0) == "1970-01-01 00:00:00.000000Z"
    # 0.9999996 s rounds up into the next second rather than printing 1000000 µs.
    assert format_timestamp(59.9999996) == "1970-01-01 00:01:00.000000Z"
    assert format_timestamp(1.0000004) == "1970-01-01 00:00:01.000000Z"


def test_stamper_passes_through_increasing_time() -> None:
    stamper = MonotonicStamper()
    assert stamper.stamp(100.5) == 100.5
    assert stamper.stamp(101.25) == 101.25


def test_stamper_strictly_increases_when_clock_stalls_or_steps_back() -> None:
    stamper = MonotonicStamper()
    base = 1_714_567_890.123456
    times = [base, base, base - 5.0, base + 1e-9, base + 2e-7, base + 0.5, base + 0.5]
    stamps = [stamper.stamp(t) for t in times]
    formatted = [format_timestamp(s) for s in stamps]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert all(a < b for a, b in itertools.pairwise(formatted))
    assert formatted[:5] == [
        "2024-05-01 12:51:30.123456Z",
        "2024-05-01 12:51:30.123457Z",
        "2024-05-01 12:51:30.123458Z",
        "2024-05-01 12:51:30.123459Z",
        "2024-05-01 12:51:30.123460Z",
    ]
    assert formatted[5:] == ["2024-05-01 12:51:30.623456Z", "2024-05-01 12:51:30.623457Z"]


@given(st.lists(st.floats(min_value=0, max_value=4e9), min_size=1, max_size=50))
def test_stamper_formatted_stamps_always_increase(times: list[float]) -> None:
    stamper = MonotonicStamper()
    formatted = [format_timestamp(stamper.stamp(t)) for t in times]
    assert formatted == sorted(set(formatted))
    assert len(formatted) == len(times)


# --- encoding ---------------------------------------------------------------------------


def test_encode_event_exact_bytes() -> None:
    data = {"timestamp": "2024-05-01 12:00:00.000001Z", "node": "dé", "status": "success"}
    assert encode_event("run_complete", "job-7", data) == (
        b"event: run_complete\nid: job-7\n"
        b'data: {"timestamp":"2024-05-01 12:00:00.000001Z","node":"d\xc3\xa9","status":"success"}'
        b"\n\n"
    )


def test_encode_event_keeps_key_order_and_escapes_newlines() -> None:
    data: dict[str, Any] = OrderedDict([("timestamp", "t"), ("z", 1), ("a", "x\ny\r\n")])
    encoded = encode_event("output", "job-2", data)
    assert (
        encoded == b'event: output\nid: job-2\ndata: {"timestamp":"t","z":1,"a":"x\\ny\\r\\n"}\n\n'
    )
    assert encoded.count(b"\n") == 4


def test_encode_event_accepts_any_mapping() -> None:
    class Frozen(dict[str, Any]):
        pass

    proxy = MappingProxyType({"timestamp": "t", "job": "j"})
    assert encode_event("start", "org-1", proxy).endswith(b'data: {"timestamp":"t","job":"j"}\n\n')
    assert encode_event("start", "org-1", Frozen(a=1)).endswith(b'data: {"a":1}\n\n')


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b", "\n"])
def test_encode_event_rejects_line_breaks_in_name_and_id(bad: str) -> None:
    with pytest.raises(ValueError, match="must not contain"):
        encode_event(bad, "job-1", {})
    with pytest.raises(ValueError, match="must not contain"):
        encode_event("start", bad, {})


def test_encode_event_rejects_nan_and_lone_surrogates() -> None:
    with pytest.raises(ValueError):
        encode_event("start", "job-1", {"x": float("nan")})
    with pytest.raises(ValueError):
        encode_event("start", "job-1", {"x": "\udc80"})
    with pytest.raises(TypeError):
        encode_event("start", "job-1", {"x": object()})


def test_comments() -> None:
    assert KEEPALIVE == b":keepalive\n\n"
    assert encode_comment("hello there") == b":hello there\n\n"
    with pytest.raises(ValueError):
        encode_comment("two\nlines")


# --- parser -----------------------------------------------------------------------------

SAMPLE = (
    "\ufeff:keepalive\r\n\r\n"
    "event: start\r\nid: job-1\r\n"
    'data: {"timestamp":"2024-05-01 12:00:00.000001Z","command":"chef-client ✓"}\r\n\r\n'
    "event:quorum_vote\nid:job-2\n"
    'data:{"node":"n1","status":"success"}\n\n'
    "retry: 2500\r"
    "data: line one\r"
    "data: line two\r\r"
    ": a comment\n"
    "id: job-3\n"
    "event: job_complete\n"
    'data: {"status":"complete"}\n\n'
    "event: ignored\nid: job-4\n\n"
    "event: no_blank_line_at_end\ndata: lost\n"
).encode()

EXPECTED = [
    Event(
        name="start",
        id="job-1",
        data={"timestamp": "2024-05-01 12:00:00.000001Z", "command": "chef-client ✓"},
        raw='{"timestamp":"2024-05-01 12:00:00.000001Z","command":"chef-client ✓"}',
    ),
    Event(
        name="quorum_vote",
        id="job-2",
        data={"node": "n1", "status": "success"},
        raw='{"node":"n1","status":"success"}',
    ),
    Event(name="message", id=None, data="line one\nline two", raw="line one\nline two"),
    Event(
        name="job_complete",
        id="job-3",
        data={"status": "complete"},
        raw='{"status":"complete"}',
    ),
]


def test_parse_stream_sample() -> None:
    assert parse_stream(SAMPLE) == EXPECTED


def test_parser_state_after_sample() -> None:
    parser = SSEParser()
    parser.feed(SAMPLE)
    assert parser.comments == 2
    assert parser.retry == 2500
    # An event without data is not dispatched, but its id still counts for resuming.
    assert parser.last_event_id == "job-4"


def test_parser_every_split_point() -> None:
    for cut in range(len(SAMPLE) + 1):
        parser = SSEParser()
        events = parser.feed(SAMPLE[:cut]) + parser.feed(b"") + parser.feed(SAMPLE[cut:])
        assert events == EXPECTED, f"split at byte {cut}"


def test_parser_every_pair_of_split_points() -> None:
    n = len(SAMPLE)
    for first in range(0, n + 1, 3):
        for second in range(first, n + 1, 7):
            parser = SSEParser()
            events = (
                parser.feed(SAMPLE[:first])
                + parser.feed(SAMPLE[first:second])
                + parser.feed(SAMPLE[second:])
            )
            assert events == EXPECTED, f"split at bytes {first}, {second}"


def test_parser_byte_by_byte() -> None:
    parser = SSEParser()
    events: list[Event] = []
    for i in range(len(SAMPLE)):
        events += parser.feed(SAMPLE[i : i + 1])
    assert events == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE)), max_size=12))
def test_parser_arbitrary_chunking(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(SAMPLE)]
    parser = SSEParser()
    events: list[Event] = []
    for start, end in itertools.pairwise(bounds):
        events += parser.feed(SAMPLE[start:end])
    assert events == EXPECTED


def test_parser_cr_at_chunk_end_then_other_byte() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # The CR ended the line; the next byte is not an LF, so it is a line end of its own.
    assert parser.feed(b"\rdata: b\n\n") == [
        Event("message", None, "a", "a"),
        Event("message", None, "b", "b"),
    ]
    assert parser.feed(b"data: c\r") == []
    assert parser.feed(b"\n\n") == [Event("message", None, "c", "c")]


def test_parser_field_edge_cases() -> None:
    stream = (
        b"data\n\n"  # a field name alone: empty data, still dispatched
        b"data:  two spaces\n\n"  # only one leading space is removed
        b"unknown: x\ndata: 1\n\n"  # unknown fields ignored; JSON non-objects stay text
        b"id: a\0b\ndata: {}\n\n"  # an id with NUL is ignored
        b"retry: soon\ndata: []\n\n"  # a non-numeric retry is ignored
    )
    parser = SSEParser()
    assert parser.feed(stream) == [
        Event("message", None, "", ""),
        Event("message", None, " two spaces", " two spaces"),
        Event("message", None, "1", "1"),
        Event("message", None, {}, "{}"),
        Event("message", None, "[]", "[]"),
    ]
    assert parser.retry is None
    assert parser.last_event_id is None


def test_parser_line_limit() -> None:
    parser = SSEParser(max_line=16)
    assert parser.feed(b"data: 0123456789\n") == []
    with pytest.raises(ValueError, match="longer than 16"):
        parser.feed(b"data: 0123456789abcdef")


def test_parser_long_line_in_many_chunks() -> None:
    payload = {"data": "x" * 50_000}
    encoded = encode_event("output", "job-9", payload)
    parser = SSEParser()
    events: list[Event] = []
    for i in range(0, len(encoded), 10):
        events += parser.feed(encoded[i : i + 10])
    assert events == [Event("output", "job-9", payload, json.dumps(payload, separators=(",", ":")))]


_text = st.text(st.characters(codec="utf-8"))
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=10,
)


@given(
    name=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\0:"), min_size=1),
    event_id=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\0")),
    data=st.dictionaries(_text, _json_values, max_size=5),
)
def test_encode_then_parse_round_trips(name: str, event_id: str, data: dict[str, Any]) -> None:
    encoded = encode_event(name, event_id, data)
    [event] = parse_stream(encoded)
    # The SSE rules strip exactly one space after the colon; we always write exactly one.
    assert event.name == name
    assert event.id == event_id
    assert event.data == data
