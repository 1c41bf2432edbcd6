"""The heartbeat ticker, on trio's autojump clock: one heartbeat per node per interval, and
offline detection after ``offline_threshold`` silent intervals."""

from __future__ import annotations

import trio
import trio.testing

from pushy_appliance import protocol
from pushy_appliance.nodes.registry import CLOSE_TIMEOUT

from helpers import idle_hello, memory_registry


async def test_every_node_gets_a_heartbeat_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_registry(interval=10.0, offline_threshold=3) as registry:
        closed: list[tuple[str, int]] = []
        outboxes = {}
        for i in range(200):
            name = f"n{i}"
            _, outboxes[name] = registry.open_session(
                "o", name, idle_hello(), lambda code, reason, name=name: closed.append((name, code))
            )
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)

            async def agents() -> None:  # every node speaks every 5 s
                while True:
                    for s in registry.sessions.values():
                        s.last_received = trio.current_time()
                    await trio.sleep(5)

            nursery.start_soon(agents)
            await trio.sleep(3)
            for s in registry.sessions.values():  # another frame, 7 s before the first tick
                s.send(protocol.Reload)
            await trio.sleep(97.5)
            nursery.cancel_scope.cancel()
        for name, outbox in outboxes.items():
            beats = []
            while True:
                try:
                    frame = protocol.decode(outbox.receive_nowait())
                except trio.WouldBlock:
                    break
                if not isinstance(frame, protocol.Reload):
                    beats.append(frame)
            assert len(beats) == 10, (name, len(beats))
            assert all(isinstance(b, protocol.Heartbeat) for b in beats)
            assert [b.seq for b in beats] == list(range(2, 12))
        assert closed == []


async def test_a_silent_node_is_closed_after_the_threshold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_registry(interval=1.0, offline_threshold=3) as registry:
        closed: list[int] = []
        registry.open_session("o", "quiet", idle_hello(), lambda code, reason: closed.append(code))
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)
            await trio.sleep(3.5)
            assert closed == []
            await trio.sleep(1.0)
            assert closed == [CLOSE_TIMEOUT]
            nursery.cancel_scope.cancel()
