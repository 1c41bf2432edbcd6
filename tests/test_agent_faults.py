"""Agent faults mid-job (issue 12 §3): the job ends with every node in a final state and
nothing acknowledged is lost.

- a network cut (a TCP proxy between agent and server that black-holes both directions of
  the connection: no FIN, no RST): the server finds out by heartbeat timeout, the agent by
  losing the server; the agent comes back on a new connection within the reconnect grace and
  the job completes with its output whole;
- an agent ``kill -9`` mid-output: its node ends ``crashed`` when the grace expires, the other
  node succeeds, and every output event the server stored before the kill is in the job's
  stored feed exactly as it was sent live;
- a server restart (SIGTERM, then ``kill -9``) while a job runs on 50 agents (one
  ``pushy_appliance.agent.multi`` process): every node succeeds with both its lines of output.

Real agents (subprocesses), real TLS sockets on 127.0.0.1, real commands.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from test_feeds import open_feed
from test_jobs_e2e import (
    JOBS,
    ORG,
    Cluster,
    agent_config,
    feed_events,
    output,
    start_job,
    wait_job,
    wait_online,
    whitelist,
    write_scripts,
)
from test_jobs_restart import wait_for_output_events
from test_node_e2e import create_client, free_port, server_process, spawn, write_key

from pushy_appliance import chef_auth, tls

from helpers import Signed, admin_client, running_server, test_config

LIMIT = 60.0


# --- a network that drops a connection without closing it -----------------------------------


class BlackHoleProxy:
    """Forwards TCP connections from ``127.0.0.1:PORT`` to ``target``; :meth:`cut` black-holes
    every connection open at that moment, both ways (bytes are taken and dropped, nothing is
    closed, so neither end sees a FIN or a RST), while later connections pass."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.cuts = 0
        self.connections = 0

    def cut(self) -> None:
        self.cuts += 1

    async def serve(self, port: int, *, task_status: trio.TaskStatus[None]) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        era = self.cuts
        upstream = await trio.open_tcp_stream(*self.target)
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, era)
            nursery.start_soon(self._pump, upstream, client, era)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, era: int) -> None:
        try:
            while data := await src.receive_some(65536):
                if self.cuts > era:
                    await trio.sleep_forever()  # held open, never closed: a dead path
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def node_status(admin: Signed, node: str) -> str:
    r = await admin.get(f"{ORG}/pushy/node_states")
    assert r.status_code == 200, r.text
    states = {d["node_name"]: d["status"] for d in r.json()}
    return str(states.get(node))


async def wait_status(admin: Signed, node: str, status: str) -> None:
    while True:
        if await node_status(admin, node) == status:
            return
        await trio.sleep(0.05)


async def test_a_network_cut_mid_job_heals_on_a_new_connection(tmp_path: Path) -> None:
    """The path between an agent and the server goes dead mid-run: both ends find out by
    their heartbeats, the agent reconnects (same incarnation, still running the job) within
    the reconnect grace, and the job completes with the node's output whole, run once."""
    node_port = free_port()
    proxy = BlackHoleProxy(("127.0.0.2", node_port))
    scripts = write_scripts(tmp_path)
    config = test_config(
        tmp_path / "data", node_listen=f"127.0.0.2:{node_port}", **{"jobs.reconnect_grace": 30}
    )
    with trio.fail_after(LIMIT):
        async with (
            trio.open_nursery() as nursery,
            running_server(config) as info,
            admin_client(info) as admin,
        ):
            # the agent is told wss://127.0.0.1:PORT: the proxy, in front of 127.0.0.2:PORT
            await nursery.start(proxy.serve, node_port)
            c = Cluster(info.url, info.data_dir, admin, tmp_path, scripts, info)
            async with AsyncExitStack() as stack:
                await c.start_agent(stack, "cut")
                await wait_online(admin, ["cut"])
                assert proxy.connections == 1
                job = await start_job(admin, {"command": "slow 6", "nodes": ["cut"],
                                              "capture_output": True})  # fmt: skip
                await wait_job(admin, job, {"running"}, running=1)
                await wait_for_output_events(admin, job, 1)  # "start cut" is stored

                proxy.cut()
                # the server: no heartbeat for 3 × 0.5 s, the node is offline, still running
                await wait_status(admin, "cut", "offline")
                doc = await wait_job(admin, job, {"running"})
                assert doc["nodes"] == {"running": ["cut"]}
                # the agent: the server is lost; it connects again through the healed network
                await wait_status(admin, "cut", "online")
                assert proxy.connections == 2

                doc = await wait_job(admin, job)
                assert doc["status"] == "complete", doc
                assert doc["nodes"] == {"succeeded": ["cut"]}
                assert await output(admin, job, "cut", "stdout") == b"start cut\ndone cut\n"
                assert c.agents["cut"].count(f"job {job} on cut: committed") == 1
            nursery.cancel_scope.cancel()


# --- an agent killed mid-output ---------------------------------------------------------------

COUNTER = """\
i=0
while [ $i -lt "$1" ]; do
  i=$((i+1))
  printf 'line %06d\\n' $i
  sleep 0.01
done
"""


async def start_agent(c: Cluster, stack: AsyncExitStack, node: str, allow: str) -> None:
    """``node``'s agent with the test whitelist and ``allow`` (more ``[[allow]]`` entries)."""
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
        allow=whitelist(c.scripts) + allow,
    )
    await c.restart_agent(stack, node)


async def test_an_agent_killed_mid_output_ends_crashed_with_its_stored_output_kept(
    tmp_path: Path,
) -> None:
    """``kill -9`` of an agent while its command prints: its node ends ``crashed`` when the
    reconnect grace expires, the other node's run is unaffected, and the output events the
    server stored before the kill are all in the job's stored feed, exactly as the live feed
    carried them (contiguous lines from the first)."""
    scripts = write_scripts(tmp_path)
    (scripts / "counter.sh").write_text(COUNTER)
    config = test_config(tmp_path / "data", **{"jobs.reconnect_grace": 2})
    allow = f"\n[[allow]]\npattern = '^count ([0-9]+)$'\nrun = '/bin/sh {scripts}/counter.sh \\1'\n"
    lines = 300
    with trio.fail_after(LIMIT):
        async with running_server(config) as info, admin_client(info) as admin:
            c = Cluster(info.url, info.data_dir, admin, tmp_path, scripts, info)
            async with AsyncExitStack() as stack:
                for node in ("victim", "steady"):
                    await start_agent(c, stack, node, allow)
                await wait_online(admin, ["victim", "steady"])
                job = await start_job(admin, {"command": f"count {lines}",
                                              "nodes": ["victim", "steady"],
                                              "capture_output": True})  # fmt: skip
                async with open_feed(admin, f"{ORG}/pushy/job_status_feed/{job}") as live:
                    while victim_lines(live.events) < 5:
                        await live.changed.wait()
                    c.agents["victim"].process.kill()  # SIGKILL, mid-output
                    await c.agents["victim"].process.wait()
                    doc = await wait_job(admin, job)
                    await live.wait_ended()
                    live_output = [e.data for e in live.events if e.name == "output"]
                assert doc["status"] == "complete", doc
                assert doc["nodes"] == {"succeeded": ["steady"], "crashed": ["victim"]}
                expected = "".join(f"line {i:06d}\n" for i in range(1, lines + 1))
                assert await output(admin, job, "steady", "stdout") == expected.encode()
                # what the live feed carried is what is stored, the victim's from its first line
                stored = [data for name, data in await feed_events(admin, job) if name == "output"]
                assert stored == live_output
                text = "".join(d["data"] for d in stored if d["node"] == "victim")
                got = text.splitlines()
                assert 5 <= len(got) < lines
                assert got == [f"line {i:06d}" for i in range(1, len(got) + 1)]
                r = await admin.get(f"{JOBS}/{job}/output/victim/stdout")
                assert r.status_code == 404  # it never finished


def victim_lines(events: list[Any]) -> int:
    return sum(
        e.name == "output" and isinstance(e.data, dict) and e.data["node"] == "victim"
        for e in events
    )


# --- a server restart under fifty agents ----------------------------------------------------

GATED = """\
#!/bin/sh
printf 'start %s\\n' "$PUSHY_NODE_NAME"
while [ ! -e "@GATE@" ]; do sleep 0.1; done
printf 'done %s\\n' "$PUSHY_NODE_NAME"
"""
ENV = {
    "PUSHY_HEARTBEAT_INTERVAL": "0.5",
    # Longer than an agent may take to come back: its backoff starts over only after a
    # connection lived 60 s (``agent.connection.STABLE_AFTER``), so after two restarts in a
    # row a few agents wait up to ``BACKOFF_CAP`` (60 s) between attempts; with a shorter
    # grace such a node ends ``crashed`` (seen on a loaded machine with 40 s).
    "PUSHY_JOBS_RECONNECT_GRACE": "150",
}


@asynccontextmanager
async def http_admin(data: Path, url: str) -> AsyncIterator[Signed]:
    verify = tls.client_ssl_context(ca_file=data / "tls" / "ca.pem")
    async with httpx.AsyncClient(verify=verify, timeout=10) as http:
        yield Signed.from_file(http, url, "admin", data / "keys" / "admin.pem")


async def test_server_restarts_while_fifty_agents_run_a_job(tmp_path: Path) -> None:
    """A job on 50 agents prints a line, then waits; the server is stopped (SIGTERM) and
    started again, then killed (``kill -9``) and started again; then the job may go on. It
    completes with all 50 nodes ``succeeded``, each with both lines, each run once."""
    nodes = [f"n{i:02d}" for i in range(50)]
    data = tmp_path / "data"
    api_port, node_port = free_port(), free_port()
    url = f"https://127.0.0.1:{api_port}"
    shared = chef_auth.generate_private_key()
    key = write_key(tmp_path / "nodes.pem", chef_auth.private_key_pem(shared))
    gate = tmp_path / "gate"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "chef-client"  # the agents' default whitelist
    script.write_text(GATED.replace("@GATE@", str(gate)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    multi = [
        sys.executable, "-m", "pushy_appliance.agent.multi",
        "--server", f"{url}{ORG}", "--key", str(key),
        "--ca-cert", str(data / "tls" / "ca.pem"),
        "--state-root", str(tmp_path / "states"), *nodes,
    ]  # fmt: skip
    path_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    with trio.fail_after(4 * LIMIT):
        async with AsyncExitStack() as stack:
            server = await stack.enter_async_context(server_process(data, api_port, node_port, ENV))
            async with http_admin(data, url) as admin:
                for node in nodes:
                    await create_client(admin, node, chef_auth.public_key_pem(shared))
                agents = await stack.enter_async_context(spawn("50 agents", multi, path_env))
                await wait_online(admin, nodes)
                job = await start_job(admin, {"command": "chef-client", "nodes": nodes,
                                              "capture_output": True})  # fmt: skip
                await wait_job(admin, job, {"running"}, running=len(nodes))
                await wait_for_output_events(admin, job, len(nodes))  # every "start" stored

            for how in (signal.SIGTERM, signal.SIGKILL):
                server.process.send_signal(how)
                await server.process.wait()
                server = await stack.enter_async_context(
                    server_process(data, api_port, node_port, ENV)
                )
                async with http_admin(data, url) as admin:
                    doc = await wait_job(admin, job, {"running"})
                    assert doc["nodes"] == {"running": nodes}
                    await _all_back(admin, nodes)

            gate.touch()
            async with http_admin(data, url) as admin:
                doc = await wait_job(admin, job)
                assert doc["status"] == "complete", doc
                assert doc["nodes"] == {"succeeded": nodes}
                for node in nodes:
                    assert await output(admin, job, node, "stdout") == (
                        f"start {node}\ndone {node}\n".encode()
                    )
            assert agents.count(f"job {job} on n00: committed") == 1
            assert sum(agents.count(f"on {node}: committed") for node in nodes) == len(nodes)
            assert server.count("resumed (running, 50 nodes)") == 1


async def _all_back(admin: Signed, nodes: list[str]) -> None:
    """Every node online again (busy: the job holds it)."""
    while True:
        r = await admin.get(f"{ORG}/pushy/node_states")
        states: dict[str, Any] = {d["node_name"]: d["status"] for d in r.json()}
        if all(states.get(n) == "online" for n in nodes):
            return
        await trio.sleep(0.1)
