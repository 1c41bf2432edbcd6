"""The scenarios of the performance issues, the first five against a bare-stack ceiling.

    python3 benchmarks/run.py presence --nodes 10000 --intervals 10,1 --seconds 60
    python3 benchmarks/run.py fanout --sizes 1000,5000 --repeat 3
    python3 benchmarks/run.py api --clients 50 --seconds 10
    python3 benchmarks/run.py store --clients 50 --seconds 10
    python3 benchmarks/run.py startup --jobs 100000
    python3 benchmarks/run.py huge --job-size 100000 --huge-jobs 3
    python3 benchmarks/run.py smoke            # all six, small, in about two minutes

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
    return (
        f"server CPU {r.server_cpu_s:.2f} s ({per:.2f} ms/req: {1000 / per:,.0f} req/s per "
        "busy core), "
        f"load-generator CPU {r.client_cpu_s:.2f} s"
    )


def kib(n: float) -> str:
    return f"{n / 1024:,.1f} MiB" if n >= 10240 else f"{n:,.0f} KiB"


class Bench:
    """Shared state of one ``run.py`` invocation: work directory, node key, results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="pushy-bench-", dir=args.workdir))
        self.results: list[dict[str, Any]] = []
        key = chef_auth.generate_private_key()
        self.node_key_file = self.root / "node.pem"
        self.node_key_file.write_text(chef_auth.private_key_pem(key))
        self.node_public = chef_auth.public_key_pem(key)

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

    def server(self, d: Path, env: dict[str, str] | None = None) -> ServerProcess:
        """The server under test on ``d``, with the ``--gc-*`` experiment settings (and its
        store in PostgreSQL with ``--store``)."""
        env = dict(env or {})
        a = self.args
        if a.store:
            env["PUSHY_STORE_URL"] = a.store
        if a.gc_stats:
            env["BENCH_GC_STATS"] = str(self.root / f"{d.name}.gc.json")
        if a.gc_threshold:
            env["BENCH_GC_THRESHOLD"] = a.gc_threshold
            env.setdefault("BENCH_GC_STATS", str(self.root / f"{d.name}.gc.json"))
        if a.gc_disable:
            env["BENCH_GC_DISABLE"] = "1"
            env.setdefault("BENCH_GC_STATS", str(self.root / f"{d.name}.gc.json"))
        return ServerProcess(d, env)

    async def data_dir(self, name: str, nodes: int) -> Path:
        """A bootstrapped data directory with ``nodes`` node clients sharing one key."""
        d = self.root / name
        server = self.server(d)
        await server.start()
        await server.stop()
        if nodes:
            await provision_clients(d, node_names(nodes), self.node_public, self.args.store)
        return d

    def fleet(self, node_url: str, ca: Path, count: int, lifetime: float) -> SimFleet:
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


async def _hold(
    bench: Bench,
    pid: int,
    node_url: str,
    ca: Path,
    nodes: int,
    interval: float,
    seconds: float,
) -> dict[str, Any]:
    """Connect ``nodes`` simulated nodes, hold them ``seconds`` and measure the server."""
    base = proc_stats(pid)
    lifetime = seconds + interval + 120 + nodes / 50
    fleet = bench.fleet(node_url, ca, nodes, lifetime)
    async with fleet.running():
        connect_s = await fleet.wait_for("connected", nodes, within=60 + nodes / 50)
        after_connect = proc_stats(pid)
        await trio.sleep(min(interval, 10) + 1)  # every node past its first heartbeat phase
        s0, f0, hb0 = proc_stats(pid), fleet.cpu_s(), fleet.summary()
        await trio.sleep(seconds)
        s1, f1, hb1 = proc_stats(pid), fleet.cpu_s(), fleet.summary()
    online = hb1["connected"] == nodes and hb1["lost"] == 0 and hb1["failed"] == 0
    return {
        "nodes": nodes,
        "interval": interval,
        "seconds": seconds,
        "connect_s": connect_s,
        "connect_cpu_s": after_connect.cpu_s - base.cpu_s,
        "cpu_s": s1.cpu_s - s0.cpu_s,
        "base_rss_kib": base.rss_kib,
        "rss_kib": s1.rss_kib,
        "hwm_kib": s1.hwm_kib,
        "per_node_kib": (s1.rss_kib - base.rss_kib) / nodes,
        "sim_cpu_s": f1 - f0,
        "hb_sent": hb1["hb_sent"] - hb0["hb_sent"],
        "hb_recv": hb1["hb_recv"] - hb0["hb_recv"],
        "all_online": online,
        "sim": hb1,
    }


async def presence(bench: Bench) -> None:
    a = bench.args
    intervals = [float(x) for x in a.intervals.split(",")]
    d = await bench.data_dir("presence", a.nodes)
    for interval in intervals:
        server = bench.server(d, {"PUSHY_HEARTBEAT_INTERVAL": str(interval)})
        await server.start()
        try:
            prod = await _hold(
                bench, server.pid, server.node_url, server.ca_file, a.nodes, interval, a.seconds
            )
        finally:
            await server.stop()
        ceilings: dict[str, dict[str, Any]] = {}
        for mode in _gc_modes(a):
            bare = LineProcess(bare_ws_argv(d, interval, 3600, mode == "tuned"))
            async with bare.running():
                port = (await bare.wait_event("listening"))["port"]
                ceilings[mode] = await _hold(
                    bench,
                    bare.pid,
                    f"wss://127.0.0.1:{port}",
                    d / "tls" / "ca.pem",
                    a.nodes,
                    interval,
                    a.seconds,
                )
        emit(f"\n== presence: {a.nodes} nodes, heartbeat every {interval:g} s, {a.seconds:g} s ==")
        emit(f"$ {command_line()}")
        rows = [("pushy", prod)] + [(f"bare ({m} GC)", r) for m, r in ceilings.items()]
        for label, r in rows:
            emit(
                f"  {label}: server CPU {r['cpu_s']:.2f} s "
                f"({100 * r['cpu_s'] / a.seconds:.1f}% of a core), RSS {kib(r['rss_kib'])} "
                f"(peak {kib(r['hwm_kib'])}), "
                f"{r['per_node_kib']:.1f} KiB/node, connect {r['connect_s']:.1f} s "
                f"(server CPU {r['connect_cpu_s']:.1f} s), all online: {r['all_online']}, "
                f"heartbeats sent/received by nodes {r['hb_sent']}/{r['hb_recv']}, "
                f"simulator CPU {r['sim_cpu_s']:.1f} s"
            )
        ratios = {m: prod["cpu_s"] / max(r["cpu_s"], 1e-9) for m, r in ceilings.items()}
        emit(
            "  ratio CPU pushy/bare "
            + ", ".join(f"{r:.2f} ({m} GC)" for m, r in ratios.items())
            + f" (target <= 1.25); RSS/node pushy {prod['per_node_kib']:.1f} KiB (target <= 60)"
        )
        bench.record("presence", pushy=prod, bare=ceilings, cpu_ratio=ratios)


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


async def fanout(bench: Bench) -> None:
    a = bench.args
    sizes = [int(x) for x in a.sizes.split(",")]
    most = max(sizes)
    names = node_names(most)
    d = await bench.data_dir("fanout", most)
    key = admin_key(d)
    prod: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    server = bench.server(d)
    await server.start()
    try:
        fleet = bench.fleet(server.node_url, server.ca_file, most, 600 + most / 20)
        async with fleet.running():
            await fleet.wait_for("connected", most, within=60 + most / 50)
            host, port = server.http_address
            conn = await HttpConnection.connect(host, port, server.ca_file)
            hosthdr = f"{host}:{port}"
            async with profiled(server.pid, a.profile):
                for _ in range(a.repeat):
                    for n in sizes:
                        s0, g0, d0 = server.stats(), server.gc_seconds(), server.gc_detail()
                        seconds, _id, status = await _run_job(conn, hosthdr, key, names[:n], a.poll)
                        await trio.sleep(0.6)  # the GC statistics file is rewritten each 0.5 s
                        s1, g1, d1 = server.stats(), server.gc_seconds(), server.gc_detail()
                        prod[n].append(
                            {
                                "seconds": seconds,
                                "status": status,
                                "cpu_s": s1.cpu_s - s0.cpu_s,
                                "gc_s": g1 - g0,
                                "gc_by_generation": [
                                    [d1[0][i] - d0[0][i], round(d1[1][i] - d0[1][i], 3)]
                                    for i in range(3)
                                ],
                            }
                        )
            await conn.aclose()
            hwm = server.stats().hwm_kib
    finally:
        await server.stop()
    bare_runs: dict[str, dict[int, list[float]]] = {}
    bare_jobs: dict[str, dict[int, list[float]]] = {}
    for mode in _gc_modes(a):
        runs = bare_runs[mode] = {n: [] for n in sizes}
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
                        runs[n].append((await bare.wait_event("broadcast", mark))["seconds"])
                        mark = len(bare.events)
                        await bare.command(f"job {n}")
                        jobs[n].append((await bare.wait_event("job", mark))["seconds"])
    emit(f"\n== fan-out: one job to N nodes (quorum all), POST to complete, best of {a.repeat} ==")
    emit(f"$ {command_line()}")
    for n in sizes:
        best = min(prod[n], key=lambda r: r["seconds"])
        target = 1.5 if n <= 1000 else 5.0
        emit(
            f"  {n:>6} nodes: pushy {best['seconds']:.3f} s (target < {target:g} s; server CPU "
            f"{best['cpu_s']:.2f} s, GC {best['gc_s']:.2f} s, {best['status']}; "
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
            nodes=n,
            pushy=prod[n],
            bare={m: r[n] for m, r in bare_runs.items()},
            bare_job={m: r[n] for m, r in bare_jobs.items()},
            ratio=ratios,
        )
    emit(f"  server peak RSS {kib(hwm)}")


# --- 3. API and 4. store ----------------------------------------------------------------------


async def _bare_http_load(
    bench: Bench, d: Path, method: str, clients: int, seconds: float
) -> tuple[Any, int]:
    bare = LineProcess(bare_http_argv(d, 3600))
    async with bare.running():
        port = (await bare.wait_event("listening"))["port"]
        host = f"127.0.0.1:{port}"
        body = b'{"hello":"world"}' if method == "POST" else b""
        reqs = [plain_request_bytes(method, "/hello", host, body) for _ in range(clients)]
        result = await http_load(
            "127.0.0.1",
            port,
            d / "tls" / "ca.pem",
            reqs,
            seconds=seconds,
            expect=200,
            server_pid=bare.pid,
        )
        hwm = proc_stats(bare.pid).hwm_kib
    return result, hwm


def _store_kind(a: argparse.Namespace) -> str:
    return "store in PostgreSQL" if a.store else "file store"


async def api(bench: Bench) -> None:
    a = bench.args
    d = await bench.data_dir("api", 10)
    key = admin_key(d)
    server = bench.server(d)
    await server.start()
    try:
        host, port = server.http_address
        hosthdr = f"{host}:{port}"
        conn = await HttpConnection.connect(host, port, server.ca_file)
        _s, job_id, _status = await _run_job(conn, hosthdr, key, node_names(10), 0.05)
        await conn.aclose()
        path = f"{JOBS_PATH}/{job_id}"
        reqs = [signed_request_bytes("GET", path, hosthdr, "admin", key) for _ in range(a.clients)]
        prod = await http_load(
            host,
            port,
            server.ca_file,
            reqs,
            seconds=a.seconds,
            expect=200,
            server_pid=server.pid,
        )
        hwm = server.stats().hwm_kib
    finally:
        await server.stop()
    bare, _bare_hwm = await _bare_http_load(bench, d, "GET", a.clients, a.seconds)
    ratio = prod.rate / bare.rate
    emit(
        f"\n== API: signed GET jobs/ID, {a.clients} concurrent keep-alive clients, "
        f"{a.seconds:g} s, {_store_kind(a)} =="
    )
    emit(f"$ {command_line()}")
    emit(
        f"  pushy: {prod.rate:,.0f} req/s, p50 {1000 * prod.percentile(50):.1f} ms, "
        f"p99 {1000 * prod.percentile(99):.1f} ms, errors {prod.errors}, {_cpu(prod)}, "
        f"peak RSS {kib(hwm)}"
    )
    emit(
        f"  bare hello: {bare.rate:,.0f} req/s, p50 {1000 * bare.percentile(50):.1f} ms, "
        f"p99 {1000 * bare.percentile(99):.1f} ms, {_cpu(bare)}"
    )
    emit(f"  ratio {ratio:.2f} (target >= 0.60; rate target >= 1,000 req/s)")
    bench.record(
        "api",
        rate=prod.rate,
        p50_ms=1000 * prod.percentile(50),
        p99_ms=1000 * prod.percentile(99),
        errors=prod.errors,
        cpu_s=prod.server_cpu_s,
        client_cpu_s=prod.client_cpu_s,
        hwm_kib=hwm,
        bare_rate=bare.rate,
        bare_p99_ms=1000 * bare.percentile(99),
        bare_cpu_s=bare.server_cpu_s,
        ratio=ratio,
    )


async def _store_ceiling(
    directory: Path, clients: int, seconds: float, store_url: str | None = None
) -> float:
    """Durable appends/s of job-create-sized records by ``clients`` tasks, store alone (the
    PostgreSQL store at ``store_url`` when given)."""
    record = {"t": "bench", "data": "x" * 900}
    count = 0
    opened = open_store(directory) if store_url is None else open_postgres_store(store_url)
    async with opened as store:
        stop = time.perf_counter() + seconds

        async def appender() -> None:
            nonlocal count
            while time.perf_counter() < stop:
                await store.append(record)
                count += 1

        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(appender)
    return count / seconds


async def store(bench: Bench) -> None:
    a = bench.args
    d = await bench.data_dir("store", 1)
    key = admin_key(d)
    # Each connection sends its one signed POST again and again: a replay, which the server
    # refuses by default (auth.replay_cache). The guard's cost per request is a digest and a
    # set lookup; this load measures the store path, so it runs with the guard off.
    server = bench.server(d, {"PUSHY_AUTH_REPLAY_CACHE": "0"})
    await server.start()
    try:
        host, port = server.http_address
        hosthdr = f"{host}:{port}"
        body = json.dumps({"command": "chef-client", "nodes": node_names(1)}).encode()
        reqs = [
            signed_request_bytes("POST", JOBS_PATH, hosthdr, "admin", key, body)
            for _ in range(a.clients)
        ]
        prod = await http_load(
            host,
            port,
            server.ca_file,
            reqs,
            seconds=a.seconds,
            expect=201,
            server_pid=server.pid,
        )
        hwm = server.stats().hwm_kib
    finally:
        await server.stop()
    ceiling = await _store_ceiling(bench.root / "store-ceiling", a.clients, a.seconds, a.store)
    bare, _bare_hwm = await _bare_http_load(bench, d, "POST", a.clients, a.seconds)
    emit(
        f"\n== store: durable job creations, {a.clients} concurrent POST jobs, {a.seconds:g} s, "
        f"{_store_kind(a)} =="
    )
    emit(f"$ {command_line()}")
    emit(
        f"  pushy: {prod.rate:,.0f} jobs/s, p50 {1000 * prod.percentile(50):.1f} ms, "
        f"p99 {1000 * prod.percentile(99):.1f} ms, errors {prod.errors}, {_cpu(prod)}, "
        f"peak RSS {kib(hwm)}"
    )
    emit(
        f"  ceilings: store alone {ceiling:,.0f} durable appends/s; bare POST {bare.rate:,.0f}"
        f" req/s; ratios {prod.rate / ceiling:.2f} / {prod.rate / bare.rate:.2f}"
        " (target >= 300 jobs/s)"
    )
    bench.record(
        "store",
        rate=prod.rate,
        p99_ms=1000 * prod.percentile(99),
        errors=prod.errors,
        cpu_s=prod.server_cpu_s,
        hwm_kib=hwm,
        store_ceiling=ceiling,
        bare_post_rate=bare.rate,
    )


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
    d = await bench.data_dir("startup", a.job_nodes)
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
    d = await bench.data_dir("huge", 0)
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
        help="api/store: the server's store in this PostgreSQL database (an empty one)",
    )
    parser.add_argument("--jobs", type=int, default=100_000, help="startup: finished jobs")
    parser.add_argument("--job-nodes", type=int, default=10, help="startup: nodes per job")
    parser.add_argument("--job-size", type=int, default=100_000, help="huge: nodes per job")
    parser.add_argument("--huge-jobs", type=int, default=3, help="huge: jobs posted")
    args = parser.parse_args()
    if args.scenario in ("api", "store") and args.seconds == 60.0:
        args.seconds = 10.0
    if args.scenario == "presence":
        _raise_fd_limit(args.nodes + 2_000)
    bench = Bench(args)
    try:
        trio.run(SCENARIOS[args.scenario], bench)
    finally:
        bench.close()


if __name__ == "__main__":
    main()
