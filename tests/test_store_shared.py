"""``store._shared.SharedQuery``, the head query's sharing, on the autojump clock: a query
takes 1 s and reads the "database" (a version number) as it starts."""

from __future__ import annotations

import trio
import trio.testing

from pushy_appliance.store._shared import SharedQuery


class Database:
    """A version bumped by acknowledged writes; a query reads it at its start, answers 1 s
    later. ``fail_on`` makes the queries of those numbers raise."""

    def __init__(self, fail_on: tuple[int, ...] = ()) -> None:
        self.version = 0
        self.started: list[float] = []
        self.senders: list[trio.lowlevel.Task] = []
        self.fail_on = fail_on

    async def query(self) -> int:
        self.started.append(trio.current_time())
        self.senders.append(trio.lowlevel.current_task())
        seen = self.version
        await trio.sleep(1.0)
        if len(self.started) in self.fail_on:
            raise RuntimeError("query failed")
        return seen


async def test_callers_share_the_next_query_never_the_one_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = Database()
    shared = SharedQuery(db.query)
    answers: dict[str, int] = {}

    async def caller(name: str, at: float, writes_before: int = 0) -> None:
        await trio.sleep_until(at)
        db.version += writes_before  # a write acknowledged just before this caller asks
        answers[name] = await shared.ask()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, "a", 0.0)
        nursery.start_soon(caller, "b", 0.5, 1)  # the query in flight read version 0
        nursery.start_soon(caller, "c", 0.6)
        nursery.start_soon(caller, "d", 0.7)
        nursery.start_soon(caller, "e", 1.5, 1)  # during the second query
        nursery.start_soon(caller, "f", 5.0)  # nothing in flight: a query of its own
    assert answers == {"a": 0, "b": 1, "c": 1, "d": 1, "e": 2, "f": 2}
    assert db.started == [0.0, 1.0, 2.0, 5.0]
    assert shared.sent == 4


async def test_a_cancelled_sender_still_answers_the_callers_sharing_its_query(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = Database()
    shared = SharedQuery(db.query)
    answers: dict[str, int] = {}
    scopes: dict[trio.lowlevel.Task, trio.CancelScope] = {}
    ended: dict[str, float] = {}

    async def caller(name: str) -> None:
        with trio.CancelScope() as scope:
            scopes[trio.lowlevel.current_task()] = scope
            answers[name] = await shared.ask()
        ended[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(shared.ask)  # query 1, 0 → 1 s
        await trio.sleep(0.5)
        db.version = 7
        nursery.start_soon(caller, "b")  # b and c share query 2, 1 → 2 s; whichever of
        nursery.start_soon(caller, "c")  # them sends it is cancelled half-way
        await trio.sleep(1.0)
        sender = scopes[db.senders[1]]
        sender.cancel()
    assert sender.cancel_called
    # the query ran to its end (without the shield the other caller would have had to send
    # a third query at 1.5 s), and both have its answer: the sender too, since the answer
    # was there before its next checkpoint
    assert db.started == [0.0, 1.0]
    assert answers == {"b": 7, "c": 7}
    assert ended == {"b": 2.0, "c": 2.0}


async def test_a_failed_query_fails_its_sender_and_the_others_ask_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = Database(fail_on=(2,))
    shared = SharedQuery(db.query)
    answers: dict[str, object] = {}

    tasks: dict[trio.lowlevel.Task, str] = {}

    async def caller(name: str, at: float) -> None:
        tasks[trio.lowlevel.current_task()] = name
        await trio.sleep_until(at)
        try:
            answers[name] = await shared.ask()
        except RuntimeError as e:
            answers[name] = str(e)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, "a", 0.0)
        nursery.start_soon(caller, "b", 0.5)  # b and c share query 2 (at 1 s), which fails:
        nursery.start_soon(caller, "c", 0.6)  # its sender gets the error, the other asks again
    sender = tasks[db.senders[1]]
    other = ({"b", "c"} - {sender}).pop()
    assert answers == {"a": 0, sender: "query failed", other: 0}
    assert db.started == [0.0, 1.0, 2.0]
    assert db.senders[2] is not db.senders[1]
