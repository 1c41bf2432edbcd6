"""Reading a peer's frames: the one read loop of the node listener and of the agent.

Both ends of a node connection read alike (``NODES.md`` §2). :class:`FrameReader` is an
async iterator over the frames the caller should act on; for every message it receives it

1. notes the time on the caller's :class:`Liveness` (any message proves the peer alive);
2. decodes it (:func:`~pushy_appliance.protocol.decode_message`: a text message, a frame over
   the size cap or one that breaks the schema is a *protocol error*);
3. drops, with a warning, a frame whose ``seq`` is not above the last one accepted (a replay
   is no protocol error);
4. drops a heartbeat, whose work (step 1) is done, unless the caller accepts heartbeats;
5. treats a frame type the peer must not send as a protocol error;
6. yields the rest.

A protocol error is logged with the node name and the frame dropped. The
:data:`PROTOCOL_ERRORS_ALLOWED`-th within :data:`PROTOCOL_ERROR_WINDOW` seconds ends the
iteration (logged): the caller then closes the connection with 1008. A frame the caller finds
wrong once it acts on it (an ``output`` chunk that leaves a gap) is counted the same way
through :meth:`FrameReader.protocol_error`. Whatever the receive
function raises (the connection closed) passes through.

Cancellation: iteration stops at the receive; nothing is lost but the message in flight.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from . import protocol
from .errors import ProtocolError
from .protocol import Frame

__all__ = [
    "PROTOCOL_ERRORS_ALLOWED",
    "PROTOCOL_ERROR_WINDOW",
    "FrameReader",
    "Liveness",
]

log = logging.getLogger(__name__)

PROTOCOL_ERRORS_ALLOWED = 3
"""Protocol errors within the window that end the reading."""

PROTOCOL_ERROR_WINDOW = 60.0
"""Seconds over which protocol errors are counted."""


class Liveness(Protocol):
    """Whatever keeps the time the peer was last heard from (``trio.current_time()``)."""

    last_received: float


class FrameReader:
    """The frames of one connection, read as the module docstring says.

    Args:
        receive: returns the next WebSocket message (``str`` for text, ``bytes`` for binary).
        liveness: gets ``last_received`` set at every message.
        who: the node's name for the log (``ORG/NODE`` on the server, ``NODE`` on the agent).
        accepts: the frame classes the peer may send besides ``hello``/``welcome`` (which only
            open a connection); a :class:`~pushy_appliance.protocol.Heartbeat` listed here is
            yielded, otherwise it is consumed silently.
        seqs: the connection's tracker, which has seen the opening frame.
        max_size: the largest acceptable message in bytes.

    Attributes:
        too_many_errors: whether the iteration ended on protocol errors.
    """

    # The server keeps one per node connection: slots, and no error deque until an error.
    __slots__ = (
        "_accepts",
        "_errors",
        "_liveness",
        "_max_size",
        "_receive",
        "_seqs",
        "_who",
        "too_many_errors",
    )

    def __init__(
        self,
        receive: Callable[[], Awaitable[str | bytes]],
        liveness: Liveness,
        *,
        who: str,
        accepts: tuple[type[Frame], ...],
        seqs: protocol.SeqTracker,
        max_size: int,
    ) -> None:
        self._receive = receive
        self._liveness = liveness
        self._who = who
        self._accepts = accepts
        self._seqs = seqs
        self._max_size = max_size
        self._errors: deque[float] | None = None
        self.too_many_errors = False

    def __aiter__(self) -> FrameReader:
        return self

    async def __anext__(self) -> Frame:
        """The next frame to act on.

        Raises:
            StopAsyncIteration: after too many protocol errors.
            Exception: whatever ``receive`` raises.
        """
        while not self.too_many_errors:
            message = await self._receive()
            self._liveness.last_received = trio.current_time()
            try:
                frame = protocol.decode_message(message, max_size=self._max_size)
            except ProtocolError as exc:
                self.protocol_error(exc)
                continue
            if not self._seqs.check(frame.seq):
                log.warning(
                    "node %s: %s frame with seq %d after %d dropped",
                    self._who,
                    frame.TYPE,
                    frame.seq,
                    self._seqs.last,
                )
                continue
            if isinstance(frame, self._accepts):
                return frame
            if not isinstance(frame, protocol.Heartbeat):
                self.protocol_error(ProtocolError(f"unexpected {frame.TYPE} frame"))
        raise StopAsyncIteration

    def protocol_error(self, exc: ProtocolError) -> None:
        """Count a protocol error (logged; the frame is dropped): the
        :data:`PROTOCOL_ERRORS_ALLOWED`-th within the window ends the iteration."""
        now = trio.current_time()
        errors = self._errors = self._errors if self._errors is not None else deque()
        errors.append(now)
        while errors and now - errors[0] > PROTOCOL_ERROR_WINDOW:
            errors.popleft()
        log.warning("node %s: protocol error, frame dropped: %s", self._who, exc.reason)
        if len(errors) >= PROTOCOL_ERRORS_ALLOWED:
            log.warning(
                "node %s: %d protocol errors within a minute, closing", self._who, len(errors)
            )
            self.too_many_errors = True
