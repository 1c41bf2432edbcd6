"""Encoding and decoding frames, and the server's heartbeat packed once per tick (pure).

:func:`decode` is the one place where every msgpack failure and every schema violation
becomes :class:`~pushy_appliance.errors.ProtocolError` (whose message names the frame type and
the field), and where a frame over the size cap becomes
:class:`~pushy_appliance.errors.FrameTooLargeError`.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from ..errors import FrameTooLargeError, ProtocolError
from ._fields import show
from ._frames import FRAME_TYPES, SPECS, Frame, Heartbeat, ResultBody, build

__all__ = ["HeartbeatTemplate", "decode", "decode_message", "encode", "encode_heartbeat_template"]


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
