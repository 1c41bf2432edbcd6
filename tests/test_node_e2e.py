"""The node channel end to end: real ``pushy agent`` subprocesses against the real appliance over
TLS (in-process, or a ``pushy serve`` subprocess where it must be restarted), and raw signed
WebSocket clients for what a well-behaved agent never sends."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from trio_websocket import ConnectionClosed, WebSocketConnection

from pushy_appliance import chef_auth, protocol, tls
from pushy_appliance.agent.connection import open_node_socket
from pushy_appliance.appliance import ServerInfo

from helpers import Signed, admin_client, running_server, test_config

LIMIT = 30.0
INTERVAL = 0.5  # test_config's heartbeat interval
OFFLINE_THRESHOLD = 3
ORG = "/organizations/default"
AGENT = [sys.executable, "-m", "pushy_appliance.cli", "agent"]


# --- subprocesses ---------------------------------------------------------------------------


class Proc:
    """A subprocess whose stderr lines are collected as they come."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []
        self._changed = trio.Event()

    async def pump(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            if complete:
                self.lines.extend(line.decode(errors="replace") for line in complete)
                self._changed.set()
                self._changed = trio.Event()

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for_line(self, text: str, *, count: int = 1) -> None:
        while self.count(text) < count:
            await self._changed.wait()


@asynccontextmanager
async def spawn(
    name: str, argv: list[str], env: dict[str, str] | None = None
) -> AsyncIterator[Proc]:
    """Run ``argv``; on exit SIGKILL it if still running. Its log is printed on failure."""
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    proc = Proc(name, process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proc.pump)
            try:
                yield proc
            finally:
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(10):
                    await process.wait()
                nursery.cancel_scope.cancel()
    finally:
        # pytest shows a test's captured stdout only when it fails
        print(f"----- {name} (exit {process.returncode}) -----")
        print("\n".join(proc.lines[-200:]))


def agent_argv(server_url: str, node: str, key: Path, state_dir: Path, *trust: str) -> list[str]:
    return [
        *AGENT,
        "--server",
        f"{server_url}{ORG}",
        "--node",
        node,
        "--key",
        str(key),
        *trust,
        "--state-dir",
        str(state_dir),
        "--log-level",
        "debug",
    ]


# --- API helpers ----------------------------------------------------------------------------


async def create_client(admin: Signed, name: str, public_pem: str | None = None) -> str | None:
    body: dict[str, Any] = {"name": name}
    if public_pem is None:
        body["create_key"] = True
    else:
        body["public_key"] = public_pem
    r = await admin.post(f"{ORG}/clients", body)
    assert r.status_code == 201, r.text
    return r.json()["chef_key"].get("private_key")  # type: ignore[no-any-return]


async def node_state(admin: Signed, node: str) -> dict[str, Any]:
    r = await admin.get(f"{ORG}/pushy/node_states/{node}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def wait_state(admin: Signed, node: str, status: str, availability: str) -> None:
    """Poll ``node_states/NODE`` (the operator's view) until it reads as wanted."""
    while True:
        doc = await node_state(admin, node)
        if (doc["status"], doc["availability"]) == (status, availability):
            return
        await trio.sleep(0.05)


def log_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the in-process server logged so far."""
    return [r.getMessage() for r in caplog.records]


def write_key(path: Path, pem: str) -> Path:
    path.write_text(pem)
    path.chmod(0o600)
    return path


# --- raw node connections -------------------------------------------------------------------


def hello_frame(seq: int = 1) -> bytes:
    return protocol.encode(
        protocol.Hello(
            incarnation_id=str(uuid.uuid4()),
            protocol_version=protocol.PROTOCOL_VERSION,
            agent_version="raw-test",
            job_id=None,
            job_state="idle",
            pending_result=None,
            facts={"hostname": "raw"},
            seq=seq,
            ts=time.time(),
        )
    )


def heartbeat_frame(seq: int) -> bytes:
    return protocol.encode(
        protocol.Heartbeat(job_id=None, job_state="idle", seq=seq, ts=time.time())
    )


def ca_context(info: ServerInfo) -> ssl.SSLContext:
    return tls.client_ssl_context(ca_file=info.data_dir / "tls" / "ca.pem")


@asynccontextmanager
async def raw_node(
    info: ServerInfo,
    node: str,
    key: rsa.RSAPrivateKey,
    *,
    sign_as: str | None = None,
    org: str = "default",
) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket to ``connect/NODE`` of ``org`` signed as ``sign_as`` (default the node)."""
    path = f"/organizations/{org}/pushy/connect/{node}"
    signed = chef_auth.sign_request(
        "GET", path, b"", sign_as or node, key, timestamp=datetime.now(UTC)
    )
    async with open_node_socket(
        info.node_url + path,
        ca_context(info),
        extra_headers=[(k.encode(), v.encode()) for k, v in signed.items()],
        max_message_size=4 * 1024 * 1024,
    ) as ws:
        yield ws


async def refused_upgrade(
    info: ServerInfo, node: str, key: rsa.RSAPrivateKey | None, *, sign_as: str | None = None
) -> tuple[int, Any]:
    """Ask for the upgrade by hand and return the refusal's status and JSON body.

    (trio-websocket's client leaves its socket open when the upgrade is rejected.)
    """
    path = f"{ORG}/pushy/connect/{node}"
    headers = {
        "Host": info.node_url.split("//", 1)[1],
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    if key is not None:
        headers.update(
            chef_auth.sign_request(
                "GET", path, b"", sign_as or node, key, timestamp=datetime.now(UTC)
            )
        )
    request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    host, port = info.node_url.split("//", 1)[1].rsplit(":", 1)
    stream = await trio.open_ssl_over_tcp_stream(
        host, int(port), ssl_context=ca_context(info), https_compatible=True
    )
    async with stream:
        await stream.send_all((request + "\r\n").encode())
        response = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            response += chunk
            head, _, body = response.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if length and len(body) >= length[0]:
                break
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert status != 101
    return status, json.loads(body)


async def welcomed(ws: WebSocketConnection) -> protocol.Welcome:
    await ws.send_message(hello_frame())
    welcome = protocol.decode(await ws.get_message())
    assert isinstance(welcome, protocol.Welcome)
    return welcome


async def close_code(ws: WebSocketConnection) -> int | None:
    """Read (and ignore) frames until the server closes; its close code."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    reason = closed.value.reason
    return None if reason is None else reason.code


# --- tests against the in-process server ----------------------------------------------------


async def test_agent_online_offline_and_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    async with running_server(test_config(data)) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            pem = await create_client(admin, "node1")
            assert pem is not None
            key = write_key(tmp_path / "node1.pem", pem)
            assert await node_state(admin, "node1") == {
                "node_name": "node1",
                "status": "offline",
                "availability": "unavailable",
            }
            state_dir = tmp_path / "state"
            ca = ("--ca-cert", str(data / "tls" / "ca.pem"))
            argv = agent_argv(info.url, "node1", key, state_dir, *ca)
            async with spawn("agent", argv) as agent:
                await agent.wait_for_line("agent starting")
                with trio.fail_after(2.0):
                    await wait_state(admin, "node1", "online", "available")
                session = info.services.nodes.get("default", "node1")
                assert session is not None
                # hello's facts, stored with the online status (committed after the session
                # opened, so possibly a moment after the state reads online)
                model = info.services.nodes.model
                for _ in range(200):  # 2 s
                    facts = model.facts("default", "node1")
                    if facts is not None:
                        break
                    await trio.sleep(0.01)
                assert facts is not None
                assert facts["hostname"] == socket.gethostname()
                assert facts["os"] == "linux"  # ohai's names and values (docs/SEARCH.md)
                # heartbeats keep it online past the offline threshold: its first connection
                # still brings frames twice the threshold after it opened
                beyond = session.connected_at + OFFLINE_THRESHOLD * INTERVAL * 2
                while session.last_received <= beyond:
                    assert info.services.nodes.get("default", "node1") is session
                    await trio.sleep(0.05)
                assert (await node_state(admin, "node1"))["status"] == "online"
                assert agent.count("connected (server incarnation") == 1
                # a killed agent's socket closes with it: offline at once, for that reason,
                # not after the heartbeat timeout
                agent.process.send_signal(signal.SIGKILL)
                with trio.fail_after(OFFLINE_THRESHOLD * INTERVAL + 0.5):
                    await wait_state(admin, "node1", "offline", "unavailable")
                offline = [m for m in log_messages(caplog) if "node default/node1: offline" in m]
                assert offline == ["node default/node1: offline (connection closed)"]
            # a restarted agent (pinning the certificate this time) is online again
            fp = tls.fingerprint((data / "tls" / "server.pem").read_bytes())
            argv = agent_argv(info.url, "node1", key, state_dir, "--fingerprint", fp)
            async with spawn("agent again", argv) as agent:
                await agent.wait_for_line("agent starting")
                with trio.fail_after(2.0):
                    await wait_state(admin, "node1", "online", "available")
                agent.process.send_signal(signal.SIGTERM)
                await agent.process.wait()
                assert agent.process.returncode == 0
            with trio.fail_after(OFFLINE_THRESHOLD * INTERVAL + 0.5):
                await wait_state(admin, "node1", "offline", "unavailable")


async def test_a_second_agent_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_server(test_config(data)) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            pem = await create_client(admin, "node1")
            assert pem is not None
            key = write_key(tmp_path / "node1.pem", pem)
            state_dir = tmp_path / "state"
            argv = agent_argv(
                info.url, "node1", key, state_dir, "--ca-cert", str(data / "tls" / "ca.pem")
            )
            async with spawn("agent", argv) as agent:
                await wait_state(admin, "node1", "online", "available")
                async with spawn("second agent", argv) as second:
                    await second.process.wait()
                    assert second.process.returncode == 1
                    assert second.count(f"state directory {state_dir} is in use by another agent")
                    assert second.count("agent starting") == 0
                assert agent.process.returncode is None
                assert (await node_state(admin, "node1"))["status"] == "online"
                assert agent.count("connected (server incarnation") == 1


async def test_a_client_key_cannot_act_as_another_node(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            pem_a = await create_client(admin, "node-a")
            await create_client(admin, "node-b")
            assert pem_a is not None
            key_a = chef_auth.load_private_key(pem_a)
            as_a = Signed(admin.http, info.url, "node-a", key_a)
            r = await as_a.get(f"{ORG}/pushy/config/node-a")
            assert r.status_code == 200, r.text
            assert r.json()["push_jobs"]["connect_url"] == (
                f"{info.node_url}{ORG}/pushy/connect/node-a"
            )
            r = await as_a.get(f"{ORG}/pushy/config/node-b")
            assert r.status_code == 403
            assert r.json() == {"error": ["Client and node name must match"]}
            assert await refused_upgrade(info, "node-b", key_a, sign_as="node-a") == (
                403,
                {"error": ["Client and node name must match"]},
            )
            # and signing as node-b with node-a's key is not a valid signature at all
            status, _ = await refused_upgrade(info, "node-b", key_a)
            assert status == 401
            assert (await node_state(admin, "node-b"))["status"] == "offline"
            async with raw_node(info, "node-a", key_a) as ws:
                await welcomed(ws)
                assert (await node_state(admin, "node-a"))["status"] == "online"


async def test_deleting_a_client_closes_its_socket_at_once(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            pem = await create_client(admin, "doomed")
            assert pem is not None
            key = chef_auth.load_private_key(pem)
            async with raw_node(info, "doomed", key) as ws:
                await welcomed(ws)
                await ws.send_message(heartbeat_frame(2))
                r = await admin.delete(f"{ORG}/clients/doomed")
                assert r.status_code == 200, r.text
                # well within the heartbeat timeout (3 × 0.5 s), which would close with 4009
                with trio.fail_after(INTERVAL):
                    assert await close_code(ws) == 4003
            assert info.services.nodes.get("default", "doomed") is None
            r = await admin.get(f"{ORG}/pushy/node_states/doomed")
            assert r.status_code == 404
            status, _ = await refused_upgrade(info, "doomed", key)
            assert status == 401


async def test_bad_frames_are_answered_and_other_nodes_stay_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    limit = 65_536
    config = test_config(tmp_path / "data", **{"limits.max_frame_bytes": limit})
    async with running_server(config) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            shared = chef_auth.generate_private_key()
            public = chef_auth.public_key_pem(shared)
            for name in ("good", "bad", "big", "rude", "mute"):
                await create_client(admin, name, public)
            key = write_key(tmp_path / "shared.pem", chef_auth.private_key_pem(shared))
            ca = ("--ca-cert", str(tmp_path / "data" / "tls" / "ca.pem"))
            argv = agent_argv(info.url, "good", key, tmp_path / "state", *ca)
            async with spawn("good agent", argv) as agent:
                await agent.wait_for_line("connected (server incarnation")
                await wait_state(admin, "good", "online", "available")
                good = info.services.nodes.get("default", "good")
                assert good is not None

                # garbage, wrong types and a text message: logged and dropped; the third
                # within a minute closes the connection with 1008. A replayed seq is
                # dropped and logged but is no protocol error.
                async with raw_node(info, "bad", shared) as ws:
                    await welcomed(ws)
                    await ws.send_message(b"\xc1\xc1\xc1 not msgpack")
                    await ws.send_message(heartbeat_frame(5))
                    await ws.send_message(heartbeat_frame(3))
                    wrong = {"type": "heartbeat", "job_state": 7, "seq": 6, "ts": time.time()}
                    await ws.send_message(msgpack.packb(wrong))
                    await ws.send_message(heartbeat_frame(7))
                    assert (await node_state(admin, "bad"))["status"] == "online"
                    await ws.send_message("a text frame")
                    assert await close_code(ws) == 1008
                messages = log_messages(caplog)
                assert any(
                    "node default/bad: protocol error" in m and "undecodable" in m for m in messages
                )
                assert any("heartbeat.job_state" in m for m in messages)
                assert any("heartbeat frame with seq 3 after 5 dropped" in m for m in messages)
                assert any("3 protocol errors within a minute" in m for m in messages)
                await wait_state(admin, "bad", "offline", "unavailable")

                # a frame over the cap: 1009
                async with raw_node(info, "big", shared) as ws:
                    await welcomed(ws)
                    await ws.send_message(b"\x00" * (limit + 1))
                    assert await close_code(ws) == 1009

                # a first frame that is not hello: 1008
                async with raw_node(info, "rude", shared) as ws:
                    await ws.send_message(heartbeat_frame(1))
                    assert await close_code(ws) == 1008

                # upgraded, then gone without a word; and bytes that are not even TLS
                async with raw_node(info, "mute", shared):
                    pass
                port = int(info.node_url.rsplit(":", 1)[1])
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"GET / HTTP/1.1\r\n\r\n" + os.urandom(512))
                await stream.aclose()
                # and no signature at all: refused before the upgrade
                status, body = await refused_upgrade(info, "good", None)
                assert status == 400
                assert body["error"][0].startswith("missing required authentication header(s)")

                # the well-behaved node was served throughout, on its first connection: the
                # session it had before all this still brings its heartbeats after it
                after = trio.current_time()
                while good.last_received <= after:
                    assert info.services.nodes.get("default", "good") is good
                    await trio.sleep(0.05)
                doc = await node_state(admin, "good")
                assert (doc["status"], doc["availability"]) == ("online", "available")
                assert agent.count("connected (server incarnation") == 1
                assert agent.count("retrying in") == 0
                async with raw_node(info, "mute", shared) as ws:
                    await welcomed(ws)  # and the listener still accepts new nodes


# --- the server restart, with fifty agents ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def server_process(
    data: Path, api_port: int, node_port: int, env: dict[str, str] | None = None
) -> AsyncIterator[Proc]:
    """``pushy serve`` on fixed ports (agents reconnect to the same URL after a restart);
    ready once it logged its URL."""
    argv = [
        sys.executable,
        "-m",
        "pushy_appliance.cli",
        "serve",
        "--data-dir",
        str(data),
        "--listen",
        f"127.0.0.1:{api_port}",
        "--node-listen",
        f"127.0.0.1:{node_port}",
    ]
    env = env if env is not None else {"PUSHY_HEARTBEAT_INTERVAL": str(INTERVAL)}
    async with spawn(f"server :{api_port}", argv, env) as server:
        with trio.fail_after(30):
            await server.wait_for_line("serving https://")
        yield server


async def count_attempts(
    data: Path, port: int, seen: list[tuple[float, str]], *, task_status: Any
) -> None:
    """Stand in for the stopped server on its API port: note who tries to connect, answer 503."""
    context = tls.server_ssl_context(data / "tls" / "server.pem", data / "tls" / "server.key")

    async def handle(stream: trio.SocketStream) -> None:
        tls_stream = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
        request = b""
        try:
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in request:
                    chunk = await tls_stream.receive_some(65536)
                    if not chunk:
                        return
                    request += chunk
            user = "?"
            for line in request.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"x-ops-userid":
                    user = value.strip().decode()
            seen.append((trio.current_time(), user))
            await tls_stream.send_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
        except trio.BrokenResourceError:
            return
        finally:
            await tls_stream.aclose()

    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    await trio.serve_listeners(handle, listeners, task_status=task_status)


async def test_server_restart_brings_fifty_agents_back_within_the_backoff(
    tmp_path: Path,
) -> None:
    nodes = [f"n{i:02d}" for i in range(50)]
    data = tmp_path / "data"
    api_port, node_port = free_port(), free_port()
    url = f"https://127.0.0.1:{api_port}"
    shared = chef_auth.generate_private_key()
    key = write_key(tmp_path / "nodes.pem", chef_auth.private_key_pem(shared))
    ca = data / "tls" / "ca.pem"
    multi = [
        sys.executable,
        "-m",
        "pushy_appliance.agent.multi",
        "--server",
        f"{url}{ORG}",
        "--key",
        str(key),
        "--ca-cert",
        str(ca),
        "--state-root",
        str(tmp_path / "states"),
        *nodes,
    ]

    async def all_online(admin: Signed) -> None:
        while True:
            r = await admin.get(f"{ORG}/pushy/node_states")
            states = {d["node_name"]: d["status"] for d in r.json()}
            if all(states.get(n) == "online" for n in nodes):
                return
            await trio.sleep(0.1)

    with trio.fail_after(80):
        async with trio.open_nursery() as nursery:
            async with server_process(data, api_port, node_port) as server:
                async with httpx.AsyncClient(verify=ca_context_file(ca), timeout=10) as http:
                    admin = Signed.from_file(http, url, "admin", data / "keys" / "admin.pem")
                    for node in nodes:
                        await create_client(admin, node, chef_auth.public_key_pem(shared))
                    agents = await nursery.start(_spawn_in_nursery, "50 agents", multi)
                    with trio.fail_after(10):
                        await all_online(admin)
                    assert server.count(": online (incarnation") == len(nodes)
                server.process.send_signal(signal.SIGTERM)
                await server.process.wait()
                stopped_at = trio.current_time()
                assert server.process.returncode == 0

            # while it is down, every attempt to reach it is counted, per agent
            seen: list[tuple[float, str]] = []
            async with trio.open_nursery() as counter:
                await counter.start(count_attempts, data, api_port, seen)
                await trio.sleep(2.0)
                counter.cancel_scope.cancel()
            down_for = trio.current_time() - stopped_at

            async with server_process(data, api_port, node_port) as server:
                async with httpx.AsyncClient(verify=ca_context_file(ca), timeout=10) as http:
                    admin = Signed.from_file(http, url, "admin", data / "keys" / "admin.pem")
                    with trio.fail_after(40):
                        await all_online(admin)
                # every agent came back on exactly one connection
                online = Counter(
                    line.rsplit("node default/", 1)[1].split(":")[0]
                    for line in server.lines
                    if ": online (incarnation" in line
                )
                assert online == dict.fromkeys(nodes, 1)
            agents.process.send_signal(signal.SIGTERM)
            await agents.process.wait()
            assert agents.process.returncode == 0
            nursery.cancel_scope.cancel()

    per_agent = Counter(user for _, user in seen)
    assert set(per_agent) <= set(nodes)
    # The going-away splay (≤ 0.5 s) then full-jitter delays capped at 1, 2, 4, 8 … s: in
    # `down_for` (about 3 s) an agent makes 3 or 4 attempts; 8 or more has a probability
    # around 1e-7. An agent that retried in a loop would make hundreds.
    assert down_for < 6
    assert max(per_agent.values(), default=0) <= 7, per_agent
    assert sum(per_agent.values()) <= 5 * len(nodes), per_agent
    assert len(per_agent) >= 10  # the counter did see the agents trying


def ca_context_file(ca: Path) -> ssl.SSLContext:
    return tls.client_ssl_context(ca_file=ca)


async def _spawn_in_nursery(name: str, argv: list[str], *, task_status: Any) -> None:
    async with spawn(name, argv) as proc:
        task_status.started(proc)
        await proc.process.wait()
