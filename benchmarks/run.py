"""The scenarios of the performance issues, the first five against a bare-stack ceiling.

    python3 benchmarks/run.py presence --nodes 10000 --intervals 10,1 --seconds 60
    python3 benchmarks/run.py fanout --sizes 1000,5000 --repeat 3
    python3 benchmarks/run.py api --clients 50 --seconds 10
    python3 benchmarks/run.py store --clients 50 --seconds 10
    python3 benchmarks/run.py startup --jobs 100000
    python3 benchmarks/run.py huge --job-size 100000 --huge-jobs 3
    python3 benchmarks/run.py smoke            # all six, small, in about two minutes

Several appliances on PostgreSQL (issue 17)::

    python3 benchmarks/run.py presence --postgres --appliances 3 --nodes 50000 --intervals 10 \\
        --procs 4 --connect-concurrency 16
    python3 benchmarks/run.py api --postgres --with-file-store --appliances 1,3
    python3 benchmarks/run.py store --postgres --with-file-store --appliances 1,3
    python3 benchmarks/run.py fanout --postgres --with-file-store --appliances 1,3 --sizes 10000

``--postgres`` starts a private PostgreSQL for the run (``--store URL`` uses a database of
yours); each setup measured gets a new schema in it. ``--appliances N`` starts N appliances
sharing the keys and CA (``pushy cluster join``) and one store, and spreads the load: node
``i`` on appliance ``i mod N``, HTTP connection ``i`` likewise, a fan-out job posted to the
first; the bare ceilings are N bare servers. ``presence`` also reports each appliance and the
database's work over the window (``benchmarks/cluster.py``).

Every scenario starts ``pushy serve`` as a subprocess on 127.0.0.1 with a fresh data
directory under ``--workdir`` (removed afterwards unless ``--keep``), drives it from other
processes (node simulator workers, this process as HTTP client), and prints the server's CPU
seconds (user + system, from ``/proc/PID/stat``), its peak RSS (``VmHWM``), the wall time and
the ratio to the ceiling measured in the same run, plus the exact command line. ``--json FILE``
appends the figures as one JSON object per scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import DbCounters, db_counters, join_cluster, new_schema_url, private_postgres
from harness import (
    ORG,
    REPO,
    HttpConnection,
    ServerProcess,
    SimFleet,
    admin_key,
    command_line,
    http_load,
    node_names,
    plain_request_bytes,
    proc_stats,
    profiled,
    provision_clients,
    signed_request_bytes,
)

from pushy_appliance import chef_auth
from pushy_appliance.appliance import compact_store, lock_data_dir
from pushy_appliance.jobs.status import FINISHED_JOB_STATUSES
from pushy_appliance.store import open_postgres_store, open_store

JOBS_PATH = f"/organizations/{ORG}/pushy/jobs"


def emit(line: str = "") -> None:
    print(line, flush=True)


def _join(values: Any, digits: int = 3) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _cpu(r: Any) -> str:
    per = 1000 * r.server_cpu_s / max(r.requests, 1)
    each = ""
    if len(r.server_cpu_each) > 1:
        each = "; each " + ", ".join(f"{c:.2f} s" for c in r.server_cpu_each)
    return (
        f"server CPU {r.server_cpu_s:.2f} s ({per:.2f} ms/req: {1000 / per:,.0f} req/s per "
        f"busy core{each}), "
        f"load-generator CPU {r.client_cpu_s:.2f} s"
    )


def kib(n: float) -> str:
    return f"{n / 1024:,.1f} MiB" if n >= 10240 else f"{n:,.0f} KiB"


@dataclasses.dataclass(frozen=True, slots=True)
class Setup:
    """One configuration measured: the store (file or PostgreSQL) and how many appliances.

    Attributes:
        postgres: the appliances' store is in PostgreSQL (``--postgres`` or ``--store``).
        appliances: appliances started, sharing keys and CA (``pushy cluster join``) and, on
            PostgreSQL, one store (or a store each with ``--separate-schemas``).
    """

    postgres: bool
    appliances: int

    @property
    def key(self) -> str:
        return f"{'pg' if self.postgres else 'file'}{self.appliances}"

    def label(self, separate: bool) -> str:
        n = self.appliances
        what = "PostgreSQL" if self.postgres else "file store"
        if n == 1:
            return f"{what}, 1 appliance"
        share = "a store each" if separate or not self.postgres else "one store"
        return f"{what}, {n} appliances ({share})"


class Bench:
    """Shared state of one ``run.py`` invocation: work directory, node key, results, the
    PostgreSQL database its setups' stores are made in."""

    def __init__(self, args: argparse.Namespace, postgres_url: str | None = None) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="pushy-bench-", dir=args.workdir))
        self.results: list[dict[str, Any]] = []
        key = chef_auth.generate_private_key()
        self.node_key_file = self.root / "node.pem"
        self.node_key_file.write_text(chef_auth.private_key_pem(key))
        self.node_public = chef_auth.public_key_pem(key)
        self.postgres_url = postgres_url
        """The database (``--store``, or the private server's with ``--postgres``) in which
        each setup gets a store of its own: a new schema (:func:`cluster.new_schema_url`)."""
        self.store_urls: dict[Path, str] = {}
        """The store URL of each data directory whose store is in PostgreSQL."""

    def close(self) -> None:
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            emit(f"kept {self.root}")

    def record(self, scenario: str, **figures: Any) -> None:
        doc = {"scenario": scenario, "command": command_line(), "at": time.time(), **figures}
        self.results.append(doc)
        if self.args.json:
            with open(self.args.json, "a") as f:
                f.write(json.dumps(doc) + "\n")

    def setups(self) -> list[Setup]:
        """The configurations to measure: each ``--appliances`` count on the store chosen
        (PostgreSQL with ``--postgres``/``--store``), after the file store with one
        appliance when ``--with-file-store``."""
        a = self.args
        postgres = self.postgres_url is not None
        out = [Setup(False, 1)] if a.with_file_store and postgres else []
        out += [Setup(postgres, n) for n in a.appliances]
        return out

    def separate(self, setup: Setup) -> bool:
        """Whether the setup's appliances each have a store of their own."""
        return setup.appliances > 1 and (self.args.separate_schemas or not setup.postgres)

    def server(self, d: Path, env: dict[str, str] | None = None) -> ServerProcess:
        """The server under test on ``d``, with the ``--gc-*`` experiment settings (and its
        store in PostgreSQL when ``d`` has one there)."""
        env = dict(env or {})
        a = self.args
        if d in self.store_urls:
            env["PUSHY_STORE_URL"] = self.store_urls[d]
        if a.gc_stats:
            env["BENCH_GC_STATS"] = str(self.root / f"{d.name}.gc.json")
        if a.gc_threshold:
            env["BENCH_GC_THRESHOLD"] = a.gc_threshold
            env.setdefault("BENCH_GC_STATS", str(self.root / f"{d.name}.gc.json"))
        if a.gc_disable:
            env["BENCH_GC_DISABLE"] = "1"
            env.setdefault("BENCH_GC_STATS", str(self.root / f"{d.name}.gc.json"))
        return ServerProcess(d, env)

    async def new_store(self) -> str:
        """The URL of a new, empty store in the PostgreSQL database."""
        assert self.postgres_url is not None
        return await trio.to_thread.run_sync(new_schema_url, self.postgres_url)

    async def data_dir(self, name: str, nodes: int, *, postgres: bool | None = None) -> Path:
        """A bootstrapped data directory with ``nodes`` node clients sharing one key (its
        store in PostgreSQL when the run has a database, unless ``postgres`` is false)."""
        if postgres is None:
            postgres = self.postgres_url is not None
        return (await self.data_dirs(name, nodes, Setup(postgres, 1)))[0]

    async def data_dirs(self, name: str, nodes: int, setup: Setup) -> list[Path]:
        """The data directories of ``setup``'s appliances, bootstrapped one after the other:
        the first as a new appliance, each other after ``pushy cluster join`` of the first
        (its keys and CA); ``nodes`` node clients provisioned once in each store."""
        shared = None
        if setup.postgres and not self.separate(setup):
            shared = await self.new_store()
        dirs: list[Path] = []
        for i in range(setup.appliances):
            d = self.root / (f"{name}-{setup.key}" + (f"-{i + 1}" if setup.appliances > 1 else ""))
            if setup.postgres:
                self.store_urls[d] = shared or await self.new_store()
            if dirs:
                await join_cluster(dirs[0], d)
            server = self.server(d)
            await server.start()
            await server.stop()
            dirs.append(d)
        if nodes:
            provisioned: set[str] = set()
            for d in dirs:
                url = self.store_urls.get(d)
                if url is not None and url in provisioned:
                    continue
                await provision_clients(d, node_names(nodes), self.node_public, url)
                if url is not None:
                    provisioned.add(url)
        return dirs

    @contextlib.asynccontextmanager
    async def running(
        self, dirs: list[Path], env: dict[str, str] | None = None
    ) -> AsyncIterator[list[ServerProcess]]:
        """Start an appliance on each of ``dirs`` (one after the other); stop them all at the
        end."""
        servers: list[ServerProcess] = []
        try:
            for d in dirs:
                servers.append(self.server(d, env))
                await servers[-1].start()
            yield servers
        finally:
            for server in servers:
                await server.stop()

    def fleet(self, node_url: str | list[str], ca: Path, count: int, lifetime: float) -> SimFleet:
        return SimFleet(
            node_url,
            ca,
            self.node_key_file,
            count,
            procs=self.args.procs,
            lifetime=lifetime,
            connect_concurrency=self.args.connect_concurrency,
        )


class LineProcess:
    """A helper process speaking JSON lines on stdout and taking commands on stdin."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc: trio.Process | None = None
        self.events: list[dict[str, Any]] = []
        self.changed = trio.Event()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    self.events.append(json.loads(line))
            self.changed.set()
            self.changed = trio.Event()

    async def wait_event(self, name: str, after: int = 0) -> dict[str, Any]:
        """The first event ``name`` at or after index ``after`` (waits up to 300 s)."""
        with trio.fail_after(300):
            while True:
                for e in self.events[after:]:
                    if e.get("event") == name:
                        return e
                await self.changed.wait()

    async def command(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        await self.proc.stdin.send_all(line.encode() + b"\n")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LineProcess]:
        async with trio.open_nursery() as nursery:
            self.proc = await trio.lowlevel.open_process(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(REPO)
            )
            nursery.start_soon(self._read)
            try:
                yield self
            finally:
                assert self.proc.stdin is not None
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.proc.stdin.aclose()
                with trio.move_on_after(30, shield=True):
                    await self.proc.wait()
                if self.proc.returncode is None:
                    self.proc.kill()
                nursery.cancel_scope.cancel()


def bare_ws_argv(data_dir: Path, interval: float, lifetime: float, tuned: bool) -> list[str]:
    return [*_bare_ws_argv(data_dir, interval, lifetime), *(["--tuned-gc"] if tuned else [])]


def _bare_ws_argv(data_dir: Path, interval: float, lifetime: float) -> list[str]:
    return [
        sys.executable,
        str(REPO / "benchmarks" / "bare_ws.py"),
        "--cert",
        str(data_dir / "tls" / "server.pem"),
        "--key",
        str(data_dir / "tls" / "server.key"),
        "--interval",
        str(interval),
        "--lifetime",
        str(lifetime),
    ]


def bare_http_argv(data_dir: Path, lifetime: float) -> list[str]:
    return [
        sys.executable,
        str(REPO / "benchmarks" / "bare_http.py"),
        "--cert",
        str(data_dir / "tls" / "server.pem"),
        "--key",
        str(data_dir / "tls" / "server.key"),
        "--lifetime",
        str(lifetime),
    ]


# --- 1. presence ------------------------------------------------------------------------------


def _spread(nodes: int, servers: int) -> list[int]:
    """How many of ``nodes`` go to each of ``servers`` (node ``i`` to server ``i mod N``)."""
    return [len(range(k, nodes, servers)) for k in range(servers)]


async def _online(address: tuple[str, int], ca: Path) -> int:
    """The nodes an appliance holds online, by its own account (``GET /pushy/_status``)."""
    host, port = address
    conn = await HttpConnection.connect(host, port, ca)
    try:
        status, raw = await conn.request(plain_request_bytes("GET", "/pushy/_status", host))
    finally:
        await conn.aclose()
    if status != 200:
        raise RuntimeError(f"GET /pushy/_status: {status}")
    return int(json.loads(raw)["nodes"]["online"])


async def _hold(
    bench: Bench,
    pids: list[int],
    node_urls: list[str],
    ca: Path,
    nodes: int,
    interval: float,
    seconds: float,
    *,
    http: list[tuple[str, int]] | None = None,
    db_url: str | None = None,
) -> dict[str, Any]:
    """Connect ``nodes`` simulated nodes (node ``i`` to server ``i mod N``), hold them
    ``seconds`` and measure the servers: each (``servers``) and in total; with ``http`` (the
    appliances' API addresses) each one's own count of online nodes, with ``db_url`` the
    database's work over the window."""
    base = [proc_stats(p) for p in pids]
    lifetime = seconds + interval + 120 + nodes / 50
    fleet = bench.fleet(node_urls, ca, nodes, lifetime)
    async with fleet.running():
        # a node lost meanwhile is reported (all online: False, its error), not fatal
        connect_s = await fleet.wait_for(
            "connected", nodes, within=60 + nodes / 50, tolerate_losses=True
        )
        after_connect = [proc_stats(p) for p in pids]
        await trio.sleep(min(interval, 10) + 1)  # every node past its first heartbeat phase
        db0: DbCounters | None = await db_counters(db_url) if db_url else None
        s0, f0, hb0, u0 = (
            [proc_stats(p) for p in pids],
            fleet.cpu_s(),
            fleet.summary(),
            fleet.by_url(),
        )
        await trio.sleep(seconds)
        s1, f1, hb1, u1 = (
            [proc_stats(p) for p in pids],
            fleet.cpu_s(),
            fleet.summary(),
            fleet.by_url(),
        )
        db1 = await db_counters(db_url) if db_url else None
        held = [await _online(address, ca) for address in http] if http else None
    online = hb1["connected"] == nodes and hb1["lost"] == 0 and hb1["failed"] == 0
    servers = []
    for k, share in enumerate(_spread(nodes, len(pids))):
        servers.append(
            {
                "nodes": share,
                "cpu_s": s1[k].cpu_s - s0[k].cpu_s,
                "connect_cpu_s": after_connect[k].cpu_s - base[k].cpu_s,
                "base_rss_kib": base[k].rss_kib,
                "rss_kib": s1[k].rss_kib,
                "hwm_kib": s1[k].hwm_kib,
                "per_node_kib": (s1[k].rss_kib - base[k].rss_kib) / max(share, 1),
                "connected": u1[k]["connected"],
                "online": None if held is None else held[k],
                "hb_sent": u1[k]["hb_sent"] - u0[k]["hb_sent"],
                "hb_recv": u1[k]["hb_recv"] - u0[k]["hb_recv"],
                "all_online": u1[k]["connected"] == share
                and u1[k]["lost"] == 0
                and (held is None or held[k] == share),
            }
        )
    result: dict[str, Any] = {
        "nodes": nodes,
        "interval": interval,
        "seconds": seconds,
        "connect_s": connect_s,
        "connect_cpu_s": sum(r["connect_cpu_s"] for r in servers),
        "cpu_s": sum(r["cpu_s"] for r in servers),
        "base_rss_kib": sum(r["base_rss_kib"] for r in servers),
        "rss_kib": sum(r["rss_kib"] for r in servers),
        "hwm_kib": sum(r["hwm_kib"] for r in servers),
        "per_node_kib": sum(r["rss_kib"] - r["base_rss_kib"] for r in servers) / nodes,
        "sim_cpu_s": f1 - f0,
        "hb_sent": hb1["hb_sent"] - hb0["hb_sent"],
        "hb_recv": hb1["hb_recv"] - hb0["hb_recv"],
        "all_online": online and all(r["all_online"] for r in servers),
        "sim": hb1,
        "errors": fleet.errors()[:10],
        "servers": servers,
    }
    if db0 is not None and db1 is not None:
        result["db"] = db1.minus(db0)
    return result


def _presence_line(label: str, r: dict[str, Any], seconds: float) -> str:
    return (
        f"  {label}: server CPU {r['cpu_s']:.2f} s "
        f"({100 * r['cpu_s'] / seconds:.1f}% of a core; "
        f"{1e6 * r['cpu_s'] / seconds / r['nodes']:.1f} µs per node per s), "
        f"RSS {kib(r['rss_kib'])} "
        f"(peak {kib(r['hwm_kib'])}), "
        f"{r['per_node_kib']:.1f} KiB/node, connect {r['connect_s']:.1f} s "
        f"(server CPU {r['connect_cpu_s']:.1f} s), all online: {r['all_online']}, "
        f"heartbeats sent/received by nodes {r['hb_sent']}/{r['hb_recv']}, "
        f"simulator CPU {r['sim_cpu_s']:.1f} s"
    )


def _presence_servers(r: dict[str, Any], seconds: float) -> None:
    """One line per server of a several-server measurement."""
    if len(r["servers"]) < 2:
        return
    for k, s in enumerate(r["servers"], 1):
        held = "" if s["online"] is None else f", online by its _status {s['online']}"
        emit(
            f"    #{k}: {s['nodes']} nodes, CPU {s['cpu_s']:.2f} s "
            f"({100 * s['cpu_s'] / seconds:.1f}% of a core), RSS {kib(s['rss_kib'])} "
            f"(peak {kib(s['hwm_kib'])}), {s['per_node_kib']:.1f} KiB/node, "
            f"connected {s['connected']}{held}, all online: {s['all_online']}, "
            f"heartbeats sent/received {s['hb_sent']}/{s['hb_recv']}"
        )


def _presence_rows(name: str, r: dict[str, Any], seconds: float) -> None:
    """The lines of one measurement: the total, each server, the nodes not online."""
    emit(_presence_line(name, r, seconds))
    _presence_servers(r, seconds)
    if r["errors"]:
        sim = r["sim"]
        emit(
            f"    NOT all online: {sim['failed']} failed, {sim['lost']} lost; "
            f"first errors {r['errors'][:3]}"
        )


def _db_line(db: dict[str, Any], seconds: float) -> str:
    statements = (
        "statements not counted (no pg_stat_statements)"
        if db["statements"] is None
        else f"{db['statements']} statements ({db['statements'] / seconds:.2f}/s)"
    )
    return (
        f"  database over the window: {statements}, {db['transactions']} transactions "
        f"(the sampler's 2 and autovacuum's included), {db['rows_written']} rows written "
        f"({db['rows_written'] / seconds:.2f}/s; {db['store_rows_written']} in the store's tables)"
    )


async def presence(bench: Bench) -> None:
    for setup in bench.setups():
        await _presence(bench, setup)


async def _presence(bench: Bench, setup: Setup) -> None:
    a = bench.args
    intervals = [float(x) for x in a.intervals.split(",")]
    dirs = await bench.data_dirs("presence", a.nodes, setup)
    ca = dirs[0] / "tls" / "ca.pem"  # the cluster's CA: every appliance's certificate chains to it
    n = len(dirs)
    label = "pushy" if n == 1 else f"pushy x {n}"
    for interval in intervals:
        env = {"PUSHY_HEARTBEAT_INTERVAL": str(interval)}
        async with bench.running(dirs, env) as servers:
            prod = await _hold(
                bench,
                [s.pid for s in servers],
                [s.node_url for s in servers],
                ca,
                a.nodes,
                interval,
                a.seconds,
                http=[s.http_address for s in servers] if n > 1 else None,
                db_url=bench.store_urls.get(dirs[0]),
            )
        # the appliances' figures go out before the ceiling is measured: a long run that
        # fails in its comparator keeps them
        emit(
            f"\n== presence: {a.nodes} nodes, heartbeat every {interval:g} s, {a.seconds:g} s, "
            f"{setup.label(bench.separate(setup))} =="
        )
        emit(f"$ {command_line()}")
        _presence_rows(label, prod, a.seconds)
        if "db" in prod:
            emit(_db_line(prod["db"], a.seconds))
            for query, calls in list(prod["db"]["by_query"].items())[:5]:
                emit(f"    {calls:>6} x {query[:110]}")
        bench.record("presence-appliances", setup=setup.key, appliances=n, pushy=prod)
        ceilings: dict[str, dict[str, Any]] = {}
        bare_label = "bare" if n == 1 else f"bare x {n}"
        for mode in _gc_modes(a):
            async with contextlib.AsyncExitStack() as stack:
                bares = [
                    await stack.enter_async_context(
                        LineProcess(bare_ws_argv(d, interval, 3600, mode == "tuned")).running()
                    )
                    for d in dirs
                ]
                ports = [(await bare.wait_event("listening"))["port"] for bare in bares]
                ceilings[mode] = await _hold(
                    bench,
                    [bare.pid for bare in bares],
                    [f"wss://127.0.0.1:{port}" for port in ports],
                    ca,
                    a.nodes,
                    interval,
                    a.seconds,
                )
            _presence_rows(f"{bare_label} ({mode} GC)", ceilings[mode], a.seconds)
        ratios = {m: prod["cpu_s"] / max(r["cpu_s"], 1e-9) for m, r in ceilings.items()}
        emit(
            "  ratio CPU pushy/bare "
            + ", ".join(f"{r:.2f} ({m} GC)" for m, r in ratios.items())
            + f" (target <= 1.25); RSS/node pushy {prod['per_node_kib']:.1f} KiB (target <= 60)"
        )
        bench.record(
            "presence",
            setup=setup.key,
            appliances=n,
            pushy=prod,
            bare=ceilings,
            cpu_ratio=ratios,
        )


def _gc_modes(a: argparse.Namespace) -> list[str]:
    return ["default", "tuned"] if a.bare_gc == "both" else [a.bare_gc]


# --- 2. fan-out -------------------------------------------------------------------------------


async def _run_job(
    conn: HttpConnection, host: str, key: Any, nodes: list[str], poll: float
) -> tuple[float, str, str]:
    body = json.dumps({"command": "chef-client", "nodes": nodes, "quorum": len(nodes)}).encode()
    post = signed_request_bytes("POST", JOBS_PATH, host, "admin", key, body)
    t0 = time.perf_counter()
    status, raw = await conn.request(post)
    if status != 201:
        raise RuntimeError(f"POST jobs: {status} {raw[:300]!r}")
    job_id = json.loads(raw)["id"]
    get = signed_request_bytes("GET", f"{JOBS_PATH}/{job_id}", host, "admin", key)
    with trio.fail_after(300):
        while True:
            status, raw = await conn.request(get)
            doc = json.loads(raw)
            if doc["status"] in FINISHED_JOB_STATUSES:
                break
            await trio.sleep(poll)
    return time.perf_counter() - t0, job_id, doc["status"]


async def _fanout(
    bench: Bench, setup: Setup, sizes: list[int]
) -> tuple[dict[int, list[dict[str, Any]]], int, list[Path]]:
    """Run the jobs of ``sizes`` (``--repeat`` times) on ``setup``: the nodes spread over its
    appliances (node ``i`` on appliance ``i mod N``), every job posted to the first one and
    followed there. Returns the runs per size, the largest peak RSS and the data directories."""
    a = bench.args
    most = max(sizes)
    names = node_names(most)
    dirs = await bench.data_dirs("fanout", most, setup)
    key = admin_key(dirs[0])
    prod: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    async with bench.running(dirs) as servers:
        server = servers[0]
        urls = [s.node_url for s in servers]
        fleet = bench.fleet(urls, server.ca_file, most, 600 + most / 20)
        async with fleet.running():
            await fleet.wait_for("connected", most, within=60 + most / 50)
            host, port = server.http_address
            conn = await HttpConnection.connect(host, port, server.ca_file)
            hosthdr = f"{host}:{port}"
            async with profiled(server.pid, a.profile):
                for _ in range(a.repeat):
                    for n in sizes:
                        s0 = [(s.stats(), s.gc_seconds(), s.gc_detail()) for s in servers]
                        seconds, _id, status = await _run_job(conn, hosthdr, key, names[:n], a.poll)
                        await trio.sleep(0.6)  # the GC statistics file is rewritten each 0.5 s
                        s1 = [(s.stats(), s.gc_seconds(), s.gc_detail()) for s in servers]
                        each = [b[0].cpu_s - e[0].cpu_s for e, b in zip(s0, s1, strict=True)]
                        prod[n].append(
                            {
                                "seconds": seconds,
                                "status": status,
                                "cpu_s": sum(each),
                                "cpu_each_s": each,
                                "gc_s": sum(b[1] - e[1] for e, b in zip(s0, s1, strict=True)),
                                "gc_by_generation": [
                                    [
                                        sum(
                                            b[2][0][i] - e[2][0][i]
                                            for e, b in zip(s0, s1, strict=True)
                                        )
                                        for i in range(3)
                                    ],
                                    [
                                        round(
                                            sum(
                                                b[2][1][i] - e[2][1][i]
                                                for e, b in zip(s0, s1, strict=True)
                                            ),
                                            3,
                                        )
                                        for i in range(3)
                                    ],
                                ],
                            }
                        )
            await conn.aclose()
            hwm = max(s.stats().hwm_kib for s in servers)
    return prod, hwm, dirs


async def fanout(bench: Bench) -> None:
    a = bench.args
    sizes = [int(x) for x in a.sizes.split(",")]
    most = max(sizes)
    for setup in bench.setups():
        if bench.separate(setup):
            raise SystemExit(
                "fanout: a job spans appliances only on one store (no --separate-schemas)"
            )
    runs = [(setup, *await _fanout(bench, setup, sizes)) for setup in bench.setups()]
    d = runs[0][3][0]
    bare_runs: dict[str, dict[int, list[float]]] = {}
    bare_jobs: dict[str, dict[int, list[float]]] = {}
    for mode in _gc_modes(a):
        broadcasts = bare_runs[mode] = {n: [] for n in sizes}
        jobs = bare_jobs[mode] = {n: [] for n in sizes}
        bare = LineProcess(bare_ws_argv(d, 10.0, 3600, mode == "tuned"))
        async with bare.running():
            port = (await bare.wait_event("listening"))["port"]
            url = f"wss://127.0.0.1:{port}"
            fleet = bench.fleet(url, d / "tls" / "ca.pem", most, 600 + most / 20)
            async with fleet.running():
                await fleet.wait_for("connected", most, within=60 + most / 50)
                await trio.sleep(2)  # the tuned collector freezes new connections each second
                for _ in range(a.repeat):
                    for n in sizes:
                        mark = len(bare.events)
                        await bare.command(f"broadcast {n}")
                        broadcasts[n].append((await bare.wait_event("broadcast", mark))["seconds"])
                        mark = len(bare.events)
                        await bare.command(f"job {n}")
                        jobs[n].append((await bare.wait_event("job", mark))["seconds"])
    for setup, prod, hwm, dirs in runs:
        emit(
            f"\n== fan-out: one job to N nodes (quorum all), POST to complete, best of "
            f"{a.repeat}, {setup.label(bench.separate(setup))} =="
        )
        if len(dirs) > 1:
            emit(f"  (node i on appliance i mod {len(dirs)}; every job posted to appliance 1)")
        emit(f"$ {command_line()}")
        for n in sizes:
            best = min(prod[n], key=lambda r: r["seconds"])
            target = 1.5 if n <= 1000 else 5.0
            each = ""
            if len(dirs) > 1:
                each = " (each " + ", ".join(f"{c:.2f}" for c in best["cpu_each_s"]) + ")"
            emit(
                f"  {n:>6} nodes: pushy {best['seconds']:.3f} s (target < {target:g} s; server "
                f"CPU {best['cpu_s']:.2f} s{each}, GC {best['gc_s']:.2f} s, {best['status']}; "
                f"all runs {_join(r['seconds'] for r in prod[n])})"
            )
            ratios: dict[str, float] = {}
            for mode in bare_runs:
                b, j = min(bare_runs[mode][n]), min(bare_jobs[mode][n])
                ratios[mode] = best["seconds"] / b
                emit(
                    f"          bare ({mode} GC): broadcast-and-collect {b:.3f} s "
                    f"(all {_join(bare_runs[mode][n])}), ratio {best['seconds'] / b:.2f} "
                    f"(target <= 1.5); a job's frames without bookkeeping {j:.3f} s "
                    f"(all {_join(bare_jobs[mode][n])}), ratio {best['seconds'] / j:.2f}"
                )
            bench.record(
                "fanout",
                setup=setup.key,
                appliances=len(dirs),
                nodes=n,
                pushy=prod[n],
                bare={m: r[n] for m, r in bare_runs.items()},
                bare_job={m: r[n] for m, r in bare_jobs.items()},
                ratio=ratios,
            )
        emit(f"  server peak RSS {kib(hwm)}" + (" (the largest)" if len(dirs) > 1 else ""))
    if len(runs) > 1:
        emit("  side by side (same invocation), best POST → complete:")
        for n in sizes:
            emit(
                f"    {n:>6} nodes: "
                + "; ".join(
                    f"{setup.label(bench.separate(setup))} "
                    f"{min(r['seconds'] for r in prod[n]):.3f} s"
                    for setup, prod, _hwm, _dirs in runs
                )
            )


# --- 3. API and 4. store ----------------------------------------------------------------------


async def _bare_http_load(
    bench: Bench, dirs: list[Path], method: str, clients: int, seconds: float
) -> tuple[Any, int]:
    """The bare quart-trio app's rate: one server per data directory (its certificate), the
    connections spread over them as over the appliances."""
    async with contextlib.AsyncExitStack() as stack:
        bares = [
            await stack.enter_async_context(LineProcess(bare_http_argv(d, 3600)).running())
            for d in dirs
        ]
        ports = [(await bare.wait_event("listening"))["port"] for bare in bares]
        body = b'{"hello":"world"}' if method == "POST" else b""
        reqs = [
            plain_request_bytes(method, "/hello", f"127.0.0.1:{ports[i % len(ports)]}", body)
            for i in range(clients)
        ]
        result = await http_load(
            [("127.0.0.1", port) for port in ports],
            0,
            dirs[0] / "tls" / "ca.pem",
            reqs,
            seconds=seconds,
            expect=200,
            server_pid=[bare.pid for bare in bares],
        )
        hwm = sum(proc_stats(bare.pid).hwm_kib for bare in bares)
    return result, hwm


def _store_kind(a: argparse.Namespace) -> str:
    return "store in PostgreSQL" if a.store or a.postgres else "file store"


def _host(server: ServerProcess) -> str:
    host, port = server.http_address
    return f"{host}:{port}"


async def api(bench: Bench) -> None:
    a = bench.args
    runs: list[tuple[Setup, Any, int, list[Path]]] = []
    for setup in bench.setups():
        dirs = await bench.data_dirs("api", 10, setup)
        key = admin_key(dirs[0])  # the cluster's admin: the same key on every appliance
        async with bench.running(dirs) as servers:
            # one job read by every client; with a store each, one per appliance
            owners = servers if bench.separate(setup) else servers[:1]
            jobs: list[str] = []
            for server in owners:
                host, port = server.http_address
                conn = await HttpConnection.connect(host, port, server.ca_file)
                _s, job_id, _status = await _run_job(conn, _host(server), key, node_names(10), 0.05)
                await conn.aclose()
                jobs.append(job_id)
            reqs = [
                signed_request_bytes(
                    "GET",
                    f"{JOBS_PATH}/{jobs[i % len(servers) % len(jobs)]}",
                    _host(servers[i % len(servers)]),
                    "admin",
                    key,
                )
                for i in range(a.clients)
            ]
            prod = await http_load(
                [s.http_address for s in servers],
                0,
                servers[0].ca_file,
                reqs,
                seconds=a.seconds,
                expect=200,
                server_pid=[s.pid for s in servers],
            )
            hwm = max(s.stats().hwm_kib for s in servers)
        runs.append((setup, prod, hwm, dirs))
    bares: dict[int, Any] = {}
    for _setup, _prod, _hwm, dirs in runs:
        if len(dirs) not in bares:
            bares[len(dirs)], _bare_hwm = await _bare_http_load(
                bench, dirs, "GET", a.clients, a.seconds
            )
    for setup, prod, hwm, dirs in runs:
        n = len(dirs)
        bare = bares[n]
        ratio = prod.rate / bare.rate
        emit(
            f"\n== API: signed GET jobs/ID, {a.clients} concurrent keep-alive clients, "
            f"{a.seconds:g} s, {setup.label(bench.separate(setup))} =="
        )
        emit(f"$ {command_line()}")
        emit(
            f"  pushy: {prod.rate:,.0f} req/s, p50 {1000 * prod.percentile(50):.1f} ms, "
            f"p99 {1000 * prod.percentile(99):.1f} ms, errors {prod.errors}, {_cpu(prod)}, "
            f"peak RSS {kib(hwm)}" + (" (the largest)" if n > 1 else "")
        )
        emit(
            f"  bare hello{'' if n == 1 else f' x {n}'}: {bare.rate:,.0f} req/s, "
            f"p50 {1000 * bare.percentile(50):.1f} ms, "
            f"p99 {1000 * bare.percentile(99):.1f} ms, {_cpu(bare)}"
        )
        emit(f"  ratio {ratio:.2f} (target >= 0.60; rate target >= 1,000 req/s)")
        bench.record(
            "api",
            setup=setup.key,
            appliances=n,
            rate=prod.rate,
            p50_ms=1000 * prod.percentile(50),
            p99_ms=1000 * prod.percentile(99),
            errors=prod.errors,
            cpu_s=prod.server_cpu_s,
            cpu_each_s=prod.server_cpu_each,
            client_cpu_s=prod.client_cpu_s,
            hwm_kib=hwm,
            bare_rate=bare.rate,
            bare_p99_ms=1000 * bare.percentile(99),
            bare_cpu_s=bare.server_cpu_s,
            ratio=ratio,
        )
    _summary(bench, runs, "req/s")


def _summary(bench: Bench, runs: list[tuple[Setup, Any, int, list[Path]]], unit: str) -> None:
    """The setups of one invocation side by side."""
    if len(runs) < 2:
        return
    emit("  side by side (same invocation):")
    for setup, prod, _hwm, _dirs in runs:
        per = 1000 * prod.server_cpu_s / max(prod.requests, 1)
        emit(
            f"    {setup.label(bench.separate(setup))}: {prod.rate:,.0f} {unit}, "
            f"p99 {1000 * prod.percentile(99):.1f} ms, {per:.2f} ms server CPU per request, "
            f"errors {prod.errors}"
        )


async def _store_ceiling(
    directory: Path, clients: int, seconds: float, store_urls: list[str] | None = None
) -> float:
    """Durable appends/s of job-create-sized records by ``clients`` tasks, store alone: the
    file store in ``directory``, or one store per URL of ``store_urls`` (the same URL
    several times: stores sharing one log, as a cluster's appliances do), opened in this
    process with the appenders spread over them."""
    record = {"t": "bench", "data": "x" * 900}
    count = 0
    async with contextlib.AsyncExitStack() as stack:
        if store_urls is None:
            stores: list[Any] = [await stack.enter_async_context(open_store(directory))]
        else:
            exclusive = len(store_urls) == 1
            stores = [
                await stack.enter_async_context(open_postgres_store(url, exclusive=exclusive))
                for url in store_urls
            ]
        stop = time.perf_counter() + seconds

        async def appender(store: Any) -> None:
            nonlocal count
            while time.perf_counter() < stop:
                await store.append(record)
                count += 1

        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(appender, stores[i % len(stores)])
    return count / seconds


async def store(bench: Bench) -> None:
    a = bench.args
    runs: list[tuple[Setup, Any, int, list[Path]]] = []
    for setup in bench.setups():
        dirs = await bench.data_dirs("store", 1, setup)
        key = admin_key(dirs[0])
        # Each connection sends its one signed POST again and again: a replay, which the
        # server refuses by default (auth.replay_cache). The guard's cost per request is a
        # digest and a set lookup; this load measures the store path, so it runs with the
        # guard off.
        async with bench.running(dirs, {"PUSHY_AUTH_REPLAY_CACHE": "0"}) as servers:
            body = json.dumps({"command": "chef-client", "nodes": node_names(1)}).encode()
            reqs = [
                signed_request_bytes(
                    "POST", JOBS_PATH, _host(servers[i % len(servers)]), "admin", key, body
                )
                for i in range(a.clients)
            ]
            prod = await http_load(
                [s.http_address for s in servers],
                0,
                servers[0].ca_file,
                reqs,
                seconds=a.seconds,
                expect=201,
                server_pid=[s.pid for s in servers],
            )
            hwm = max(s.stats().hwm_kib for s in servers)
        runs.append((setup, prod, hwm, dirs))
    bares: dict[int, Any] = {}
    for _setup, _prod, _hwm, dirs in runs:
        if len(dirs) not in bares:
            bares[len(dirs)], _bare_hwm = await _bare_http_load(
                bench, dirs, "POST", a.clients, a.seconds
            )
    for setup, prod, hwm, dirs in runs:
        n = len(dirs)
        urls: list[str] | None = None
        if setup.postgres:
            shared = None if bench.separate(setup) else await bench.new_store()
            urls = [shared or await bench.new_store() for _ in range(n)]
        ceiling = await _store_ceiling(
            bench.root / f"store-ceiling-{setup.key}", a.clients, a.seconds, urls
        )
        bare = bares[n]
        emit(
            f"\n== store: durable job creations, {a.clients} concurrent POST jobs, "
            f"{a.seconds:g} s, {setup.label(bench.separate(setup))} =="
        )
        emit(f"$ {command_line()}")
        emit(
            f"  pushy: {prod.rate:,.0f} jobs/s, p50 {1000 * prod.percentile(50):.1f} ms, "
            f"p99 {1000 * prod.percentile(99):.1f} ms, errors {prod.errors}, {_cpu(prod)}, "
            f"peak RSS {kib(hwm)}" + (" (the largest)" if n > 1 else "")
        )
        stores = "store alone" if n == 1 else f"{n} stores in one process"
        emit(
            f"  ceilings: {stores} {ceiling:,.0f} durable appends/s; bare POST"
            f"{'' if n == 1 else f' x {n}'} {bare.rate:,.0f} req/s; ratios "
            f"{prod.rate / ceiling:.2f} / {prod.rate / bare.rate:.2f} (target >= 300 jobs/s)"
        )
        bench.record(
            "store",
            setup=setup.key,
            appliances=n,
            rate=prod.rate,
            p99_ms=1000 * prod.percentile(99),
            errors=prod.errors,
            cpu_s=prod.server_cpu_s,
            cpu_each_s=prod.server_cpu_each,
            hwm_kib=hwm,
            store_ceiling=ceiling,
            bare_post_rate=bare.rate,
        )
    _summary(bench, runs, "jobs/s")


# --- 5. start-up ------------------------------------------------------------------------------


async def _template_job(bench: Bench, d: Path, nodes: int) -> str:
    """Run one real job on ``nodes`` simulated nodes; return its id."""
    server = ServerProcess(d)
    await server.start()
    try:
        fleet = bench.fleet(server.node_url, server.ca_file, nodes, 300)
        async with fleet.running():
            await fleet.wait_for("connected", nodes, within=120)
            host, port = server.http_address
            conn = await HttpConnection.connect(host, port, server.ca_file)
            _s, job_id, status = await _run_job(
                conn, f"{host}:{port}", admin_key(d), node_names(nodes), 0.05
            )
            await conn.aclose()
            if status != "complete":
                raise RuntimeError(f"template job ended {status}")
    finally:
        await server.stop()
    return job_id


async def _clone_jobs(d: Path, job_id: str, copies: int) -> int:
    """Append ``copies`` copies of the job's records under new ids. Returns records added."""
    added = 0
    with lock_data_dir(d):
        async with open_store(d / "store") as st:
            template = [r for _seq, r in st.recovered.records if r.get("id") == job_id]
            batch: list[dict[str, Any]] = []
            for _ in range(copies):
                new_id = secrets.token_hex(16)
                for r in template:
                    clone = dict(r)
                    clone["id"] = new_id
                    if "state" in clone:
                        clone["state"] = {**clone["state"], "id": new_id}
                    if "job" in clone:
                        clone["job"] = {**clone["job"], "id": new_id}
                    batch.append(clone)
                if len(batch) >= 5000:
                    await st.append_many(batch)
                    added += len(batch)
                    batch = []
            if batch:
                await st.append_many(batch)
                added += len(batch)
    return added


async def _time_start(
    d: Path, repeat: int, pristine: Path | None = None
) -> tuple[list[float], int, float, int]:
    """Start and stop the server ``repeat`` times; seconds to ready, the last start's peak
    RSS, CPU to ready and RSS once settled after ready.

    ``pristine``: a copy of the store put back before each start. A graceful stop writes a
    snapshot when the start replayed 10,000 records or more, so without it only the first
    start would replay the log.
    """
    times = []
    hwm = rss = 0
    cpu = 0.0
    for _ in range(repeat):
        if pristine is not None:
            await trio.to_thread.run_sync(_restore_store, d, pristine)
        server = ServerProcess(d)
        seconds = await server.start()
        st = server.stats()
        cpu = st.cpu_s
        rss = await _settle_rss(server.pid)
        hwm = server.stats().hwm_kib
        await server.stop()
        times.append(seconds)
    return times, hwm, cpu, rss


def _restore_store(d: Path, pristine: Path) -> None:
    shutil.rmtree(d / "store")
    shutil.copytree(pristine, d / "store")


async def startup(bench: Bench) -> None:
    a = bench.args
    d = await bench.data_dir("startup", a.job_nodes, postgres=False)
    ceiling, c_hwm, c_cpu, c_rss = await _time_start(d, a.repeat)
    job_id = await _template_job(bench, d, a.job_nodes)
    with trio.fail_after(600):
        t0 = time.perf_counter()
        added = await _clone_jobs(d, job_id, a.jobs - 1)
        gen_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in (d / "store").rglob("*") if f.is_file())
    pristine = d.parent / f"{d.name}-store-copy"
    await trio.to_thread.run_sync(shutil.copytree, d / "store", pristine)
    replay, r_hwm, r_cpu, r_rss = await _time_start(d, a.repeat, pristine)
    await trio.to_thread.run_sync(_restore_store, d, pristine)  # compact the log, not a snapshot
    await trio.to_thread.run_sync(shutil.rmtree, pristine)
    t0 = time.perf_counter()
    await compact_store(d)
    compact_s = time.perf_counter() - t0
    snap, s_hwm, s_cpu, s_rss = await _time_start(d, a.repeat)
    emit(
        f"\n== start-up: {a.jobs:,} finished jobs ({a.job_nodes} nodes each), "
        f"time to run/server.json, best of {a.repeat} =="
    )
    emit(f"$ {command_line()}")
    emit(f"  store: {added:,} job records generated in {gen_s:.1f} s, {size / 1e6:,.1f} MB")
    emit(
        f"  empty store (ceiling): {min(ceiling):.2f} s (all {_join(ceiling, 2)}),"
        f" CPU {c_cpu:.2f} s, RSS {kib(c_rss)}, peak RSS {kib(c_hwm)}"
    )
    emit(
        f"  replay of the log:     {min(replay):.2f} s (all {_join(replay, 2)}),"
        f" CPU {r_cpu:.2f} s, RSS {kib(r_rss)}, peak RSS {kib(r_hwm)};"
        f" ratio {min(replay) / min(ceiling):.1f}"
    )
    emit(
        f"  from a snapshot:       {min(snap):.2f} s (all {_join(snap, 2)}),"
        f" CPU {s_cpu:.2f} s, RSS {kib(s_rss)}, peak RSS {kib(s_hwm)};"
        f" ratio {min(snap) / min(ceiling):.1f} (offline compaction took {compact_s:.1f} s)"
    )
    emit("  target from a snapshot: < 2 s and < 300 MB RSS (issue 13 #6)")
    bench.record(
        "startup",
        jobs=a.jobs,
        job_nodes=a.job_nodes,
        store_bytes=size,
        empty=ceiling,
        replay=replay,
        snapshot=snap,
        replay_hwm_kib=r_hwm,
        snapshot_hwm_kib=s_hwm,
        replay_rss_kib=r_rss,
        snapshot_rss_kib=s_rss,
        compact_s=compact_s,
    )


# --- 6. huge jobs ----------------------------------------------------------------------------


def _long_steps(path: Path, since: float, until: float) -> list[tuple[float, str]]:
    """The server's task steps of 10 ms or more that ended between ``since`` and ``until``
    (``loopwrap.py``), longest first."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    steps = [(s[0], s[1]) for s in doc["longest"] if since <= s[2] <= until]
    return sorted(steps, reverse=True)


async def _poll_status(
    conn: HttpConnection, host: str, done: trio.Event, latencies: list[float] | None = None
) -> list[float]:
    """``GET /pushy/_status`` back to back until ``done``; the latency of each (appended to
    ``latencies`` as they come, so a connection the server closes loses none of them)."""
    get = plain_request_bytes("GET", "/pushy/_status", host)
    own: list[float] = []
    latencies = own if latencies is None else latencies
    while not done.is_set():
        t0 = time.perf_counter()
        status, _body = await conn.request(get)
        latencies.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"GET /pushy/_status: {status}")
    return own


async def _store_bytes(conn: HttpConnection, host: str) -> int:
    status, raw = await conn.request(plain_request_bytes("GET", "/pushy/_status", host))
    if status != 200:
        raise RuntimeError(f"GET /pushy/_status: {status}")
    return int(json.loads(raw)["store"]["bytes"])


async def _settle_rss(pid: int) -> int:
    """The server's RSS once it stopped changing (the archiver and the collector done)."""
    last = -1
    for _ in range(100):
        rss = proc_stats(pid).rss_kib
        if abs(rss - last) < 256:
            return rss
        last = rss
        await trio.sleep(0.5)
    return last


async def huge(bench: Bench) -> None:
    """POST jobs of ``--job-size`` nodes (offline: they end ``unavailable``) while another
    connection polls ``/pushy/_status``; then restart from the log and from a snapshot."""
    a = bench.args
    size, count = a.job_size, a.huge_jobs
    d = await bench.data_dir("huge", 0, postgres=False)
    loop_file = bench.root / "huge.loop.json"
    body_limit = str(max(1_000_000, 40 * size))
    env = {
        "BENCH_LOOP_STATS": str(loop_file),
        "PUSHY_LIMITS_MAX_BODY_BYTES": body_limit,
        "PUSHY_LIMITS_MAX_NODES_PER_JOB": str(max(size, 100_000)),
    }
    names = node_names(size, prefix="huge-node-")
    server = bench.server(d, env)
    await server.start()
    rows: list[dict[str, Any]] = []
    job_ids: list[str] = []
    try:
        host, port = server.http_address
        hostport = f"{host}:{port}"
        key = admin_key(d)
        conn = await HttpConnection.connect(host, port, server.ca_file, 0)
        base_rss = await _settle_rss(server.pid)
        base_bytes = await _store_bytes(conn, hostport)
        for i in range(count):
            body = json.dumps(
                {"command": f"chef-client --huge {i}", "nodes": names, "quorum": size}
            ).encode()
            post = signed_request_bytes("POST", JOBS_PATH, hostport, "admin", key, body)
            rss0 = proc_stats(server.pid).rss_kib
            bytes0 = await _store_bytes(conn, hostport)
            done = trio.Event()
            latencies: list[float] = []
            poll_conn = await HttpConnection.connect(host, port, server.ca_file, 1 + i)

            async def poller(
                conn: HttpConnection = poll_conn,
                done: trio.Event = done,
                out: list[float] = latencies,
                index: int = i,
            ) -> None:
                while not done.is_set():
                    try:
                        await _poll_status(conn, hostport, done, out)
                    except (ConnectionError, trio.BrokenResourceError):
                        # hypercorn closes a keep-alive connection after 1,000 requests
                        await conn.aclose()
                        conn = await HttpConnection.connect(host, port, server.ca_file, 1 + index)
                await conn.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poller)
                await trio.sleep(0.2)
                t_start = time.time()
                t0 = time.perf_counter()
                status, raw = await conn.request(post)
                post_s = time.perf_counter() - t0
                if status != 201:
                    raise RuntimeError(f"POST jobs: {status} {raw[:300]!r}")
                job_id = json.loads(raw)["id"]
                job_ids.append(job_id)
                get = signed_request_bytes("GET", f"{JOBS_PATH}/{job_id}", hostport, "admin", key)
                with trio.fail_after(300):
                    while True:
                        status, raw = await conn.request(get)
                        doc = json.loads(raw)
                        if doc["status"] in FINISHED_JOB_STATUSES:
                            break
                        await trio.sleep(0.05)
                await trio.sleep(1.0)  # what follows the job's end (archiving) is measured too
                t_end = time.time()
                done.set()
            await trio.sleep(0.3)  # the instrument's file is rewritten every 0.2 s
            steps = _long_steps(loop_file, t_start, t_end)
            rss1 = await _settle_rss(server.pid)
            bytes1 = await _store_bytes(conn, hostport)
            row = {
                "post_s": post_s,
                "status": doc["status"],
                "poll_worst_s": max(latencies, default=float("nan")),
                "polls": len(latencies),
                "steps": steps[:5],
                "rss_kib": rss1 - rss0,
                "store_bytes": bytes1 - bytes0,
            }
            rows.append(row)
        t0 = time.perf_counter()
        get = signed_request_bytes("GET", f"{JOBS_PATH}/{job_ids[0]}", hostport, "admin", key)
        status, raw = await conn.request(get)
        doc_s = time.perf_counter() - t0
        end_rss = await _settle_rss(server.pid)
        end_hwm = proc_stats(server.pid).hwm_kib
        end_bytes = await _store_bytes(conn, hostport)
        await conn.aclose()
    finally:
        await server.stop()
    starts: dict[str, tuple[float, int, int]] = {}
    for label in ("log", "snapshot"):
        if label == "snapshot":
            await compact_store(d)
        s = ServerProcess(d, env)
        seconds = await s.start()
        rss = await _settle_rss(s.pid)
        starts[label] = (seconds, rss, s.stats().hwm_kib)
        await s.stop()
    emit(f"\n== huge jobs: {count} job(s) of {size:,} offline nodes ==")
    emit(f"$ {command_line()}")
    emit(f"  server RSS before the first job {kib(base_rss)}")
    for i, r in enumerate(rows):
        longest = ", ".join(f"{t * 1000:.0f} ms {name}" for t, name in r["steps"][:3]) or "none"
        emit(
            f"  job {i + 1}: POST {r['post_s']:.2f} s ({r['status']}); _status poller worst "
            f"{r['poll_worst_s'] * 1000:.0f} ms over {r['polls']} polls; longest task steps: "
            f"{longest}; RSS +{kib(r['rss_kib'])} ({1024 * r['rss_kib'] / size:,.0f} B/node); "
            f"store +{r['store_bytes'] / 1e6:,.1f} MB ({r['store_bytes'] / size:,.0f} B/node)"
        )
    emit(
        f"  after {count} job(s): RSS {kib(end_rss)} (+{kib(end_rss - base_rss)}), peak "
        f"{kib(end_hwm)}, store {(end_bytes - base_bytes) / 1e6:,.1f} MB; GET of the first "
        f"job's document {doc_s * 1000:.0f} ms ({len(raw) / 1e6:.1f} MB)"
    )
    for label, (seconds, rss, hwm) in starts.items():
        emit(
            f"  restart from the {label}: ready in {seconds:.2f} s, RSS {kib(rss)}, peak {kib(hwm)}"
        )
    bench.record(
        "huge",
        job_size=size,
        jobs=count,
        base_rss_kib=base_rss,
        rows=rows,
        end_rss_kib=end_rss,
        end_hwm_kib=end_hwm,
        store_bytes=end_bytes - base_bytes,
        document_s=doc_s,
        starts=starts,
    )


# --- main -------------------------------------------------------------------------------------


async def smoke(bench: Bench) -> None:
    a = bench.args
    a.nodes, a.intervals, a.seconds = 200, "1", 5.0
    await presence(bench)
    a.sizes, a.repeat = "100,200", 1
    await fanout(bench)
    a.clients, a.seconds = 10, 3.0
    await api(bench)
    await store(bench)
    a.jobs, a.job_nodes, a.repeat = 2000, 3, 1
    await startup(bench)
    a.job_size, a.huge_jobs = 5000, 1
    await huge(bench)


SCENARIOS = {
    "presence": presence,
    "fanout": fanout,
    "api": api,
    "store": store,
    "startup": startup,
    "huge": huge,
    "smoke": smoke,
}


def _raise_fd_limit(need: int) -> None:
    """Let the server and the simulators (children inherit it) open ``need`` descriptors.

    The soft limit goes up to the hard one; beyond that only a privileged user (root, as the
    appliance's systemd unit does with ``LimitNOFILE``) can raise the hard limit itself.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(f"  descriptor limit {hard}, under the {need} wanted: a fleet near it may be refused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--workdir", default=None, help="parent of the work directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", default=None, help="append figures to this file")
    parser.add_argument("--procs", type=int, default=1, help="simulator processes")
    parser.add_argument("--connect-concurrency", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=10_000, help="presence: nodes")
    parser.add_argument("--intervals", default="10,1", help="presence: heartbeat seconds")
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring window")
    parser.add_argument("--sizes", default="1000,5000", help="fanout: job sizes")
    parser.add_argument("--repeat", type=int, default=3, help="fanout/startup: repetitions")
    parser.add_argument(
        "--bare-gc",
        choices=("default", "tuned", "both"),
        default="both",
        help="collector of the bare WebSocket ceiling: Python's default, the appliance's, both",
    )
    parser.add_argument("--gc-stats", action="store_true", help="measure the server's GC")
    parser.add_argument("--gc-threshold", default=None, help="experiment: a,b,c")
    parser.add_argument("--gc-disable", action="store_true", help="experiment: no GC")
    parser.add_argument("--profile", default=None, help="py-spy collapsed stacks to FILE")
    parser.add_argument("--poll", type=float, default=0.02, help="fanout: GET poll seconds")
    parser.add_argument("--clients", type=int, default=50, help="api/store: connections")
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="presence/fanout/api/store: the appliances' stores in this PostgreSQL database "
        "(a new schema for each setup measured)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="as --store, in a private PostgreSQL server started for the run (initdb, "
        "pg_ctl: tests/pgserver.py) and removed after",
    )
    parser.add_argument(
        "--appliances",
        default="1",
        type=_counts,
        metavar="N[,N...]",
        help="presence/fanout/api/store: appliances sharing keys, CA and (on PostgreSQL) one "
        "store, load spread over them (node i to appliance i mod N); several counts are "
        "measured in turn",
    )
    parser.add_argument(
        "--with-file-store",
        action="store_true",
        help="with --postgres/--store: measure the file store with one appliance first",
    )
    parser.add_argument(
        "--separate-schemas",
        action="store_true",
        help="several appliances on PostgreSQL: a store each (a schema each), not one",
    )
    parser.add_argument("--jobs", type=int, default=100_000, help="startup: finished jobs")
    parser.add_argument("--job-nodes", type=int, default=10, help="startup: nodes per job")
    parser.add_argument("--job-size", type=int, default=100_000, help="huge: nodes per job")
    parser.add_argument("--huge-jobs", type=int, default=3, help="huge: jobs posted")
    args = parser.parse_args()
    if args.scenario in ("api", "store") and args.seconds == 60.0:
        args.seconds = 10.0
    if args.scenario == "presence":
        # each server holds its share (node i on server i mod N), each simulator process its own
        _raise_fd_limit(
            max(_spread(args.nodes, min(args.appliances))[0], args.nodes // args.procs) + 2_000
        )
    if args.store and args.postgres:
        parser.error("--store and --postgres: one or the other")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(private_postgres()) if args.postgres else args.store
        bench = Bench(args, url)
        try:
            trio.run(SCENARIOS[args.scenario], bench)
        finally:
            bench.close()


def _counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts must be 1 or more: {text!r}")
    return counts


if __name__ == "__main__":
    main()
