"""The read loop both ends of a node connection share, over a memory channel and the
autojump clock."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from pushy_appliance import protocol
from pushy_appliance.frame_reader import PROTOCOL_ERROR_WINDOW, FrameReader
from pushy_appliance.protocol import Frame

ACCEPTS = (protocol.AckCommit, protocol.Result)


class Peer:
    """The messages a test sends, and the liveness the reader stamps."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[str | bytes](16)
        self.last_received = -1.0

    def frame(self, cls: type[Any], seq: int, **fields: Any) -> None:
        self.send.send_nowait(protocol.encode(cls(seq=seq, ts=0.0, **fields)))

    def raw(self, message: str | bytes) -> None:
        self.send.send_nowait(message)


@asynccontextmanager
async def reading(
    accepts: tuple[type[Frame], ...] = ACCEPTS, max_size: int = 1024
) -> AsyncIterator[tuple[Peer, FrameReader, list[Frame]]]:
    """A reader over a :class:`Peer`, drained into a list by a task; the peer's channel is
    closed on exit and the reading ends with it."""
    peer = Peer()
    seqs = protocol.SeqTracker()
    seqs.check(1)  # the opening frame
    reader = FrameReader(
        peer.receive.receive, peer, who="org/n1", accepts=accepts, seqs=seqs, max_size=max_size
    )
    got: list[Frame] = []

    async def drain() -> None:
        try:
            async for frame in reader:
                got.append(frame)
        except trio.EndOfChannel:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        yield peer, reader, got
        await trio.testing.wait_all_tasks_blocked()
        peer.send.close()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_accepted_frames_in_order_heartbeats_consumed_liveness_stamped(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with reading() as (peer, reader, got):
        await trio.sleep(5)
        peer.frame(protocol.AckCommit, 2, job_id="j")
        peer.frame(protocol.Heartbeat, 3, job_id="j", job_state="committed")
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(2)
        peer.raw(b"garbage")
        await trio.testing.wait_all_tasks_blocked()
        assert peer.last_received == 7.0  # a bad message proves the peer alive too
        peer.frame(protocol.Result, 4, **RESULT)
    assert [(f.TYPE, f.seq) for f in got] == [("ack_commit", 2), ("result", 4)]
    assert not reader.too_many_errors
    (warning,) = warnings(caplog)
    assert warning.startswith("node org/n1: protocol error, frame dropped: undecodable frame")


RESULT: dict[str, Any] = {
    "job_id": "j",
    "status": "succeeded",
    "exit_code": 0,
    "stdout_bytes": 0,
    "stderr_bytes": 0,
    "truncated": False,
    "duration_s": 0.1,
}


async def test_heartbeats_are_yielded_when_accepted(autojump_clock: trio.testing.MockClock) -> None:
    async with reading(accepts=(protocol.Heartbeat, protocol.Commit)) as (peer, _, got):
        peer.frame(protocol.Heartbeat, 2, server_incarnation_id="s")
        peer.frame(protocol.Commit, 3, job_id="j", command="c", capture=False, run_timeout=1)
    assert [f.TYPE for f in got] == ["heartbeat", "commit"]


async def test_stale_seqs_are_dropped_and_logged_but_are_no_protocol_errors(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with reading() as (peer, reader, got):
        peer.frame(protocol.AckCommit, 5, job_id="a")
        for stale in (5, 4, 1, 3):
            peer.frame(protocol.AckCommit, stale, job_id="replay")
        peer.frame(protocol.AckCommit, 6, job_id="b")
    assert [f.job_id for f in got] == ["a", "b"]  # type: ignore[union-attr]
    assert not reader.too_many_errors
    assert warnings(caplog) == [
        f"node org/n1: ack_commit frame with seq {stale} after 5 dropped" for stale in (5, 4, 1, 3)
    ]


async def test_three_protocol_errors_within_a_minute_end_the_reading(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with reading(max_size=64) as (peer, reader, got):
        peer.raw("a text message")
        peer.frame(protocol.Run, 2, job_id="j")  # the wrong direction
        peer.frame(protocol.AckCommit, 3, job_id="kept")
        peer.raw(b"\x00" * 65)  # over the cap
        peer.frame(protocol.AckCommit, 4, job_id="never read")
        await trio.testing.wait_all_tasks_blocked()
        assert reader.too_many_errors
    assert [f.job_id for f in got] == ["kept"]  # type: ignore[union-attr]
    assert warnings(caplog) == [
        "node org/n1: protocol error, frame dropped: text message; frames are binary msgpack",
        "node org/n1: protocol error, frame dropped: unexpected run frame",
        "node org/n1: protocol error, frame dropped: frame of 65 bytes exceeds the 64-byte limit",
        "node org/n1: 3 protocol errors within a minute, closing",
    ]


async def test_protocol_errors_further_apart_than_the_window_are_tolerated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reading() as (peer, reader, got):
        for n in range(6):
            peer.raw(msgpack.packb({"type": "no such type", "seq": 2 + n, "ts": 0.0}))
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(PROTOCOL_ERROR_WINDOW / 2 + 0.5)
        assert not reader.too_many_errors
        peer.frame(protocol.AckCommit, 10, job_id="still read")
    assert [f.job_id for f in got] == ["still read"]  # type: ignore[union-attr]


async def test_whatever_receive_raises_passes_through() -> None:
    class Closed(Exception):
        pass

    async def receive() -> bytes:
        raise Closed

    peer = Peer()
    reader = FrameReader(
        receive, peer, who="n1", accepts=ACCEPTS, seqs=protocol.SeqTracker(), max_size=1024
    )
    with pytest.raises(Closed):
        await reader.__anext__()
    assert peer.last_received == -1.0


def test_every_frame_type_has_one_direction() -> None:
    """``NODES.md`` §2's table: after the opening ``hello``/``welcome``, each type goes one
    way; heartbeats go both ways and are no one's to list."""
    agent = {cls.TYPE for cls in protocol.FROM_AGENT}
    server = {cls.TYPE for cls in protocol.FROM_SERVER}
    assert agent == {
        "ack_commit",
        "nack_commit",
        "ack_run",
        "nack_run",
        "output",
        "result",
        "aborted",
        "facts",
    }
    assert server == {"commit", "run", "result_ack", "abort", "reload"}
    assert agent | server | {"hello", "welcome", "heartbeat"} == set(protocol.FRAME_TYPES)
