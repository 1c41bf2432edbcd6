"""The kill -9 soak (``benchmarks/soak.py``) in CI: three cycles of traffic, ``kill -9``,
restart and checks, with real agents; and what the soak found, reproduced exactly.

The soak's 20-cycle figures are in ``docs/PERFORMANCE.md``.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
from test_jobs_e2e import JOBS, output, wait_job
from test_jobs_restart import wait_for_output_events
from test_node_e2e import create_client, raw_node
from trio_websocket import WebSocketConnection

from pushy_appliance import chef_auth, protocol
from pushy_appliance.config_files import load_server_config

from helpers import admin_client, running_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import soak


async def test_three_kill_9_cycles_lose_no_acknowledged_write(tmp_path: Path) -> None:
    args = soak.parser().parse_args(
        [
            "--cycles",
            "3",
            "--agents",
            "2",
            "--traffic",
            "0.5,1.5",
            "--settle",
            "45",
            "--seed",
            "20261206",
            "--workdir",
            str(tmp_path / "soak"),
            "--keep",
        ]
    )
    with trio.fail_after(150):
        figures = await soak.soak(args)
    assert figures.cycles == 3
    assert figures.jobs_acknowledged > 0
    assert figures.clients_acknowledged > 0
    assert figures.lost == 0
    assert figures.refused == 0
    assert figures.jobs_checked == figures.jobs_acknowledged
    assert figures.jobs_not_final == 0
    assert figures.agents_missing == 0
    assert len(figures.agents_back_s) == 3
    # after each kill: intact, or only a torn group at the end of the newest segment; after
    # the final SIGTERM: intact
    assert figures.verify_failures == 0
    assert figures.verify_clean + figures.torn_tails == 4
    assert len(figures.restart_s) == 3
    assert figures.outputs_incomplete == figures.outputs_wrong == 0
    assert figures.problems == []


# --- what the soak found: output re-sent after a reconnect is dropped -----------------------


class Scripted:
    """A node connection driven frame by frame (signed upgrade, real protocol)."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.seq = protocol.Sequencer()

    async def send(self, cls: type[Any], **fields: Any) -> None:
        await self.ws.send_message(
            protocol.encode(cls(seq=self.seq.next(), ts=time.time(), **fields))
        )

    async def expect(self, cls: type[Any]) -> Any:
        """The next frame that is not a heartbeat; it must be a ``cls``."""
        while True:
            frame = protocol.decode(await self.ws.get_message())
            if not isinstance(frame, protocol.Heartbeat):
                assert isinstance(frame, cls), frame
                return frame

    async def hello(
        self,
        incarnation: str,
        pending: protocol.ResultBody | None = None,
        *,
        job: tuple[str, str] | None = None,
    ) -> None:
        """``hello`` (holding ``job``: ``(job_id, job_state)``), then ``welcome``."""
        await self.send(
            protocol.Hello,
            incarnation_id=incarnation,
            protocol_version=protocol.PROTOCOL_VERSION,
            agent_version="scripted",
            job_id=job[0] if job else None,
            job_state=job[1] if job else "idle",
            pending_result=pending,
            facts={},
        )
        await self.expect(protocol.Welcome)


def result_fields(job_id: str, stdout: bytes) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": "succeeded",
        "exit_code": 0,
        "signal": None,
        "stdout_bytes": len(stdout),
        "stderr_bytes": 0,
        "truncated": False,
        "duration_s": 0.5,
    }


@pytest.mark.parametrize(
    ("others", "ended_while_away"),
    [(0, True), (1, True), (0, False)],
    ids=["result-in-hello-alone", "result-in-hello-another-node-running", "back-while-running"],
)
async def test_output_re_sent_after_a_reconnect_is_stored_whole(
    tmp_path: Path, others: int, ended_while_away: bool
) -> None:
    """What an agent does after a reconnect (``NODES.md`` §4, ``docs/NODE-PROTOCOL.md``
    §3), and the server must take:

    - its command ended while the server was away (killed before it stored all the
      output): its ``hello`` carries the unacknowledged result, and right after ``welcome``
      it sends the whole output again, then the result, whether or not that result ends
      the job;
    - or it came back while the command still ran: its next chunk on the new connection
      starts over at offset 0 with everything captured so far (the chunks the server lost
      included), the server trims what it holds, and when the command ends the result
      follows.

    Either way the server stores the whole output, exactly.
    """
    config = load_server_config(
        environ={"PUSHY_HEARTBEAT_INTERVAL": "10"},
        flags={"data_dir": str(tmp_path / "data"), "listen": "127.0.0.1:0"},
    )
    names = ["r0", *(f"r{i}" for i in range(1, others + 1))]
    whole = b"line 1\nline 2\nline 3\n"
    with trio.fail_after(30):
        async with running_server(config) as info, admin_client(info) as admin:
            keys = {}
            for name in names:
                pem = await create_client(admin, name)
                assert pem is not None
                keys[name] = chef_auth.load_private_key(pem.encode())
            incarnation = str(uuid.uuid4())
            async with raw_node(info, "r1", keys["r1"]) if others else _nothing() as ws1:
                other = Scripted(ws1) if ws1 is not None else None
                if other is not None:
                    await other.hello(str(uuid.uuid4()))
                async with raw_node(info, "r0", keys["r0"]) as ws:
                    node = Scripted(ws)
                    await node.hello(incarnation)
                    r = await admin.post(
                        JOBS, {"command": "say x", "nodes": names, "capture_output": True}
                    )
                    assert r.status_code == 201, r.text
                    job_id = r.json()["id"]
                    for n in (node, other):
                        if n is not None:
                            await n.expect(protocol.Commit)
                            await n.send(protocol.AckCommit, job_id=job_id)
                    for n in (node, other):
                        if n is not None:
                            await n.expect(protocol.Run)
                            await n.send(protocol.AckRun, job_id=job_id)
                    await node.send(
                        protocol.Output, job_id=job_id, channel="stdout", data=whole[:7], offset=0
                    )
                    await wait_for_output_events(admin, job_id, 1)
                # r0's connection is gone (with "line 2", which the server never stored)
                async with raw_node(info, "r0", keys["r0"]) as ws:
                    node = Scripted(ws)
                    if ended_while_away:
                        pending = protocol.ResultBody(**result_fields(job_id, whole))
                        await node.hello(incarnation, pending)
                    else:
                        await node.hello(incarnation, job=(job_id, "running"))
                    await node.send(
                        protocol.Output, job_id=job_id, channel="stdout", data=whole, offset=0
                    )
                    await wait_for_output_events(admin, job_id, 2)
                    await node.send(protocol.Result, **result_fields(job_id, whole))
                    await node.expect(protocol.ResultAck)
                    if other is not None:
                        await other.send(protocol.Result, **result_fields(job_id, b""))
                        await other.expect(protocol.ResultAck)
                    doc = await wait_job(admin, job_id)
            assert doc["status"] == "complete"
            assert doc["nodes"] == {"succeeded": names}
            assert await output(admin, job_id, "r0", "stdout") == whole


class _nothing:
    """``async with`` that yields ``None`` (no second node)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None
