"""The real ``pushy job …`` and ``pushy node status`` commands (subprocesses) against an
in-process appliance with fake nodes that speak the real node protocol.

Every command finds its credentials in a ``~/.chef/credentials`` profile written the way knife
writes it (``HOME`` points into ``tmp_path``; no flag, no ``PUSHY_*`` variable), trusting the
data directory's CA through ``ssl_ca_file``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from pushy_appliance.appliance import ServerInfo
from pushy_appliance.cli._main import build_parser, main
from pushy_appliance.cli._progress import JobTracker, ProgressDisplay, job_succeeded
from pushy_appliance.sse import Event

from fakenode import Behaviour, fake_nodes
from helpers import Signed, admin_client, running_server, test_config

PUSHY = (sys.executable, "-m", "pushy_appliance.cli")
JOBS = "/organizations/default/pushy/jobs"
LIMIT = 30.0


# --- harness --------------------------------------------------------------------------------


def knife_profile(home: Path, server_url: str, data_dir: Path, *, trust: bool = True) -> None:
    """Write ``~/.chef/credentials`` as knife does: TOML, one table per profile."""
    chef = home / ".chef"
    chef.mkdir(parents=True, exist_ok=True)
    lines = [
        "[default]",
        "client_name = 'admin'",
        f"client_key = '{data_dir / 'keys' / 'admin.pem'}'",
        f"chef_server_url = '{server_url}/organizations/default'",
    ]
    if trust:
        lines.append(f"ssl_ca_file = '{data_dir / 'tls' / 'ca.pem'}'")
    (chef / "credentials").write_text("\n".join(lines) + "\n")


def cli_env(home: Path) -> dict[str, str]:
    """Our environment without ``PUSHY_*``, ``HOME`` in ``tmp_path`` and a data directory that
    does not exist, so the profile is the only source of credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHY_")}
    env.pop("XDG_DATA_HOME", None)
    env["HOME"] = str(home)
    env["PUSHY_DATA_DIR"] = str(home / "no-data-dir")
    return env


class Cli:
    """Runs ``pushy`` subprocesses with one environment."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = cli_env(home)

    async def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(LIMIT):
            return await trio.run_process(
                [*PUSHY, *args],
                env=self.env,
                cwd=str(self.home),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    async def run_all(self, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[bytes]]:
        """Run independent commands at the same time (each costs an interpreter start)."""
        results: list[Any] = [None] * len(commands)

        async def one(i: int, args: tuple[str, ...]) -> None:
            results[i] = await self.run(*args)

        async with trio.open_nursery() as nursery:
            for i, args in enumerate(commands):
                nursery.start_soon(one, i, args)
        return results


def show(done: subprocess.CompletedProcess[bytes]) -> str:
    """Both streams of a finished command, for assertion messages."""
    return f"exit {done.returncode}\nstdout:\n{done.stdout!r}\nstderr:\n{done.stderr.decode()}"


@asynccontextmanager
async def appliance(tmp_path: Path) -> AsyncIterator[tuple[ServerInfo, Signed, Cli]]:
    """A running appliance, an admin API client and a CLI whose knife profile points at it."""
    async with running_server(test_config(tmp_path / "data")) as info, admin_client(info) as admin:
        home = tmp_path / "home"
        knife_profile(home, info.url, info.data_dir)
        yield info, admin, Cli(home)


async def get(admin: Signed, path: str) -> Any:
    r = await admin.get(path)
    assert r.status_code == 200, r.text
    return r.json()


class LineReader:
    """Reads a process's stdout until a wanted piece of text has arrived."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self.stream = process.stdout
        self.seen = b""

    async def until(self, *needles: bytes) -> bytes:
        with trio.fail_after(LIMIT):
            while not all(n in self.seen for n in needles):
                chunk = await self.stream.receive_some()
                assert chunk, f"stdout ended before {needles!r}: {self.seen!r}"
                self.seen += chunk
        return self.seen

    async def rest(self) -> bytes:
        with trio.fail_after(LIMIT):
            while chunk := await self.stream.receive_some():
                self.seen += chunk
        return self.seen


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- job start: exit codes, --json, output --------------------------------------------------


async def test_job_start_exit_codes_json_and_binary_output(tmp_path: Path) -> None:
    behaviours = {
        "n1": Behaviour(stdout=b"hello\xff\x00bytes\n", stderr=b"warn\n"),
        "n2": Behaviour(stdout=b"no newline"),
        "n3": Behaviour(exit_code=1),
        "n4": Behaviour(nack_commit="not_whitelisted"),
    }
    async with appliance(tmp_path) as (info, admin, cli), fake_nodes(info, admin, behaviours):
        # every node succeeds: exit 0, plain progress lines (stdout is a pipe)
        ok = await cli.run("job", "start", "chef-client", "n1", "n2", "--capture")
        assert ok.returncode == 0, show(ok)
        text = ok.stdout.decode()
        assert "n1: succeeded" in text and "n2: succeeded" in text, text
        assert "[n1] hello" in text  # captured output shown as it came
        assert text.rstrip().splitlines()[-1].startswith("job ")
        assert "complete" in text.rstrip().splitlines()[-1]
        ok_id = next(j["id"] for j in await get(admin, JOBS))

        # one node fails: exit 1; --json prints exactly GET jobs/ID
        failed, quorum = await cli.run_all(
            ("job", "start", "chef-client", "n1", "n3", "--json"),
            ("job", "start", "chef-client", "n4", "n2", "--quorum", "100%"),
        )
        assert failed.returncode == 1, show(failed)
        doc = json.loads(failed.stdout)
        assert doc == await get(admin, f"{JOBS}/{doc['id']}")
        assert doc["status"] == "complete"
        assert doc["nodes"] == {"succeeded": ["n1"], "failed": ["n3"]}
        # the quorum failed: exit 1 and the summary says so
        assert quorum.returncode == 1, show(quorum)
        assert "quorum_failed" in quorum.stdout.decode()
        assert "n4: nacked" in quorum.stdout.decode()

        # captured bytes come back exactly, with and without NODE; status/list --json are the API
        out1, err1, every, status, listing, human = await cli.run_all(
            ("job", "output", ok_id, "n1"),
            ("job", "output", ok_id, "n1", "--channel", "stderr"),
            ("job", "output", ok_id),
            ("job", "status", ok_id, "--json"),
            ("job", "list", "--json", "--limit", "2"),
            ("job", "status", ok_id),
        )
        assert (out1.returncode, out1.stdout) == (0, b"hello\xff\x00bytes\n"), show(out1)
        assert (err1.returncode, err1.stdout) == (0, b"warn\n"), show(err1)
        assert every.returncode == 0, show(every)
        assert every.stdout == (
            b"==> n1 (stdout) <==\nhello\xff\x00bytes\n==> n2 (stdout) <==\nno newline\n"
        )
        assert json.loads(status.stdout) == await get(admin, f"{JOBS}/{ok_id}")
        assert json.loads(listing.stdout) == await get(admin, f"{JOBS}?limit=2")
        assert len(json.loads(listing.stdout)) == 2
        assert human.returncode == 0, show(human)
        assert f"job {ok_id}: complete" in human.stdout.decode()
        assert "succeeded (2): n1, n2" in human.stdout.decode()


async def test_nowait_json_then_watch_and_knife_options(tmp_path: Path) -> None:
    payload = bytes(range(256))
    (tmp_path / "payload.bin").write_bytes(payload)
    async with (
        appliance(tmp_path) as (info, admin, cli),
        fake_nodes(info, admin, {"n1": Behaviour(run_seconds=0.5)}),
    ):
        started = await cli.run(
            "job",
            "start",
            "deploy",
            "n1",
            "--nowait",
            "--json",
            "--timeout",
            "120",
            "--with-env",
            '{"A": "from-json", "B": "b"}',
            "--env",
            "A=from-flag",
            "--in-dir",
            "/srv",
            "--as-user",
            "deployer",
            "--file",
            str(tmp_path / "payload.bin"),
            "--max-concurrency",
            "1",
            "--max-failures",
            "0",
            "-q",
            "1",
        )
        assert started.returncode == 0, show(started)
        created = json.loads(started.stdout)
        assert set(created) == {"id", "uri"} and created["uri"].endswith(created["id"])
        watched = await cli.run("job", "watch", created["id"])
        assert watched.returncode == 0, show(watched)
        assert "n1: running" in watched.stdout.decode()
        assert "n1: succeeded" in watched.stdout.decode()
        doc = await get(admin, f"{JOBS}/{created['id']}?include_file=true")
        assert doc["env"] == {"A": "from-flag", "B": "b"}
        assert (doc["dir"], doc["user"], doc["run_timeout"], doc["quorum"]) == (
            "/srv",
            "deployer",
            120,
            1,
        )
        assert (doc["max_concurrency"], doc["max_failures"]) == (1, 0)
        assert doc["file"] == "base64:" + base64.b64encode(payload).decode()


# --- live: job watch and job output --follow -----------------------------------------------


async def test_watch_and_follow_show_output_and_completions_as_they_happen(
    tmp_path: Path,
) -> None:
    behaviours = {
        "n1": Behaviour(stdout=b"first line\nsecond line\n"),
        "n2": Behaviour(ignore_run=True),  # holds the job open until it is aborted
    }
    async with appliance(tmp_path) as (info, admin, cli), fake_nodes(info, admin, behaviours):
        r = await admin.post(JOBS, {"command": "x", "nodes": ["n1", "n2"], "capture_output": True})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        async with trio.open_nursery() as nursery:
            procs = []
            for args in (("job", "watch", job_id), ("job", "output", job_id, "n1", "--follow")):
                command = [*PUSHY, *args]
                run = partial(
                    trio.run_process,
                    command,
                    env=cli.env,
                    cwd=str(cli.home),
                    stdout=subprocess.PIPE,
                    check=False,
                )
                procs.append(await nursery.start(run))
            watch, follow = LineReader(procs[0]), LineReader(procs[1])
            await watch.until(b"n1: succeeded", b"[n1] second line")
            await follow.until(b"first line\nsecond line\n")
            # both showed it while the job was still running
            assert (await get(admin, f"{JOBS}/{job_id}"))["status"] == "running"
            aborted = await cli.run("job", "abort", job_id)
            assert aborted.returncode == 0, show(aborted)
            assert f"job {job_id} aborted" in aborted.stdout.decode()
            watched, followed = await watch.rest(), await follow.rest()
            with trio.fail_after(LIMIT):
                assert await procs[0].wait() == 1  # the job did not succeed everywhere
                assert await procs[1].wait() == 0
        assert followed == b"first line\nsecond line\n"
        assert b"job " + job_id.encode() + b" aborted" in watched
        again = await cli.run("job", "abort", job_id)
        assert again.returncode == 3, show(again)
        assert b"already finished" in again.stderr


# --- node status ----------------------------------------------------------------------------


async def test_node_status_lists_online_and_offline_nodes(tmp_path: Path) -> None:
    async with appliance(tmp_path) as (info, admin, cli):
        async with fake_nodes(info, admin, {"gone": Behaviour()}):
            pass
        with trio.fail_after(LIMIT):
            while True:  # the server notices the closed connection on its own time
                state = await get(admin, "/organizations/default/pushy/node_states/gone")
                if state["status"] == "offline":
                    break
                await trio.sleep(0.05)
        r = await admin.post("/organizations/default/clients", {"name": "never"})
        assert r.status_code == 201, r.text
        async with fake_nodes(info, admin, {"up": Behaviour()}):
            listing, as_json, named, unknown = await cli.run_all(
                ("node", "status"),
                ("node", "status", "--json"),
                ("node", "status", "never", "up", "--json"),
                ("node", "status", "ghost"),
            )
            expected = await get(admin, "/organizations/default/pushy/node_states")
        assert listing.returncode == 0, show(listing)
        rows = {line.split()[0]: line.split()[1:3] for line in listing.stdout.decode().splitlines()}
        assert rows["gone"] == ["offline", "unavailable"]
        assert rows["up"] == ["online", "available"]
        assert "2 nodes: 1 online, 1 offline" in listing.stdout.decode()
        assert json.loads(as_json.stdout) == expected
        states = json.loads(named.stdout)
        assert [(s["node_name"], s["status"]) for s in states] == [
            ("never", "offline"),
            ("up", "online"),
        ]
        assert unknown.returncode == 3, show(unknown)
        assert b"ghost" in unknown.stderr


# --- failures: usage, unreachable, TLS, auth, validation, 404 ---------------------------------


async def test_failures_have_helpful_messages_and_exit_codes(tmp_path: Path) -> None:
    async with appliance(tmp_path) as (_info, admin, cli):
        unknown = "0" * 32
        bad_key = tmp_path / "other.pem"
        r = await admin.post("/organizations/default/clients", {"name": "c1", "create_key": True})
        bad_key.write_text(r.json()["chef_key"]["private_key"])
        results = await cli.run_all(
            ("job", "start", "x", "n1", "--env", "NOEQUALS"),  # usage: the real exit code
            ("job", "status", unknown),
            ("job", "start", "", "n1"),
            ("job", "list", "--key", str(bad_key)),
            ("job", "list", "--server", f"https://127.0.0.1:{closed_port()}/organizations/x"),
        )
        usage, missing, invalid, unauthorized, unreachable = results
        assert usage.returncode == 2, show(usage)
        assert b"K=V" in usage.stderr
        assert missing.returncode == 3, show(missing)
        assert unknown.encode() in missing.stderr and b"HTTP 404" in missing.stderr
        assert invalid.returncode == 3, show(invalid)
        assert b"invalid command supplied" in invalid.stderr
        assert unauthorized.returncode == 3, show(unauthorized)
        assert b"HTTP 401" in unauthorized.stderr and b"private key" in unauthorized.stderr
        assert unreachable.returncode == 3, show(unreachable)
        assert b"cannot reach" in unreachable.stderr


async def test_untrusted_certificate_names_the_fingerprint_to_pin(tmp_path: Path) -> None:
    async with appliance(tmp_path) as (info, _admin, _cli):
        # a profile without the CA: the certificate is not trusted; the fingerprint is shown
        untrusting = Cli(tmp_path / "home2")
        knife_profile(untrusting.home, info.url, info.data_dir, trust=False)
        done = await untrusting.run("job", "list")
        assert done.returncode == 3, show(done)
        assert b"not trusted" in done.stderr and b"--fingerprint" in done.stderr
        match = re.search(rb"SHA256:[0-9a-fA-F:]+", done.stderr)
        assert match is not None, show(done)
        # pinning what the message shows is enough to go on
        pinned = await untrusting.run("job", "list", "--fingerprint", match.group().decode())
        assert pinned.returncode == 0, show(pinned)


# --- in-process: usage errors, help text and the progress display --------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("job", "start", "x"), "NODE"),
        (("job", "start", "x", "n1", "--with-env", "[1, 2]"), "JSON object"),
        (("job", "start", "x", "n1", "--with-env", "{nope"), "not JSON"),
        (("job", "start", "x", "n1", "--quorum", "lots"), "percentage"),
        (("job", "start", "x", "n1", "--quorum", "101%"), "percentage"),
        (("job", "start", "x", "n1", "--timeout", "0"), "positive"),
        (("job", "start", "x", "n1", "--file", "/nonexistent/payload"), "payload"),
        (("job", "output", "ID", "--channel", "both"), "invalid choice"),
        (("job", "list", "--status", "finished"), "invalid choice"),
        (("job", "bogus"), "invalid choice"),
        (("node",), "ACTION"),
    ],
)
def test_usage_errors_exit_2(
    args: tuple[str, ...], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(list(args)) == 2
    assert needle in capsys.readouterr().err


def test_every_job_and_node_option_has_help_text() -> None:
    parser = build_parser()
    top = next(a for a in parser._actions if a.dest == "command")
    for group in ("job", "node"):
        actions = top.choices[group]._actions  # type: ignore[index]
        sub = next(a for a in actions if a.dest == "sub")
        for name, p in sub.choices.items():
            for action in p._actions:
                assert action.help, f"{group} {name}: {action.dest} has no help"
    job_sub = next(a for a in top.choices["job"]._actions if a.dest == "sub")  # type: ignore[index]
    assert set(job_sub.choices) == {
        "start",
        "rerun",
        "list",
        "status",
        "output",
        "watch",
        "abort",
    }


def _ev(name: str, n: int, **data: Any) -> Event:
    payload = {"timestamp": f"2024-05-01 12:00:{n:02d}.000000Z", **data}
    return Event(name=name, id=f"job-{n}", data=payload, raw=json.dumps(payload))


def test_tracker_follows_the_feed_and_the_final_document_wins() -> None:
    t = JobTracker("j1")
    t.apply(_ev("start", 1, command="x", node_count=3, quorum=2))
    t.apply(_ev("quorum_vote", 2, node="a", status="success"))
    t.apply(_ev("quorum_vote", 3, node="b", status="success"))
    t.apply(_ev("quorum_vote", 4, node="c", status="down"))
    assert t.counts() == {"ready": 2, "unavailable": 1}
    t.apply(_ev("quorum_succeeded", 5))
    t.apply(_ev("run_start", 6, node="a"))
    assert t.apply(_ev("run_complete", 7, node="a", status="failure")) == ["a: failed (failure)"]
    t.apply(_ev("run_complete", 8, node="b", status="success"))
    t.apply(_ev("job_complete", 9, status="complete"))
    assert t.finished and t.done == 3 and t.total == 3
    assert t.elapsed(0.0) == 8.0
    t.apply_document({"status": "complete", "nodes": {"succeeded": ["b"], "failed": ["a", "c"]}})
    assert t.counts() == {"succeeded": 1, "failed": 2}
    assert t.summary() == "job j1 complete in 8.0 s: 1 succeeded, 2 failed"
    assert not job_succeeded({"status": "complete", "nodes": {"succeeded": ["b"], "failed": ["a"]}})
    assert job_succeeded({"status": "complete", "nodes": {"succeeded": ["a", "b"]}})
    assert not job_succeeded({"status": "aborted", "nodes": {"succeeded": ["a"]}})


def test_rich_display_on_a_terminal_shows_counts_bar_and_output() -> None:
    out = io.StringIO()
    with ProgressDisplay("0123456789abcdef", out, live=True) as display:
        display.event(_ev("start", 1, command="x", node_count=2, quorum=2))
        display.event(_ev("output", 2, node="a", channel="stdout", data="par"))
        display.event(_ev("output", 3, node="a", channel="stdout", data="tial\n"))
        display.event(_ev("run_complete", 4, node="a", status="success"))
        display.event(_ev("job_complete", 5, status="complete"))
        display.finish({"status": "complete", "nodes": {"succeeded": ["a", "b"]}})
    text = out.getvalue()
    assert "\x1b[" in text  # a terminal display, not plain lines
    assert "[a] partial" in text
    assert "2/2" in text
    assert "2 succeeded" in text
    assert "job 0123456789abcdef complete in 4.0 s: 2 succeeded" in text


# --- follow_job against a scripted feed: resume after lagged, early close, no feed ----------


def _sse(name: str, n: int, **data: Any) -> bytes:
    payload = {"timestamp": f"2024-05-01 12:00:{n:02d}.000000Z", **data}
    return f"event: {name}\nid: job-{n}\ndata: {json.dumps(payload)}\n\n".encode()


class ScriptedServer:
    """A tiny HTTP/1.1 server answering each request from a script, recording requests."""

    def __init__(self, answers: list[tuple[str, int, str, bytes]]) -> None:
        self.answers = answers  # (path suffix, status, content type, body), used in order
        self.requests: list[tuple[str, dict[str, str]]] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                return
            data += chunk
        line, *fields = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
        path = line.split()[1]
        self.requests.append((path, headers))
        suffix, status, ctype, body = self.answers.pop(0)
        assert path.endswith(suffix), (path, suffix)
        head = f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nConnection: close\r\n\r\n"
        await stream.send_all(head.encode() + body)
        await stream.aclose()


@asynccontextmanager
async def scripted_client(
    tmp_path: Path, answers: list[tuple[str, int, str, bytes]]
) -> AsyncIterator[tuple[ScriptedServer, Any]]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from pushy_appliance.client import Credentials, open_client

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    (tmp_path / "k.pem").write_bytes(pem)
    server = ScriptedServer(answers)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        creds = Credentials(
            f"http://127.0.0.1:{port}/organizations/default", "admin", str(tmp_path / "k.pem")
        )
        async with open_client(creds) as client:
            yield server, client
        nursery.cancel_scope.cancel()


FEED = "text/event-stream"
JOB = "f" * 32


async def test_follow_job_resumes_after_lagged_and_early_close(tmp_path: Path) -> None:
    from pushy_appliance.cli._follow import follow_job

    running = json.dumps({"id": JOB, "status": "running", "nodes": {"running": ["a"]}})
    answers = [
        (f"job_status_feed/{JOB}", 200, FEED, _sse("start", 1) + _sse("run_start", 2, node="a")),
        (f"jobs/{JOB}", 200, "application/json", running.encode()),  # closed early: still on?
        (f"job_status_feed/{JOB}", 200, FEED, _sse("output", 3, node="a") + _sse("lagged", 3)),
        (
            f"job_status_feed/{JOB}",
            200,
            FEED,
            _sse("run_complete", 4, node="a", status="success") + _sse("job_complete", 5),
        ),
    ]
    seen: list[str] = []
    async with scripted_client(tmp_path, answers) as (server, client):
        with trio.fail_after(LIMIT):
            assert await follow_job(client, JOB, lambda ev: seen.append(f"{ev.name} {ev.id}"))
    assert seen == [
        "start job-1",
        "run_start job-2",
        "output job-3",
        "run_complete job-4",
        "job_complete job-5",
    ]
    feeds = [h for p, h in server.requests if "job_status_feed" in p]
    assert [h.get("last-event-id") for h in feeds] == [None, "job-2", "job-3"]
    assert all(h["accept"] == FEED for h in feeds)
    assert server.answers == []


async def test_follow_job_without_a_feed_falls_back_and_names_unknown_jobs(
    tmp_path: Path,
) -> None:
    from pushy_appliance.cli._follow import follow_job
    from pushy_appliance.errors import ServerRefusedError

    doc = json.dumps({"id": JOB, "status": "running", "nodes": {}}).encode()
    not_found = b'{"error":["not found"]}'
    answers = [
        (f"job_status_feed/{JOB}", 404, "application/json", not_found),
        (f"jobs/{JOB}", 200, "application/json", doc),
        (f"job_status_feed/{JOB}", 404, "application/json", not_found),
        (f"jobs/{JOB}", 404, "application/json", not_found),
    ]
    async with scripted_client(tmp_path, answers) as (_server, client):
        with trio.fail_after(LIMIT):
            assert not await follow_job(client, JOB, lambda ev: None)
            try:
                await follow_job(client, JOB, lambda ev: None)
            except ServerRefusedError as e:
                assert e.status == 404
                assert JOB in e.message
            else:
                raise AssertionError("an unknown job must be refused")
