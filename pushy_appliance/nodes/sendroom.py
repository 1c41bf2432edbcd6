"""A node socket's send buffer, and whether a frame fits in it now.

The registry writes a frame to a node directly (from the ticker or a job's task) only when
the write cannot block (:meth:`.registry.NodeSession.send_now`). :class:`SendRoom` answers
that for one TCP socket: the bytes the kernel still holds for it (``SIOCOUTQ``, spelled
``TIOCOUTQ`` in :mod:`termios`) plus the frame, with a margin for WebSocket and TLS framing,
must fit in half the socket's send buffer (Linux reports ``SO_SNDBUF`` doubled, for its
bookkeeping, and keeps about that much payload). The room found is kept as a *credit*: the
frames written directly after it are taken from it with no system call (acknowledgements
only ever add room), so a node that gets a heartbeat a second is asked again once in
thousands of frames; a frame that does not fit asks the kernel again (about half a
microsecond, and the buffer size is read again then: the kernel grows an autotuned buffer as
the connection warms up). Bytes that reach the socket another way (the node's writer) void
the credit (:meth:`SendRoom.forget`).

:func:`set_send_buffer` fixes a socket's send buffer (``limits.node_send_buffer``): the
kernel then keeps that much and no more for a node that stopped reading, as on a real
network with little buffering. Tests use it to make a stall happen on loopback, where an
autotuned buffer takes megabytes.
"""

from __future__ import annotations

import array
import fcntl
import socket
import termios
from typing import Final

import trio

__all__ = ["FRAME_MARGIN", "SendRoom", "set_send_buffer", "tcp_socket"]

FRAME_MARGIN: Final = 512
"""Bytes added to a frame for its WebSocket header and TLS record overhead (plus 1/64)."""

_OUTQ: Final[int | None] = getattr(termios, "TIOCOUTQ", None)
"""The ``ioctl`` that reads a socket's unsent and unacknowledged bytes (Linux)."""


def tcp_socket(stream: object) -> trio.socket.SocketType | None:
    """The TCP socket under a stream (through TLS: ``SSLStream.transport_stream``), if any."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        return stream.socket
    return None


def set_send_buffer(sock: trio.socket.SocketType, size: int) -> None:
    """Fix the socket's send buffer to ``size`` bytes (the kernel doubles it, and turns off
    its autotuning for this socket)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


class SendRoom:
    """The room probe of one TCP socket: ``probe(n)`` tells whether ``n`` bytes can be
    written now without waiting.

    Args:
        sock: the connected socket.
        request: the ``ioctl`` request that reads its send queue (:func:`of` finds it).
    """

    __slots__ = ("_capacity", "_credit", "_queued", "_request", "_sock")

    def __init__(self, sock: trio.socket.SocketType, request: int) -> None:
        self._sock = sock
        self._request = request
        self._queued = array.array("i", [0])
        self._capacity = self._read_capacity()
        self._credit = 0
        """Bytes known to fit without asking the kernel (what its last answer left)."""

    @classmethod
    def of(cls, sock: trio.socket.SocketType) -> SendRoom | None:
        """The probe of ``sock``; ``None`` where the kernel's send queue cannot be read."""
        if _OUTQ is None:
            return None
        return cls(sock, _OUTQ)

    def _read_capacity(self) -> int:
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2

    def __call__(self, size: int) -> bool:
        """Whether ``size`` bytes can be written now; if so, they are taken from the credit
        (the caller writes them)."""
        need = size + size // 64 + FRAME_MARGIN
        if need <= self._credit:
            self._credit -= need
            return True
        try:
            fcntl.ioctl(self._sock.fileno(), self._request, self._queued, True)
        except (OSError, ValueError):
            self._credit = 0
            return False  # closed: queue it, the writer finds out
        room = self._capacity - self._queued[0]
        if need > room:
            self._capacity = self._read_capacity()
            room = self._capacity - self._queued[0]
        if need > room:
            self._credit = 0
            return False
        self._credit = room - need
        return True

    def forget(self) -> None:
        """Bytes reached the socket without :meth:`__call__` (queued frames, written by the
        node's writer): ask the kernel next time."""
        self._credit = 0
