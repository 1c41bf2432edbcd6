"""How frames leave a node session: direct writes when nothing is queued, the outbox and its
writer otherwise, in ``seq`` order either way, and a stalled write closing the node as stuck.
On trio's autojump clock, with a recording sender in place of the WebSocket."""

from __future__ import annotations

import fcntl
import socket
from typing import Any

import pytest
import trio
import trio.testing

from pushy_appliance import protocol
from pushy_appliance.nodes.registry import (
    CLOSE_STUCK,
    DIRECT_SEND_TIMEOUT,
)
from pushy_appliance.nodes.sendroom import SendRoom

from helpers import idle_hello, memory_registry


class Wire:
    """A sender that records frames; ``gate`` (when set) holds every write until opened."""

    def __init__(self) -> None:
        self.frames: list[protocol.Frame] = []
        self.gate: trio.Event | None = None
        self.open = True
        self.calls = 0

    async def send(self, data: bytes) -> bool:
        self.calls += 1
        frame = protocol.decode(data)  # framed when called, like the WebSocket layer
        if self.gate is not None:
            await self.gate.wait()
        await trio.lowlevel.checkpoint()
        if not self.open:
            return False
        self.frames.append(frame)
        return True


async def test_direct_sends_and_queued_frames_keep_seq_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_registry(interval=10.0, offline_threshold=3) as registry:
        wire = Wire()
        session, outbox = registry.open_session(
            "o", "n", idle_hello(), lambda code, reason: None, wire.send
        )
        async with trio.open_nursery() as nursery:
            # a direct send with nothing queued goes straight to the wire
            assert await session.send_now(protocol.encode(_beat(session.next_seq())))
            assert outbox.statistics().current_buffer_used == 0
            # queued frames (no writer running yet) make the next direct send queue behind them
            assert session.send(protocol.Reload)
            assert session.send(protocol.Reload)
            assert await session.send_now(protocol.encode(_beat(session.next_seq())))
            assert outbox.statistics().current_buffer_used == 3
            nursery.start_soon(session.run_writer, outbox)
            await trio.sleep(1)
            # drained: direct again
            calls = wire.calls
            assert await session.send_now(protocol.encode(_beat(session.next_seq())))
            assert wire.calls == calls + 1
            assert outbox.statistics().current_buffer_used == 0
            nursery.cancel_scope.cancel()
        assert [f.TYPE for f in wire.frames] == [
            "heartbeat",
            "reload",
            "reload",
            "heartbeat",
            "heartbeat",
        ]
        assert [f.seq for f in wire.frames] == [1, 2, 3, 4, 5]


async def test_a_stalled_direct_send_closes_the_node_as_stuck(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_registry(interval=10.0, offline_threshold=3) as registry:
        wire = Wire()
        wire.gate = trio.Event()
        closed: list[int] = []
        session, _ = registry.open_session(
            "o", "n", idle_hello(), lambda code, reason: closed.append(code), wire.send
        )
        started = trio.current_time()
        assert not await session.send_now(protocol.encode(_beat(session.next_seq())))
        assert trio.current_time() - started == DIRECT_SEND_TIMEOUT
        assert closed == [CLOSE_STUCK]
        assert registry.statistics().dropped_stuck == 1
        # a closing session sends nothing more
        assert not await session.send_now(protocol.encode(_beat(session.next_seq())))
        assert wire.calls == 1


async def test_a_closed_connection_fails_the_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_registry(interval=10.0, offline_threshold=3) as registry:
        wire = Wire()
        wire.open = False
        session, _ = registry.open_session(
            "o", "n", idle_hello(), lambda code, reason: None, wire.send
        )
        assert not await session.send_now(protocol.encode(_beat(session.next_seq())))


async def test_the_ticker_writes_heartbeats_directly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_registry(interval=10.0, offline_threshold=3) as registry:
        wires = {f"n{i}": Wire() for i in range(50)}
        outboxes = []
        for name, wire in wires.items():
            _, outbox = registry.open_session(
                "o", name, idle_hello(), lambda code, reason: None, wire.send
            )
            outboxes.append(outbox)
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)

            async def agents() -> None:
                while True:
                    for s in registry.sessions.values():
                        s.last_received = trio.current_time()
                    await trio.sleep(5)

            nursery.start_soon(agents)
            await trio.sleep(35)
            nursery.cancel_scope.cancel()
        for wire in wires.values():
            assert [f.TYPE for f in wire.frames] == ["heartbeat"] * 3
            assert [f.seq for f in wire.frames] == [1, 2, 3]
        assert all(o.statistics().current_buffer_used == 0 for o in outboxes)


class Room:
    """A room probe: a frame fits when it is at most ``free`` bytes."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.forgotten = 0

    def __call__(self, size: int) -> bool:
        return size <= self.free

    def forget(self) -> None:
        self.forgotten += 1


def _beat(seq: int) -> protocol.Heartbeat:
    return protocol.Heartbeat(
        server_incarnation_id="srv", job_id=None, job_state=None, seq=seq, ts=0.0
    )


async def test_without_room_a_direct_send_queues_and_never_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_registry(interval=10.0, offline_threshold=3) as registry:
        wire = Wire()
        wire.gate = trio.Event()  # the node stopped reading: every write hangs
        room = Room(1000)
        closed: list[int] = []
        session, outbox = registry.open_session(
            "o",
            "n",
            idle_hello(),
            lambda code, reason: closed.append(code),
            wire.send,
            room,
        )
        started = trio.current_time()
        big = protocol.encode(_beat(session.next_seq())) + b"x" * 2000
        room.free = 10  # the socket is full: queued, not written
        assert await session.send_now(protocol.encode(_beat(session.next_seq())))
        assert await session.send_now(big)
        assert trio.current_time() == started and wire.calls == 0
        assert outbox.statistics().current_buffer_used == 2
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run_writer, outbox)
            await trio.sleep(DIRECT_SEND_TIMEOUT / 2)
            # the writer is stuck in the first write: a direct send (room or not) queues too
            room.free = 1000
            assert await session.send_now(protocol.encode(_beat(session.next_seq())))
            assert wire.calls == 1
            await trio.sleep(DIRECT_SEND_TIMEOUT)
        # only the node's own writer waited, and the node was closed as stuck
        assert closed == [CLOSE_STUCK]
        assert registry.statistics().dropped_stuck == 1


async def test_a_direct_write_in_progress_makes_the_next_frame_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_registry(interval=10.0, offline_threshold=3) as registry:
        wire = Wire()
        wire.gate = trio.Event()
        session, outbox = registry.open_session(
            "o", "n", idle_hello(), lambda code, reason: None, wire.send, Room(10**6)
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.send_now, protocol.encode(_beat(session.next_seq())))
            await trio.testing.wait_all_tasks_blocked()
            assert wire.calls == 1  # written at once, the write not finished
            assert await session.send_now(protocol.encode(_beat(session.next_seq())))
            assert wire.calls == 1 and outbox.statistics().current_buffer_used == 1
            nursery.start_soon(session.run_writer, outbox)
            wire.gate.set()
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        assert [f.seq for f in wire.frames] == [1, 2]


async def test_stalled_nodes_cost_the_ticker_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_registry(interval=1.0, offline_threshold=3) as registry:
        deaf = Wire()
        deaf.gate = trio.Event()
        full = {f"deaf{i}" for i in range(30)}
        wires = {f"n{i}": Wire() for i in range(5)}
        async with trio.open_nursery() as nursery:
            for name in full:
                session, outbox = registry.open_session(
                    "o", name, idle_hello(), lambda code, reason: None, deaf.send, Room(0)
                )
                nursery.start_soon(session.run_writer, outbox)
            for name, wire in wires.items():
                registry.open_session(
                    "o", name, idle_hello(), lambda code, reason: None, wire.send, Room(10**6)
                )
            for s in registry.sessions.values():
                s.last_sent -= 1  # every node is due at the first tick
            began = trio.current_time()
            await registry.tick()
            assert trio.current_time() == began  # the tick waited for no write
            assert all(len(w.frames) == 1 for w in wires.values())
            await trio.sleep(DIRECT_SEND_TIMEOUT + 0.1)
            assert registry.statistics().dropped_stuck == len(full)
            nursery.cancel_scope.cancel()


def test_the_send_room_credit_saves_the_kernel_question_and_queueing_voids_it() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    with srv, socket.create_connection(srv.getsockname()) as cli:
        conn, _ = srv.accept()
        with conn:
            room = SendRoom.of(trio.socket.from_stdlib_socket(conn))
            assert room is not None
            calls = 0
            real = fcntl.ioctl

            def counting(*args: Any) -> Any:
                nonlocal calls
                calls += 1
                return real(*args)

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(fcntl, "ioctl", counting)
                assert all(room(100) for _ in range(1000))  # one question, then credit
                assert calls == 1
                room.forget()
                assert room(100) and calls == 2
                assert not room(10**9) and calls == 3  # never fits: asked, refused
                assert room(100) and calls == 4  # a refusal leaves no credit
            cli.close()
