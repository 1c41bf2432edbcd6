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
from test_e2e_foundation import ServerProcess
from test_feeds import open_feed
from test_jobs_e2e import JOBS, ORG, Cluster, start_job, wait_job, wait_online, write_scripts
from test_node_e2e import node_state

from pushy_appliance import chef_auth

from helpers import Signed
from pgserver import PgServer

LIMIT = 180.0
CLIENTS = f"{ORG}/clients"
ORG_FEED = f"{ORG}/pushy/job_status_feed"


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


async def org_feed_resumes_on_another_appliance(admins: list[Signed]) -> None:
    """The org feed's ids are the log's: an id read on A resumes on B, and C, reading live,
    gives B's jobs the ids A gives them."""
    a, b, c = admins
    async with open_feed(a, ORG_FEED) as on_a:
        assert on_a.status == 200
        job1 = await start_job(a, {"command": "say one", "nodes": ["n1"]})
        start1, complete1 = await on_a.wait_for(2)
        assert [(e.name, e.data["job"]) for e in (start1, complete1)] == [  # type: ignore[index]
            ("start", job1),
            ("job_complete", job1),
        ]
        # on B, after A's start event: A's job_complete, the same event with the same id
        async with open_feed(b, ORG_FEED, last_event_id=str(start1.id)) as on_b:
            assert on_b.status == 200
            assert await on_b.wait_for(1) == [complete1]
            # C reads live from A's last event on; a job started on B (its node is on A)
            async with open_feed(c, ORG_FEED, last_event_id=str(complete1.id)) as on_c:
                assert on_c.status == 200
                job2 = await start_job(b, {"command": "say two", "nodes": ["n1"]})
                await on_b.wait_for(3)
                await on_c.wait_for(2)
                await on_a.wait_for(4)
                assert on_c.events == on_b.events[1:] == on_a.events[2:]
                assert [e.data["job"] for e in on_c.events] == [job2, job2]  # type: ignore[index]
        # an id no record gave (seq 0) is unknown: start_of_history, then the rest
        async with open_feed(b, ORG_FEED, last_event_id="org-1") as old:
            head, *rest = await old.wait_for(5)
            assert (head.name, head.id) == ("start_of_history", "start_id")
            assert rest == on_a.events


async def job_feed_resumes_on_another_appliance(admins: list[Signed]) -> None:
    """A job driven by A (its node on A), its feed read on A up to an event, then resumed on
    B while the job runs: B sends the stored events after it, then the live ones its
    follower applies, to ``job_complete``, exactly what A's feed holds."""
    a, b, _c = admins
    job = await start_job(a, {"command": "slow 2", "nodes": ["n1"], "capture_output": True})
    feed = f"{ORG}/pushy/job_status_feed/{job}"
    async with open_feed(a, feed) as on_a:
        first = (await on_a.wait_for(1))[0]
    assert first.name == "start"
    r = await b.get(f"{JOBS}/{job}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] not in ("complete", "quorum_failed", "aborted", "crashed")
    async with open_feed(b, feed, last_event_id=str(first.id)) as on_b:
        assert on_b.status == 200
        while not on_b.ended:
            await on_b.changed.wait()
        resumed = on_b.events
    async with open_feed(a, feed) as whole:
        while not whole.ended:
            await whole.changed.wait()
    assert whole.events[0] == first
    assert resumed == whole.events[1:]
    assert resumed[-1].name == "job_complete"
    assert resumed[-1].data["status"] == "complete"  # type: ignore[index]
    doc = await wait_job(b, job)
    assert doc["nodes"] == {"succeeded": ["n1"]}


async def postgres_stopped_and_started(
    pg: PgServer, servers: list[ServerProcess], admins: list[Signed]
) -> None:
    """PostgreSQL stopped mid-traffic: every appliance refuses writes with 503 and serves
    reads, the node stays connected; started again: every appliance takes writes again on
    its own, and reads its peers' writes at once."""
    a = admins[0]
    online_since = (await node_state(a, "n1"))["updated_at"]
    await trio.to_thread.run_sync(pg.stop, "fast")
    for n, admin in enumerate(admins):
        r = await admin.post(CLIENTS, {"name": f"during{n}", "create_key": True})
        assert r.status_code == 503, r.text
        assert r.json() == {"error": "store unavailable: PostgreSQL unreachable"}
        r = await admin.get(f"{CLIENTS}/ryw0")
        assert r.status_code == 200, r.text
    r = await a.post(JOBS, {"command": "say x", "nodes": ["n1"]})
    assert r.status_code == 503, r.text
    state = await node_state(a, "n1")
    assert (state["status"], state["updated_at"]) == ("online", online_since)

    await trio.to_thread.run_sync(pg.start)
    for n, admin in enumerate(admins):
        # each appliance's writer retries with a backoff of at most 5 s
        while True:
            r = await admin.post(CLIENTS, {"name": f"after{n}", "create_key": True})
            if r.status_code != 503:
                break
            await trio.sleep(0.2)
        assert r.status_code == 201, r.text
        for other in admins:
            assert (await other.get(f"{CLIENTS}/after{n}")).status_code == 200
    for server in servers:
        assert "read barrier: not passed" in server.log()
    job = await start_job(a, {"command": "say back", "nodes": ["n1"]})
    doc = await wait_job(admins[1], job)
    assert (doc["status"], doc["nodes"]) == ("complete", {"succeeded": ["n1"]})
    state = await node_state(a, "n1")
    assert (state["status"], state["updated_at"]) == ("online", online_since)


async def test_three_appliances_on_one_postgres(tmp_path: Path, own_pg: PgServer) -> None:
    scripts = write_scripts(tmp_path)
    with trio.fail_after(LIMIT):
        async with appliances(tmp_path, own_pg.url(), 3) as servers, AsyncExitStack() as stack:
            admins = [await stack.enter_async_context(s.signed()) for s in servers]
            await read_your_writes(admins)
            await creations_race(admins)
            # a real agent on A
            a = servers[0]
            await Cluster(a.url, a.data_dir, admins[0], tmp_path, scripts).start_agent(stack, "n1")
            await wait_online(admins[0], ["n1"])
            await org_feed_resumes_on_another_appliance(admins)
            await job_feed_resumes_on_another_appliance(admins)
            await postgres_stopped_and_started(own_pg, servers, admins)
