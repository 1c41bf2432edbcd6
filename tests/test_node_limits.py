"""What a node may send, against the real server: every frame field bounded (issue 13 #7), the
protocol version checked (issue 12 §1), and a node's output bounded and contiguous (issue 13
#5). Raw signed WebSocket clients send what a well-behaved agent never does; a real agent's
connection logic meets the version refusal."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
import trio
from test_jobs_e2e import JOBS, feed_events, output, wait_job
from test_node_e2e import (
    LIMIT,
    close_code,
    create_client,
    heartbeat_frame,
    log_messages,
    node_state,
    raw_node,
    welcomed,
)
from test_soak import Scripted, result_fields
from trio_websocket import ConnectionClosed

from pushy_appliance import chef_auth, protocol
from pushy_appliance.agent import connection, runtime
from pushy_appliance.agent.connection import ConnectSettings, maintain_connection
from pushy_appliance.agent.runtime import AgentRuntime
from pushy_appliance.agent.state import StateFile
from pushy_appliance.agent.whitelist import Whitelist
from pushy_appliance.appliance import ServerInfo
from pushy_appliance.config import AllowEntry

from helpers import Signed, admin_client, running_server, test_config


def _hello(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "incarnation_id": str(uuid.uuid4()),
        "protocol_version": protocol.PROTOCOL_VERSION,
        "agent_version": "raw-test",
        "job_id": None,
        "job_state": "idle",
        "pending_result": None,
        "facts": {"hostname": "raw"},
    }
    base.update(fields)
    return protocol.encode(protocol.Hello(**base, seq=1, ts=time.time()))


# --- frame fields (issue 13 #7) -------------------------------------------------------------


async def test_a_hello_with_450_kb_fields_is_refused_and_never_logged_in_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            pem = await create_client(admin, "big")
            assert pem is not None
            key = chef_auth.load_private_key(pem)
            async with raw_node(info, "big", key) as ws:
                wire = msgpack.unpackb(_hello(), raw=False)
                wire["agent_version"] = "v" * 450_000
                wire["incarnation_id"] = "i" * 450_000
                await ws.send_message(msgpack.packb(wire))
                assert await close_code(ws) == 1008
            assert (await node_state(admin, "big"))["status"] == "offline"
            assert info.services.nodes.model.nodes.get(("default", "big")) is None
            refused = [m for m in log_messages(caplog) if "node default/big: bad first frame" in m]
            assert len(refused) == 1
            assert "bytes encoded, at most" in refused[0]
            # at most an excerpt of any field ever reaches the log
            assert max(len(m) for m in log_messages(caplog)) < 1000
            # a hello at the limits is served, and logged whole
            async with raw_node(info, "big", key) as ws:
                await ws.send_message(_hello(agent_version="v" * protocol.MAX_AGENT_VERSION_BYTES))
                assert isinstance(protocol.decode(await ws.get_message()), protocol.Welcome)
                assert (await node_state(admin, "big"))["status"] == "online"


async def test_a_frame_with_a_junk_key_is_a_protocol_error_refused_before_it_is_decoded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = test_config(tmp_path, **{"limits.max_frame_bytes": 2_000_000})
    async with running_server(config) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            pem = await create_client(admin, "junk")
            assert pem is not None
            async with raw_node(info, "junk", chef_auth.load_private_key(pem)) as ws:
                await welcomed(ws)
                wire = msgpack.unpackb(heartbeat_frame(2), raw=False)
                wire["junk"] = [[i] for i in range(150_000)]  # 1 MB that would decode slowly
                for seq in (2, 3):
                    wire["seq"] = seq
                    await ws.send_message(msgpack.packb(wire))
                await ws.send_message(heartbeat_frame(4))
                assert (await node_state(admin, "junk"))["status"] == "online"
                # the third within a minute closes the connection
                wire["seq"] = 5
                await ws.send_message(msgpack.packb(wire))
                assert await close_code(ws) == 1008
            errors = [m for m in log_messages(caplog) if "node default/junk: protocol error" in m]
            assert len(errors) == 3
            assert all(m.endswith("frame dropped: unknown field 'junk'") for m in errors)


# --- the protocol version (issue 12 §1) ------------------------------------------------------


class LogLines(logging.Handler):
    """The lines a logger writes, and a wait for one (logging runs in trio's thread here)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._changed.set()
        self._changed = trio.Event()

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    async def wait_for(self, text: str, *, count: int = 1) -> None:
        while len(self.having(text)) < count:
            await self._changed.wait()


async def test_an_unsupported_protocol_version_is_closed_with_its_code_and_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            pem = await create_client(admin, "old")
            assert pem is not None
            key = chef_auth.load_private_key(pem)
            async with raw_node(info, "old", key) as current:
                await welcomed(current)
                session = info.services.nodes.get("default", "old")
                async with raw_node(info, "old", key) as ws:
                    await ws.send_message(_hello(protocol_version=2))
                    with pytest.raises(ConnectionClosed) as closed:
                        await ws.get_message()
                    assert closed.value.reason is not None
                    assert closed.value.reason.code == 4010
                    assert closed.value.reason.reason == (
                        "unsupported protocol version 2; this server speaks 1"
                    )
                # the node's working connection is not replaced by one that cannot speak
                assert info.services.nodes.get("default", "old") is session
                await current.send_message(heartbeat_frame(2))
                assert (await node_state(admin, "old"))["status"] == "online"
            assert any(
                "node default/old: unsupported protocol version 2" in m
                for m in log_messages(caplog)
            )


async def test_an_agent_of_another_protocol_version_says_why_and_backs_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "PROTOCOL_VERSION", 2)
    lines = LogLines()
    logger = logging.getLogger(connection.__name__)
    monkeypatch.setattr(logger, "handlers", [*logger.handlers, lines])
    caplog.set_level(logging.INFO, logger=logger.name)
    data = tmp_path / "data"
    async with running_server(test_config(data)) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            pem = await create_client(admin, "future")
            assert pem is not None
            settings = ConnectSettings(
                server_url=f"{info.url}/organizations/default",
                node_name="future",
                key_file=str(tmp_path / "future.pem"),
                key=chef_auth.load_private_key(pem),
                ca_cert=str(data / "tls" / "ca.pem"),
            )
            agent = AgentRuntime(
                node_name="future",
                whitelist=Whitelist.from_entries((AllowEntry(command="true"),)),
                state_file=StateFile(tmp_path / "state"),
                facts={},
            )
            # delays a hundredth of the backoff's cap: 0.01, 0.02, 0.04 s
            rng = SimpleNamespace(uniform=lambda low, high: high / 100)
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                await nursery.start(
                    lambda task_status: maintain_connection(
                        agent, settings, rng=rng, task_status=task_status
                    )
                )

                await lines.wait_for("retrying in", count=3)
                nursery.cancel_scope.cancel()
    reason = "closed before welcome: 4010 unsupported protocol version 2; this server speaks 1"
    assert lines.having("retrying in")[:3] == [
        f"node future: {reason}; retrying in {delay} s" for delay in ("0.01", "0.02", "0.04")
    ]


# --- output: bounded and contiguous (issue 13 #5) --------------------------------------------


def store_bytes(info: ServerInfo) -> int:
    return sum(f.stat().st_size for f in (info.data_dir / "store").rglob("*") if f.is_file())


@asynccontextmanager
async def running_capture_job(
    info: ServerInfo, admin: Signed, node: str
) -> AsyncIterator[tuple[str, Scripted, Callable[[], Any]]]:
    """A capturing job running on a raw node: ``(job id, the node, reconnect)``; ``reconnect``
    opens a new connection of the same incarnation that says it runs the job."""
    pem = await create_client(admin, node)
    assert pem is not None
    key = chef_auth.load_private_key(pem)
    incarnation = str(uuid.uuid4())
    async with raw_node(info, node, key) as ws:
        scripted = Scripted(ws)
        await scripted.hello(incarnation)
        r = await admin.post(JOBS, {"command": "x", "nodes": [node], "capture_output": True})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        await scripted.expect(protocol.Commit)
        await scripted.send(protocol.AckCommit, job_id=job_id)
        await scripted.expect(protocol.Run)
        await scripted.send(protocol.AckRun, job_id=job_id)
        await wait_job(admin, job_id, {"running"}, running=1)

        @asynccontextmanager
        async def reconnect() -> AsyncIterator[Scripted]:
            async with raw_node(info, node, key) as again:
                back = Scripted(again)
                await back.hello(incarnation, job=(job_id, "running"))
                yield back

        yield job_id, scripted, reconnect


async def test_200_chunks_of_512_kb_at_offset_0_store_one(tmp_path: Path) -> None:
    """The attack run: 200 ``output`` frames of 512 KB, all at offset 0, grew the store by
    210 MB. Within a connection every one after the first overlaps (a protocol error, the
    third closes the connection); on a new connection the held part is trimmed off."""
    chunk = b"x" * 512_000
    sent = 0

    async def flood(node: Scripted, job_id: str) -> None:
        """Send the chunk until 200 went or the server closes (with 1008)."""
        nonlocal sent
        try:
            while sent < 200:
                sent += 1
                await node.send(
                    protocol.Output, job_id=job_id, channel="stdout", data=chunk, offset=0
                )
        except ConnectionClosed as closed:
            assert closed.reason is not None and closed.reason.code == 1008

    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        with trio.fail_after(60):
            async with running_capture_job(info, admin, "flood") as (job_id, node, reconnect):
                before = store_bytes(info)
                await flood(node, job_id)
                while sent < 200:
                    async with reconnect() as again:
                        await flood(again, job_id)
                # one chunk is stored (twice: the chunk, and its feed event), not 200
                grown = store_bytes(info) - before
                assert grown < 3 * len(chunk), grown
                async with reconnect() as again:
                    await again.send(protocol.Result, **result_fields(job_id, chunk))
                    await again.expect(protocol.ResultAck)
            await wait_job(admin, job_id)
            assert await output(admin, job_id, "flood", "stdout") == chunk


async def test_output_past_the_cap_is_counted_not_stored(tmp_path: Path) -> None:
    chunk = b"y" * 512_000
    cap = 1_048_576
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        with trio.fail_after(60):
            async with running_capture_job(info, admin, "chatty") as (job_id, node, _):
                before = store_bytes(info)
                for i in range(20):  # 10 MB, contiguous
                    await node.send(
                        protocol.Output,
                        job_id=job_id,
                        channel="stdout",
                        data=chunk,
                        offset=i * len(chunk),
                    )
                fields = result_fields(job_id, chunk * 20)
                await node.send(protocol.Result, **{**fields, "truncated": True})
                await node.expect(protocol.ResultAck)
                await wait_job(admin, job_id)
                # the kept bytes are stored twice: the chunk, and its feed event
                assert store_bytes(info) - before < 2 * cap + 512_000
            r = await admin.get(f"{JOBS}/{job_id}/output/chatty/stdout")
            assert r.status_code == 200
            assert r.content == (chunk * 3)[:cap]
            assert r.headers["X-Pushy-Output-Total-Bytes"] == str(20 * len(chunk))
            assert r.headers["X-Pushy-Output-Truncated"] == "true"
            # no feed event carries a byte past the cap
            events = await feed_events(admin, job_id)
            published = sum(len(data["data"]) for name, data in events if name == "output")
            assert published == cap


async def test_an_output_offset_of_a_billion_is_a_gap(tmp_path: Path) -> None:
    """The attack run: a node sending offset 10⁹ made the output's total 1,000,000,003."""
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            async with running_capture_job(info, admin, "far") as (job_id, node, _):
                await node.send(
                    protocol.Output, job_id=job_id, channel="stdout", data=b"abc", offset=10**9
                )
                await node.send(
                    protocol.Output, job_id=job_id, channel="stdout", data=b"abc", offset=0
                )
                await node.send(protocol.Result, **result_fields(job_id, b"abc"))
                await node.expect(protocol.ResultAck)
            await wait_job(admin, job_id)
            r = await admin.get(f"{JOBS}/{job_id}/output/far/stdout")
            assert (r.content, r.headers["X-Pushy-Output-Total-Bytes"]) == (b"abc", "3")
