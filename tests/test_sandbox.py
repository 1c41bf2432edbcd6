"""``pushy sandbox``: the server and local agents in one process, and the CLI finding it.

In-process: :func:`sandbox.run_sandbox` with real agents (real sockets, real processes for
the commands), restarted on the same data directory. As a user would: the ``pushy sandbox``
command in a subprocess, then the ``pushy job start`` line it prints and ``pushy ui``, with no
other setup, then Ctrl-C.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pushy_appliance.cli._sandbox import sample_job_line
from pushy_appliance.cli._ui import has_display
from pushy_appliance.client import load_credentials
from pushy_appliance.errors import ConfigError
from pushy_appliance.sandbox import SandboxInfo, run_sandbox, sandbox_config

from helpers import Signed

PUSHY = (sys.executable, "-m", "pushy_appliance.cli")
JOBS = "/organizations/default/pushy/jobs"
LIMIT = 60.0


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "10.1.2.3:10003", "[::]:0", "example.com:1"])
def test_only_loopback_addresses(listen: str) -> None:
    with pytest.raises(ConfigError, match="loopback address only"):
        sandbox_config(listen=listen, data_dir="/nowhere")


@pytest.mark.parametrize(
    ("listen", "node_listen"),
    [
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("127.0.0.2:8000", "127.0.0.2:0"),
        ("[::1]:0", "[::1]:0"),
        ("localhost:10003", "localhost:0"),
    ],
)
def test_loopback_plain_http_and_the_cache_directory(listen: str, node_listen: str) -> None:
    config = sandbox_config(listen=listen, environ={"XDG_CACHE_HOME": "/c"})
    assert (config.listen, config.node_listen) == (listen, node_listen)
    assert config.insecure_http is True
    assert config.data_dir == "/c/pushy/sandbox"
    assert sandbox_config().listen == "127.0.0.1:10003"


@asynccontextmanager
async def sandbox(data_dir: Path, nodes: int) -> AsyncIterator[SandboxInfo]:
    config = sandbox_config(listen="127.0.0.1:0", data_dir=str(data_dir))
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(LIMIT):
            info: SandboxInfo = await nursery.start(
                functools.partial(run_sandbox, config, nodes, stop=stop)
            )
        yield info
        stop.set()


def admin(http: httpx.AsyncClient, info: SandboxInfo) -> Signed:
    return Signed.from_file(http, info.server.url, "admin", info.data_dir / "keys" / "admin.pem")


async def run_job(client: Signed, command: str, nodes: list[str]) -> dict[str, Any]:
    """Start a job with capture and wait for its end: its document."""
    r = await client.post(JOBS, {"command": command, "nodes": nodes, "capture_output": True})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    with trio.fail_after(LIMIT):
        while True:
            doc: dict[str, Any] = (await client.get(f"{JOBS}/{job_id}")).json()
            if doc["status"] not in ("new", "voting", "running"):
                return doc
            await trio.sleep(0.05)


async def test_agents_run_any_command_and_a_restart_reuses_the_directory(tmp_path: Path) -> None:
    data = tmp_path / "sandbox"
    async with httpx.AsyncClient(timeout=30) as http:
        async with sandbox(data, 2) as info:
            assert info.nodes == ("sandbox-1", "sandbox-2")
            assert info.org_url == f"{info.server.url}/organizations/default"
            assert info.server.url.startswith("http://127.0.0.1:")
            a = admin(http, info)
            states = (await a.get("/organizations/default/pushy/node_states")).json()
            assert sorted((s["node_name"], s["availability"]) for s in states) == [
                ("sandbox-1", "available"),
                ("sandbox-2", "available"),
            ]
            # any command, through a shell
            doc = await run_job(a, "echo $((40 + 2)) | tr 4 x", ["sandbox-1", "sandbox-2"])
            assert (doc["status"], doc["nodes"]) == (
                "complete",
                {"succeeded": ["sandbox-1", "sandbox-2"]},
            )
            out = await a.get(f"{JOBS}/{doc['id']}/output/sandbox-2/stdout")
            assert out.content == b"x2\n"
            # the printed link opens the dashboard
            r = await http.get(info.login_url)
            assert (r.status_code, r.headers["Location"]) == (303, "/ui/")
            assert info.link_ttl == 60.0
        keys = sorted(p.name for p in (data / "sandbox" / "keys").iterdir())
        assert keys == ["sandbox-1.pem", "sandbox-2.pem"]
        assert {oct(p.stat().st_mode & 0o777) for p in (data / "sandbox" / "keys").iterdir()} == {
            "0o600"
        }
        # again on the same directory, one key lost and one node more: clients re-created
        (data / "sandbox" / "keys" / "sandbox-2.pem").unlink()
        async with sandbox(data, 3) as info:
            a = admin(http, info)
            doc = await run_job(a, "hostname >/dev/null", list(info.nodes))
            assert doc["nodes"] == {"succeeded": ["sandbox-1", "sandbox-2", "sandbox-3"]}
            jobs = (await a.get(JOBS)).json()
            assert len(jobs) == 2  # the first run's job is still there


async def test_out_of_range_node_counts_are_refused(tmp_path: Path) -> None:
    config = sandbox_config(listen="127.0.0.1:0", data_dir=str(tmp_path / "d"))
    for nodes in (0, 101):
        with pytest.raises(ConfigError, match="--nodes"):
            await run_sandbox(config, nodes)


def test_the_cli_falls_back_on_the_sandbox_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the default data dir under the home
    cache = tmp_path / "cache"
    sandbox_dir = cache / "pushy" / "sandbox"
    sandbox_dir.mkdir(parents=True)
    (sandbox_dir / "credentials").write_text(
        '[default]\nclient_name = "admin"\nclient_key = "keys/admin.pem"\n'
        'chef_server_url = "http://127.0.0.1:9/organizations/default"\n'
    )
    env = {"XDG_CACHE_HOME": str(cache), "XDG_DATA_HOME": str(tmp_path / "data")}
    found = load_credentials(environ=env, home=tmp_path)
    assert (found.server_url, found.user, found.key_file) == (
        "http://127.0.0.1:9/organizations/default",
        "admin",
        str(sandbox_dir / "keys" / "admin.pem"),
    )
    # a data directory named on purpose is not stood in for by the sandbox
    for named in ({"PUSHY_DATA_DIR": str(tmp_path / "elsewhere")},):
        with pytest.raises(ConfigError, match="no server URL"):
            load_credentials(environ={**env, **named}, home=tmp_path)
    with pytest.raises(ConfigError, match="no server URL"):
        load_credentials(environ=env, home=tmp_path, data_dir=str(tmp_path / "elsewhere"))
    # the server's own data directory comes first
    served = tmp_path / "data" / "pushy"
    served.mkdir(parents=True)
    (served / "credentials").write_text(
        '[default]\nclient_name = "admin"\nclient_key = "/k.pem"\n'
        'chef_server_url = "https://h:10003/organizations/default"\n'
    )
    assert load_credentials(environ=env, home=tmp_path).server_url.startswith("https://h:10003")


def cli_env(home: Path) -> dict[str, str]:
    """A user with nothing configured: no ``PUSHY_*``, an empty home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUSHY_", "XDG_"))}
    env["HOME"] = str(home)
    return env


async def test_pushy_sandbox_then_the_printed_job_line_then_ctrl_c(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(home)
    banner = b""
    with trio.fail_after(LIMIT):
        process = await trio.lowlevel.open_process(
            [*PUSHY, "sandbox", "--listen", "127.0.0.1:0", "--nodes", "2"],
            env=env,
            cwd=str(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None and process.stderr is not None
            while b"Ctrl-C stops the sandbox." not in banner:
                chunk = await process.stdout.receive_some()
                assert chunk, (banner + await process.stderr.receive_some()).decode()
                banner += chunk
            text = banner.decode()
            assert "WARNING: the sandbox agents run ANY command" in text
            assert f"data directory {home}/.cache/pushy/sandbox" in text
            lines = [line.strip() for line in text.splitlines()]
            link = lines[lines.index(next(x for x in lines if x.startswith("Dashboard"))) + 1]
            assert "/ui/login/" in link
            job_line = next(x for x in lines if "pushy job start" in x)
            plain = "pushy job start 'uname -a' --search tags:sandbox"
            if os.geteuid() == 0 and os.path.exists("/var/lib/pushy/credentials"):  # noqa: ASYNC240
                # as root the default server data directory (/var/lib/pushy) comes first:
                # the line names the sandbox's credentials
                sandbox_dir = home / ".cache" / "pushy" / "sandbox"
                url = link.split("/ui/login/")[0] + "/organizations/default"
                assert job_line == (
                    f"PUSHY_SERVER={url} PUSHY_USER=admin "
                    f"PUSHY_KEY={sandbox_dir}/keys/admin.pem {plain}"
                )
            else:
                # nothing else configured: the CLI finds the sandbox by itself
                assert job_line == plain
            words = shlex.split(job_line)
            at = words.index("pushy")
            job_env = {**env, **dict(w.split("=", 1) for w in words[:at])}
            done = await trio.run_process(
                [*PUSHY, *words[at + 1 :], "--json"],
                env=job_env,
                cwd=str(home),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode()
            doc = json.loads(done.stdout)
            assert (doc["status"], doc["nodes"]) == (
                "complete",
                {"succeeded": ["sandbox-1", "sandbox-2"]},
            )
            ui = await trio.run_process(
                [*PUSHY, "ui", "--no-browser"],
                env=job_env,
                cwd=str(home),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert ui.returncode == 0, ui.stderr.decode()
            assert ui.stdout.decode().startswith(link.split("/ui/login/")[0] + "/ui/login/")
            assert ui.stderr.decode() == "pushy: this link works once, for 60 s\n"
            process.send_signal(signal.SIGINT)
            rest = b""
            while chunk := await process.stdout.receive_some():
                rest += chunk
            assert await process.wait() == 0
            assert rest == b"pushy sandbox: stopped\n"
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_pushy_sandbox_refuses_a_public_address(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        done = await trio.run_process(
            [*PUSHY, "sandbox", "--listen", "0.0.0.0:10003"],
            env=cli_env(tmp_path),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 2
    assert done.stderr.decode() == (
        "pushy: --listen: listen: the sandbox listens on a loopback address only (127.0.0.1, "
        "::1, localhost), not 0.0.0.0: its agents run any command they are sent\n"
    )


def test_the_job_line_names_the_credentials_when_the_cli_would_not_find_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Server:
        data_dir = tmp_path / "sbx"

    info: Any = SandboxInfo(
        Server(),  # type: ignore[arg-type]
        "http://127.0.0.1:5/organizations/default",
        ("sandbox-1", "sandbox-2"),
        "http://127.0.0.1:5/ui/login/x",
        60.0,
    )
    monkeypatch.setenv("PUSHY_SERVER", "https://prod:10003/organizations/default")
    monkeypatch.setenv("PUSHY_USER", "me")
    monkeypatch.setenv("PUSHY_KEY", "/me.pem")
    assert sample_job_line(info) == (
        "PUSHY_SERVER=http://127.0.0.1:5/organizations/default PUSHY_USER=admin "
        f"PUSHY_KEY={tmp_path}/sbx/keys/admin.pem "
        "pushy job start 'uname -a' --search tags:sandbox"
    )


@pytest.mark.parametrize(
    ("environ", "platform", "expected"),
    [
        ({}, "linux", False),
        ({"DISPLAY": ":0"}, "linux", True),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
        ({"DISPLAY": ""}, "linux", False),
        ({}, "darwin", True),
        ({}, "win32", True),
    ],
)
def test_pushy_ui_opens_a_browser_only_where_there_is_a_display(
    environ: dict[str, str], platform: str, expected: bool
) -> None:
    assert has_display(environ, platform) is expected
