"""Several databases on one shared log (``docs/SCALE-OUT.md`` §3, §6): each applies the
others' records in seq order, a commit is applied after every record below it, the read
barrier, check-then-commit across appliances, the compactor's lock, the shared open lock,
and a follower that finds the log compacted past it. Two ``Database``s on two stores sharing
one PostgreSQL schema (the private server of ``tests/pgserver.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from pushy_appliance import chef_auth
from pushy_appliance.appliance import new_database
from pushy_appliance.bootstrap import bootstrap
from pushy_appliance.db import Database
from pushy_appliance.errors import StoreError
from pushy_appliance.store import open_postgres_store, open_store

from helpers import test_config

TIMEOUT = 30.0


class Names:
    """A model of the names created, in the order applied."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def apply(self, record: dict[str, Any]) -> None:
        if record.get("t") == "name":
            self.names.append(record["name"])

    def snapshot(self) -> Any:
        return list(self.names)

    def load(self, snapshot: Any) -> None:
        self.names = list(snapshot)


def names_of(db: Database) -> list[str]:
    model = db.models["names"]
    assert isinstance(model, Names)
    return model.names


@asynccontextmanager
async def appliance(url: str) -> AsyncIterator[Database]:
    """A database on the shared log with its follower running, as ``serve()`` runs one."""
    async with open_postgres_store(url, exclusive=False) as store, trio.open_nursery() as n:
        db = Database(store, {"names": Names()})
        db.recover()
        await n.start(db.follower)
        yield db
        n.cancel_scope.cancel()


async def test_each_database_applies_the_others_records_in_seq_order(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with appliance(pg_url) as a, appliance(pg_url) as b:
            assert a.store.appliance_id != b.store.appliance_id
            followed_by_b: list[str] = []
            b.watch_followed(lambda r: followed_by_b.append(r["name"]))
            seen_by_b: list[str] = []
            b.watch(lambda r: seen_by_b.append(r["name"]))
            assert await a.commit({"t": "name", "name": "a1"}) == 1
            assert await a.commit({"t": "name", "name": "a2"}, {"t": "name", "name": "a3"}) == 2
            # b's own commit got seq 3: it is applied after a's 1 and 2, whatever b's follower
            # had read when b's append returned
            assert await b.commit({"t": "name", "name": "b1"}) == 3
            assert names_of(b) == ["a1", "a2", "a3", "b1"]
            assert b.applied_seq == 3
            await a.wait_applied(3)
            assert names_of(a) == ["a1", "a2", "a3", "b1"]
            # watchers see every record applied; watch_followed only the others' (a batch's
            # records one by one)
            assert seen_by_b == ["a1", "a2", "a3", "b1"]
            assert followed_by_b == ["a1", "a2", "a3"]


async def test_the_barrier_makes_a_write_acknowledged_elsewhere_visible(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with appliance(pg_url) as a, appliance(pg_url) as b:
            for n in range(20):
                await a.commit({"t": "name", "name": f"n{n}"})
                await b.barrier()  # a request on b that starts after a's answer
                assert names_of(b)[-1] == f"n{n}"
            assert b.store.statistics().last_seq == 20


async def test_check_then_commit_excludes_the_name_on_every_appliance(pg_url: str) -> None:
    outcomes: list[str] = []

    async def create(db: Database, name: str, ready: trio.Event) -> None:
        await ready.wait()
        async with db.exclusive(("client", "org", name)):
            if name in names_of(db):
                outcomes.append("409")
                return
            await trio.sleep(0.05)  # widen the window between check and commit
            await db.commit({"t": "name", "name": name})
            outcomes.append("201")

    with trio.fail_after(TIMEOUT):
        async with appliance(pg_url) as a, appliance(pg_url) as b:
            for round_ in range(5):
                outcomes.clear()
                ready = trio.Event()
                async with trio.open_nursery() as n:
                    n.start_soon(create, a, f"c{round_}", ready)
                    n.start_soon(create, b, f"c{round_}", ready)
                    ready.set()
                assert sorted(outcomes) == ["201", "409"]
            await a.barrier()
            await b.barrier()
            assert names_of(a) == names_of(b) == [f"c{r}" for r in range(5)]


async def test_one_compactor_and_another_takes_over_when_it_goes(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_postgres_store(pg_url, exclusive=False) as b:
            async with open_postgres_store(pg_url, exclusive=False) as a:
                assert await a.take_compactor()
                assert not await b.take_compactor()
                assert await a.take_compactor()  # still held
            # a's connections closed (its appliance stopped or died): b takes over at one of
            # its next tries (the server frees a closed session's locks a moment later)
            for _ in range(200):
                if await b.take_compactor():
                    break
                await trio.sleep(0.05)
            else:
                pytest.fail("b never took the compactor's lock")


async def test_a_maintenance_open_is_alone_beside_appliances(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_postgres_store(pg_url, exclusive=False):
            with pytest.raises(StoreError, match="already open"):
                async with open_postgres_store(pg_url):
                    pass
        async with AsyncExitStack() as stack:
            # the server frees a closed session's locks a moment after the close
            while True:
                try:
                    await stack.enter_async_context(open_postgres_store(pg_url))
                    break
                except StoreError as e:
                    assert "already open" in str(e)
                    await trio.sleep(0.05)
            with pytest.raises(StoreError, match="held alone by a maintenance command"):
                async with open_postgres_store(pg_url, exclusive=False):
                    pass


async def test_a_follower_behind_a_compaction_stops_with_store_error(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            open_postgres_store(pg_url, exclusive=False) as late,
            appliance(pg_url) as a,
        ):
            behind = Database(late, {"names": Names()})
            behind.recover()
            for n in range(3):
                await a.commit({"t": "name", "name": f"n{n}"})
                await a.snapshot()  # the second and third delete what the first covers
            with pytest.raises(StoreError, match="compacted away"):
                await behind.follower()
            # a commit waiting for records the follower will never apply is told so
            with pytest.raises(StoreError, match="follower stopped"):
                await behind.wait_applied(late.last_seq + 1)


async def test_the_file_store_has_nothing_to_follow_or_wait_for() -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(None) as store:
            db = Database(store, {"names": Names()})
            db.recover()
            assert store.appliance_id is None
            await db.follower()  # returns at once
            assert await db.commit({"t": "name", "name": "x"}) == 1
            assert db.applied_seq == 1
            await db.barrier()
            async with db.exclusive(("client", "org", "x")):
                assert names_of(db) == ["x"]
            assert await store.take_compactor()


async def test_two_first_starts_at_once_bootstrap_the_database_once(
    pg_url: str, tmp_path: Path
) -> None:
    """Two appliances starting for the first time on one empty database at once: the
    superuser, the admin and the org are created once (the second sees the first's)."""

    ready: list[str] = []
    both = trio.Event()

    async def first_start(name: str) -> None:
        async with open_postgres_store(pg_url, exclusive=False) as store, trio.open_nursery() as n:
            db = new_database(store)
            db.recover()
            await n.start(db.follower)
            data = tmp_path / name
            # keys made and TLS skipped beforehand: both reach the check at once after go
            (data / "keys").mkdir(parents=True)
            for user in ("pivotal", "admin"):
                pem = chef_auth.private_key_pem(chef_auth.generate_private_key())
                (data / "keys" / f"{user}.pem").write_text(pem)
            config = test_config(data, **{"tls.cert": str(data / "c.pem"), "tls.key": "k.pem"})
            ready.append(name)
            if len(ready) == 2:
                both.set()
            await both.wait()
            await bootstrap(db, data, config)
            n.cancel_scope.cancel()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first_start, "a")
            nursery.start_soon(first_start, "b")
        async with open_postgres_store(pg_url) as store:
            names = [
                (r["t"], r["name"])
                for _seq, record in store.recovered.records
                for r in record.get("records") or [record]
                if r["t"] in ("user.put", "org.put")
            ]
    assert sorted(names) == [("org.put", "default"), ("user.put", "admin"), ("user.put", "pivotal")]


async def test_an_appliance_opened_while_another_writes_misses_nothing(pg_url: str) -> None:
    """Recovery reads one consistent prefix of the log while another appliance appends, and
    the follower goes on from there: the late one ends with every record, in order."""

    async def write(db: Database, count: int, opened: trio.Event) -> None:
        for n in range(count):
            await db.commit({"t": "name", "name": f"n{n}"})
            if n == count // 3:
                opened.set()

    with trio.fail_after(TIMEOUT):
        async with appliance(pg_url) as a:
            opened = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write, a, 300, opened)
                await opened.wait()
                async with appliance(pg_url) as late:
                    assert late.applied_seq > 100  # recovered what was there at open
                    await a.wait_applied(300)
                    await late.barrier()
                    assert names_of(late) == [f"n{n}" for n in range(300)]
