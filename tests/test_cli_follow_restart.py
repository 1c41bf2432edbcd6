"""A follower survives a server restart (issue 12 §4): ``pushy job start`` and ``pushy job
watch`` reconnect with backoff and ``Last-Event-ID`` and carry on to the job's end, with a
real ``pushy serve`` (killed and started again on the same ports), a real agent running a
real command, and the real CLI.

Also the server half: stopping the server with a follower attached does not take the whole
drain (open feeds end at once on shutdown, ``Hub.close_all``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio
from test_node_e2e import (
    AGENT,
    ORG,
    ca_context_file,
    create_client,
    free_port,
    server_process,
    spawn,
    wait_state,
    write_key,
)

from helpers import Signed

PUSHY = (*AGENT[:-1],)  # python -m pushy_appliance.cli
JOBS = f"{ORG}/pushy/jobs"


class Follower:
    """A ``pushy`` subprocess whose stdout and stderr (merged, in the order written) are
    collected line by line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = trio.Event()

    async def pump(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in complete)
            self._changed.set()
            self._changed = trio.Event()
        if buffer:
            self.lines.append(buffer.decode(errors="replace"))

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for(self, text: str) -> None:
        while not self.count(text):
            await self._changed.wait()

    def text(self) -> str:
        return "\n".join(self.lines)


@asynccontextmanager
async def follower(args: list[str], env: dict[str, str]) -> AsyncIterator[Follower]:
    process = await trio.lowlevel.open_process(
        [*PUSHY, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    f = Follower(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(f.pump)
            try:
                yield f
            finally:
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(10):
                    await process.wait()
    finally:
        print(f"----- pushy {' '.join(args)} (exit {process.returncode}) -----")
        print(f.text())


def cli_env(tmp_path: Path, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHY_")}
    env.pop("XDG_DATA_HOME", None)
    (tmp_path / "home").mkdir(exist_ok=True)
    env |= {"HOME": str(tmp_path / "home"), "PUSHY_DATA_DIR": str(data)}
    return env


def agent_argv(tmp_path: Path, data: Path, api_port: int) -> list[str]:
    """A real agent ``n1`` (key ``tmp_path/n1.pem``) allowed to run ``sleep N``."""
    config = tmp_path / "agent.toml"
    config.write_text("[[allow]]\npattern = '^sleep [0-9.]+$'\n")
    return [
        *AGENT,
        "--server",
        f"https://127.0.0.1:{api_port}{ORG}",
        "--node",
        "n1",
        "--key",
        str(tmp_path / "n1.pem"),
        "--ca-cert",
        str(data / "tls" / "ca.pem"),
        "--state-dir",
        str(tmp_path / "state"),
        "--config",
        str(config),
    ]


@asynccontextmanager
async def admin_of(tmp_path: Path, data: Path, api_port: int) -> AsyncIterator[Signed]:
    """An admin client of the server on ``api_port``; client ``n1`` created, its key
    written to ``tmp_path/n1.pem``."""
    url = f"https://127.0.0.1:{api_port}"
    async with httpx.AsyncClient(
        verify=ca_context_file(data / "tls" / "ca.pem"), timeout=10
    ) as http:
        admin = Signed.from_file(http, url, "admin", data / "keys" / "admin.pem")
        pem = await create_client(admin, "n1")
        assert pem is not None
        write_key(tmp_path / "n1.pem", pem)
        yield admin


async def test_job_start_and_watch_carry_on_across_a_server_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    api_port, node_port = free_port(), free_port()
    env = cli_env(tmp_path, data)
    with trio.fail_after(120):
        async with (
            server_process(data, api_port, node_port) as server,
            admin_of(tmp_path, data, api_port) as admin,
            spawn("agent", agent_argv(tmp_path, data, api_port)) as agent,
        ):
            await wait_state(admin, "n1", "online", "available")
            async with follower(["job", "start", "sleep 4", "n1"], env) as start:
                await start.wait_for("n1: running")
                job_id = next(j["id"] for j in (await admin.get(JOBS)).json())
                async with follower(["job", "watch", job_id[:8]], env) as watch:
                    await watch.wait_for("n1: running")
                    # the server dies under both followers, mid-job
                    server.process.kill()
                    await server.process.wait()
                    await start.wait_for("lost the server")
                    await watch.wait_for("lost the server")
                    async with server_process(data, api_port, node_port):
                        assert await start.process.wait() == 0, start.text()
                        assert await watch.process.wait() == 0, watch.text()
            agent.process.send_signal(signal.SIGTERM)
            await agent.process.wait()

    for f in (start, watch):
        # every event once (resumed with Last-Event-ID, not replayed), to the job's end
        assert f.count("n1: running") == 1, f.text()
        assert f.count("n1: succeeded") == 1, f.text()
        assert f.count("reconnected") == 1, f.text()
        assert f.lines[-1].startswith(f"job {job_id} complete"), f.text()
        assert "Traceback" not in f.text()
    assert start.count(f"job {job_id} started: 'sleep 4' on 1 node, quorum 1") == 1


async def test_stopping_the_server_with_a_follower_attached_does_not_wait_the_drain(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    api_port, node_port = free_port(), free_port()
    env = cli_env(tmp_path, data)
    with trio.fail_after(90):
        async with (
            server_process(data, api_port, node_port) as server,
            admin_of(tmp_path, data, api_port) as admin,
            spawn("agent", agent_argv(tmp_path, data, api_port)),
        ):
            await wait_state(admin, "n1", "online", "available")
            async with follower(["job", "start", "sleep 60", "n1"], env) as start:
                await start.wait_for("n1: running")
                server.process.send_signal(signal.SIGTERM)
                began = trio.current_time()
                await server.process.wait()
                took = trio.current_time() - began
    assert server.process.returncode == 0
    # the drain is 10 s; open feeds must end at once, so the stop takes about a second
    assert took < 3.0, f"the server took {took:.1f} s to stop with a follower attached"
