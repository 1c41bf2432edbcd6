"""Jobs across appliances, end to end (``docs/SCALE-OUT.md`` §4, §5, §8): three real
``pushy serve`` processes on one private PostgreSQL (the second and third made with ``pushy
cluster join``), real agents spread across them, each given every appliance's URL
(``server_urls``, its own first), real signing. A job over all of them with capture; the
appliance driving a job killed (SIGKILL) mid-job, taken over within ``lease_ttl * 4 / 3``;
an appliance holding nodes killed mid-job; two jobs on two appliances racing for one node.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from test_jobs_e2e import JOBS, ORG, start_job, wait_job, wait_online
from test_node_e2e import (
    AGENT,
    Proc,
    ca_context_file,
    create_client,
    free_port,
    server_process,
    spawn,
    write_key,
)

from pushy_appliance import chef_auth

from helpers import Signed

LIMIT = 150.0
TTL = 3.0
"""``cluster.lease_ttl`` of the appliances: a dead driver's job is taken over within 4 s."""
MARGIN = 4.0
"""Seconds a takeover may take past ``TTL + TTL / 3`` on a loaded box (the catch-up, the
first step)."""
PUSHY = [sys.executable, "-m", "pushy_appliance.cli"]
NAP = 6
"""Seconds the long command runs (``nap``): long enough to kill an appliance under it."""


@dataclasses.dataclass
class Appliance:
    url: str
    data: Path
    proc: Proc
    admin: Signed


async def start_cluster(
    stack: AsyncExitStack, tmp_path: Path, pg_url: str, count: int
) -> list[Appliance]:
    """``count`` appliances on ``pg_url`` sharing the first one's keys and CA."""
    env = {
        "PUSHY_HEARTBEAT_INTERVAL": "0.5",
        "PUSHY_STORE_URL": pg_url,
        "PUSHY_CLUSTER_LEASE_TTL": str(TTL),
    }
    first = tmp_path / "a0"
    http: httpx.AsyncClient | None = None
    out: list[Appliance] = []
    for index in range(count):
        data = tmp_path / f"a{index}"
        if index:
            joined = await trio.run_process(
                [*PUSHY, "cluster", "join", str(first), "--data-dir", str(data)],
                capture_stdout=True,
                capture_stderr=True,
            )
            assert b"now shares the keys and CA" in joined.stdout, joined.stderr
        port = free_port()
        proc = await stack.enter_async_context(server_process(data, port, free_port(), env))
        if http is None:
            http = await stack.enter_async_context(
                httpx.AsyncClient(verify=ca_context_file(first / "tls" / "ca.pem"), timeout=10)
            )
        url = f"https://127.0.0.1:{port}"
        admin = Signed.from_file(http, url, "admin", data / "keys" / "admin.pem")
        out.append(Appliance(url, data, proc, admin))
    return out


async def start_agents(
    stack: AsyncExitStack, tmp_path: Path, cluster: list[Appliance], nodes: dict[str, int]
) -> dict[str, Proc]:
    """An agent per node of ``nodes`` (name → the appliance it tries first), its client
    created through the first appliance."""
    ca = cluster[0].data / "tls" / "ca.pem"
    agents: dict[str, Proc] = {}
    for name, first in nodes.items():
        key = chef_auth.generate_private_key()
        await create_client(cluster[0].admin, name, chef_auth.public_key_pem(key))
        key_file = write_key(tmp_path / f"{name}.pem", chef_auth.private_key_pem(key))
        urls = [a.url + ORG for a in cluster[first:] + cluster[:first]]
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f"server_urls = {json.dumps(urls)}\n"
            f"node_name = {json.dumps(name)}\n"
            f"client_key = {json.dumps(str(key_file))}\n"
            f"ca_cert = {json.dumps(str(ca))}\n"
            f"state_dir = {json.dumps(str(tmp_path / f'state-{name}'))}\n"
            f"working_dir = {json.dumps(str(tmp_path))}\n"
            '[log]\nlevel = "debug"\n[facts]\nohai = "off"\n'
            "[[allow]]\npattern = '^say ([a-z]+)$'\nrun = '/bin/echo \\1'\n"
            "[[allow]]\npattern = '^nap ([0-9]+)$'\nrun = '/bin/sleep \\1'\n"
        )
        agents[name] = await stack.enter_async_context(
            spawn(f"agent {name}", [*AGENT, "--config", str(config)])
        )
    return agents


async def node_on(appliance: Appliance, node: str) -> bool:
    """Whether ``node`` is connected to ``appliance`` itself: the last of its ``online`` and
    ``offline`` lines in the appliance's log is ``online``."""
    await trio.lowlevel.checkpoint()
    state = False
    for line in appliance.proc.lines:
        if f"node default/{node}: online" in line:
            state = True
        elif f"node default/{node}: offline" in line:
            state = False
    return state


async def first_line(procs: list[Proc], text: str) -> None:
    """Wait until one of ``procs`` logged a line containing ``text``."""
    async with trio.open_nursery() as nursery:

        async def wait(proc: Proc) -> None:
            await proc.wait_for_line(text)
            nursery.cancel_scope.cancel()

        for proc in procs:
            nursery.start_soon(wait, proc)


async def wait_connected(cluster: list[Appliance], nodes: dict[str, int]) -> None:
    """Every node connected to its first appliance, and seen online by every appliance (a
    node connected elsewhere is online through its route)."""
    for name, first in nodes.items():
        assert await wait_on(cluster[first], name)
    for appliance in cluster:
        await wait_online(appliance.admin, list(nodes))


async def wait_on(appliance: Appliance, node: str) -> bool:
    while not await node_on(appliance, node):  # noqa: ASYNC110 - polls the API
        await trio.sleep(0.1)
    return True


def final(doc: dict[str, Any], nodes: list[str]) -> bool:
    live = {"new", "ready", "running"}
    placed = {n for bucket, names in doc["nodes"].items() if bucket not in live for n in names}
    return placed == set(nodes)


async def test_a_job_over_nodes_on_three_appliances(tmp_path: Path, pg_url: str) -> None:
    nodes = {"n0": 0, "n1": 1, "n2": 2}
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            cluster = await start_cluster(stack, tmp_path, pg_url, 3)
            await start_agents(stack, tmp_path, cluster, nodes)
            await wait_connected(cluster, nodes)
            job_id = await start_job(
                cluster[0].admin,
                {"command": "say hello", "nodes": list(nodes), "capture_output": True},
            )
            doc = await wait_job(cluster[0].admin, job_id)
            assert (doc["status"], doc["nodes"]) == ("complete", {"succeeded": sorted(nodes)})
            for appliance in cluster:  # every appliance reads the same job and its output
                doc = await wait_job(appliance.admin, job_id)
                assert doc["nodes"] == {"succeeded": sorted(nodes)}
                for node in nodes:
                    r = await appliance.admin.get(f"{JOBS}/{job_id}/output/{node}/stdout")
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
    nodes = {"n0": 0, "n1": 1, "n2": 2}
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            cluster = await start_cluster(stack, tmp_path, pg_url, 3)
            await start_agents(stack, tmp_path, cluster, nodes)
            await wait_connected(cluster, nodes)
            driver, survivor = cluster[0], cluster[1]
            job_id = await start_job(driver.admin, {"command": f"nap {nap}", "nodes": list(nodes)})
            await wait_job(driver.admin, job_id, {"running"}, running=3)
            driver.proc.process.kill()
            await driver.proc.process.wait()
            killed_at = trio.current_time()
            # one of the survivors takes the job over (its log says so), within the bound
            await first_line([a.proc for a in cluster[1:]], f"job {job_id}: taken over")
            took = trio.current_time() - killed_at
            assert took <= TTL + TTL / 3 + MARGIN, took
            assert sum(a.proc.count(f"job {job_id}: taken over") for a in cluster[1:]) == 1
            doc = await wait_job(survivor.admin, job_id)
            assert final(doc, list(nodes)), doc
            assert doc["status"] == "complete", doc
            # n0's agent failed over and its result reached the new driver
            assert doc["nodes"] == {"succeeded": sorted(nodes)}, doc
            assert (await wait_job(cluster[2].admin, job_id))["nodes"] == doc["nodes"]


async def test_an_appliance_holding_nodes_killed_mid_job(tmp_path: Path, pg_url: str) -> None:
    nodes = {"n0": 0, "n1": 1, "n2": 2}
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            cluster = await start_cluster(stack, tmp_path, pg_url, 3)
            await start_agents(stack, tmp_path, cluster, nodes)
            await wait_connected(cluster, nodes)
            driver, victim = cluster[0], cluster[2]
            job_id = await start_job(driver.admin, {"command": f"nap {NAP}", "nodes": list(nodes)})
            await wait_job(driver.admin, job_id, {"running"}, running=3)
            victim.proc.process.kill()
            await victim.proc.process.wait()
            # n2's agent fails over to another appliance
            while not (await node_on(driver, "n2") or await node_on(cluster[1], "n2")):  # noqa: ASYNC110 - polls the API
                await trio.sleep(0.1)
            doc = await wait_job(driver.admin, job_id)
            assert final(doc, list(nodes)), doc
            assert doc["status"] == "complete", doc
            assert doc["nodes"] == {"succeeded": sorted(nodes)}, doc
            assert driver.proc.count(f"job {job_id}: taken over") == 0


async def test_two_jobs_on_two_appliances_racing_for_one_node(tmp_path: Path, pg_url: str) -> None:
    nodes = {"n0": 0}
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            cluster = await start_cluster(stack, tmp_path, pg_url, 2)
            await start_agents(stack, tmp_path, cluster, nodes)
            await wait_connected(cluster, nodes)
            ids: list[str] = []

            async def start(appliance: Appliance) -> None:
                ids.append(await start_job(appliance.admin, {"command": "nap 2", "nodes": ["n0"]}))

            async with trio.open_nursery() as nursery:
                for appliance in cluster:
                    nursery.start_soon(start, appliance)
            docs = [await wait_job(cluster[0].admin, job_id) for job_id in ids]
            # the node ran one of them; the other was refused it (busy, or unavailable)
            ran = [d for d in docs if d["nodes"].get("succeeded") == ["n0"]]
            assert len(ran) == 1, docs
            [other] = [d for d in docs if d is not ran[0]]
            assert "succeeded" not in other["nodes"] and final(other, ["n0"]), other
