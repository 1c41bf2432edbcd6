"""Jobs across appliances, end to end (``docs/SCALE-OUT.md`` §4, §5, §8): three real
``pushy serve`` processes on one private PostgreSQL (``clusterkit.appliances``: the second
and third made with ``pushy cluster join``), real agents spread across them, each given every
appliance's URL (``server_urls``, its own first; ``clusterkit.agents``), real signing. A job
over all of them with capture; the appliance driving a job killed (SIGKILL) mid-job, taken
over within ``lease_ttl * 4 / 3``; an appliance holding nodes killed mid-job; two jobs on two
appliances racing for one node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from clusterkit import HEARTBEAT, agents, appliances
from test_e2e_foundation import ServerProcess, pushy_env
from test_jobs_e2e import JOBS, start_job, wait_job, wait_online

from helpers import Signed

LIMIT = 150.0
TTL = 3.0
"""``cluster.lease_ttl`` of the appliances: a dead driver's job is taken over within 4 s."""
MARGIN = 4.0
"""Seconds a takeover may take past ``TTL + TTL / 3`` on a loaded box (the catch-up, the
first step)."""
NAP = 6
"""Seconds the long command runs (``nap``): long enough to kill an appliance under it."""
NODES = {"n0": 0, "n1": 1, "n2": 2}
"""Node → the appliance its agent tries first."""


@asynccontextmanager
async def cluster(
    tmp_path: Path, pg_url: str, count: int, nodes: dict[str, int]
) -> AsyncIterator[tuple[list[ServerProcess], list[Signed]]]:
    """``count`` appliances with a short ``lease_ttl``, an admin client of each, and the
    agents of ``nodes``, each connected to its first appliance and seen online by all."""
    env = pushy_env(
        tmp_path / "home",
        PUSHY_HEARTBEAT_INTERVAL=HEARTBEAT,
        PUSHY_CLUSTER_LEASE_TTL=str(TTL),
    )
    async with AsyncExitStack() as stack:
        servers = await stack.enter_async_context(appliances(tmp_path, pg_url, count, env=env))
        admins = [await stack.enter_async_context(s.signed()) for s in servers]
        await stack.enter_async_context(agents(tmp_path, servers, admins[0], nodes))
        for name, first in nodes.items():
            await wait_on(servers[first], name)
        for admin in admins:  # a node connected elsewhere is online through its route
            await wait_online(admin, list(nodes))
        yield servers, admins


def node_on(server: ServerProcess, node: str) -> bool:
    """Whether ``node`` is connected to ``server`` itself: the last of its ``online`` and
    ``offline`` lines in the server's log is ``online``."""
    state = False
    for line in server.log().splitlines():
        if f"node default/{node}: online" in line:
            state = True
        elif f"node default/{node}: offline" in line:
            state = False
    return state


async def wait_on(server: ServerProcess, node: str) -> None:
    while not node_on(server, node):  # noqa: ASYNC110 - polls a log file
        await trio.sleep(0.1)


def taken_over(servers: list[ServerProcess], job_id: str) -> int:
    """How many of ``servers`` logged that they took the job over."""
    return sum(s.log().count(f"job {job_id}: taken over") for s in servers)


def final(doc: dict[str, Any], nodes: list[str]) -> bool:
    live = {"new", "ready", "running"}
    placed = {n for bucket, names in doc["nodes"].items() if bucket not in live for n in names}
    return placed == set(nodes)


async def test_a_job_over_nodes_on_three_appliances(tmp_path: Path, pg_url: str) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, pg_url, 3, NODES) as (_servers, admins):
            job_id = await start_job(
                admins[0], {"command": "say hello", "nodes": list(NODES), "capture_output": True}
            )
            doc = await wait_job(admins[0], job_id)
            assert (doc["status"], doc["nodes"]) == ("complete", {"succeeded": sorted(NODES)})
            for admin in admins:  # every appliance reads the same job and its output
                doc = await wait_job(admin, job_id)
                assert doc["nodes"] == {"succeeded": sorted(NODES)}
                for node in NODES:
                    r = await admin.get(f"{JOBS}/{job_id}/output/{node}/stdout")
                    assert (r.status_code, r.content) == (200, b"hello\n")


@pytest.mark.parametrize(
    "nap",
    [
        pytest.param(NAP, id="results-after-the-takeover"),
        # the results come while the dead driver's lease still holds: they are mailed to it,
        # rescued from its mail once it is declared dead, and held until the takeover
        pytest.param(1, id="results-before-the-takeover"),
    ],
)
async def test_the_driver_killed_mid_job_another_appliance_ends_it(
    tmp_path: Path, pg_url: str, nap: int
) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, pg_url, 3, NODES) as (servers, admins):
            job_id = await start_job(admins[0], {"command": f"nap {nap}", "nodes": list(NODES)})
            await wait_job(admins[0], job_id, {"running"}, running=3)
            servers[0].process.kill()
            await servers[0].process.wait()
            killed_at = trio.current_time()
            # one of the survivors takes the job over (its log says so), within the bound
            while not taken_over(servers[1:], job_id):  # noqa: ASYNC110 - polls log files
                await trio.sleep(0.1)
            took = trio.current_time() - killed_at
            assert took <= TTL + TTL / 3 + MARGIN, took
            doc = await wait_job(admins[1], job_id)
            assert final(doc, list(NODES)), doc
            # n0's agent failed over and its result reached the new driver
            assert (doc["status"], doc["nodes"]) == ("complete", {"succeeded": sorted(NODES)})
            assert (await wait_job(admins[2], job_id))["nodes"] == doc["nodes"]
            assert taken_over(servers[1:], job_id) == 1


async def test_the_driver_stopped_mid_job_gives_it_to_another_at_once(
    tmp_path: Path, pg_url: str
) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, pg_url, 3, NODES) as (servers, admins):
            job_id = await start_job(admins[0], {"command": f"nap {NAP}", "nodes": list(NODES)})
            await wait_job(admins[0], job_id, {"running"}, running=3)
            stopping = trio.current_time()
            assert await servers[0].terminate() == 0  # SIGTERM: drained, leases given back
            stopped = trio.current_time()
            while not taken_over(servers[1:], job_id):  # noqa: ASYNC110 - polls log files
                await trio.sleep(0.1)
            # at the survivors' next scan, not once the lease expired
            assert "its leases given back" in servers[0].log()
            assert trio.current_time() - stopped <= TTL / 3 + MARGIN, stopped - stopping
            doc = await wait_job(admins[1], job_id)
            assert (doc["status"], doc["nodes"]) == ("complete", {"succeeded": sorted(NODES)})
            assert taken_over(servers[1:], job_id) == 1


async def test_an_appliance_holding_nodes_killed_mid_job(tmp_path: Path, pg_url: str) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, pg_url, 3, NODES) as (servers, admins):
            job_id = await start_job(admins[0], {"command": f"nap {NAP}", "nodes": list(NODES)})
            await wait_job(admins[0], job_id, {"running"}, running=3)
            servers[2].process.kill()
            await servers[2].process.wait()
            # n2's agent fails over to another appliance
            while not (node_on(servers[0], "n2") or node_on(servers[1], "n2")):  # noqa: ASYNC110
                await trio.sleep(0.1)
            doc = await wait_job(admins[0], job_id)
            assert final(doc, list(NODES)), doc
            assert (doc["status"], doc["nodes"]) == ("complete", {"succeeded": sorted(NODES)})
            assert taken_over(servers[:2], job_id) == 0


async def test_two_jobs_on_two_appliances_racing_for_one_node(tmp_path: Path, pg_url: str) -> None:
    with trio.fail_after(LIMIT):
        async with cluster(tmp_path, pg_url, 2, {"n0": 0}) as (_servers, admins):
            ids: list[str] = []

            async def start(admin: Signed) -> None:
                ids.append(await start_job(admin, {"command": "nap 2", "nodes": ["n0"]}))

            async with trio.open_nursery() as nursery:
                for admin in admins:
                    nursery.start_soon(start, admin)
            docs = [await wait_job(admins[0], job_id) for job_id in ids]
            # the node ran one of them; the other was refused it (busy, or unavailable)
            ran = [d for d in docs if d["nodes"].get("succeeded") == ["n0"]]
            assert len(ran) == 1, docs
            [other] = [d for d in docs if d is not ran[0]]
            assert "succeeded" not in other["nodes"] and final(other, ["n0"]), other
