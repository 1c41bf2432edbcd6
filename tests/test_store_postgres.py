"""What the PostgreSQL store adds to the store contract (``test_store_contract.py`` runs that
contract on it too): stores sharing one log follow each other, an exclusive open is alone, a
commit whose answer was lost is resolved, damage is reported and refused, and PostgreSQL
stopped and started under traffic loses nothing acknowledged. Against real private servers
(``tests/pgserver.py``), no mocks of the database.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import psycopg
import pytest
import trio
import trio.testing

from pushy_appliance.errors import StoreCorruptError, StoreError, StoreUnavailableError
from pushy_appliance.store import open_postgres_store, verify_postgres_store
from pushy_appliance.store._postgres import PostgresStore

from pgserver import PgServer

TIMEOUT = 30.0

Batch = list[tuple[int, dict[str, Any]]]


async def read_until(follower: AsyncIterator[Batch], seq: int) -> Batch:
    """The records ``follower`` yields until one at ``seq`` or beyond."""
    out: Batch = []
    while not out or out[-1][0] < seq:
        out.extend(await anext(follower))
    return out


async def test_stores_sharing_one_log_follow_each_other(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            open_postgres_store(pg_url, exclusive=False) as a,
            open_postgres_store(pg_url, exclusive=False) as b,
            aclosing(a.follow()) as follow_a,
            aclosing(b.follow()) as follow_b,
        ):
            assert await a.append({"by": "a", "n": 1}) == 1
            assert await b.append_many([{"by": "b", "n": 1}, {"by": "b", "n": 2}]) == 3
            assert await a.append({"by": "a", "n": 2}) == 4
            # each sees the other's records, in seq order, and never its own
            assert await read_until(follow_b, 4) == [
                (1, {"by": "a", "n": 1}),
                (4, {"by": "a", "n": 2}),
            ]
            assert await read_until(follow_a, 3) == [
                (2, {"by": "b", "n": 1}),
                (3, {"by": "b", "n": 2}),
            ]
            # (a read its own record 4 too, and passed it: its appender has it)
            assert (a.followed_seq, b.followed_seq, b.last_seq) == (4, 4, 4)
            with pytest.raises(StoreError, match="already has a follower"):
                await anext(aiter(a.follow()))
        # a store opened later recovers the whole interleaved log
        async with open_postgres_store(pg_url) as c:
            assert c.recovered.records == [
                (1, {"by": "a", "n": 1}),
                (2, {"by": "b", "n": 1}),
                (3, {"by": "b", "n": 2}),
                (4, {"by": "a", "n": 2}),
            ]
            assert c.last_seq == 4


async def test_a_follower_reads_what_was_appended_while_it_waited(pg_url: str) -> None:
    got: Batch = []

    async def follow(store: Any, done: trio.Event) -> None:
        async with aclosing(store.follow()) as batches:
            async for batch in batches:
                got.extend(batch)
                if got[-1][0] >= 20:
                    done.set()
                    return

    with trio.fail_after(TIMEOUT):
        async with (
            open_postgres_store(pg_url, exclusive=False) as writer,
            open_postgres_store(pg_url, exclusive=False) as reader,
            trio.open_nursery() as nursery,
        ):
            done = trio.Event()
            nursery.start_soon(follow, reader, done)
            for n in range(1, 21):  # one group each: twenty doorbells
                await writer.append({"n": n})
            await done.wait()
    assert got == [(n, {"n": n}) for n in range(1, 21)]


async def test_the_head_is_the_shared_log_s_whoever_appended(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            open_postgres_store(pg_url, exclusive=False) as a,
            open_postgres_store(pg_url, exclusive=False) as b,
        ):
            assert (await a.head(), await b.head()) == (0, 0)
            assert await b.append_many([{"by": "b", "n": n} for n in range(3)]) == 3
            # a never followed the log (its last_seq is still 0), yet its head has b's write
            assert (a.last_seq, a.followed_seq) == (0, 0)
            assert await a.head() == 3
            assert await a.append({"by": "a"}) == 4
            assert (await a.head(), await b.head()) == (4, 4)
            assert (a.head_queries, b.head_queries) == (3, 2)


async def test_callers_share_head_queries_and_none_reads_one_older_than_itself(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = PostgresStore._head_sync
    gate = threading.Event()
    in_flight = trio.Event()

    def held(self: PostgresStore) -> int:
        seq = real(self)  # the head as of this query, then held back before the answer
        if self.head_queries == 1:
            trio.from_thread.run_sync(in_flight.set)
            gate.wait(TIMEOUT)
        return seq

    monkeypatch.setattr(PostgresStore, "_head_sync", held)
    answers: dict[str, int] = {}

    async def head(name: str, store: Any) -> None:
        answers[name] = await store.head()

    with trio.fail_after(TIMEOUT):
        async with (
            open_postgres_store(pg_url, exclusive=False) as reader,
            open_postgres_store(pg_url, exclusive=False) as writer,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(head, "first", reader)
                await in_flight.wait()  # the first query read the head: 0
                assert await writer.append({"n": 1}) == 1
                # callers that start after that acknowledgement must not get the first
                # query's answer: they share the next one
                for i in range(10):
                    nursery.start_soon(head, f"later{i}", reader)
                await trio.testing.wait_all_tasks_blocked()
                gate.set()
            assert answers == {"first": 0} | {f"later{i}": 1 for i in range(10)}
            assert reader.head_queries == 2


async def test_the_head_is_unavailable_while_postgres_is_away(own_pg: PgServer) -> None:
    with trio.fail_after(60):
        async with open_postgres_store(own_pg.url()) as store:
            await store.append({"n": 1})
            assert await store.head() == 1
            await trio.to_thread.run_sync(own_pg.stop, "fast")
            with pytest.raises(StoreUnavailableError, match="PostgreSQL unreachable"):
                await store.head()
            await trio.to_thread.run_sync(own_pg.start)
            assert await store.head() == 1  # reconnected on its own


async def test_a_second_exclusive_open_is_refused(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_postgres_store(pg_url) as store:
            await store.append({"n": 1})
            with pytest.raises(StoreError, match="already open"):
                async with open_postgres_store(pg_url):
                    pass
        async with open_postgres_store(pg_url) as store:  # released on exit
            assert store.last_seq == 1


async def test_a_commit_whose_answer_was_lost_is_refused_then_followed_when_it_committed(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_commit = psycopg.Connection.commit
    target: list[object] = []

    def commit_then_lose_the_answer(self: psycopg.Connection[Any]) -> None:
        real_commit(self)
        if self in target:
            target.clear()
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    with trio.fail_after(TIMEOUT):
        async with open_postgres_store(pg_url) as store:
            assert await store.append({"n": 1}) == 1
            monkeypatch.setattr(psycopg.Connection, "commit", commit_then_lose_the_answer)
            target.append(store._conn)
            with pytest.raises(StoreUnavailableError, match="PostgreSQL unreachable"):
                await store.append({"n": 2})
            assert not store.writable
            await store.wait_writable()  # the retry asked the database: it committed
            # the refused group is in the log: the follower hands it over, once
            async with aclosing(store.follow()) as follow:
                assert await anext(follow) == [(2, {"n": 2})]
            assert await store.append({"n": 3}) == 3
        async with open_postgres_store(pg_url) as again:
            assert [seq for seq, _r in again.recovered.records] == [1, 2, 3]


async def test_verify_reports_a_damaged_record_and_open_refuses_it(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_postgres_store(pg_url) as store:
            await store.append_many([{"n": n} for n in range(1, 6)])
            await store.write_snapshot({"upto": 2}, 2)
    report = verify_postgres_store(pg_url)
    assert report.ok, report.lines()
    assert (report.records, report.snapshots, report.segments) == (5, 1, 0)
    assert report.lines()[0].endswith(": OK")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE pushy_log SET record = set_byte(record, 9, get_byte(record, 9) # 255) "
            "WHERE seq = 4"
        )
    report = verify_postgres_store(pg_url)
    assert not report.ok
    assert any("record 4" in p and "CRC" in p for p in report.problems), report.problems
    with trio.fail_after(TIMEOUT), pytest.raises(StoreCorruptError, match="record 4"):
        async with open_postgres_store(pg_url):
            pass


def test_verify_of_a_database_without_a_store(pg_url: str) -> None:
    report = verify_postgres_store(pg_url)
    assert not report.ok
    assert report.problems == ["no pushy store here (no pushy_meta table in the search_path)"]


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A private server of this test's own: it is stopped and started."""
    server = PgServer()
    try:
        server.start()
        server.create_database()
        yield server
    finally:
        server.close()


async def test_postgres_stopped_and_started_mid_traffic_loses_nothing_acknowledged(
    own_pg: PgServer,
) -> None:
    url = own_pg.url()
    acked: dict[int, dict[str, Any]] = {}
    refused: list[dict[str, Any]] = []
    enough = trio.Event()
    goal = 50
    stop = trio.Event()

    async def writer(store: Any, w: int) -> None:
        for i in range(100_000):
            if stop.is_set():
                return
            record = {"w": w, "i": i}
            try:
                acked[await store.append(record)] = record
            except StoreUnavailableError:
                refused.append(record)
                await store.wait_writable()
            if len(acked) >= goal:
                enough.set()

    with trio.fail_after(120):
        async with open_postgres_store(url) as store, trio.open_nursery() as nursery:
            for w in range(4):
                nursery.start_soon(writer, store, w)
            await enough.wait()
            await trio.to_thread.run_sync(own_pg.stop, "fast")
            with pytest.raises(StoreUnavailableError, match="PostgreSQL unreachable"):
                while True:  # the writers' appends in flight may still have made it
                    acked[await store.append({"probe": True})] = {"probe": True}
            assert not store.writable
            before = len(acked)
            await trio.to_thread.run_sync(own_pg.start)
            await store.wait_writable()
            enough = trio.Event()
            goal = before + 50
            await enough.wait()
            stop.set()
        async with open_postgres_store(url) as again:
            log = dict(again.recovered.records)
    assert refused, "the outage refused no write"
    for seq, record in acked.items():
        assert log[seq] == record  # nothing acknowledged lost
    stored = [(r["w"], r["i"]) for r in log.values() if "w" in r]
    assert len(stored) == len(set(stored))  # nothing stored twice
    for seq in set(log) - set(acked):
        assert log[seq] in refused  # only a refused (in-doubt) group may be there unacked
