"""Memory and time limits of the feeds (issue 13 #4).

- Open feeds are capped per principal (429) and on the server (503), with a message naming
  the limit; a feed that ends gives its place back.
- Feed readers that never read, over real sockets (Ethernet-sized segments, a 4 KiB receive
  window), on a job whose node sends 1 MB of output in one frame, beside a real agent
  running another job on a 0.5 s heartbeat: the server's memory grows by a small, bounded
  amount per reader (one write of at most 16 KiB, not the 1 MB event and its TLS record),
  both jobs complete, the agent is never dropped, and a SIGTERM with the readers still
  attached stops the server within seconds, not the drain deadline or TCP's patience.

``benchmarks/stalled_readers.py`` is the same at the issue's scale (1,000 readers).
"""

from __future__ import annotations

import signal
import ssl
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import trio
from test_feeds import ORG, open_feed, start_job
from test_jobs_e2e import Cluster, wait_job, wait_online, write_scripts
from test_node_e2e import free_port, server_process

from pushy_appliance import tls

from fakenode import Behaviour, fake_nodes
from helpers import Signed, admin_client, running_server, test_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import stalled_readers
from harness import proc_stats

DEADLINE = 60.0


async def open_feeds(admin: Signed) -> int:
    r = await admin.http.get(admin.base + "/pushy/_status")
    count: int = r.json()["feeds"]["open"]
    return count


async def wait_status(admin: Signed, figure: str, value: int) -> None:
    """Poll ``_status`` until its ``feeds[figure]`` is ``value``."""
    while True:
        r = await admin.http.get(admin.base + "/pushy/_status")
        if r.json()["feeds"][figure] == value:
            return
        await trio.sleep(0.02)


async def test_open_feeds_are_capped_per_principal_and_on_the_server(tmp_path: Path) -> None:
    config = test_config(tmp_path, **{"feeds.max_per_principal": 2, "feeds.max_connections": 3})
    path = f"{ORG}/job_status_feed"
    async with (
        running_server(config) as info,
        admin_client(info) as admin,
        admin_client(info, "pivotal") as pivotal,
    ):
        with trio.fail_after(DEADLINE):
            async with open_feed(admin, path) as a1, open_feed(admin, path) as a2:
                assert (a1.status, a2.status) == (200, 200)
                async with open_feed(admin, path) as a3:
                    assert a3.status == 429
                    await a3.wait_ended()
                    assert a3.body() == {
                        "error": "too many open feeds of 'admin' (feeds.max_per_principal"
                        " = 2): close one, or try again later"
                    }
                async with open_feed(pivotal, path) as p1:
                    assert p1.status == 200
                    async with open_feed(pivotal, path) as p2:
                        assert p2.status == 503
                        await p2.wait_ended()
                        assert p2.body() == {
                            "error": "too many open feeds on this server (feeds.max_connections"
                            " = 3): close one, or try again later"
                        }
                    assert await open_feeds(admin) == 3
            # the feeds that ended gave their places back
            await wait_status(admin, "open", 0)
            async with open_feed(admin, path) as again:
                assert again.status == 200


async def rss_kib(pid: int) -> int:
    return proc_stats(pid).rss_kib


async def test_stalled_readers_hold_little_delay_no_node_and_do_not_hold_the_stop(
    tmp_path: Path,
) -> None:
    readers = 50
    data = tmp_path / "data"
    api_port, node_port = free_port(), free_port()
    url = f"https://127.0.0.1:{api_port}"
    env = {"PUSHY_HEARTBEAT_INTERVAL": "0.5", "PUSHY_LOG_LEVEL": "debug"}
    gate = trio.Event()
    big = {"big": Behaviour(stdout=b"x" * 1_000_000, gate=gate)}
    stalled: list[stalled_readers.StalledReader] = []
    async with AsyncExitStack() as stack:
        stack.callback(lambda: [reader.abort() for reader in stalled])
        server = await stack.enter_async_context(server_process(data, api_port, node_port, env))
        verify = tls.client_ssl_context(ca_file=data / "tls" / "ca.pem")
        http = await stack.enter_async_context(httpx.AsyncClient(verify=verify, timeout=10))
        admin = Signed.from_file(http, url, "admin", data / "keys" / "admin.pem")
        c = Cluster(url, data, admin, tmp_path, write_scripts(tmp_path))
        await c.start_agent(stack, "quiet")

        class Info:  # what fake_nodes needs of a server
            node_url = f"wss://127.0.0.1:{node_port}"
            data_dir = data

        with trio.fail_after(DEADLINE):
            async with fake_nodes(Info, admin, big):
                await wait_online(admin, ["quiet", "big"])
                body = {"command": "x", "nodes": ["big"], "capture_output": True}
                job = await start_job(admin, body)
                ctx = ssl.create_default_context(cafile=str(data / "tls" / "ca.pem"))
                ctx.set_alpn_protocols(["http/1.1"])
                path = f"{ORG}/job_status_feed/{job}"
                for _ in range(readers):
                    headers = stalled_readers.feed_headers(path, "admin", admin.key, api_port)
                    stalled.append(
                        await stalled_readers.StalledReader.open(api_port, ctx, headers, path)
                    )
                await wait_status(admin, "subscribers", readers)
                pid = server.process.pid
                attached = peak = await rss_kib(pid)

                quiet = await start_job(admin, {"command": "slow 1", "nodes": ["quiet"]})
                gate.set()  # the 1 MB output goes out in one frame: one feed event
                done = trio.Event()

                async def sample() -> None:
                    nonlocal peak
                    while not done.is_set():
                        peak = max(peak, await rss_kib(pid))
                        await trio.sleep(0.02)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sample)
                    assert (await wait_job(admin, job))["status"] == "complete"
                    assert (await wait_job(admin, quiet))["status"] == "complete"
                    await trio.sleep(0.5)
                    done.set()
        # one write of at most 16 KiB and its TLS record per reader, and what the job keeps
        # (the event's text and its encoding once); not a 1 MB write per reader
        grown_kib = peak - attached
        assert grown_kib < 8 * 1024 + readers * 128, (attached, peak)
        # the agent was never dropped, nor slowed to a timeout
        assert server.count("node default/quiet: online (incarnation") == 1
        for bad in ("a write stalled for", "marking offline", "outbox full"):
            assert server.count(bad) == 0, bad
        states = {d["node_name"]: d for d in (await admin.get(f"{ORG}/node_states")).json()}
        assert (states["quiet"]["status"], states["quiet"]["availability"]) == (
            "online",
            "available",
        )

        # a stop with the readers still attached, reading nothing
        server.process.send_signal(signal.SIGTERM)
        began = trio.current_time()
        with trio.fail_after(30):
            await server.process.wait()
        took = trio.current_time() - began
        assert server.process.returncode == 0
        assert took < 5.0, f"the stop took {took:.1f} s with {readers} readers not reading"
        assert server.count(f"drain: {readers} feed connection(s) not reading shut down") == 1
