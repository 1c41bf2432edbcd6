"""Server-sent events: encoding the feeds, timestamps, and a small incremental parser.

The wire format of one event (API.md §3, "Event feeds")::

    event: NAME\\n
    id: ID\\n
    data: {"timestamp":"2024-05-01 12:00:00.000001Z",...}\\n
    \\n

``data`` is compact JSON on a single line (JSON escapes every CR and LF inside strings, so it
can never span lines). A comment line (``:keepalive``) keeps idle connections open.

The parser follows the WHATWG "event stream interpretation" rules closely enough for our own
feeds and for well-behaved third-party servers: LF, CRLF and lone CR line endings, comments,
multi-line ``data``, a leading byte-order mark, and chunks split at any byte.

This module is pure: no I/O, no trio.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "KEEPALIVE",
    "Event",
    "MonotonicStamper",
    "SSEParser",
    "encode_comment",
    "encode_event",
    "format_timestamp",
    "parse_stream",
]

_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROS: Final = 1_000_000


def _to_micros(t: float) -> int:
    # Rounding (not truncation) makes ``_to_micros(m / 1e6) == m`` for every integer m in
    # the range of real clocks, so stamps quantized by MonotonicStamper format back exactly.
    return round(t * _MICROS)


def format_timestamp(t: float) -> str:
    """Format a POSIX time as the feeds' UTC timestamp, rounded to the microsecond.

    Args:
        t: seconds since the epoch.

    Returns:
        ``YYYY-MM-DD HH:MM:SS.ffffffZ``, e.g. ``2024-05-01 12:00:00.000001Z``.
    """
    seconds, micros = divmod(_to_micros(t), _MICROS)
    moment = _EPOCH + datetime.timedelta(seconds=seconds)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{micros:06d}Z"


class MonotonicStamper:
    """Hands out strictly increasing timestamps, even when the wall clock stalls or steps back.

    Stamps are whole microseconds (the resolution of :func:`format_timestamp`), so not only
    the returned floats but also their formatted strings strictly increase.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def stamp(self, now: float) -> float:
        """Return ``now`` rounded to the microsecond, or one microsecond past the last stamp.

        Args:
            now: the current wall-clock time, seconds since the epoch.

        Returns:
            A time strictly greater than every earlier stamp of this stamper.
        """
        micros = _to_micros(now)
        if self._last is not None and micros <= self._last:
            micros = self._last + 1
        self._last = micros
        return micros / _MICROS


def _check_field(what: str, value: str) -> None:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"SSE {what} must not contain CR, LF or NUL: {value!r}")


def encode_event(name: str, event_id: str | None, data: Mapping[str, Any]) -> bytes:
    """Encode one event as UTF-8 bytes, ready to write to the response.

    Args:
        name: the event type (``start``, ``job_complete``, …).
        event_id: the event id (``job-3``, ``org-12``); ``None`` for an event without one
            (a client's last event id, what it resumes from, stays as it was).
        data: the payload; encoded as compact JSON with its key order kept (putting
            ``timestamp`` first is the caller's job) and non-ASCII text kept as UTF-8.

    Returns:
        ``event: NAME\\nid: ID\\ndata: JSON\\n\\n`` (without the ``id:`` line when
        ``event_id`` is ``None``).

    Raises:
        ValueError: ``name`` or ``event_id`` contains CR, LF or NUL; ``data`` holds a NaN or
            infinity, or a string with a lone surrogate (``UnicodeEncodeError``).
        TypeError: ``data`` holds a value JSON cannot represent.
    """
    _check_field("event name", name)
    if event_id is not None:
        _check_field("event id", event_id)
    obj = data if isinstance(data, dict) else dict(data)
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    id_line = "" if event_id is None else f"id: {event_id}\n"
    return f"event: {name}\n{id_line}data: {payload}\n\n".encode()


def encode_comment(text: str) -> bytes:
    """Encode a comment line, which clients ignore (used as a keep-alive).

    Args:
        text: the comment text.

    Returns:
        ``:TEXT\\n\\n``.

    Raises:
        ValueError: ``text`` contains CR, LF or NUL.
    """
    _check_field("comment", text)
    return f":{text}\n\n".encode()


KEEPALIVE: Final = encode_comment("keepalive")
"""The keep-alive comment a feed sends after a stretch of silence."""


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event.

    Attributes:
        name: the ``event`` field, ``message`` when the event had none.
        id: the ``id`` field of this event, ``None`` when it had none.
        data: the data parsed as JSON when it is a JSON object, else the raw text.
        raw: the data text exactly as received (lines joined with LF).
    """

    name: str
    id: str | None
    data: dict[str, Any] | str
    raw: str


_LINE_END: Final = re.compile(rb"[\r\n]")
_BOM: Final = "\ufeff"


class SSEParser:
    """Incremental event-stream parser: feed it bytes as they arrive, get whole events back.

    Chunks may be split anywhere, including inside a multi-byte character or between the CR
    and LF of a CRLF. An event still incomplete when the stream ends is never returned, as
    the SSE rules require.

    Attributes:
        last_event_id: the most recent ``id`` seen, for a ``Last-Event-ID`` resume.
        comments: how many comment lines (keep-alives) were seen.
        retry: the last valid ``retry`` field in milliseconds, or ``None``.
    """

    def __init__(self, *, max_line: int = 64 * 1024 * 1024) -> None:
        """Create a parser.

        Args:
            max_line: the longest line, in bytes, the parser will buffer.
        """
        self.max_line = max_line
        self.last_event_id: str | None = None
        self.comments = 0
        self.retry: int | None = None
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already known to hold no line ending
        self._skip_lf = False
        self._first_line = True
        self._name: str | None = None
        self._id: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        """Consume bytes and return the events they complete.

        Args:
            chunk: the next bytes of the stream (may be empty).

        Returns:
            The events completed by this chunk, in stream order.

        Raises:
            ValueError: a line grew beyond ``max_line`` bytes.
        """
        events: list[Event] = []
        buf = self._buffer
        buf += chunk
        pos = 0
        if self._skip_lf and buf:
            # The previous chunk ended in CR; a leading LF completes that CRLF.
            self._skip_lf = False
            if buf[0] == 0x0A:
                pos = 1
        search_from = max(pos, self._scanned)
        while True:
            match = _LINE_END.search(buf, search_from)
            if match is None:
                break
            end = match.start()
            line = bytes(buf[pos:end])
            if buf[end] == 0x0D:
                if end + 1 < len(buf):
                    pos = end + 2 if buf[end + 1] == 0x0A else end + 1
                else:
                    pos = end + 1
                    self._skip_lf = True
            else:
                pos = end + 1
            search_from = pos
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        del buf[:pos]
        self._scanned = len(buf)
        if len(buf) > self.max_line:
            raise ValueError(f"SSE line longer than {self.max_line} bytes")
        return events

    def _line(self, line: str) -> Event | None:
        if self._first_line:
            self._first_line = False
            line = line.removeprefix(_BOM)
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self._id = value
                self.last_event_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        name, event_id, data = self._name, self._id, self._data
        self._name, self._id, self._data = None, None, []
        if not data:
            return None
        raw = "\n".join(data)
        parsed: dict[str, Any] | str = raw
        try:
            decoded = json.loads(raw)
        except ValueError:
            pass
        else:
            if isinstance(decoded, dict):
                parsed = decoded
        return Event(name=name or "message", id=event_id, data=parsed, raw=raw)


def parse_stream(data: bytes) -> list[Event]:
    """Parse a complete event stream.

    Args:
        data: the whole body of a feed response.

    Returns:
        Every complete event, in order; a trailing incomplete event is dropped.

    Raises:
        ValueError: a line is longer than the parser's default limit.
    """
    return SSEParser().feed(data)
