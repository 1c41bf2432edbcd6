"""An agent with two servers, end to end: two real ``pushy serve`` processes sharing one CA
and the admin keys (two file-store data directories, the second made with ``pushy cluster
join``), a real ``pushy agent`` given both URLs
(``server_urls``). It connects to the first; the first is killed (SIGKILL); the agent is on
the second within its backoff bound and runs a job there."""

from __future__ import annotations

import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import trio
from test_jobs_e2e import JOBS, ORG, start_job, wait_job, wait_online
from test_node_e2e import (
    AGENT,
    ca_context_file,
    create_client,
    free_port,
    node_state,
    server_process,
    spawn,
    write_key,
)

from pushy_appliance import chef_auth
from pushy_appliance.agent.failover import BACKOFF_BASE

from helpers import Signed

LIMIT = 90.0
CONNECT_SLACK = 5.0
"""Seconds one connection (config request, TLS, upgrade, hello) may take on a loaded box."""

PUSHY = [sys.executable, "-m", "pushy_appliance.cli"]


async def test_the_agent_fails_over_to_the_second_server_and_runs_a_job_there(
    tmp_path: Path,
) -> None:
    data_a, data_b = tmp_path / "a", tmp_path / "b"
    url_a, url_b = (f"https://127.0.0.1:{free_port()}" for _ in "ab")
    ca = data_a / "tls" / "ca.pem"
    node_key = chef_auth.generate_private_key()
    key = write_key(tmp_path / "node.pem", chef_auth.private_key_pem(node_key))
    config = tmp_path / "agent.toml"
    config.write_text(
        f"server_urls = {json.dumps([url_a + ORG, url_b + ORG])}\n"
        'node_name = "n1"\n'
        f"client_key = {json.dumps(str(key))}\n"
        f"ca_cert = {json.dumps(str(ca))}\n"
        f"state_dir = {json.dumps(str(tmp_path / 'state'))}\n"
        f"working_dir = {json.dumps(str(tmp_path))}\n"
        '[log]\nlevel = "debug"\n[facts]\nohai = "off"\n'
        "[[allow]]\npattern = '^say ([a-z]+)$'\nrun = '/bin/echo \\1'\n"
    )
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(
                server_process(data_a, int(url_a.rsplit(":", 1)[1]), free_port())
            )
            http = await stack.enter_async_context(
                httpx.AsyncClient(verify=ca_context_file(ca), timeout=10)
            )
            # B shares A's keys and CA before its first start; it issues its own certificate
            joined = await trio.run_process(
                [*PUSHY, "cluster", "join", str(data_a), "--data-dir", str(data_b)],
                capture_stdout=True,
                capture_stderr=True,
            )
            assert b"now shares the keys and CA" in joined.stdout, joined.stderr
            await stack.enter_async_context(
                server_process(data_b, int(url_b.rsplit(":", 1)[1]), free_port())
            )
            admins = []
            for url, data in ((url_a, data_a), (url_b, data_b)):
                admin = Signed.from_file(http, url, "admin", data / "keys" / "admin.pem")
                await create_client(admin, "n1", chef_auth.public_key_pem(node_key))
                admins.append(admin)
            admin_a, admin_b = admins
            agent = await stack.enter_async_context(
                spawn("agent n1", [*AGENT, "--config", str(config)])
            )
            await wait_online(admin_a, ["n1"])
            assert (await node_state(admin_b, "n1"))["status"] == "offline"

            a.process.kill()
            await a.process.wait()
            killed_at = trio.current_time()
            await wait_online(admin_b, ["n1"])
            took = trio.current_time() - killed_at

            # the first attempt after the loss went to B, within one switch, and held
            assert agent.count(f"connecting to {url_a}{ORG}") == 1
            assert agent.count(f"connecting to {url_b}{ORG} (attempt 1)") == 1
            [switch] = [line for line in agent.lines if f"; trying {url_b}{ORG} in " in line]
            assert float(switch.rsplit(" in ", 1)[1].split()[0]) <= BACKOFF_BASE
            assert took < BACKOFF_BASE + CONNECT_SLACK, took

            job_id = await start_job(
                admin_b, {"command": "say hello", "nodes": ["n1"], "capture_output": True}
            )
            doc = await wait_job(admin_b, job_id)
            assert (doc["status"], doc["nodes"]) == ("complete", {"succeeded": ["n1"]})
            r = await admin_b.get(f"{JOBS}/{job_id}/output/n1/stdout")
            assert (r.status_code, r.content) == (200, b"hello\n")
