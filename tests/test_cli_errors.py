"""No tracebacks (issue 12 §4): every documented error path of ``pushy serve``, ``pushy agent``
and the client commands ends with a ``pushy: …`` message on stderr and the documented exit
code (0 success, 1 could not go on, 2 usage or configuration, 3 server unreachable or
refusing), never a Python traceback.

Each command is the real ``pushy`` in a subprocess; the server is a real appliance
(in-process, TLS on 127.0.0.1) whose data directory and port the failing commands collide
with.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from pushy_appliance import chef_auth
from pushy_appliance.agent.state import StateFile

from helpers import Signed, admin_client, running_server, test_config

PUSHY = (sys.executable, "-m", "pushy_appliance.cli")
LIMIT = 30.0
ORG = "/organizations/default"
JOBS = f"{ORG}/pushy/jobs"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def held_state_dir(path: Path) -> Iterator[None]:
    """Hold an agent state directory's lock from this process, as a running agent does."""
    with StateFile(path).lock():
        yield


async def one_job_prefixes(admin: Signed, count: int = 17) -> tuple[str, str]:
    """Create ``count`` jobs (their node is no client: they end at once); return a prefix two
    of them share (17 ids over 16 hex digits must share a first one) and one none has."""
    ids = []
    for _ in range(count):
        r = await admin.post(JOBS, {"command": "x", "nodes": ["nobody"]})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) >= 2)
    unused = next(
        f"{a}{b}"
        for a in "0123456789abcdef"
        for b in "0123456789abcdef"
        if not any(i.startswith(a + b) for i in ids)
    )
    return shared, unused


async def test_every_documented_error_path_is_one_message_and_its_exit_code(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHY_")}
    env.pop("XDG_DATA_HOME", None)
    env |= {"HOME": str(home), "PUSHY_DATA_DIR": str(data)}
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("bogus = 1\n")
    bad_whitelist = tmp_path / "allow.toml"
    bad_whitelist.write_text("[[allow]]\npattern = '('\n")
    junk_key = tmp_path / "junk.pem"
    junk_key.write_text("not a key\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    stranger = tmp_path / "stranger.pem"
    stranger.write_text(chef_auth.private_key_pem(chef_auth.generate_private_key()))

    async with running_server(test_config(data)) as info, admin_client(info) as admin:
        url = f"{info.url}{ORG}"
        port = int(info.url.rsplit(":", 1)[1])
        ca = str(data / "tls" / "ca.pem")
        r = await admin.post(f"{ORG}/clients", {"name": "n1", "create_key": True})
        assert r.status_code == 201, r.text
        node_key = tmp_path / "n1.pem"
        node_key.write_text(r.json()["chef_key"]["private_key"])
        shared, unused = await one_job_prefixes(admin)
        agent = ("agent", "--server", url, "--key", str(node_key), "--node", "n1")
        state = tmp_path / "state"

        # (arguments, extra environment, exit code, text of the message)
        cases: list[tuple[tuple[str, ...], dict[str, str], int, str]] = [
            # serve
            (("serve", "--listen", "127.0.0.1:0"), {}, 2, "in use by another pushy process"),
            (
                ("serve", "--data-dir", str(tmp_path / "d1"), "--listen", f"127.0.0.1:{port}"),
                {},
                2,
                "cannot listen",
            ),
            (("serve", "--data-dir", str(a_file)), {}, 2, f"cannot create {a_file}"),
            (("serve", "--config", str(bad_config)), {}, 2, "unknown key(s): bogus"),
            (("serve", "--config", str(tmp_path / "none.toml")), {}, 2, "file not found"),
            (
                ("serve", "--data-dir", str(tmp_path / "d2"), "--listen", "127.0.0.1:0"),
                {"PUSHY_TLS_CERT": str(tmp_path / "no.pem"), "PUSHY_TLS_KEY": "x"},
                2,
                "tls.cert: cannot read",
            ),
            (("serve", "--listen", "nowhere"), {}, 2, "HOST:PORT"),
            # agent
            (("agent",), {}, 2, "server_url: required"),
            (("agent", "--server", url), {}, 2, "client_key: required"),
            (("agent", "--server", "ftp://x", "--key", str(node_key)), {}, 2, "not an http(s)"),
            (("agent", "--server", url, "--key", str(tmp_path / "no.pem")), {}, 2, "cannot read"),
            (("agent", "--server", url, "--key", str(junk_key)), {}, 2, "not a PEM private key"),
            ((*agent, "--ca-cert", str(tmp_path / "no-ca.pem")), {}, 2, "cannot load CA"),
            ((*agent, "--fingerprint", "SHA256:00"), {}, 2, "not a SHA-256 fingerprint"),
            ((*agent, "--config", str(bad_whitelist)), {}, 2, "invalid regex"),
            ((*agent, "--config", str(bad_config)), {}, 2, "unknown key(s): bogus"),
            ((*agent, "--ca-cert", ca, "--state-dir", str(state)), {}, 1, "in use by another"),
            ((*agent, "--ca-cert", ca, "--state-dir", str(a_file)), {}, 1, f"cannot lock {a_file}"),
            # client commands
            (("job", "list"), {"PUSHY_DATA_DIR": str(tmp_path / "none")}, 2, "no server URL"),
            (("job", "list", "--server", f"https://127.0.0.1:{closed_port()}{ORG}"), {}, 3, ""),
            (("job", "list", "--ca-cert", str(stranger)), {}, 2, "cannot load CA"),
            (("job", "list", "--ca-cert", "/dev/null"), {}, 2, "cannot load CA"),
            (("job", "list", "--key", str(stranger)), {}, 3, "HTTP 401"),
            (("job", "list", "--key", str(tmp_path / "no.pem")), {}, 2, "cannot read key"),
            (("job", "start", "x", "n1", "--user", "n1", "--key", str(node_key)), {}, 3, "403"),
            (("job", "status", "f" * 32), {}, 3, "HTTP 404"),
            (("job", "status", shared), {}, 2, f"'{shared}' is the start of"),
            (("job", "output", unused), {}, 3, f"no job id starts with '{unused}'"),
            (("job", "list", "--profile", "ops"), {}, 2, "no such profile"),
            (("job", "list", "--server", "https://h/"), {}, 2, "not an org URL"),
            (("client", "create", "c9", "--key-out", str(tmp_path / "no" / "k")), {}, 2, "exist"),
            (("job", "start", "x", "n1", "--env", "NOEQUALS"), {}, 2, "K=V"),
            (("job", "frobnicate"), {}, 2, "invalid choice"),
        ]
        results: list[subprocess.CompletedProcess[bytes] | None] = [None] * len(cases)
        limiter = trio.CapacityLimiter(4)

        async def one(i: int) -> None:
            args, extra, _, _ = cases[i]
            async with limiter:
                with trio.fail_after(LIMIT):
                    results[i] = await trio.run_process(
                        [*PUSHY, *args],
                        env=env | extra,
                        cwd=str(tmp_path),
                        stdin=subprocess.DEVNULL,
                        capture_stdout=True,
                        capture_stderr=True,
                        check=False,
                    )

        with held_state_dir(state):
            async with trio.open_nursery() as nursery:
                for i in range(len(cases)):
                    nursery.start_soon(one, i)

    for (args, _, code, needle), done in zip(cases, results, strict=True):
        assert done is not None
        err = done.stderr.decode()
        where = f"pushy {' '.join(args)}: exit {done.returncode}\nstderr:\n{err}"
        assert done.returncode == code, where
        assert "Traceback" not in err and "ExceptionGroup" not in err, where
        # the message is the first line that is not a log line (serve and agent log first)
        messages = [line for line in err.splitlines() if line.startswith(("pushy: ", "usage:"))]
        assert messages, where
        assert needle in err, where
