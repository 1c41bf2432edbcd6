"""The PostgreSQL coordinator (``pushy_appliance.cluster``, ``docs/SCALE-OUT.md`` §4, §5, §8)
against a real private server: two (or three) coordinators on one schema, with engines that
record what they are told. Leases with epochs (claim, renewal, expiry, takeover, lost),
``SKIP LOCKED`` spreading a dead holder's jobs, fencing in the store, routes, mail with its
doorbell and its backstop, and a dead appliance's nodes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
import trio

from pushy_appliance.cluster import LeaseGrant, Solo, open_coordinator
from pushy_appliance.cluster._pgsql import take_over
from pushy_appliance.cluster._postgres import MAIL_POLL, PostgresCoordinator
from pushy_appliance.errors import StaleLeaseError
from pushy_appliance.jobs.events import NodeBack, NodeDown, Output, Result
from pushy_appliance.store import open_postgres_store

from pgserver import PgServer

TIMEOUT = 30.0
TTL = 1.0


class Engine:
    """A :class:`~pushy_appliance.cluster.ClusterEngine` that records every call."""

    def __init__(self) -> None:
        self.lost: list[str] = []
        self.taken: list[LeaseGrant] = []
        self.frames: list[tuple[str, str, str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, Any]] = []
        self.gone: list[tuple[str, str]] = []
        self.changed = trio.Event()

    def _tell(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def leases_lost(self, job_ids: Sequence[str]) -> None:
        self.lost.extend(job_ids)
        self._tell()

    async def take_over(self, grants: Sequence[LeaseGrant]) -> None:
        self.taken.extend(grants)
        self._tell()
        await trio.lowlevel.checkpoint()

    async def deliver(self, org: str, node: str, frame_type: str, fields: dict[str, Any]) -> None:
        self.frames.append((org, node, frame_type, fields))
        self._tell()
        await trio.lowlevel.checkpoint()

    async def post_remote(self, org: str, job_id: str, event: Any) -> None:
        self.events.append((org, job_id, event))
        self._tell()
        await trio.lowlevel.checkpoint()

    def nodes_gone(self, nodes: Sequence[tuple[str, str]]) -> None:
        self.gone.extend(nodes)
        self._tell()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self.changed.wait()


@asynccontextmanager
async def running(
    url: str, engine: Engine, *, ttl: float = TTL
) -> AsyncIterator[tuple[PostgresCoordinator, trio.CancelScope]]:
    """A coordinator running until the block ends or its scope is cancelled (a crash: its
    rows stay as they were)."""
    coordinator = await open_coordinator(url, str(uuid.uuid4()), lease_ttl=ttl)
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await coordinator.run(
                    engine, api_url="https://a", node_url="wss://a", task_status=task_status
                )

        await nursery.start(run)
        yield coordinator, scope
        nursery.cancel_scope.cancel()


async def until(condition: Callable[[], bool], step: float = 0.02) -> None:
    """Poll a condition of the database's side (the test's deadline bounds it): a table
    changed by another task's statement has no event to wait on."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(step)


def lease(url: str, job_id: str) -> tuple[str, int] | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT holder, epoch FROM pushy_lease WHERE job_id = %s", (job_id,)
        ).fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


async def test_solo_is_every_job_mine_every_node_local() -> None:
    solo = Solo()
    assert solo.fence("j") == ()
    assert solo.routed("o", "n") is None
    assert (solo.appliance_id, solo.clustered) == (None, False)
    await solo.claim("o", "j")
    engine = Engine()
    async with trio.open_nursery() as nursery:
        await nursery.start(solo.run, engine)


async def test_a_lease_is_renewed_while_its_holder_lives_then_taken_over(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        ea, eb = Engine(), Engine()
        async with running(pg_url, ea) as (a, a_scope), running(pg_url, eb) as (b, _):
            await a.claim("o", "j1")
            assert lease(pg_url, "j1") == (a.appliance_id, 1)
            assert a.fence("j1") == (("j1", 1),)
            assert b.fence("j1") == (("j1", 0),)  # not b's: fenced with an epoch no lease has
            # three lease periods: a renews, b takes nothing
            await trio.sleep(3 * TTL)
            assert eb.taken == [] and ea.lost == []
            assert lease(pg_url, "j1") == (a.appliance_id, 1)
            a_scope.cancel()  # a stops renewing (its row and lease stay, as after kill -9)
            stopped = trio.current_time()
            await eb.until(lambda: bool(eb.taken))
            # expiry (ttl) plus at most one scan period (ttl / 3), and a margin
            assert trio.current_time() - stopped <= TTL + TTL / 3 + 0.5
            assert eb.taken == [LeaseGrant("o", "j1", 2)]
            assert b.fence("j1") == (("j1", 2),)
            assert lease(pg_url, "j1") == (b.appliance_id, 2)
            # a is back (a partition healed): its first renewal finds the job gone
            async with trio.open_nursery() as nursery:
                await nursery.start(a.run, ea)
                await ea.until(lambda: bool(ea.lost))
                assert ea.lost == ["j1"]
                assert a.fence("j1") == (("j1", 0),)
                nursery.cancel_scope.cancel()
            # a closed job's lease is given back
            b.release("j1")
            await until(lambda: lease(pg_url, "j1") is None)


async def test_a_holder_that_cannot_renew_stops_driving_on_its_own(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        engine = Engine()
        async with running(pg_url, engine) as (a, _scope):
            await a.claim("o", "j1")
            # the renewal statement waits behind this lock for lock_timeout (10 s)
            with psycopg.connect(pg_url, autocommit=True) as conn, conn.transaction():
                conn.execute("LOCK TABLE pushy_lease IN EXCLUSIVE MODE")
                started = trio.current_time()
                await engine.until(lambda: bool(engine.lost))
                assert trio.current_time() - started <= TTL + TTL / 3 + 0.5
            assert engine.lost == ["j1"]


async def test_skip_locked_spreads_a_dead_holder_s_jobs(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        dead = str(uuid.uuid4())
        engines = [Engine(), Engine()]
        async with running(pg_url, Engine()) as (_setup, _):
            pass  # the tables
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for n in range(40):
                conn.execute(
                    "INSERT INTO pushy_lease VALUES ('o', %s, %s, 1, now() - interval '1s')",
                    (f"j{n:02}", dead),
                )
            # a scan holding some expired rows does not stop another from taking the rest
            me, other = str(uuid.uuid4()), str(uuid.uuid4())
            with psycopg.connect(pg_url) as first:
                got_first = take_over(first, me, 60.0, 10)  # its transaction committed
                with first.transaction():
                    first.execute(
                        "SELECT job_id FROM pushy_lease WHERE expires_at < now() "
                        "ORDER BY job_id LIMIT 10 FOR UPDATE"
                    )
                    with psycopg.connect(pg_url) as second:
                        got_second = take_over(second, other, 60.0, 100)
            assert len(got_first) == 10 and len(got_second) == 20
            assert not {j for _o, j, _e in got_first} & {j for _o, j, _e in got_second}
        # two live appliances scanning at once share what expired, never the same job
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE pushy_lease SET expires_at = now() - interval '1s'")
        async with (
            running(pg_url, engines[0]) as (_a, _),
            running(pg_url, engines[1]) as (_b, _),
        ):
            await until(lambda: sum(len(e.taken) for e in engines) == 40)
        taken = [g.job_id for e in engines for g in e.taken]
        assert sorted(taken) == [f"j{n:02}" for n in range(40)]  # each once
        assert {g.epoch for e in engines for g in e.taken} == {2, 3}


async def test_a_stale_driver_s_step_is_refused_and_never_applied(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        ea, eb = Engine(), Engine()
        async with (
            open_postgres_store(pg_url, exclusive=False) as store_a,
            open_postgres_store(pg_url, exclusive=False) as store_b,
            running(pg_url, ea) as (a, a_scope),
            running(pg_url, eb) as (b, _),
        ):
            await a.claim("o", "j1")
            first = await store_a.append_many([{"step": "a1"}], fence=a.fence("j1"))
            a_scope.cancel()
            await eb.until(lambda: bool(eb.taken))
            # a still believes it drives j1: its step carries epoch 1
            assert a.fence("j1") == (("j1", 1),)
            with pytest.raises(StaleLeaseError) as refused:
                await store_a.append_many([{"step": "a2"}], fence=a.fence("j1"))
            assert (refused.value.job_id, refused.value.epoch) == ("j1", 1)
            # a's unfenced records and b's fenced ones go on
            await store_a.append({"other": 1})
            last = await store_b.append_many([{"step": "b1"}], fence=b.fence("j1"))
            with psycopg.connect(pg_url, autocommit=True) as conn:
                rows = conn.execute("SELECT seq FROM pushy_log ORDER BY seq").fetchall()
            assert [int(s) for (s,) in rows] == list(range(1, last + 1))  # no hole
            # in the log: a1, other, b1; never a2
            async with open_postgres_store(pg_url, exclusive=False) as reader:
                records = [r for _s, r in reader.recovered.records]
            assert records == [{"step": "a1"}, {"other": 1}, {"step": "b1"}]
            assert first == 1


async def test_routes_follow_nodes_to_their_appliance(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        ea, eb = Engine(), Engine()
        async with running(pg_url, ea) as (a, _), running(pg_url, eb) as (b, _):
            a.node_up("o", "n1", "inc-1")
            await until(lambda: b.routed("o", "n1") == a.appliance_id)
            assert a.routed("o", "n1") is None  # local to a
            # the node moves to b: a's loss afterwards does not clear b's route
            b.node_up("o", "n1", "inc-1")
            await until(lambda: a.routed("o", "n1") == b.appliance_id)
            a.node_down("o", "n1")
            b.node_up("o", "n2", "inc-2")
            await until(lambda: a.routed("o", "n2") == b.appliance_id)
            assert a.routed("o", "n1") == b.appliance_id
            b.node_down("o", "n1")
            await until(lambda: a.routed("o", "n1") is None)
            assert ea.gone == [] and eb.gone == []  # a loss is the holder's to report


async def test_mail_round_trip_with_the_doorbell(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        ea, eb = Engine(), Engine()
        async with running(pg_url, ea) as (a, _), running(pg_url, eb) as (b, _):
            sent = trio.current_time()
            await a.send_frame(b.appliance_id, "o", "n1", "commit", {"job_id": "j1", "env": {}})
            await eb.until(lambda: bool(eb.frames))
            assert trio.current_time() - sent < MAIL_POLL  # the doorbell, not the backstop
            assert eb.frames == [("o", "n1", "commit", {"job_id": "j1", "env": {}})]
            # node events go to the job's driver, found by its lease
            await b.claim("o", "j1")
            result = Result("n1", "succeeded", 0, 5.0, {"status": "succeeded", "exit_code": 0})
            events = [
                Output("n1", "stdout", 0, b"hi\n"),
                result,
                NodeBack("n1", 6.0, True, "running", result),
                NodeDown("n1", 7.0),
            ]
            for event in events:
                await a.forward("o", "j1", event)
            await eb.until(lambda: len(eb.events) == 4)
            assert eb.events == [("o", "j1", e) for e in events]
            assert eb.events[1][2].fields == result.fields
            assert ea.frames == [] and ea.events == []
            # an event for a job without a lease (closed) is dropped
            await a.forward("o", "gone", NodeDown("n1", 8.0))
            await a.forward("o", "j1", NodeDown("n2", 9.0))
            await eb.until(lambda: len(eb.events) == 5)
            assert eb.events[-1] == ("o", "j1", NodeDown("n2", 9.0))


async def test_mail_without_its_doorbell_is_taken_by_the_backstop(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        engine = Engine()
        async with running(pg_url, engine) as (b, _):
            from pushy_appliance.cluster._wire import FrameItem, encode_mail

            payload = encode_mail([FrameItem("o", "n1", "run", {"job_id": "j1"})])
            with psycopg.connect(pg_url, autocommit=True) as conn:  # no NOTIFY
                conn.execute(
                    "INSERT INTO pushy_mail (to_appliance, payload) VALUES (%s, %s)",
                    (b.appliance_id, payload),
                )
            await engine.until(lambda: bool(engine.frames))
            assert engine.frames == [("o", "n1", "run", {"job_id": "j1"})]
            with psycopg.connect(pg_url, autocommit=True) as conn:
                assert conn.execute("SELECT count(*) FROM pushy_mail").fetchone() == (0,)


async def test_a_dead_appliance_s_nodes_go_down_for_the_jobs_driven_elsewhere(
    pg_url: str,
) -> None:
    with trio.fail_after(TIMEOUT):
        ea, eb = Engine(), Engine()
        async with running(pg_url, ea) as (a, a_scope), running(pg_url, eb) as (b, _):
            a.node_up("o", "n1", "inc-1")
            a.node_up("o", "n2", "inc-2")
            await until(lambda: b.routed("o", "n2") == a.appliance_id)
            await a.send_frame(b.appliance_id, "o", "x", "run", {"job_id": "j"})
            await eb.until(lambda: bool(eb.frames))
            a_scope.cancel()
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO pushy_mail (to_appliance, payload) VALUES (%s, 'x')",
                    (a.appliance_id,),
                )
            await eb.until(lambda: len(eb.gone) == 2)
            assert sorted(eb.gone) == [("o", "n1"), ("o", "n2")]
            assert b.routed("o", "n1") is None
            with psycopg.connect(pg_url, autocommit=True) as conn:
                # its mail taken by b's next lease round (it was not even mail: dropped)
                await until(
                    lambda: conn.execute("SELECT count(*) FROM pushy_mail").fetchone() == (0,)
                )
                ids = [str(r[0]) for r in conn.execute("SELECT id FROM pushy_appliance")]
            assert ids == [b.appliance_id]


async def test_events_for_a_job_whose_lease_expired_wait_for_its_takeover(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        ea, eb = Engine(), Engine()
        async with running(pg_url, ea, ttl=30.0) as (a, _), running(pg_url, eb) as (_b, _):
            with psycopg.connect(pg_url, autocommit=True) as conn:  # a dead holder's lease
                conn.execute(
                    "INSERT INTO pushy_lease VALUES ('o', 'jx', %s, 1, now() - interval '1s')",
                    (str(uuid.uuid4()),),
                )
            await a.forward("o", "jx", NodeDown("n1", 1.0))
            await eb.until(lambda: bool(eb.taken))
            assert eb.taken == [LeaseGrant("o", "jx", 2)]
            # held by a until the takeover, then mailed to b
            await eb.until(lambda: bool(eb.events))
            assert eb.events == [("o", "jx", NodeDown("n1", 1.0))]


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


async def test_postgres_restarting_the_holder_stops_driving_then_takes_its_jobs_back(
    own_pg: PgServer,
) -> None:
    url = own_pg.url()
    ttl = 2.0
    with trio.fail_after(60):
        engine, other = Engine(), Engine()
        async with running(url, engine, ttl=ttl) as (a, _):
            await a.claim("o", "j1")
            await trio.to_thread.run_sync(own_pg.stop)
            stopped = trio.current_time()
            await engine.until(lambda: engine.lost == ["j1"])  # self-fenced on its own clock
            assert trio.current_time() - stopped <= ttl + 1.0
            assert a.fence("j1") == (("j1", 0),)
            await trio.to_thread.run_sync(own_pg.start)
            # every task reconnects: the expired lease is taken again, routes and mail flow
            await engine.until(lambda: bool(engine.taken))
            assert engine.taken == [LeaseGrant("o", "j1", 2)]
            async with running(url, other, ttl=ttl) as (b, _):
                a.node_up("o", "n1", "i")
                await until(lambda: b.routed("o", "n1") == a.appliance_id)
                await b.send_frame(a.appliance_id, "o", "n1", "run", {"job_id": "j1"})
                await engine.until(lambda: bool(engine.frames))


async def test_events_mailed_to_a_driver_that_died_reach_the_job_s_next_driver(
    pg_url: str,
) -> None:
    with trio.fail_after(TIMEOUT):
        ea, eb = Engine(), Engine()
        async with running(pg_url, ea) as (a, a_scope), running(pg_url, eb) as (b, _):
            await a.claim("o", "j1")
            a_scope.cancel()  # a dies with its lease and row still valid
            await b.forward("o", "j1", NodeDown("n1", 1.0))  # mailed to a: nobody reads it
            with psycopg.connect(pg_url, autocommit=True) as conn:
                await until(
                    lambda: conn.execute("SELECT count(*) FROM pushy_mail").fetchone() == (1,)
                )
            # a is declared dead, its job taken over by b, and the event rescued from a's mail
            await eb.until(lambda: bool(eb.taken) and bool(eb.events))
            assert eb.taken == [LeaseGrant("o", "j1", 2)]
            assert eb.events == [("o", "j1", NodeDown("n1", 1.0))]
            assert ea.events == []


async def test_a_graceful_stop_gives_the_leases_and_routes_back_at_once(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        ea, eb = Engine(), Engine()
        async with running(pg_url, ea, ttl=30.0) as (a, a_scope), running(pg_url, eb) as (b, _):
            await a.claim("o", "j1")
            a.node_up("o", "n1", "i")
            await until(lambda: b.routed("o", "n1") == a.appliance_id)
            await a.leave()
            a_scope.cancel()
            # taken over at b's next scan (ttl / 3), not after a's 30 s lease
            await eb.until(lambda: bool(eb.taken) and bool(eb.gone))
            assert eb.taken == [LeaseGrant("o", "j1", 2)]
            assert eb.gone == [("o", "n1")]
            assert a.fence("j1") == (("j1", 0),)
            with psycopg.connect(pg_url, autocommit=True) as conn:
                ids = [str(r[0]) for r in conn.execute("SELECT id FROM pushy_appliance")]
            assert ids == [b.appliance_id]
