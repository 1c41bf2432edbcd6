"""Encoding and decoding frames, and the server's heartbeat packed once per tick (pure).

:func:`decode` is the one place where every msgpack failure and every schema violation
becomes :class:`~pushy_appliance.errors.ProtocolError` (whose message names the frame type and
the field), and where a frame over the size cap becomes
:class:`~pushy_appliance.errors.FrameTooLargeError`.

Decoding costs no more than the frame's fields may: a frame of more than
:data:`SCAN_ABOVE` bytes is first *scanned* without building any object (msgpack's
``Unpacker.skip`` walks a value in C): at most :data:`MAX_KEYS` keys, each a string of at most
:data:`MAX_KEY_BYTES` bytes that some frame type has (an unknown key is refused before its
value is looked at), each value's encoded size within its field's limit (``max_bytes``, see
:mod:`._fields`), and nothing after the map. Only then is it decoded. A smaller frame is
decoded at once (its decoding is cheap whatever it holds) and its fields checked as a large
one's are: every limit below :data:`SCAN_ABOVE` bytes is a text's, which its checker
enforces, or a number's, which its type does.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from ..errors import FrameTooLargeError, ProtocolError
from ._fields import show
from ._frames import FRAME_KEYS, FRAME_TYPES, SPECS, Frame, Heartbeat, ResultBody, build

__all__ = [
    "MAX_KEYS",
    "MAX_KEY_BYTES",
    "SCAN_ABOVE",
    "HeartbeatTemplate",
    "decode",
    "decode_message",
    "encode",
    "encode_heartbeat_template",
]

MAX_KEYS = 16
"""Most keys one frame's map may hold (``hello``, the largest, has 10)."""

MAX_KEY_BYTES = 32
"""Longest key of a frame's map, in bytes."""

SCAN_ABOVE = 512
"""Frames larger than this (in bytes) are scanned before they are decoded."""

_MAP_HEADERS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_LIMITS: dict[str, dict[str, int | None]] = {
    kind: {spec.name: spec.max_bytes for spec in SPECS[cls]} for kind, cls in FRAME_TYPES.items()
}


def _plain(frame: Frame | ResultBody) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in SPECS[type(frame)]:
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
    if len(data) > SCAN_ABOVE:
        _scan(data)
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
        raise ProtocolError(f"frame has no string 'type' (got {show(kind)})")
    cls = FRAME_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown frame type {show(kind)}")
    frame: Frame = build(cls, obj, kind)
    return frame


def _str_length(data: bytes, pos: int) -> int | None:
    """The length of the msgpack string whose header is at ``pos``; ``None``: no string."""
    head = data[pos]
    if 0xA0 <= head <= 0xBF:
        return head & 0x1F
    if head == 0xD9:
        return data[pos + 1]
    if head == 0xDA:
        return int.from_bytes(data[pos + 1 : pos + 3], "big")
    if head == 0xDB:
        return int.from_bytes(data[pos + 1 : pos + 5], "big")
    return None


def _scan(data: bytes) -> None:
    """Check a frame's keys and the encoded size of each value without decoding a value
    (``type``'s aside), as the module docstring says.

    Raises:
        ProtocolError: as :func:`decode` would for the same frame, or for a field over its
            limit (naming the frame type and the field).
    """
    if not data or data[0] not in _MAP_HEADERS:
        if data and data[0] != 0xC1:
            raise ProtocolError("frame is not a map")
        raise ProtocolError("undecodable frame: not msgpack")
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(data))
    unpacker.feed(data)
    spans: dict[str, tuple[int, int]] = {}
    try:
        count = unpacker.read_map_header()
        if count > MAX_KEYS:
            raise ProtocolError(f"frame has {count} keys, at most {MAX_KEYS} allowed")
        for _ in range(count):
            at = unpacker.tell()
            length = _str_length(data, at)
            if length is None or length > MAX_KEY_BYTES:
                raise ProtocolError(
                    f"undecodable frame: a key is not a string of at most {MAX_KEY_BYTES} bytes"
                )
            key = unpacker.unpack()
            if key not in FRAME_KEYS:
                raise ProtocolError(f"unknown field {show(key)}")
            if key in spans:
                raise ProtocolError(f"undecodable frame: key {key!r} twice")
            start = unpacker.tell()
            unpacker.skip()
            spans[key] = (start, unpacker.tell())
        if unpacker.tell() != len(data):
            raise ProtocolError("undecodable frame: data after the map")
    except ProtocolError:
        raise
    except Exception as exc:
        # msgpack's OutOfData, FormatError, StackError, UnicodeDecodeError, …
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    where = spans.get("type")
    length = None if where is None else _str_length(data, where[0])
    if where is None or length is None or length > MAX_KEY_BYTES:
        raise ProtocolError("frame has no string 'type'")
    try:
        kind = msgpack.unpackb(data[where[0] : where[1]], raw=False)
    except Exception as exc:
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    limits = _LIMITS.get(kind)
    if limits is None:
        raise ProtocolError(f"unknown frame type {show(kind)}")
    for key, (start, end) in spans.items():
        if key == "type":
            continue
        if key not in limits:
            raise ProtocolError(f"{kind}: unknown field {show(key)}")
        limit = limits[key]
        if limit is not None and end - start > limit:
            raise ProtocolError(
                f"{kind}.{key}: {end - start} bytes encoded, at most {limit} allowed"
            )


def decode_message(message: str | bytes, *, max_size: int = 1_048_576) -> Frame:
    """Decode one WebSocket message, which must be a binary one, into a frame.

    Args:
        message: the message as the WebSocket library hands it over (``str`` for text).
        max_size: the largest acceptable message in bytes.

    Returns:
        The frame, as :func:`decode` returns it.

    Raises:
        ProtocolError: a text message, or whatever :func:`decode` raises.
    """
    if isinstance(message, str):
        raise ProtocolError("text message; frames are binary msgpack")
    return decode(message, max_size=max_size)


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
