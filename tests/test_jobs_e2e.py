"""The job engine end to end: real ``pushy agent`` subprocesses over TLS running real commands
from their whitelist, against the in-process appliance (``API.md`` §3 and §5, ``NODES.md``
§4-5). Also the ``POST jobs`` validation table through HTTP."""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from test_job_validation import ERROR_ROWS
from test_node_e2e import Proc, create_client, spawn, write_key
from trio_websocket import ConnectionClosed

from pushy_appliance import chef_auth
from pushy_appliance.appliance import ServerInfo
from pushy_appliance.jobs.validation import DuplicateKeyDict
from pushy_appliance.nodes.registry import DIRECT_SEND_TIMEOUT

from fakenode import Behaviour, FakeNode
from helpers import Signed, admin_client, running_server, test_config

ORG = "/organizations/default"
JOBS = f"{ORG}/pushy/jobs"
FINISHED = {"complete", "quorum_failed", "timed_out", "aborted", "crashed"}
LIMIT = 40.0
AGENT = [sys.executable, "-m", "pushy_appliance.cli", "agent"]

# Command scripts. Each is run through a whitelist entry (``run = '/bin/sh SCRIPT ...'``);
# ``@DIR@`` is replaced by the test's scripts directory.
SCRIPTS = {
    # exact bytes on both channels, non-UTF-8 and NUL included, and a stretch of random bytes
    # long enough to cross several output frames (64 KiB each)
    "capture.sh": """\
printf 'out \\377\\376\\000 end\\n'
cat "@DIR@/random.bin"
printf 'err \\200\\201\\n' >&2
""",
    # exit 1 on the node named by $1
    "failon.sh": """\
printf 'ran on %s\\n' "$CHEF_PUSH_NODE_NAME"
[ "$CHEF_PUSH_NODE_NAME" = "$1" ] && exit 1
exit 0
""",
    # what a job sees: its dir, an env var, the file (name and content)
    "probe.sh": """\
printf 'pwd=%s\\n' "$(pwd)"
printf 'greeting=%s\\n' "$GREETING"
printf 'file=%s\\n' "$CHEF_PUSH_JOB_FILE"
printf 'pushy_file=%s\\n' "$PUSHY_JOB_FILE"
cat "$CHEF_PUSH_JOB_FILE"
""",
    # note our pid and a grandchild's, then sleep $1 seconds as the same process
    "sleeper.sh": """\
sleep "$1" &
printf '%s %s\\n' "$$" "$!" > "@DIR@/pids/$CHEF_PUSH_NODE_NAME.tmp"
mv "@DIR@/pids/$CHEF_PUSH_NODE_NAME.tmp" "@DIR@/pids/$CHEF_PUSH_NODE_NAME.pid"
exec sleep "$1"
""",
    # a long run that prints before and after its sleep of $1 seconds
    "slow.sh": """\
printf 'start %s\\n' "$CHEF_PUSH_NODE_NAME"
sleep "$1"
printf 'done %s\\n' "$CHEF_PUSH_NODE_NAME"
""",
    # print on both channels, say so, then sleep $1 seconds; stopped (SIGTERM to the group),
    # print on both channels again and exit 143
    "chatty.sh": """\
printf 'before out\\n'
printf 'before err\\n' >&2
trap 'printf "stopped out\\n"; printf "stopped err\\n" >&2; exit 143' TERM
: > "@DIR@/pids/$CHEF_PUSH_NODE_NAME.ready"
sleep "$1" 2>/dev/null  # (the shell's "Terminated" notice about sleep goes there too)
printf 'after\\n'
""",
    # start and end (nanosecond clock) of a short run, appended to one shared file
    "serial.sh": """\
printf 'start %s %s\\n' "$CHEF_PUSH_NODE_NAME" "$(date +%s%N)" >> "@DIR@/serial.log"
sleep 0.3
printf 'end %s %s\\n' "$CHEF_PUSH_NODE_NAME" "$(date +%s%N)" >> "@DIR@/serial.log"
""",
}


def whitelist(scripts: Path, *, greet: bool = True) -> str:
    """The ``[[allow]]`` entries of every test agent (``greet`` only where asked)."""
    entries = [
        ("^capture$", f"/bin/sh {scripts}/capture.sh"),
        ("^chatty ([0-9]+)$", f"/bin/sh {scripts}/chatty.sh \\1"),
        ("^fail-on ([a-z0-9]+)$", f"/bin/sh {scripts}/failon.sh \\1"),
        ("^probe$", f"/bin/sh {scripts}/probe.sh"),
        ("^sleep-pid ([0-9]+)$", f"/bin/sh {scripts}/sleeper.sh \\1"),
        ("^serial$", f"/bin/sh {scripts}/serial.sh"),
        ("^slow ([0-9]+)$", f"/bin/sh {scripts}/slow.sh \\1"),
        ("^say ([a-z]+)$", "/bin/echo \\1"),
    ]
    if greet:
        entries.append(("^greet$", "/bin/echo hello"))
    return "".join(f"\n[[allow]]\npattern = '{p}'\nrun = '{r}'\n" for p, r in entries)


def write_scripts(root: Path) -> Path:
    """Write the command scripts under ``root/scripts``; returns that directory."""
    scripts = root / "scripts"
    (scripts / "pids").mkdir(parents=True)
    for name, text in SCRIPTS.items():
        (scripts / name).write_text(text.replace("@DIR@", str(scripts)))
    (scripts / "random.bin").write_bytes(os.urandom(200_000))
    return scripts


def agent_config(
    path: Path, *, server_url: str, node: str, key: Path, ca: Path, state: Path, allow: str
) -> Path:
    """Write an agent TOML config for ``node``; returns its path."""
    text = (
        f"server_url = {json.dumps(server_url + ORG)}\n"
        f"node_name = {json.dumps(node)}\n"
        f"client_key = {json.dumps(str(key))}\n"
        f"ca_cert = {json.dumps(str(ca))}\n"
        f"state_dir = {json.dumps(str(state))}\n"
        f"working_dir = {json.dumps(str(path.parent))}\n"
        '[log]\nlevel = "debug"\n'
    ) + allow
    path.write_text(text)
    return path


async def wait_online(admin: Signed, nodes: list[str]) -> None:
    """Poll ``node_states`` until every node of ``nodes`` is online and available."""
    while True:
        r = await admin.get(f"{ORG}/pushy/node_states")
        assert r.status_code == 200, r.text
        states = {d["node_name"]: (d["status"], d["availability"]) for d in r.json()}
        if all(states.get(n) == ("online", "available") for n in nodes):
            return
        await trio.sleep(0.05)


class Cluster:
    """An appliance (at ``url``, with ``data_dir``; ``info`` when it runs in-process), its
    admin client and real agents (``agents[NAME]``)."""

    def __init__(
        self,
        url: str,
        data_dir: Path,
        admin: Signed,
        root: Path,
        scripts: Path,
        info: ServerInfo | None = None,
    ) -> None:
        self.info = info
        self.url = url
        self.data_dir = data_dir
        self.admin = admin
        self.root = root
        self.scripts = scripts
        self.agents: dict[str, Proc] = {}

    async def start_agent(self, stack: AsyncExitStack, node: str, *, greet: bool = True) -> Proc:
        """Create ``node``'s client, write its config and start its agent, whose lifetime is
        ``stack``'s (not awaited online)."""
        pem = await create_client(self.admin, node)
        assert pem is not None
        home = self.root / "agents" / node
        home.mkdir(parents=True)
        key = write_key(home / "client.pem", pem)
        agent_config(
            home / "agent.toml",
            server_url=self.url,
            node=node,
            key=key,
            ca=self.data_dir / "tls" / "ca.pem",
            state=home / "state",
            allow=whitelist(self.scripts, greet=greet),
        )
        return await self.restart_agent(stack, node)

    async def restart_agent(self, stack: AsyncExitStack, node: str) -> Proc:
        """Start ``node``'s agent (again) from the config :meth:`start_agent` wrote."""
        config = self.root / "agents" / node / "agent.toml"
        proc = await stack.enter_async_context(
            spawn(f"agent {node}", [*AGENT, "--config", str(config)])
        )
        self.agents[node] = proc
        return proc


@asynccontextmanager
async def cluster(
    tmp_path: Path, nodes: list[str], *, no_greet: tuple[str, ...] = (), **flags: Any
) -> AsyncIterator[Cluster]:
    """The in-process appliance with one real agent per name in ``nodes``, all online."""
    scripts = write_scripts(tmp_path)
    config = test_config(tmp_path / "data", **flags)
    async with running_server(config) as info, admin_client(info) as admin:
        c = Cluster(info.url, info.data_dir, admin, tmp_path, scripts, info)
        async with AsyncExitStack() as stack:
            # (agents are entered into the stack outside any cancel scope opened here)
            for node in nodes:
                await c.start_agent(stack, node, greet=node not in no_greet)
            with trio.fail_after(LIMIT):
                await wait_online(admin, nodes)
            yield c


async def start_job(admin: Signed, body: dict[str, Any]) -> str:
    """POST a job; returns its id."""
    r = await admin.post(JOBS, body)
    assert r.status_code == 201, r.text
    doc = r.json()
    assert r.headers["Location"] == doc["uri"]
    assert doc["uri"] == f"{admin.base}{JOBS}/{doc['id']}"
    return str(doc["id"])


async def job_doc(admin: Signed, job_id: str) -> dict[str, Any]:
    """The ``GET jobs/ID`` document (asserting 200)."""
    r = await admin.get(f"{JOBS}/{job_id}")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def wait_job(
    admin: Signed, job_id: str, statuses: set[str] = FINISHED, **buckets: int
) -> dict[str, Any]:
    """Poll the job document until its status is in ``statuses`` and each bucket named in
    ``buckets`` (``running=3``) holds at least that many nodes."""
    while True:
        doc = await job_doc(admin, job_id)
        nodes = doc["nodes"]
        if doc["status"] in statuses and all(
            len(nodes.get(b, [])) >= n for b, n in buckets.items()
        ):
            return doc
        await trio.sleep(0.05)


async def output(admin: Signed, job_id: str, node: str, channel: str) -> bytes:
    """The captured bytes of ``node``'s ``channel`` (asserting 200, complete, octet-stream)."""
    r = await admin.get(f"{JOBS}/{job_id}/output/{node}/{channel}")
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/octet-stream"
    assert "X-Pushy-Output-Truncated" not in r.headers
    return r.content


async def feed_events(admin: Signed, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The job feed of a job, read to its end: ``(name, data)`` per event."""
    r = await admin.get(f"{ORG}/pushy/job_status_feed/{job_id}")
    assert r.status_code == 200, r.text
    names = [line[len("event: ") :] for line in r.text.splitlines() if line.startswith("event: ")]
    data = [
        json.loads(line[len("data: ") :])
        for line in r.text.splitlines()
        if line.startswith("data: ")
    ]
    assert len(names) == len(data)
    return list(zip(names, data, strict=True))


async def wait_file(path: Path) -> None:
    """Poll until ``path`` exists."""
    while True:
        if await trio.Path(path).exists():
            return
        await trio.sleep(0.02)


async def read_pids(scripts: Path, node: str) -> list[int]:
    """Wait for the sleeper's pid file of ``node``; returns the process and grandchild pids."""
    path = trio.Path(scripts / "pids" / f"{node}.pid")
    while True:
        if await path.exists():
            return [int(p) for p in (await path.read_text()).split()]
        await trio.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not, nor one that ends meanwhile)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        # gone before the kill, before the open (no /proc entry) or during the read (ESRCH)
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def wait_gone(pids: list[int]) -> None:
    """Poll until none of ``pids`` is a live process."""
    while True:
        if not any(alive(p) for p in pids):
            return
        await trio.sleep(0.02)


# --- tests with agents ----------------------------------------------------------------------


async def test_success_exact_output_and_a_failing_node(tmp_path: Path) -> None:
    nodes = ["n1", "n2", "n3"]
    async with cluster(tmp_path, nodes) as c:
        admin = c.admin
        with trio.fail_after(LIMIT):
            job = await start_job(admin, {"command": "capture", "nodes": nodes, "quorum": 3})
            before = await job_doc(admin, job)
            assert before["status"] in {"voting", "running", "complete"}
            doc = await wait_job(admin, job)
            assert doc["status"] == "complete"
            assert doc["nodes"] == {"succeeded": nodes}
            assert "capture_output" not in doc
            r = await admin.get(f"{JOBS}/{job}/output/n1/stdout")
            assert r.status_code == 404  # capture was off

            job = await start_job(
                admin, {"command": "capture", "nodes": nodes, "capture_output": True}
            )
            doc = await wait_job(admin, job)
            assert doc["status"] == "complete"
            assert doc["nodes"] == {"succeeded": nodes}
            assert doc["capture_output"] is True
            random = (c.scripts / "random.bin").read_bytes()
            for node in nodes:
                assert await output(admin, job, node, "stdout") == (
                    b"out \xff\xfe\x00 end\n" + random
                )
                assert await output(admin, job, node, "stderr") == b"err \x80\x81\n"

            job = await start_job(
                admin, {"command": "fail-on n2", "nodes": nodes, "capture_output": True}
            )
            doc = await wait_job(admin, job)
            assert doc["status"] == "complete"
            assert doc["nodes"] == {"succeeded": ["n1", "n3"], "failed": ["n2"]}
            assert await output(admin, job, "n2", "stdout") == b"ran on n2\n"
            r = await admin.get(f"{ORG}/pushy/job_status_feed/{job}")
            events = [
                json.loads(line[len("data: ") :])
                for line in r.text.splitlines()
                if line.startswith("data: ")
            ]
            completes = {e["node"]: e["status"] for e in events if "node" in e and "status" in e}
            assert completes == {"n1": "success", "n2": "failure", "n3": "success"}


async def test_file_env_and_dir_reach_the_command(tmp_path: Path) -> None:
    nodes = ["n1", "n2"]
    async with cluster(tmp_path, nodes) as c:
        admin = c.admin
        work = tmp_path / "work dir"
        work.mkdir()
        payload = b"#!/bin/sh\n\xff\x00binary\n"
        cases = [
            ("raw:hello\nworld \u00e9", "hello\nworld \u00e9".encode()),
            ("base64:" + base64.b64encode(payload).decode(), payload),
        ]
        with trio.fail_after(LIMIT):
            for file, content in cases:
                job = await start_job(
                    admin,
                    {
                        "command": "probe",
                        "nodes": nodes,
                        "capture_output": True,
                        "dir": str(work),
                        "env": {"GREETING": "hi there; $HOME"},
                        "file": file,
                    },
                )
                doc = await wait_job(admin, job)
                assert doc["status"] == "complete", doc
                assert doc["nodes"] == {"succeeded": nodes}
                assert doc["file_specified"] is True
                r = await admin.get(f"{JOBS}/{job}?include_file=true")
                assert r.json()["file"] == file
                for node in nodes:
                    out = await output(admin, job, node, "stdout")
                    head = out.split(b"\n", 4)
                    assert head[0] == f"pwd={work}".encode()
                    assert head[1] == b"greeting=hi there; $HOME"
                    assert head[2].startswith(b"file=/")
                    job_file = Path(head[2][len(b"file=") :].decode())
                    assert head[3] == b"pushy_file=" + head[2][len(b"file=") :]
                    assert head[4] == content
                    # the file and its private directory are gone once the job ended
                    assert not await trio.Path(job_file).exists()
                    assert not await trio.Path(job_file.parent).exists()
                    assert await output(admin, job, node, "stderr") == b""


async def test_whitelist_quorum_and_offline_node(tmp_path: Path) -> None:
    nodes = ["n1", "n2", "n3"]
    async with cluster(tmp_path, nodes, no_greet=("n3",)) as c:
        admin = c.admin
        with trio.fail_after(LIMIT):
            # n3 does not allow "greet": with quorum = all the vote fails
            job = await start_job(admin, {"command": "greet", "nodes": nodes})
            doc = await wait_job(admin, job)
            assert doc["status"] == "quorum_failed"
            assert doc["quorum"] == 3
            assert doc["nodes"].pop("nacked") == ["n3"]
            assert doc["nack_reasons"] == {"n3": "not_whitelisted"}
            # n1 and n2 end was_ready when they voted before n3, unavailable (quorum
            # unreachable) when n3's nack ended the vote first
            assert sorted(itertools.chain(*doc["nodes"].values())) == ["n1", "n2"]
            assert set(doc["nodes"]) <= {"was_ready", "unavailable"}
            # the released nodes are available again, and run it with a lower quorum
            await wait_online(admin, nodes)
            job = await start_job(
                admin, {"command": "greet", "nodes": nodes, "quorum": 2, "capture_output": True}
            )
            doc = await wait_job(admin, job)
            assert doc["status"] == "complete"
            assert doc["nodes"] == {"succeeded": ["n1", "n2"], "nacked": ["n3"]}
            assert doc["nack_reasons"] == {"n3": "not_whitelisted"}
            assert await output(admin, job, "n1", "stdout") == b"hello\n"
            r = await admin.get(f"{JOBS}/{job}/output/n3/stdout")
            assert r.status_code == 404  # it never ran

            # outside every whitelist
            # (quorum 1: the vote cannot end early before every node nacked)
            job = await start_job(admin, {"command": "rm -rf /", "nodes": nodes, "quorum": "33%"})
            doc = await wait_job(admin, job)
            assert doc["status"] == "quorum_failed"
            assert doc["quorum"] == 1
            assert doc["nodes"] == {"nacked": nodes}
            assert doc["nack_reasons"] == dict.fromkeys(nodes, "not_whitelisted")

            # a client with no agent, and a name that is no client at all
            await create_client(admin, "offline1")
            job = await start_job(
                admin, {"command": "say hi", "nodes": ["n1", "offline1", "ghost"], "quorum": 1}
            )
            doc = await wait_job(admin, job)
            assert doc["status"] == "complete"
            assert doc["nodes"] == {"succeeded": ["n1"], "unavailable": ["ghost", "offline1"]}
            job = await start_job(admin, {"command": "say hi", "nodes": ["n1", "offline1"]})
            doc = await wait_job(admin, job)
            # the quorum (2) is out of reach at once: n1 is released before it could vote
            assert doc["status"] == "quorum_failed"
            assert doc["nodes"] == {"unavailable": ["n1", "offline1"]}
            # released means sent an abort: n1 answers it and is available again at once
            with trio.fail_after(3):
                await wait_online(admin, ["n1"])
            job = await start_job(admin, {"command": "say hi", "nodes": ["n1"]})
            assert (await wait_job(admin, job))["status"] == "complete"


async def test_run_timeout_abort_and_busy(tmp_path: Path) -> None:
    nodes = ["n1", "n2", "n3"]
    async with cluster(tmp_path, nodes) as c:
        admin = c.admin
        with trio.fail_after(LIMIT):
            timed = await start_job(
                admin, {"command": "sleep-pid 30", "nodes": ["n1"], "run_timeout": 2}
            )
            aborted = await start_job(admin, {"command": "sleep-pid 30", "nodes": ["n2", "n3"]})
            await wait_job(admin, timed, {"running"}, running=1)
            await wait_job(admin, aborted, {"running"}, running=2)
            timed_pids = await read_pids(c.scripts, "n1")
            aborted_pids = await read_pids(c.scripts, "n2") + await read_pids(c.scripts, "n3")
            assert all(alive(p) for p in timed_pids + aborted_pids)

            # a busy node nacks the commit of another job
            busy = await start_job(admin, {"command": "say hi", "nodes": ["n1"], "quorum": 0})
            doc = await wait_job(admin, busy)
            assert doc["status"] == "complete"
            assert doc["nodes"] == {"nacked": ["n1"]}
            assert doc["nack_reasons"] == {"n1": "busy"}

            r = await admin.post(f"{JOBS}/{aborted}/abort")
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "aborted"
            assert r.json()["nodes"] == {"aborted": ["n2", "n3"]}
            with trio.fail_after(3):
                await wait_gone(aborted_pids)
            r = await admin.post(f"{JOBS}/{aborted}/abort")
            assert r.status_code == 409
            assert r.json() == {"error": "job already finished"}

            doc = await wait_job(admin, timed)
            assert doc["status"] == "timed_out"
            assert doc["nodes"] == {"timed_out": ["n1"]}
            with trio.fail_after(3):
                await wait_gone(timed_pids)

            # every node is free again once its agent reported the end of its process
            await wait_online(admin, nodes)
            job = await start_job(admin, {"command": "say ok", "nodes": nodes})
            doc = await wait_job(admin, job)
            assert doc["nodes"] == {"succeeded": nodes}


STOPPED_OUT = b"before out\nstopped out\n"
STOPPED_ERR = b"before err\nstopped err\n"


async def check_late_result(
    admin: Signed, job: str, status: str, node_status: str, agent_statuses: set[str]
) -> None:
    """The job ended ``status`` with ``node`` n1 ``node_status`` at once; n1's output and
    result, which came after the end, are kept, published before ``job_complete`` and
    served; the job's statuses did not change."""
    events = await feed_events(admin, job)  # ends with job_complete
    names = [name for name, _ in events]
    assert names[-2:] == ["late_result", "job_complete"]
    assert events[-1][1]["status"] == status
    stop = names.index("run_complete")
    assert events[stop][1] == {**events[stop][1], "node": "n1", "status": node_status}
    late = {k: v for k, v in events[-2][1].items() if k != "timestamp"}
    assert late["node"] == "n1"
    assert late["status"] in agent_statuses
    assert (late["exit_code"], late["signal"]) == (143, None)  # the trap's exit
    assert (late["stdout_bytes"], late["stderr_bytes"]) == (len(STOPPED_OUT), len(STOPPED_ERR))
    assert late["truncated"] is False
    # the output printed after the stop arrived after run_complete, and was kept
    printed = {"stdout": b"", "stderr": b""}
    for name, data in events:
        if name == "output":
            printed[data["channel"]] += data["data"].encode()
    assert printed == {"stdout": STOPPED_OUT, "stderr": STOPPED_ERR}
    late_output = {"stdout": "", "stderr": ""}
    for name, data in events[stop:]:
        if name == "output":
            late_output[data["channel"]] += data["data"]
    assert late_output["stdout"].endswith("stopped out\n")
    assert late_output["stderr"].endswith("stopped err\n")
    assert await output(admin, job, "n1", "stdout") == STOPPED_OUT
    assert await output(admin, job, "n1", "stderr") == STOPPED_ERR
    doc = await job_doc(admin, job)
    assert (doc["status"], doc["nodes"]) == (status, {node_status: ["n1"]})
    r = await admin.get(f"{JOBS}/{job}?include_results=true")
    assert r.json()["results"] == {"n1": {k: v for k, v in late.items() if k != "node"}}


async def test_an_aborted_node_s_late_output_and_result_are_kept(tmp_path: Path) -> None:
    async with cluster(tmp_path, ["n1"]) as c:
        admin = c.admin
        with trio.fail_after(LIMIT):
            job = await start_job(
                admin, {"command": "chatty 30", "nodes": ["n1"], "capture_output": True}
            )
            await wait_file(c.scripts / "pids" / "n1.ready")
            r = await admin.post(f"{JOBS}/{job}/abort")
            assert r.status_code == 200, r.text
            # final at once: the abort does not wait for the node's result
            assert (r.json()["status"], r.json()["nodes"]) == ("aborted", {"aborted": ["n1"]})
            await check_late_result(admin, job, "aborted", "aborted", {"aborted"})
            await wait_online(admin, ["n1"])


async def test_a_timed_out_node_s_late_output_and_result_are_kept(tmp_path: Path) -> None:
    async with cluster(tmp_path, ["n1"]) as c:
        admin = c.admin
        with trio.fail_after(LIMIT):
            job = await start_job(
                admin,
                {"command": "chatty 30", "nodes": ["n1"], "capture_output": True, "run_timeout": 2},
            )
            await wait_file(c.scripts / "pids" / "n1.ready")
            # The server's run timer (from the start of running) fires first and aborts the
            # command: the agent reports aborted. The agent enforces the same run_timeout
            # from its process's start, a moment later; when that wins, it says timed_out.
            await check_late_result(admin, job, "timed_out", "timed_out", {"aborted", "timed_out"})
            await wait_online(admin, ["n1"])


async def stay_deaf(node: FakeNode, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run a deaf fake node until the server drops it (its heartbeats then fail)."""
    try:
        await node.run(task_status=task_status)
    except* (ConnectionClosed, trio.BrokenResourceError):
        pass


async def test_nodes_that_stop_reading_delay_no_heartbeat_and_no_fan_out(tmp_path: Path) -> None:
    # Small node send buffers make a stall happen as on a real network: a node that stops
    # reading takes little more than its receive buffer (128 KB) in its kernel buffers.
    flags = {"limits.node_send_buffer": 4096}
    agents = ["a1", "a2"]
    big = "base64:" + base64.b64encode(os.urandom(100_000)).decode()  # a 130 KB frame
    async with cluster(tmp_path, agents, **flags) as c:
        admin = c.admin
        assert c.info is not None
        info = c.info
        registry = info.services.nodes
        with trio.fail_after(LIMIT):
            began = trio.current_time()
            job = await start_job(admin, {"command": "say hi", "nodes": agents, "file": big})
            assert (await wait_job(admin, job))["nodes"] == {"succeeded": agents}
            alone = trio.current_time() - began

            key = chef_auth.generate_private_key()
            public = chef_auth.public_key_pem(key)
            deaf = [f"deaf{i:02d}" for i in range(50)]
            for name in deaf:
                r = await admin.post(f"{ORG}/clients", {"name": name, "public_key": public})
                assert r.status_code == 201, r.text
            ca = str(c.data_dir / "tls" / "ca.pem")
            async with trio.open_nursery() as nursery:
                for name in deaf:
                    fake = FakeNode(info.node_url, "default", name, key, ca, Behaviour(deaf=True))
                    await nursery.start(stay_deaf, fake)
                # each deaf node's client holds the first frame after welcome, a heartbeat
                # (sent at most 1.5 intervals after it), and reads nothing more
                sessions = [registry.get("default", name) for name in deaf]
                while True:
                    if all(s.last_sent > s.connected_at + 0.1 for s in sessions):
                        break
                    await trio.sleep(0.05)
                # Two fan-outs of 130 KB commits: more than a deaf node's socket takes (its
                # kernel buffers may take the first), so their writes stall, all together.
                await start_job(admin, {"command": "say hi", "nodes": deaf, "file": big})
                began = trio.current_time()
                job = await start_job(
                    admin, {"command": "say hi", "nodes": agents + deaf, "file": big, "quorum": 2}
                )
                doc = await wait_job(admin, job)
                together = trio.current_time() - began
                assert doc["status"] == "complete"
                assert doc["nodes"] == {"succeeded": agents, "unavailable": deaf}
                assert registry.statistics().dropped_stuck == len(deaf)
                nursery.cancel_scope.cancel()
        # one write timeout in all, not one per stalled node
        assert together < alone + DIRECT_SEND_TIMEOUT + 1.5, (together, alone)
        # the agents never missed the server's heartbeats (3 intervals, 1.5 s, would have
        # made them reconnect)
        for name in agents:
            assert c.agents[name].count("connected (server incarnation") == 1
            assert c.agents[name].count("no frame from the server") == 0


async def test_a_restarted_agent_ends_the_job_process_its_crash_left(tmp_path: Path) -> None:
    async with cluster(tmp_path, ["n1"]) as c:
        admin = c.admin
        with trio.fail_after(LIMIT):
            job = await start_job(admin, {"command": "sleep-pid 30", "nodes": ["n1"]})
            await wait_job(admin, job, {"running"}, running=1)
            pids = await read_pids(c.scripts, "n1")
            killed = c.agents["n1"]
            killed.process.send_signal(signal.SIGKILL)
            await killed.process.wait()
            # a killed agent cannot stop its job: reaped, it has done all it ever will
            assert all(alive(p) for p in pids)
        async with AsyncExitStack() as stack:
            again = await c.restart_agent(stack, "n1")
            with trio.fail_after(LIMIT):
                await wait_gone(pids)
                # ... and its successor found the job's group still running
                await again.wait_for_line("left running by the previous agent run")
                doc = await wait_job(admin, job)
                assert doc["status"] == "complete"
                assert doc["nodes"] == {"crashed": ["n1"]}  # a new incarnation: node restarted
                await wait_online(admin, ["n1"])
                job = await start_job(admin, {"command": "say hi", "nodes": ["n1"]})
                assert (await wait_job(admin, job))["status"] == "complete"


async def test_max_concurrency_one_never_overlaps(tmp_path: Path) -> None:
    nodes = ["n1", "n2", "n3"]
    async with cluster(tmp_path, nodes) as c:
        admin = c.admin
        with trio.fail_after(LIMIT):
            job = await start_job(
                admin, {"command": "serial", "nodes": nodes, "max_concurrency": 1}
            )
            doc = await wait_job(admin, job)
            assert doc["status"] == "complete"
            assert doc["nodes"] == {"succeeded": nodes}
            assert doc["max_concurrency"] == 1
        lines = [line.split() for line in (c.scripts / "serial.log").read_text().splitlines()]
        assert len(lines) == 6
        # each node's start is followed by that node's end, in time order
        assert [kind for kind, _, _ in lines] == ["start", "end"] * 3
        assert [lines[i][1] for i in range(0, 6, 2)] == [lines[i][1] for i in range(1, 6, 2)]
        assert sorted(lines[i][1] for i in range(0, 6, 2)) == nodes
        stamps = [int(stamp) for _, _, stamp in lines]
        assert stamps == sorted(stamps)


# --- validation through HTTP ----------------------------------------------------------------


def _to_json(value: object) -> str:
    """JSON text for a validation row's body, keeping the duplicate keys of a
    :class:`DuplicateKeyDict` (each repeated once more, first value unchanged)."""
    if isinstance(value, DuplicateKeyDict):
        members = [f"{json.dumps(k)}:{_to_json(v)}" for k in value.duplicates for v in (value[k],)]
        members += [f"{json.dumps(k)}:{_to_json(v)}" for k, v in value.items()]
        return "{" + ",".join(members) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_to_json(v) for v in value) + "]"
    return json.dumps(value, allow_nan=False)


def _http_rows() -> list[tuple[str, bytes, str]]:
    rows: list[tuple[str, bytes, str]] = []
    for name, body, message in ERROR_ROWS:
        try:
            raw = _to_json(body).encode()
        except ValueError:
            raw = b'{"command":"x","nodes":["n1"],"run_timeout":NaN}'
            message = "invalid JSON body"  # JSON has no NaN: the parser refuses it first
        rows.append((name, raw, message))
    return rows


HTTP_ROWS = _http_rows()


async def test_validation_rows_through_http_and_auth_first(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            wrong: list[tuple[str, int, Any, str]] = []
            for name, raw, message in HTTP_ROWS:
                r = await admin.post(JOBS, raw=raw)
                if r.status_code != 400 or r.json() != {"error": message}:
                    wrong.append((name, r.status_code, r.text[:200], message))
            assert wrong == []
            assert (await admin.get(JOBS)).json() == []  # nothing was created

            # a client of the org may read but not write: 403 whatever the body says
            pem = await create_client(admin, "reader")
            assert pem is not None
            reader = Signed(admin.http, info.url, "reader", chef_auth.load_private_key(pem))
            assert (await reader.get(JOBS)).status_code == 200
            forbidden = {
                "error": [
                    "User or client 'reader' does not have access to that action on this server."
                ]
            }
            for _, raw, _ in HTTP_ROWS[:10]:
                r = await reader.post(JOBS, raw=raw)
                assert (r.status_code, r.json()) == (403, forbidden)
            r = await reader.post(JOBS, raw=b"{not json")
            assert (r.status_code, r.json()) == (403, forbidden)
            r = await reader.post(JOBS, {"command": "say hi", "nodes": ["n1"]})
            assert (r.status_code, r.json()) == (403, forbidden)
            r = await reader.post(f"{JOBS}/{'0' * 32}/abort", raw=b"[[[")
            assert (r.status_code, r.json()) == (403, forbidden)
