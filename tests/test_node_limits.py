"""What a node may send, against the real server: every frame field bounded (issue 13 #7), the
protocol version checked (issue 12 §1), and a node's output bounded and contiguous (issue 13
#5). Raw signed WebSocket clients send what a well-behaved agent never does; a real agent's
connection logic meets the version refusal."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
import trio
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

from pushy_appliance import chef_auth, protocol
from pushy_appliance.agent import connection, runtime
from pushy_appliance.agent.connection import ConnectSettings, maintain_connection
from pushy_appliance.agent.runtime import AgentRuntime
from pushy_appliance.agent.state import StateFile
from pushy_appliance.agent.whitelist import Whitelist
from pushy_appliance.config import AllowEntry

from helpers import admin_client, running_server, test_config


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
                    with pytest.raises(connection.ConnectionClosed) as closed:
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
