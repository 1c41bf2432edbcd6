"""A fake node that speaks the real node protocol (signed upgrade, msgpack frames) for engine
tests. Its behaviour is scripted: which commits to nack, what exit code to report, how long a
run takes, what output to stream."""

from __future__ import annotations

import dataclasses
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from pushy_appliance import chef_auth, protocol


@dataclasses.dataclass
class Behaviour:
    nack_commit: str | None = None
    exit_code: int = 0
    run_seconds: float = 0.0
    stdout: bytes = b""
    stderr: bytes = b""
    ignore_run: bool = False
    deaf: bool = False
    """Stop reading after ``welcome`` (heartbeats still go out): a node whose socket fills.
    The WebSocket client's own reader then stops too, holding the next frame (no queue)."""
    gate: trio.Event | None = None
    """Set: a run waits for it (after ``run_seconds``) before its output and result."""


class FakeNode:
    def __init__(
        self, node_url: str, org: str, name: str, key: Any, ca_file: str, behaviour: Behaviour
    ) -> None:
        self.url = f"{node_url}/organizations/{org}/pushy/connect/{name}"
        self.path = f"/organizations/{org}/pushy/connect/{name}"
        self.name = name
        self.key = key
        self.ssl = ssl.create_default_context(cafile=ca_file)
        self.b = behaviour
        self.incarnation = str(uuid.uuid4())
        self.seq = protocol.Sequencer()
        self.received: list[protocol.Frame] = []
        self.job: str | None = None
        self.running: trio.CancelScope | None = None
        self.welcomed = trio.Event()

    def frame(self, cls: type[Any], **fields: Any) -> bytes:
        return protocol.encode(cls(seq=self.seq.next(), ts=time.time(), **fields))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        headers = chef_auth.sign_request(
            "GET", self.path, b"", self.name, self.key, timestamp=datetime.now(UTC)
        )
        async with open_websocket_url(
            self.url,
            ssl_context=self.ssl,
            extra_headers=[(k, v) for k, v in headers.items()],
            message_queue_size=0 if self.b.deaf else 1,
        ) as ws:
            await ws.send_message(
                self.frame(
                    protocol.Hello,
                    incarnation_id=self.incarnation,
                    protocol_version=1,
                    agent_version="fake",
                    job_id=None,
                    job_state="idle",
                    pending_result=None,
                    facts={"hostname": self.name},
                )
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeats, ws)
                try:
                    while True:
                        data = await ws.get_message()
                        assert isinstance(data, bytes)
                        f = protocol.decode(data)
                        self.received.append(f)
                        if isinstance(f, protocol.Welcome):
                            self.welcomed.set()
                            task_status.started()
                            if self.b.deaf:
                                await trio.sleep_forever()
                        await self._handle(ws, nursery, f)
                except ConnectionClosed:
                    nursery.cancel_scope.cancel()

    async def _heartbeats(self, ws: Any) -> None:
        while True:
            await trio.sleep(0.4)
            await ws.send_message(
                self.frame(
                    protocol.Heartbeat,
                    job_id=self.job,
                    job_state="idle" if self.job is None else "committed",
                )
            )

    async def _handle(self, ws: Any, nursery: trio.Nursery, f: protocol.Frame) -> None:
        if isinstance(f, protocol.Commit):
            if self.job is not None:
                await ws.send_message(
                    self.frame(protocol.NackCommit, job_id=f.job_id, reason="busy")
                )
            elif self.b.nack_commit:
                await ws.send_message(
                    self.frame(protocol.NackCommit, job_id=f.job_id, reason=self.b.nack_commit)
                )
            else:
                self.job = f.job_id
                await ws.send_message(self.frame(protocol.AckCommit, job_id=f.job_id))
        elif isinstance(f, protocol.Run):
            if self.b.ignore_run:
                return
            await ws.send_message(self.frame(protocol.AckRun, job_id=f.job_id))
            nursery.start_soon(self._execute, ws, f.job_id)
        elif isinstance(f, protocol.Abort):
            if self.running is not None:
                self.running.cancel()
            job, self.job = self.job, None
            if f.job_id is None or f.job_id == job:
                await ws.send_message(self.frame(protocol.Aborted, job_id=job))

    async def _execute(self, ws: Any, job_id: str) -> None:
        with trio.CancelScope() as scope:
            self.running = scope
            await trio.sleep(self.b.run_seconds)
            if self.b.gate is not None:
                await self.b.gate.wait()
            for channel, data in (("stdout", self.b.stdout), ("stderr", self.b.stderr)):
                if data:
                    await ws.send_message(
                        self.frame(
                            protocol.Output, job_id=job_id, channel=channel, data=data, offset=0
                        )
                    )
            await ws.send_message(
                self.frame(
                    protocol.Result,
                    job_id=job_id,
                    status="succeeded" if self.b.exit_code == 0 else "failed",
                    exit_code=self.b.exit_code,
                    stdout_bytes=len(self.b.stdout),
                    stderr_bytes=len(self.b.stderr),
                    truncated=False,
                    duration_s=self.b.run_seconds,
                )
            )
            self.job = None
        self.running = None


@asynccontextmanager
async def fake_nodes(
    info: Any, admin: Any, behaviours: dict[str, Behaviour]
) -> AsyncIterator[dict[str, FakeNode]]:
    """Create a client per name and connect a fake node for each."""
    nodes: dict[str, FakeNode] = {}
    for name, b in behaviours.items():
        r = await admin.post("/organizations/default/clients", {"name": name, "create_key": True})
        assert r.status_code == 201, r.text
        key = chef_auth.load_private_key(r.json()["chef_key"]["private_key"])
        nodes[name] = FakeNode(
            info.node_url, "default", name, key, str(info.data_dir / "tls" / "ca.pem"), b
        )
    async with trio.open_nursery() as nursery:
        for n in nodes.values():
            await nursery.start(n.run)
        try:
            yield nodes
        finally:
            nursery.cancel_scope.cancel()
