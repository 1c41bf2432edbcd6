"""The operator experience of issue 12 §4: say what is wrong, once; and the small things.

The real ``pushy`` (subprocesses) against an in-process appliance with fake nodes that speak
the real protocol, or a real agent where the agent's own words are tested; the parser itself
for the help texts.
"""

from __future__ import annotations

import argparse
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from test_cli_jobs import FEED, Cli, _sse, appliance, get, scripted_client, show
from test_node_e2e import AGENT, ORG, spawn

from pushy_appliance import chef_auth
from pushy_appliance.cli._main import build_parser, main
from pushy_appliance.cli._progress import JobTracker
from pushy_appliance.sse import Event

from fakenode import Behaviour, fake_nodes
from helpers import Signed, admin_client, running_server, test_config

JOBS = f"{ORG}/pushy/jobs"
LIMIT = 30.0


async def merged(cli: Cli, *args: str) -> tuple[int, list[str]]:
    """Run ``pushy ARGS`` with stderr into stdout, so lines keep the order they were written."""
    with trio.fail_after(LIMIT):
        done = await trio.run_process(
            [sys.executable, "-m", "pushy_appliance.cli", *args],
            env=cli.env,
            cwd=str(cli.home),
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return done.returncode, done.stdout.decode().splitlines()


async def wait_status(admin: Signed, job_id: str, status: str) -> None:
    with trio.fail_after(LIMIT):
        while True:
            if (await get(admin, f"{JOBS}/{job_id}"))["status"] == status:
                return
            await trio.sleep(0.05)


def index_of(lines: list[str], text: str) -> int:
    found = [i for i, line in enumerate(lines) if text in line]
    assert len(found) == 1, (text, lines)
    return found[0]


# --- say what is wrong, once ------------------------------------------------------------------


async def test_unknown_nodes_nacks_and_busy_nodes_are_said_once_with_their_reason(
    tmp_path: Path,
) -> None:
    behaviours = {
        "n1": Behaviour(nack_commit="not_whitelisted"),
        "n2": Behaviour(),
        "n3": Behaviour(ignore_run=True),  # holds the job it runs until it is aborted
    }
    async with appliance(tmp_path) as (info, admin, cli), fake_nodes(info, admin, behaviours):
        r = await admin.post(JOBS, {"command": "hold", "nodes": ["n3"]})
        assert r.status_code == 201, r.text
        holder = r.json()["id"]
        await wait_status(admin, holder, "running")
        code, lines = await merged(
            cli, "job", "start", "chef-client", "n1", "n2", "web2", "n3", "--quorum", "1"
        )
        await admin.post(f"{JOBS}/{holder}/abort")
    text = "\n".join(lines)
    assert code == 1, text
    # the unknown node is named before its unavailable
    warned = index_of(lines, "pushy: warning: no such node: web2")
    assert warned < index_of(lines, "web2: unavailable")
    assert "not a client of org default" in lines[warned]
    # the whitelist nack: one line, the reason and where to fix it, no "vote failure"
    nacked = [line for line in lines if line.startswith("n1:")]
    assert nacked == [
        "n1: nacked (not_whitelisted: the command is not in the node's whitelist: add it to"
        " the [[allow]] list of the agent's config, then send the agent SIGHUP)"
    ], text
    assert "vote failure" not in text
    # the busy node names the job holding it
    busy = [line for line in lines if line.startswith("n3:")]
    assert busy == [f"n3: nacked (busy: the node is running job {holder})"], text
    assert "n2: succeeded" in text


async def test_an_agent_whose_key_is_refused_says_which_key_and_node_and_backs_off(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    wrong = tmp_path / "wrong.pem"
    wrong.write_text(chef_auth.private_key_pem(chef_auth.generate_private_key()))
    async with running_server(test_config(data)) as info, admin_client(info) as admin:
        r = await admin.post(f"{ORG}/clients", {"name": "web1", "create_key": True})
        assert r.status_code == 201, r.text
        argv = [
            *AGENT,
            "--server",
            f"{info.url}{ORG}",
            "--node",
            "web1",
            "--key",
            str(wrong),
            "--ca-cert",
            str(data / "tls" / "ca.pem"),
            "--state-dir",
            str(tmp_path / "state"),
        ]  # the default log level: info
        async with spawn("agent", argv) as agent:
            with trio.fail_after(LIMIT):
                await agent.wait_for_line("retrying in", count=2)
    refused = [line for line in agent.lines if "refused" in line]
    assert len(refused) == 2, agent.lines
    for line in refused:
        assert f"node web1 signing with key {wrong}" in line, line
        assert "(401: " in line, line
        assert "check that client web1 exists in org default" in line, line
        assert f"that {wrong} is its private key" in line, line
        assert "retrying in" in line, line
    # httpx's own INFO line for each request is gone
    assert not any("HTTP Request" in line for line in agent.lines), agent.lines


def test_the_tracker_says_each_reason_once() -> None:
    t = JobTracker("j1")
    stamp = {"timestamp": "2024-05-01 12:00:01.000000Z"}
    held = {**stamp, "node": "a", "status": "down", "held_by": "f" * 32}
    assert t.apply(Event("quorum_vote", "job-1", held, "")) == [
        f"a: unavailable (vote down: the node is running job {'f' * 32})"
    ]
    assert t.apply(Event("quorum_vote", "job-2", {**stamp, "node": "b", "status": "down"}, ""))
    # a nack without its reason (no Explainer): the reason comes once, from the document
    assert t.apply(
        Event("quorum_vote", "job-3", {**stamp, "node": "c", "status": "failure"}, "")
    ) == ["c: nacked"]
    doc = {"nack_reasons": {"c": "no_such_dir", "d": "odd"}}
    assert t.nack_lines(doc["nack_reasons"]) == [
        "c: nacked (no_such_dir: the directory does not exist on the node (--in-dir))",
        "d: nacked (odd)",
    ]
    assert t.nack_lines(doc["nack_reasons"]) == []


# --- job ids by prefix, plurals ---------------------------------------------------------------


async def test_a_unique_job_id_prefix_is_accepted_wherever_an_id_is(tmp_path: Path) -> None:
    async with (
        appliance(tmp_path) as (info, admin, cli),
        fake_nodes(info, admin, {"web1": Behaviour(stdout=b"out\n")}),
    ):
        r = await admin.post(JOBS, {"command": "x", "nodes": ["web1"], "capture_output": True})
        job_id = r.json()["id"]
        await wait_status(admin, job_id, "complete")
        prefix = job_id[:6]
        status, output, watch, abort, nodes = await cli.run_all(
            ("job", "status", prefix, "--json"),
            ("job", "output", prefix, "web1"),
            ("job", "watch", prefix),
            ("job", "abort", prefix),
            ("node", "status"),
        )
    assert status.returncode == 0, show(status)
    assert b'"id": "' + job_id.encode() in status.stdout
    assert (output.returncode, output.stdout) == (0, b"out\n"), show(output)
    assert watch.returncode == 0, show(watch)
    assert f"job {job_id} complete".encode() in watch.stdout
    # abort resolves the prefix, then the server refuses: the job already finished
    assert abort.returncode == 3, show(abort)
    assert f"job {job_id}: job already finished".encode() in abort.stderr, show(abort)
    assert b"1 node: 1 online, 0 offline" in nodes.stdout, show(nodes)


# --- --key-out ----------------------------------------------------------------------------------


async def test_key_out_needs_its_directory_and_ends_0600(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path / "data")) as info, admin_client(info) as admin:
        cli = Cli(tmp_path / "home")
        cli.home.mkdir()
        cli.env["PUSHY_DATA_DIR"] = str(info.data_dir)
        wide = tmp_path / "wide.pem"
        wide.write_text("old")
        wide.chmod(0o644)
        target = tmp_path / "target.pem"
        target.write_text("")
        target.chmod(0o666)
        link = tmp_path / "link.pem"
        link.symlink_to(target)
        missing, onto_wide, onto_link = await cli.run_all(
            ("client", "create", "c1", "--key-out", str(tmp_path / "no" / "c1.pem")),
            ("client", "create", "c2", "--key-out", str(wide)),
            ("client", "create", "c3", "--key-out", str(link)),
        )
        clients = await get(admin, f"{ORG}/clients")
    assert missing.returncode == 2, show(missing)
    assert f"directory {tmp_path / 'no'} does not exist" in missing.stderr.decode()
    assert not (tmp_path / "no").exists()
    assert "c1" not in clients  # refused before anything was created
    assert onto_wide.returncode == 0, show(onto_wide)
    assert stat.S_IMODE(wide.stat().st_mode) == 0o600
    chef_auth.load_private_key(wide.read_bytes())
    assert onto_link.returncode == 0, show(onto_link)
    assert link.is_symlink()  # followed, not replaced
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    chef_auth.load_private_key(target.read_bytes())


# --- help texts -------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def _walk(parser: argparse.ArgumentParser, path: str = "pushy") -> list[tuple[str, Any]]:
    found = []
    for name, sub in _subparsers(parser).items():
        found.append((f"{path} {name}", sub))
        found.extend(_walk(sub, f"{path} {name}"))
    return found


def test_every_subcommand_has_a_description() -> None:
    commands = _walk(build_parser())
    assert len(commands) > 20
    missing = [name for name, p in commands if not (p.description or "").strip()]
    assert missing == []


def test_bare_pushy_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    for command in _subparsers(build_parser()):
        assert f"    {command} " in err, (command, err)


def test_agent_help_tells_of_sighup(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "SIGHUP re-reads the whitelist ([[allow]]) from --config" in out


def test_whoami_prints_no_key_material(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "k.pem"
    key.write_text(chef_auth.private_key_pem(chef_auth.generate_private_key()))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PUSHY_DATA_DIR", str(tmp_path / "none"))
    code = main(
        ["whoami", "--server", "https://h:1/organizations/o", "--user", "u", "--key", str(key)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines() == [
        "server https://h:1/organizations/o (from flag --server)",
        "user   u (from flag --user)",
        f"key    {key} (from flag --key)",
        "trust  the system's CAs (from the default: no --ca-cert/--fingerprint,"
        " PUSHY_CA_CERT/PUSHY_FINGERPRINT, profile ssl_ca_file for this server or data"
        " directory CA)",
    ]


# --- follow_job against a scripted server: a server that is away for a while -------------------


async def test_follow_job_waits_for_a_server_that_answers_503_then_resumes(tmp_path: Path) -> None:
    from pushy_appliance.cli._follow import Reconnector, follow_job

    job = "e" * 32
    unavailable = (f"jobs/{job}", 503, "application/json", b'{"error":"restarting"}')
    answers = [
        (f"job_status_feed/{job}", 200, FEED, _sse("start", 1) + _sse("run_start", 2, node="a")),
        unavailable,  # the stream ended early; the server is going away
        (f"job_status_feed/{job}", 503, "application/json", b'{"error":"restarting"}'),
        (
            f"job_status_feed/{job}",
            200,
            FEED,
            _sse("run_complete", 3, node="a", status="success") + _sse("job_complete", 4),
        ),
    ]
    seen: list[str] = []
    told: list[str] = []
    async with scripted_client(tmp_path, answers) as (server, client):
        with trio.fail_after(LIMIT):
            done = await follow_job(
                client,
                job,
                lambda ev: seen.append(f"{ev.name} {ev.id}"),
                reconnect=Reconnector(notify=told.append),
            )
    assert done
    assert seen == ["start job-1", "run_start job-2", "run_complete job-3", "job_complete job-4"]
    feeds = [h.get("last-event-id") for p, h in server.requests if "job_status_feed" in p]
    assert feeds == [None, "job-2", "job-2"]
    assert len(told) == 2, told
    assert told[0].startswith("lost the server (") and "503" in told[0], told
    assert told[1] == "reconnected"


async def test_follow_job_gives_up_once_the_server_stays_away(tmp_path: Path) -> None:
    from pushy_appliance.cli._follow import Reconnector, follow_job
    from pushy_appliance.errors import ServerRefusedError

    job = "e" * 32
    gone = (f"job_status_feed/{job}", 503, "application/json", b'{"error":"down"}')
    answers = [
        (f"job_status_feed/{job}", 200, FEED, _sse("start", 1)),
        (f"jobs/{job}", 503, "application/json", b'{"error":"down"}'),
        *[gone] * 20,
    ]
    async with scripted_client(tmp_path, answers) as (server, client):
        began = trio.current_time()
        with trio.fail_after(LIMIT), pytest.raises(ServerRefusedError) as caught:
            await follow_job(client, job, lambda ev: None, reconnect=Reconnector(window=0.6))
        took = trio.current_time() - began
    assert caught.value.status == 503
    assert 0.6 <= took < 5.0
    # it kept trying, with growing waits, not in a tight loop
    assert 3 <= len(server.requests) <= 8, server.requests
