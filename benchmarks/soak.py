"""kill -9 soak: acknowledged means durable, crash after crash.

    python3 benchmarks/soak.py                          # 20 cycles, 3 agents
    python3 benchmarks/soak.py --cycles 3 --agents 2 --traffic 0.5,1.5

One ``pushy serve`` subprocess on a fresh data directory and fixed ports, real ``pushy agent``
subprocesses (they stay up the whole run and reconnect by themselves), and this process as
the API client. Each cycle:

1. Mixed traffic for a random time (``--traffic MIN,MAX`` seconds): jobs created with capture
   on, on random subsets of the agents, running ``say WORD`` (one line) or ``count N`` (N
   lines over N/10 s, so that jobs are running when the server dies); clients created.
   A ``201`` is an *acknowledged* write; a request the kill cut off has an unknown outcome.
2. ``kill -9`` of the server in the middle of that traffic.
3. ``pushy store verify`` on the killed server's store: it passes, or finds only a group
   the kill tore at the end of the newest segment, which is what the next open cuts off.
4. A restart on the same data directory and ports (its time, from exec to ready, is the
   restart time), then the checks, waiting at most ``--settle`` seconds for each:
   every acknowledged client and job is there (``lost`` counts those missing); every agent is
   online and available again (no node stays unavailable); every job the server has
   (acknowledged or not) reaches a final status, and every node that succeeded has exactly
   the output its command printed stored (``outputs_incomplete`` counts stored outputs that
   stop short of it, ``outputs_wrong`` any other difference).

After the last cycle the server is stopped with SIGTERM and ``pushy store verify`` must pass.
The figures (cycles, writes acknowledged, lost, max restart time, …) are printed at the end;
the exit status is 0 only when nothing was lost and every check passed.

Agents back off between reconnect attempts (1 s doubling to 60 s, reset only after a
connection that lived a minute: ``NODES.md`` §3), so with short cycles their way back grows
from cycle to cycle; the server gives running nodes ``--grace`` seconds to come back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import REPO, admin_key, command_line

from pushy_appliance import chef_auth

ORG = "/organizations/default"
JOBS = f"{ORG}/pushy/jobs"
FINISHED = frozenset({"complete", "quorum_failed", "timed_out", "aborted", "crashed"})
_TORN_TAIL = "the next open cuts these"
"""What ``pushy store verify`` says of damage at the end of the newest segment."""
PUSHY = [sys.executable, "-m", "pushy_appliance.cli"]
COUNT_SCRIPT = """\
i=1
while [ "$i" -le "$1" ]; do
  printf 'line %s\\n' "$i"
  i=$((i + 1))
  sleep 0.1
done
"""


@dataclasses.dataclass
class Figures:
    """What a soak found; ``ok`` when nothing was lost and every check passed."""

    cycles: int = 0
    jobs_acknowledged: int = 0
    clients_acknowledged: int = 0
    unknown_outcome: int = 0
    lost: int = 0
    """Acknowledged clients and jobs missing after a restart."""
    refused: int = 0
    """Requests answered with anything but 201 (none is expected)."""
    jobs_checked: int = 0
    jobs_not_final: int = 0
    job_statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    outputs_checked: int = 0
    outputs_incomplete: int = 0
    """Succeeded nodes whose stored output is a strict prefix of what the command printed."""
    outputs_wrong: int = 0
    """Succeeded nodes whose stored output is anything else that differs."""
    agents_missing: int = 0
    """Restarts after which some agent was not back online and available in time."""
    verify_clean: int = 0
    torn_tails: int = 0
    verify_failures: int = 0
    restart_s: list[float] = dataclasses.field(default_factory=list)
    agents_back_s: list[float] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def writes_acknowledged(self) -> int:
        return self.jobs_acknowledged + self.clients_acknowledged

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        self.problems.append(text)
        emit(f"  PROBLEM: {text}")


def emit(line: str = "") -> None:
    print(line, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """``pushy serve`` on fixed ports, so agents reconnect to the same URLs after a restart."""

    def __init__(self, data_dir: Path, log_file: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.log_file = log_file
        self.env = {**os.environ, **env}
        self.api_port = free_port()
        self.node_port = free_port()
        self.proc: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    async def start(self, within: float = 120.0) -> float:
        """Start it and wait for ``run/server.json`` of this process. Returns the seconds."""
        server_json = self.data_dir / "run" / "server.json"
        server_json.unlink(missing_ok=True)
        argv = [
            *PUSHY,
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.api_port}",
            "--node-listen",
            f"127.0.0.1:{self.node_port}",
        ]
        with self.log_file.open("ab") as log:
            t0 = time.perf_counter()
            self.proc = await trio.lowlevel.open_process(
                argv, stdout=log, stderr=log, env=self.env, stdin=subprocess.DEVNULL, cwd=REPO
            )
        with trio.fail_after(within):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"pushy serve exited with {self.proc.returncode}")
                try:
                    info = json.loads(server_json.read_text())
                except (OSError, ValueError):
                    info = None
                if info is not None and info.get("pid") == self.proc.pid:
                    return time.perf_counter() - t0
                await trio.sleep(0.005)

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> int:
        """SIGTERM; returns the exit status (SIGKILL after 30 s)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            return await self.proc.wait()
        self.proc.kill()
        return await self.proc.wait()


class Api:
    """Signed JSON requests as the bootstrapped admin; a fresh connection pool per cycle."""

    def __init__(self, server: Server, http: httpx.AsyncClient) -> None:
        self.base = server.url
        self.key = admin_key(server.data_dir)
        self.http = http

    async def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        data = b"" if body is None else json.dumps(body).encode()
        headers = chef_auth.sign_request(
            method, path, data, "admin", self.key, timestamp=datetime.now(UTC)
        )
        if data:
            headers["Content-Type"] = "application/json"
        return await self.http.request(
            method, self.base + path, content=data or None, headers=headers
        )

    async def json(self, method: str, path: str, body: Any = None) -> Any:
        r = await self.request(method, path, body)
        if r.status_code != 200:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:200]}")
        return r.json()


def write_agent_home(server: Server, node: str, home: Path, private_key: str, allow: str) -> Path:
    """Write node ``node``'s key and agent config in ``home`` (``allow``: the whitelist's
    TOML entries); the config's path."""
    home.mkdir(parents=True)
    key = home / "client.pem"
    key.write_text(private_key)
    key.chmod(0o600)
    config = home / "agent.toml"
    config.write_text(
        f"server_url = {json.dumps(server.url + ORG)}\n"
        f"node_name = {json.dumps(node)}\n"
        f"client_key = {json.dumps(str(key))}\n"
        f"ca_cert = {json.dumps(str(server.data_dir / 'tls' / 'ca.pem'))}\n"
        f"state_dir = {json.dumps(str(home / 'state'))}\n"
        f"working_dir = {json.dumps(str(home))}\n" + allow
    )
    return config


async def start_agent(
    api: Api, server: Server, node: str, home: Path, allow: str, cwd: Path
) -> trio.Process:
    """Create client ``node``, give it a home (:func:`write_agent_home`) and start a real
    ``pushy agent`` on it, logging to ``home/agent.log``."""
    r = await api.request("POST", f"{ORG}/clients", {"name": node, "create_key": True})
    if r.status_code != 201:
        raise RuntimeError(f"cannot create client {node}: {r.status_code} {r.text}")
    config = write_agent_home(server, node, home, r.json()["chef_key"]["private_key"], allow)
    with (home / "agent.log").open("ab") as log:
        return await trio.lowlevel.open_process(
            [*PUSHY, "agent", "--config", str(config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=server.env,
            cwd=cwd,
        )


def http_client(server: Server) -> httpx.AsyncClient:
    verify = ssl.create_default_context(cafile=str(server.data_dir / "tls" / "ca.pem"))
    return httpx.AsyncClient(verify=verify, timeout=30)


@dataclasses.dataclass
class Expected:
    """What an acknowledged job must end with: each node that succeeded printed ``stdout``."""

    nodes: list[str]
    stdout: bytes
    checked: bool = False


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.figures = Figures()
        self.server = Server(
            workdir / "data",
            workdir / "server.log",
            {
                "PUSHY_HEARTBEAT_INTERVAL": "1.0",
                "PUSHY_JOBS_RECONNECT_GRACE": str(args.grace),
                "PUSHY_LOG_LEVEL": "info",
            },
        )
        self.agents = [f"soak-node-{i}" for i in range(args.agents)]
        self.agent_procs: list[trio.Process] = []
        self.jobs: dict[str, Expected] = {}
        self.clients: set[str] = set()
        self.serial = 0
        self.client_pem = ""

    # --- set-up -----------------------------------------------------------------------------

    async def start_agents(self, api: Api) -> None:
        scripts = self.workdir / "scripts"
        scripts.mkdir()
        (scripts / "count.sh").write_text(COUNT_SCRIPT)
        allow = (
            "\n[[allow]]\npattern = '^say ([a-z0-9]+)$'\nrun = '/bin/echo \\1'\n"
            f"\n[[allow]]\npattern = '^count ([0-9]+)$'\nrun = '/bin/sh {scripts}/count.sh \\1'\n"
        )
        for node in self.agents:
            home = self.workdir / "agents" / node
            self.agent_procs.append(await start_agent(api, self.server, node, home, allow, REPO))
        pem = chef_auth.public_key_pem(chef_auth.generate_private_key())
        self.client_pem = pem

    async def stop_agents(self) -> None:
        for proc in self.agent_procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(15):
            for proc in self.agent_procs:
                await proc.wait()
        for proc in self.agent_procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    # --- traffic ----------------------------------------------------------------------------

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    async def create_jobs(self, api: Api) -> None:
        while True:
            n = self.next_serial()
            nodes = sorted(self.rng.sample(self.agents, self.rng.randint(1, len(self.agents))))
            if self.rng.random() < 0.5:
                command, stdout = f"say w{n}", f"w{n}\n".encode()
            else:
                lines = self.rng.randint(3, 20)
                command = f"count {lines}"
                stdout = "".join(f"line {i}\n" for i in range(1, lines + 1)).encode()
            # a unique env makes every body (and so every signature) unique
            body = {
                "command": command,
                "nodes": nodes,
                "capture_output": True,
                "env": {"SOAK": str(n)},
            }
            try:
                r = await api.request("POST", JOBS, body)
            except httpx.TransportError:
                self.figures.unknown_outcome += 1
                return
            if r.status_code != 201:
                self.figures.refused += 1
                self.figures.problem(f"POST jobs answered {r.status_code}: {r.text[:200]}")
                return
            self.jobs[r.json()["id"]] = Expected(nodes, stdout)
            self.figures.jobs_acknowledged += 1
            await trio.sleep(self.rng.uniform(0.02, 0.25))

    async def create_clients(self, api: Api) -> None:
        while True:
            name = f"soak-client-{self.next_serial()}"
            body = {"name": name, "public_key": self.client_pem}
            try:
                r = await api.request("POST", f"{ORG}/clients", body)
            except httpx.TransportError:
                self.figures.unknown_outcome += 1
                return
            if r.status_code != 201:
                self.figures.refused += 1
                self.figures.problem(f"POST clients answered {r.status_code}: {r.text[:200]}")
                return
            self.clients.add(name)
            self.figures.clients_acknowledged += 1
            await trio.sleep(self.rng.uniform(0.01, 0.1))

    async def traffic_then_kill(self, api: Api, seconds: float) -> None:
        # the requests the kill cuts off end with a transport error (an unknown outcome),
        # and their creators with them
        with trio.move_on_after(seconds + 30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.create_jobs, api)
                nursery.start_soon(self.create_clients, api)
                await trio.sleep(seconds)
                await self.server.kill9()

    # --- checks -----------------------------------------------------------------------------

    async def check_writes(self, api: Api) -> None:
        """Every acknowledged client and job is there."""
        names = set(await api.json("GET", f"{ORG}/clients"))
        missing = self.clients - names
        jobs = {j["id"] for j in await api.json("GET", JOBS)}
        missing_jobs = set(self.jobs) - jobs
        self.figures.lost += len(missing) + len(missing_jobs)
        if missing or missing_jobs:
            self.figures.problem(
                f"lost {len(missing)} client(s) {sorted(missing)[:5]} and "
                f"{len(missing_jobs)} job(s) {sorted(missing_jobs)[:5]}"
            )

    async def check_jobs(self, api: Api) -> None:
        """Every job the server has ends; acknowledged ones have their exact output."""
        with trio.move_on_after(self.args.settle) as scope:
            while True:
                listed = await api.json("GET", JOBS)
                if all(j["status"] in FINISHED for j in listed):
                    break
                await trio.sleep(0.1)
        if scope.cancelled_caught:
            live = [j["id"] for j in listed if j["status"] not in FINISHED]
            self.figures.jobs_not_final += len(live)
            self.figures.problem(f"{len(live)} job(s) not final after {self.args.settle} s")
            return
        for job_id, expected in self.jobs.items():
            if expected.checked:
                continue
            doc = await api.json("GET", f"{JOBS}/{job_id}")
            expected.checked = True
            self.figures.jobs_checked += 1
            status = doc["status"]
            self.figures.job_statuses[status] = self.figures.job_statuses.get(status, 0) + 1
            named = sorted(n for bucket in doc["nodes"].values() for n in bucket)
            if named != expected.nodes:
                self.figures.problem(f"job {job_id}: nodes {named}, expected {expected.nodes}")
            for node in doc["nodes"].get("succeeded", []):
                r = await api.request("GET", f"{JOBS}/{job_id}/output/{node}/stdout")
                self.figures.outputs_checked += 1
                if r.status_code == 200 and r.content == expected.stdout:
                    continue
                if r.status_code == 200 and expected.stdout.startswith(r.content):
                    self.figures.outputs_incomplete += 1
                    what = "incomplete"
                else:
                    self.figures.outputs_wrong += 1
                    what = "wrong"
                self.figures.problem(
                    f"job {job_id} node {node}: output {what}: {r.status_code} "
                    f"{r.content[-40:]!r} ({len(r.content)} bytes), expected "
                    f"{expected.stdout[-40:]!r} ({len(expected.stdout)} bytes)"
                )

    async def wait_agents(self, api: Api) -> float | None:
        """Seconds until every agent is online and available (``None``: not in time)."""
        t0 = time.perf_counter()
        with trio.move_on_after(self.args.settle):
            while True:
                states = await api.json("GET", f"{ORG}/pushy/node_states")
                back = {
                    d["node_name"]
                    for d in states
                    if (d["status"], d["availability"]) == ("online", "available")
                }
                if back >= set(self.agents):
                    return time.perf_counter() - t0
                await trio.sleep(0.05)
        self.figures.agents_missing += 1
        self.figures.problem(f"agents not all online and available after {self.args.settle} s")
        return None

    async def verify(self, *, killed: bool) -> None:
        """``pushy store verify`` on the data directory of the stopped server.

        After a ``kill -9`` the newest segment may end in a group the kill tore (a write cut
        short): that, and only that, is what recovery cuts off, so it is allowed then and
        counted; after a graceful stop the store must be intact.
        """
        result = await trio.run_process(
            [*PUSHY, "store", "verify", "--data-dir", str(self.server.data_dir)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=self.server.env,
            cwd=REPO,
        )
        if result.returncode == 0:
            self.figures.verify_clean += 1
            return
        lines = result.stdout.decode().splitlines()
        problems = [line for line in lines if line.startswith("  problem: ")]
        if killed and problems and all(_TORN_TAIL in line for line in problems):
            self.figures.torn_tails += 1
            return
        self.figures.verify_failures += 1
        self.figures.problem("store verify failed:\n" + "\n".join(lines))

    # --- the run ----------------------------------------------------------------------------

    async def run(self) -> Figures:
        args = self.args
        restart = await self.server.start()
        emit(f"server up in {restart:.2f} s on {self.server.url}")
        async with http_client(self.server) as http:
            api = Api(self.server, http)
            await self.start_agents(api)
            back = await self.wait_agents(api)
            emit(f"{args.agents} agent(s) online in {back or float('nan'):.2f} s")
        low, high = args.traffic
        for cycle in range(1, args.cycles + 1):
            seconds = self.rng.uniform(low, high)
            jobs0, clients0 = self.figures.jobs_acknowledged, self.figures.clients_acknowledged
            async with http_client(self.server) as http:
                await self.traffic_then_kill(Api(self.server, http), seconds)
            await self.verify(killed=True)
            restart = await self.server.start()
            self.figures.restart_s.append(restart)
            async with http_client(self.server) as http:
                api = Api(self.server, http)
                await self.check_writes(api)
                back = await self.wait_agents(api)
                if back is not None:
                    self.figures.agents_back_s.append(back)
                await self.check_jobs(api)
            self.figures.cycles = cycle
            emit(
                f"cycle {cycle}/{args.cycles}: killed after {seconds:.2f} s of traffic "
                f"({self.figures.jobs_acknowledged - jobs0} job(s), "
                f"{self.figures.clients_acknowledged - clients0} client(s) acknowledged); "
                f"restart {restart:.2f} s; agents back {back or float('nan'):.2f} s; "
                f"lost {self.figures.lost}"
            )
        status = await self.server.stop()
        if status != 0:
            self.figures.problem(f"pushy serve exited with {status} on SIGTERM")
        await self.verify(killed=False)
        await self.stop_agents()
        return self.figures


def report(f: Figures) -> None:
    emit()
    emit(f"cycles                 {f.cycles} (kill -9 of the server, restart, checks)")
    emit(
        f"writes acknowledged    {f.writes_acknowledged} ({f.jobs_acknowledged} jobs, "
        f"{f.clients_acknowledged} clients); {f.unknown_outcome} cut off by the kill"
    )
    emit(f"lost                   {f.lost}")
    emit(
        f"jobs checked           {f.jobs_checked}, all final: "
        + ", ".join(f"{n} {s}" for s, n in sorted(f.job_statuses.items()))
    )
    emit(
        f"outputs checked        {f.outputs_checked}: {f.outputs_incomplete} incomplete, "
        f"{f.outputs_wrong} wrong"
    )
    emit(
        f"store verify           {f.verify_clean} clean, {f.torn_tails} with only a torn "
        f"tail of the newest segment (cut at the next open), {f.verify_failures} failed"
    )
    if f.restart_s:
        emit(
            f"restart time           max {max(f.restart_s):.2f} s, "
            f"median {sorted(f.restart_s)[len(f.restart_s) // 2]:.2f} s"
        )
    if f.agents_back_s:
        emit(f"agents back            max {max(f.agents_back_s):.2f} s after the restart")
    emit(f"result                 {'OK' if f.ok else 'FAILED'}")
    emit(f"command                {command_line()}")


def _traffic(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    values = (float(low), float(high or low))
    if not 0 < values[0] <= values[1]:
        raise argparse.ArgumentTypeError("MIN,MAX with 0 < MIN <= MAX")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=20, help="kill -9 cycles (default 20)")
    p.add_argument("--agents", type=int, default=3, help="real agents (default 3)")
    p.add_argument(
        "--traffic",
        type=_traffic,
        default=(1.0, 4.0),
        metavar="MIN,MAX",
        help="seconds of traffic before each kill, uniform in MIN..MAX (default 1,4)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=120.0,
        help="the server's reconnect grace for running nodes, seconds (default 120)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=150.0,
        help="seconds each check may wait after a restart (default 150)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--workdir", type=Path, default=None, help="where to run (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", type=Path, default=None, help="append the figures to this file")
    return p


async def soak(args: argparse.Namespace) -> Figures:
    """Run the soak ``args`` describes (see :func:`parser`); returns its figures.

    Raises:
        KeyboardInterrupt: on SIGTERM (as on Ctrl-C), once its server and agents are stopped.
    """
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pushy-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runner = Soak(args, workdir)
    figures: Figures | None = None
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                figures = await runner.run()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if runner.server.proc is not None and runner.server.proc.returncode is None:
                    await runner.server.kill9()
                await runner.stop_agents()
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    if figures is None:
        raise KeyboardInterrupt
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(2**32)
    emit(f"soak: {args.cycles} cycle(s), {args.agents} agent(s), seed {args.seed}")
    try:
        figures = trio.run(soak, args)
    except KeyboardInterrupt:
        emit("soak: interrupted; server and agents stopped")
        return 130
    report(figures)
    if args.json is not None:
        doc = dataclasses.asdict(figures) | {"seed": args.seed, "ok": figures.ok}
        with args.json.open("a") as f:
            f.write(json.dumps(doc) + "\n")
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
