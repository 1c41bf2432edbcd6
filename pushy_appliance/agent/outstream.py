"""The agent's side of output offsets (``docs/NODE-PROTOCOL.md`` §3): what of a running job's
output each connection has had.

The server takes a job's channel of output only where it continues what it holds: within one
connection the chunks must be exactly contiguous; on a new connection the first chunk may
start over at (or before) what the server holds, which trims what it has. So the agent keeps
the running job's captured output per channel, and per channel the connection its last chunk
went on and how far (:class:`OutputStreams`): the next chunk continues there on the same
connection, and starts over at offset 0, with everything captured so far, on another.
A result the server has not acknowledged goes again whole on every new connection
(:func:`send_whole`).

Cancellation: a chunk is recorded as sent as soon as its send returned, with no checkpoint
in between, and a cancelled send sent nothing; so no chunk goes twice on one connection.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..protocol import Frame, Output
from .executor import OUTPUT_CHUNK

__all__ = ["Link", "OutputStreams", "send_whole"]


class Link(Protocol):
    """The current connection to the server, as the runtime sees it."""

    async def send(self, cls: type[Frame], **fields: Any) -> bool:
        """Queue a frame of type ``cls`` (``seq`` and ``ts`` are filled in).

        Returns:
            ``False`` when the connection is gone (the frame is dropped).
        """
        ...


async def send_whole(link: Link, job_id: str, channel: str, data: bytes) -> None:
    """Send a channel of an ended job's output on ``link``, whole, from offset 0."""
    for offset in range(0, len(data), OUTPUT_CHUNK):
        chunk = data[offset : offset + OUTPUT_CHUNK]
        if not await link.send(Output, job_id=job_id, channel=channel, data=chunk, offset=offset):
            return


class OutputStreams:
    """The running job's output: captured per channel, and what each connection has had."""

    def __init__(self) -> None:
        self._captured: dict[str, bytearray] = {}
        self._sent: dict[str, tuple[Link, int]] = {}

    def capture(self, channel: str, data: bytes, offset: int) -> bytearray:
        """Keep a chunk the executor handed over at ``offset`` (one handed over again, after
        a cancelled hand-over, is kept once); the channel's output so far."""
        captured = self._captured.setdefault(channel, bytearray())
        if offset + len(data) > len(captured):
            captured += data[len(captured) - offset :]
        return captured

    async def send(
        self, link: Link | None, job_id: str, channel: str, data: bytes | bytearray
    ) -> None:
        """Send on ``link`` what it has not had of ``channel`` (whose output so far is
        ``data``): the rest after the last chunk sent on it, or all of it from offset 0 when
        the chunks so far went on another connection. Without a link, nothing (the next
        connection gets it all)."""
        if link is None:
            return
        sent = self._sent.get(channel)
        offset = sent[1] if sent is not None and sent[0] is link else 0
        self._sent[channel] = (link, offset)
        while offset < len(data):
            chunk = bytes(data[offset : offset + OUTPUT_CHUNK])
            if not await link.send(
                Output, job_id=job_id, channel=channel, data=chunk, offset=offset
            ):
                return  # the connection went: the next one gets it all
            offset += len(chunk)
            self._sent[channel] = (link, offset)
