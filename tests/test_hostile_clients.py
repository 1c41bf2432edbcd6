"""Slow and hostile clients (issue 12 §3): 1,000 TCP connections to each listener that never
finish their TLS handshake or their request do not stop real agents or API clients from being
served, and the listeners close them after ``limits.handshake_timeout``; on the node listener
no more than ``limits.node_handshakes`` may wait at once (the oldest goes first)."""

from __future__ import annotations

import resource
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from test_jobs_e2e import Cluster, start_job, wait_job, wait_online, write_scripts
from test_node_e2e import ORG, free_port, raw_node, server_process, welcomed

from pushy_appliance import chef_auth, tls
from pushy_appliance.config import LimitsConfig
from pushy_appliance.handshakes import HandshakeLimit

from helpers import Signed, admin_client, running_server, test_config

HANDSHAKE_TIMEOUT = LimitsConfig().handshake_timeout
PER_LISTENER = 1000
CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
"""The first bytes of a TLS ClientHello, the rest of which never comes."""


def raise_descriptor_limit(needed: int) -> None:
    """The test holds ``needed`` sockets, the server (which inherits the limit) as many."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"descriptor limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Hostile:
    """Connections that never finish, of three kinds: TCP only, a TLS ClientHello cut short,
    and TLS done with a request (HTTP) or upgrade request (nodes) cut short."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.tcp: list[trio.abc.Stream] = []
        self.tls: list[trio.abc.Stream] = []
        self.request: list[trio.abc.Stream] = []

    async def open(self, port: int, count: int, request_head: bytes) -> None:
        limiter = trio.CapacityLimiter(100)

        async def one(kind: int) -> None:
            async with limiter:
                stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
                if kind == 0:
                    self.tcp.append(stream)
                elif kind == 1:
                    await stream.send_all(CLIENT_HELLO_START)
                    self.tls.append(stream)
                else:
                    tls_stream = trio.SSLStream(stream, self.context, server_hostname="127.0.0.1")
                    await tls_stream.do_handshake()
                    await tls_stream.send_all(request_head)
                    self.request.append(tls_stream)

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i % 3)

    @staticmethod
    async def closed_by_peer(streams: list[trio.abc.Stream]) -> None:
        """Wait until the server has closed every one of ``streams``."""

        async def one(stream: trio.abc.Stream) -> None:
            try:
                while await stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass

        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(one, stream)

    async def aclose(self) -> None:
        for stream in [*self.tcp, *self.tls, *self.request]:
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def hostile(context: ssl.SSLContext) -> AsyncIterator[Hostile]:
    h = Hostile(context)
    try:
        yield h
    finally:
        with trio.CancelScope(shield=True):
            await h.aclose()


async def test_a_thousand_stalled_connections_per_listener_do_not_stop_service(
    tmp_path: Path,
) -> None:
    raise_descriptor_limit(4 * PER_LISTENER + 1024)
    data = tmp_path / "data"
    api_port, node_port = free_port(), free_port()
    url = f"https://127.0.0.1:{api_port}"
    env = {"PUSHY_HEARTBEAT_INTERVAL": "0.5", "PUSHY_LOG_LEVEL": "debug"}
    nodes = ["n1", "n2"]
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(server_process(data, api_port, node_port, env))
        context = tls.client_ssl_context(ca_file=data / "tls" / "ca.pem")
        http = await stack.enter_async_context(httpx.AsyncClient(verify=context, timeout=10))
        admin = Signed.from_file(http, url, "admin", data / "keys" / "admin.pem")
        c = Cluster(url, data, admin, tmp_path, write_scripts(tmp_path))
        api = await stack.enter_async_context(hostile(context))
        node = await stack.enter_async_context(hostile(context))
        opened = trio.current_time()
        with trio.fail_after(60):
            await api.open(api_port, PER_LISTENER, b"GET /pushy/_status HTTP/1.1\r\nHost: x\r\n")
            upgrade = f"GET {ORG}/pushy/connect/n1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            await node.open(node_port, PER_LISTENER, upgrade.encode())
        # while every one of them is still open, real clients are served
        for name in nodes:
            await c.start_agent(stack, name)
        with trio.fail_after(20):
            await wait_online(admin, nodes)
            job = await start_job(admin, {"command": "say served", "nodes": nodes})
            assert (await wait_job(admin, job))["status"] == "complete"
            r = await admin.get("/pushy/_status")
            assert r.status_code == 200
            assert r.json()["nodes"] == {"online": 2, "available": 2}
        assert trio.current_time() - opened < HANDSHAKE_TIMEOUT  # none was closed yet

        # and the listeners close them: the node listener every kind, the API those that
        # never finished their TLS handshake (a request whose headers never end waits for
        # the keep-alive timeout, 75 s)
        with trio.fail_after(HANDSHAKE_TIMEOUT + 15):
            await Hostile.closed_by_peer([*node.tcp, *node.tls, *node.request, *api.tcp, *api.tls])
        with trio.fail_after(20):
            await wait_online(admin, nodes)
            assert (await admin.get(f"{ORG}/pushy/node_states")).status_code == 200
        assert server.process.returncode is None


async def test_the_oldest_stalled_node_connections_make_room(tmp_path: Path) -> None:
    config = test_config(tmp_path / "data", **{"limits.node_handshakes": 50})
    async with running_server(config) as info, admin_client(info) as admin:
        r = await admin.post(f"{ORG}/clients", {"name": "good", "create_key": True})
        key = chef_auth.load_private_key(r.json()["chef_key"]["private_key"].encode())
        port = int(info.node_url.rsplit(":", 1)[1])
        streams: list[trio.SocketStream] = []
        try:
            with trio.fail_after(20):
                for _ in range(200):  # one at a time: accepted in this order
                    streams.append(await trio.open_tcp_stream("127.0.0.1", port))
                # the 150 oldest were dropped to keep 50 waiting
                await Hostile.closed_by_peer(streams[:150])
                # a real node, the newest, pushes out the oldest still waiting
                async with raw_node(info, "good", key) as ws:
                    await welcomed(ws)
                    await Hostile.closed_by_peer(streams[150:151])
                    doc = await node_state(admin, "good")
                    assert (doc["status"], doc["availability"]) == ("online", "available")
            for stream in streams[151:]:
                with trio.move_on_after(0.01):  # still waiting for their handshake
                    assert await stream.receive_some(1) == b"never"
        finally:
            for stream in streams:
                await trio.aclose_forcefully(stream)


async def node_state(admin: Signed, node: str) -> dict[str, Any]:
    r = await admin.get(f"{ORG}/pushy/node_states/{node}")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def test_handshake_limit_drops_the_oldest_pending_and_keeps_the_done(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    ended: list[tuple[int, str]] = []

    async def connection(n: int, finishes: bool, limit: HandshakeLimit) -> None:
        try:
            if finishes:
                limit.done()
            await trio.sleep_forever()
        finally:
            ended.append((n, "cancelled"))

    async with trio.open_nursery() as nursery:
        limit = HandshakeLimit(nursery, 2, name="test listener")
        limit.nursery.start_soon(connection, 0, True, limit)  # finishes its handshake
        await trio.testing.wait_all_tasks_blocked()
        limit.nursery.start_soon(connection, 1, False, limit)
        limit.nursery.start_soon(connection, 2, False, limit)
        await trio.testing.wait_all_tasks_blocked()
        assert limit.statistics().pending == 2
        limit.nursery.start_soon(connection, 3, False, limit)  # pushes out 1, not 0
        await trio.testing.wait_all_tasks_blocked()
        assert ended == [(1, "cancelled")]
        assert (limit.statistics().pending, limit.statistics().dropped) == (2, 1)
        limit.nursery.start_soon(connection, 4, False, limit)  # pushes out 2
        await trio.testing.wait_all_tasks_blocked()
        assert ended == [(1, "cancelled"), (2, "cancelled")]
        limit.done()  # outside a connection's task: nothing
        assert limit.statistics().pending == 2
        nursery.cancel_scope.cancel()
    assert [r.getMessage() for r in caplog.records if r.name == "pushy_appliance.handshakes"] == [
        "test listener: 2 connections in their handshake; dropping the oldest (1 dropped so far)"
    ]
    with pytest.raises(ValueError, match="at least 1"):
        HandshakeLimit(nursery, 0, name="x")
