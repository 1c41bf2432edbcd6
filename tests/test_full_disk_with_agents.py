"""The whole "store refused a write" contract (issue 13 #8, issue 12 §3) on a real server
process whose segment file hits its size limit (``RLIMIT_FSIZE``, set from outside with
``prlimit`` as on the attacked server) in the middle of traffic, with real agents:

- every write request is 503 ``store unavailable``, every read is served;
- node connections are kept: a node that connects during the outage is served, one that
  goes away takes nothing with it, and the process stays alive;
- a job running on a node when the outage begins is held, not lost: once the limit is
  raised the store takes writes again on its own, the job ends with its output stored;
- after a restart every acknowledged write is there, and no refused one.

The store and the HTTP API keep their half (``test_full_disk_e2e``); this test holds the
engines' half: the job runner holds a step it cannot store, the registry the status changes
of the nodes (``test_engine_outage`` pins each on the autojump clock).
"""

from __future__ import annotations

import resource
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import trio
from test_jobs_e2e import (
    JOBS,
    ORG,
    Cluster,
    agent_config,
    job_doc,
    output,
    start_job,
    wait_job,
    wait_online,
    whitelist,
    write_scripts,
)
from test_jobs_restart import wait_for_output_events
from test_node_e2e import create_client, free_port, server_process, write_key

from pushy_appliance import tls

from helpers import Signed

LIMIT = 60.0
ENV = {"PUSHY_HEARTBEAT_INTERVAL": "0.5", "PUSHY_LOG_LEVEL": "debug"}
REFUSED = {"error": "store unavailable: File too large"}


GATE = """\
printf 'before\\n'
while [ ! -e "@DIR@/go" ]; do sleep 0.05; done
printf 'after\\n'
"""
"""Prints, then waits for the test to create ``go`` before it prints again and ends."""


async def prepare_agent(c: Cluster, node: str) -> None:
    """Create ``node``'s client and write its agent's config (the test whitelist plus
    ``gate``), as ``Cluster.start_agent`` does, without starting it."""
    pem = await create_client(c.admin, node)
    assert pem is not None
    home = c.root / "agents" / node
    home.mkdir(parents=True)
    agent_config(
        home / "agent.toml",
        server_url=c.url,
        node=node,
        key=write_key(home / "client.pem", pem),
        ca=c.data_dir / "tls" / "ca.pem",
        state=home / "state",
        allow=whitelist(c.scripts)
        + f"\n[[allow]]\npattern = '^gate$'\nrun = '/bin/sh {c.scripts}/gate.sh'\n",
    )


async def node_states(admin: Signed) -> dict[str, tuple[str, str]]:
    r = await admin.get(f"{ORG}/pushy/node_states")
    assert r.status_code == 200, r.text
    return {d["node_name"]: (d["status"], d["availability"]) for d in r.json()}


async def wait_node(admin: Signed, node: str, state: tuple[str, str]) -> None:
    """Poll ``node_states`` until ``node`` is in ``state``."""
    while True:
        if (await node_states(admin)).get(node) == state:
            return
        await trio.sleep(0.05)


def set_file_size_limit(pid: int, limit: int | None) -> None:
    """``prlimit --fsize`` on the server: ``limit`` bytes, or back to the hard limit."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard if limit is None else limit, hard))


def newest_segment(data: Path) -> Path:
    return sorted((data / "store").glob("segment-*.log"))[-1]


async def test_a_full_disk_under_traffic_with_agents(tmp_path: Path) -> None:
    data = tmp_path / "data"
    api_port, node_port = free_port(), free_port()
    url = f"https://127.0.0.1:{api_port}"
    scripts = write_scripts(tmp_path)
    acknowledged: list[str] = []
    refused_clients: list[str] = []

    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(server_process(data, api_port, node_port, ENV))
        verify = tls.client_ssl_context(ca_file=data / "tls" / "ca.pem")
        http = await stack.enter_async_context(httpx.AsyncClient(verify=verify, timeout=10))
        admin = Signed.from_file(http, url, "admin", data / "keys" / "admin.pem")
        (scripts / "gate.sh").write_text(GATE.replace("@DIR@", str(scripts)))
        c = Cluster(url, data, admin, tmp_path, scripts)
        for node in ("n1", "n2", "late"):  # late's agent starts in the outage
            await prepare_agent(c, node)
        # (agents are entered into the stack outside any cancel scope opened here)
        for node in ("n1", "n2"):
            await c.restart_agent(stack, node)
        with trio.fail_after(LIMIT):
            await wait_online(admin, ["n1", "n2"])
            done = await start_job(
                admin, {"command": "say hi", "nodes": ["n1", "n2"], "capture_output": True}
            )
            assert (await wait_job(admin, done))["status"] == "complete"
            gate = await start_job(
                admin, {"command": "gate", "nodes": ["n1"], "capture_output": True}
            )
            await wait_for_output_events(admin, gate, 1)  # "before" is stored

            # the segment file may grow by a few hundred bytes more
            set_file_size_limit(server.process.pid, newest_segment(data).stat().st_size + 300)
            n = 0
            while True:
                name = f"c{n}"
                n += 1
                r = await admin.post(f"{ORG}/clients", {"name": name, "create_key": True})
                if r.status_code == 201:
                    acknowledged.append(name)
                    continue
                assert (r.status_code, r.json()) == (503, REFUSED)
                refused_clients.append(name)
                break
            r = await admin.post(JOBS, {"command": "say no", "nodes": ["n1"]})
            assert (r.status_code, r.json()) == (503, REFUSED)
            assert (await job_doc(admin, done))["status"] == "complete"
            assert await output(admin, done, "n2", "stdout") == b"hi\n"

        # nodes come and go while nothing can be stored
        await c.restart_agent(stack, "late")
        with trio.fail_after(LIMIT):
            await wait_node(admin, "late", ("online", "available"))
            c.agents["n2"].process.send_signal(signal.SIGKILL)
            await wait_node(admin, "n2", ("offline", "unavailable"))
            # the job's command ends: its output and result cannot be stored, and are held
            (scripts / "go").touch()
            await server.wait_for_line(f"job {gate}: step held")
            assert server.process.returncode is None
            assert (await node_states(admin))["n1"][0] == "online"
            assert (await job_doc(admin, gate))["status"] == "running"

            set_file_size_limit(server.process.pid, None)
            while True:
                r = await admin.post(f"{ORG}/clients", {"name": "after", "create_key": True})
                if r.status_code == 201:
                    acknowledged.append("after")
                    break
                assert (r.status_code, r.json()) == (503, REFUSED)
                await trio.sleep(0.1)
            doc = await wait_job(admin, gate)
            assert doc["status"] == "complete"
            assert doc["nodes"] == {"succeeded": ["n1"]}
            assert await output(admin, gate, "n1", "stdout") == b"before\nafter\n"
            job = await start_job(admin, {"command": "say late", "nodes": ["late"]})
            assert (await wait_job(admin, job))["status"] == "complete"

        server.process.send_signal(signal.SIGKILL)
        await server.process.wait()

    async with server_process(data, api_port, node_port, ENV):
        verify = tls.client_ssl_context(ca_file=data / "tls" / "ca.pem")
        async with httpx.AsyncClient(verify=verify, timeout=10) as http:
            admin = Signed.from_file(http, url, "admin", data / "keys" / "admin.pem")
            with trio.fail_after(LIMIT):
                for name in acknowledged:
                    assert (await admin.get(f"{ORG}/clients/{name}")).status_code == 200, name
                for name in refused_clients:
                    assert (await admin.get(f"{ORG}/clients/{name}")).status_code == 404, name
                jobs: dict[str, Any] = {j["id"]: j for j in (await admin.get(JOBS)).json()}
                assert set(jobs) == {done, gate, job}
                assert all(j["status"] == "complete" for j in jobs.values())
                assert await output(admin, gate, "n1", "stdout") == b"before\nafter\n"
                assert await output(admin, done, "n1", "stdout") == b"hi\n"
