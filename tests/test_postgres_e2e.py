"""The appliance on the PostgreSQL store, end to end: ``pushy serve --store postgresql://…``
serving the job flow with a real agent (and again after a restart), ``pushy store verify
--store``, and PostgreSQL stopped and started under traffic: writes refused with 503 while it
is away, node connections kept, writes taken again on their own, nothing acknowledged lost.
Against real private PostgreSQL servers (``tests/pgserver.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from test_e2e_foundation import pushy_env, pushy_serve, run_pushy
from test_jobs_e2e import (
    JOBS,
    LIMIT,
    ORG,
    Cluster,
    cluster,
    job_doc,
    output,
    start_job,
    wait_job,
    wait_online,
    write_scripts,
)
from test_node_e2e import node_state

from pushy_appliance.store import open_postgres_store

from pgserver import PgServer


async def test_pushy_serve_on_postgres_runs_jobs_with_a_real_agent(
    tmp_path: Path, pg_url: str
) -> None:
    data = tmp_path / "data"
    env = pushy_env(tmp_path / "home")
    scripts = write_scripts(tmp_path)
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            pushy_serve(tmp_path, "--store", pg_url, data_dir=data, env=env)
        )
        admin = await stack.enter_async_context(server.signed())
        c = Cluster(server.url, data, admin, tmp_path, scripts)
        await c.start_agent(stack, "n1")
        with trio.fail_after(LIMIT):
            await wait_online(admin, ["n1"])
            job = await start_job(
                admin, {"command": "capture", "nodes": ["n1"], "capture_output": True}
            )
            doc = await wait_job(admin, job)
        assert (doc["status"], doc["nodes"]) == ("complete", {"succeeded": ["n1"]})
        random = (scripts / "random.bin").read_bytes()
        assert await output(admin, job, "n1", "stdout") == b"out \xff\xfe\x00 end\n" + random
        assert await server.terminate() == 0
    # the data directory's store was never used: the records are in PostgreSQL
    assert not (data / "store").exists()
    verified = await run_pushy("store", "verify", "--store", pg_url, env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert b": OK" in verified.stdout
    # a restart recovers the job from the database
    async with pushy_serve(tmp_path, "--store", pg_url, data_dir=data, env=env) as server:
        async with server.signed() as admin:
            doc = await job_doc(admin, job)
            assert (doc["status"], doc["nodes"]) == ("complete", {"succeeded": ["n1"]})
            assert await output(admin, job, "n1", "stdout") == b"out \xff\xfe\x00 end\n" + random
        # an offline compaction must be alone on the database: refused while it serves
        refused = await run_pushy("store", "compact", "--store", pg_url, env=env, cwd=tmp_path)
        assert refused.returncode != 0
        assert b"already open" in refused.stderr


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


async def test_postgres_stopped_and_started_under_traffic(tmp_path: Path, own_pg: PgServer) -> None:
    url = own_pg.url()
    clients = f"{ORG}/clients"
    async with cluster(tmp_path, ["n1"], **{"store.url": url}) as c:
        admin = c.admin
        assert c.info is not None
        db = c.info.services.db
        with trio.fail_after(LIMIT):
            created = []
            for n in range(5):
                r = await admin.post(clients, {"name": f"before{n}", "create_key": True})
                assert r.status_code == 201, r.text
                created.append(f"before{n}")
            online_since = (await node_state(admin, "n1"))["updated_at"]

            await trio.to_thread.run_sync(own_pg.stop, "fast")
            r = await admin.post(clients, {"name": "during", "create_key": True})
            assert r.status_code == 503, r.text
            assert r.json() == {"error": "store unavailable: PostgreSQL unreachable"}
            r = await admin.post(JOBS, {"command": "greet", "nodes": ["n1"]})
            assert r.status_code == 503, r.text
            # reads are served from memory, and the node's connection stays
            r = await admin.get(f"{clients}/before0")
            assert r.status_code == 200, r.text
            state = await node_state(admin, "n1")
            assert (state["status"], state["updated_at"]) == ("online", online_since)

            await trio.to_thread.run_sync(own_pg.start)
            await db.wait_writable()  # on its own: no restart
            r = await admin.post(clients, {"name": "after", "create_key": True})
            assert r.status_code == 201, r.text
            created.append("after")
            job = await start_job(admin, {"command": "greet", "nodes": ["n1"]})
            doc = await wait_job(admin, job)
            assert (doc["status"], doc["nodes"]) == ("complete", {"succeeded": ["n1"]})
            state = await node_state(admin, "n1")
            assert (state["status"], state["updated_at"]) == ("online", online_since)
    # nothing acknowledged lost, nothing refused stored
    with trio.fail_after(LIMIT):
        async with open_postgres_store(url) as store:
            names = {
                r["name"]
                for _seq, rec in store.recovered.records
                for r in (rec.get("records") or [rec])
                if r.get("t") == "client.put"
            }
    assert set(created) <= names
    assert "during" not in names
