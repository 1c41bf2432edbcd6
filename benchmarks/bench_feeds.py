"""One job's feed streamed to 1,000 concurrent subscribers: delivery latency and server CPU.

Run: ``python3 benchmarks/bench_feeds.py [--subscribers 1000] [--clients 4] [--nodes 5]
[--outputs 10]``.

What it does, all on 127.0.0.1 and bounded by a deadline:

1. starts ``pushy serve --data-dir TMP --listen 127.0.0.1:0`` as a subprocess and reads
   ``TMP/run/server.json`` (URL, node URL, pid);
2. creates ``--nodes`` clients and connects a fake node for each (``tests/fakenode.py``, the
   real node protocol), whose runs wait on a gate;
3. starts a job with output capture on those nodes, and ``--clients`` client processes that
   together open ``--subscribers`` TLS connections to the job's feed (signed as ``admin``);
4. once ``/pushy/_status`` reports every subscription, reads the server's CPU time
   (``/proc/PID/stat`` utime + stime), opens the gate: each node prints ``--outputs`` lines,
   one output frame each, and finishes;
5. when every subscriber has seen ``job_complete``, reads the CPU time again and prints the
   latency of the live events (``output``, ``run_complete``, ``job_complete``: receive time
   minus the event's ``timestamp``) as p50/p99/max, and the server's CPU time per phase.

The temporary directory is removed afterwards. Client and server share the machine, so the
latencies include the clients' own CPU contention.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import resource
import shlex
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pushy_appliance import chef_auth, protocol  # noqa: E402
from pushy_appliance.sse import SSEParser  # noqa: E402

DEADLINE = 300.0
LIVE = frozenset({"output", "run_complete", "job_complete"})
ORG = "default"


# --- client processes: many feed subscribers ----------------------------------------------


def _parse_timestamp(text: str) -> float:
    moment = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%fZ")
    return moment.replace(tzinfo=datetime.UTC).timestamp()


class _Dechunker:
    """Decode an HTTP/1.1 chunked body incrementally."""

    _SIZE_LINE = -1
    _CHUNK_END = -2

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.state = self._SIZE_LINE  # or the bytes left in the current chunk
        self.done = False

    def feed(self, data: bytes | bytearray) -> bytes:
        self.buffer += data
        out = bytearray()
        while not self.done:
            if self.state > 0:
                if not self.buffer:
                    break
                take = min(self.state, len(self.buffer))
                out += self.buffer[:take]
                del self.buffer[:take]
                self.state -= take
                if self.state == 0:
                    self.state = self._CHUNK_END
            elif self.state == self._CHUNK_END:
                if len(self.buffer) < 2:
                    break
                del self.buffer[:2]
                self.state = self._SIZE_LINE
            else:
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(self.buffer[:end]).split(b";")[0], 16)
                del self.buffer[: end + 2]
                if size == 0:
                    self.done = True
                else:
                    self.state = size
        return bytes(out)


async def _subscriber(
    host: str, port: int, path: str, headers: dict[str, str], ctx: ssl.SSLContext
) -> tuple[list[float], list[float]]:
    """Read one feed to its end; return the latencies and timestamps of its live events."""
    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=ctx)
    async with stream:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{lines}\r\n".encode())
        head = bytearray()
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise RuntimeError("connection closed before the response head")
            head += chunk
        raw_head, _, rest = bytes(head).partition(b"\r\n\r\n")
        if not raw_head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"feed refused: {raw_head[:200]!r}")
        dechunk = _Dechunker()
        parser = SSEParser()
        latencies: list[float] = []
        stamps: list[float] = []
        data: bytes | bytearray = rest
        while True:
            now = time.time()
            for event in parser.feed(dechunk.feed(data)):
                if event.name in LIVE and isinstance(event.data, dict):
                    stamp = _parse_timestamp(event.data["timestamp"])
                    latencies.append(now - stamp)
                    stamps.append(stamp)
                if event.name == "job_complete":
                    return latencies, stamps
            if dechunk.done:
                raise RuntimeError("feed ended without job_complete")
            data = await stream.receive_some(65536)
            if not data:
                raise RuntimeError("feed closed without job_complete")


async def _client_main(args: argparse.Namespace, key_pem: bytes) -> None:
    ctx = ssl.create_default_context(cafile=args.ca)
    key = chef_auth.load_private_key(key_pem)
    host, port = args.url.split("//", 1)[1].rsplit(":", 1)
    results: list[tuple[list[float], list[float]]] = []
    connecting = trio.Semaphore(32)  # stay inside the server's listen backlog

    async def one() -> None:
        async with connecting:
            headers = chef_auth.sign_request(
                "GET", args.path, b"", "admin", key, timestamp=datetime.datetime.now(datetime.UTC)
            )
            headers["Accept"] = "text/event-stream"
            headers["Connection"] = "close"
        results.append(await _subscriber(host, int(port), args.path, headers, ctx))

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for _ in range(args.count):
                nursery.start_soon(one)
    flat = [x for r, _ in results for x in r]
    stamps = results[0][1]
    json.dump(
        {"subscribers": len(results), "latencies": flat, "spread": stamps[-1] - stamps[0]},
        sys.stdout,
    )


# --- the orchestrating process ------------------------------------------------------------


def _load_fakenode() -> Any:
    spec = importlib.util.spec_from_file_location("fakenode", ROOT / "tests" / "fakenode.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fakenode"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_command(data_dir: Path) -> list[str]:
    # ``pushy serve`` of this checkout (PYTHONPATH=ROOT is set too), not an installed copy.
    return [
        sys.executable,
        "-m",
        "pushy_appliance.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
    ]


async def _wait_server_json(path: Path, server: trio.Process) -> dict[str, Any]:
    document = trio.Path(path)
    with trio.fail_after(60):
        while True:
            if await document.exists():
                break
            if server.returncode is not None:
                raise RuntimeError(f"the server exited with {server.returncode}")
            await trio.sleep(0.05)
    doc: dict[str, Any] = json.loads(await document.read_text())
    return doc


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def _bench(args: argparse.Namespace, tmp: Path, log: IO[bytes]) -> None:
    data_dir = tmp / "data"
    command = _server_command(data_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = await trio.lowlevel.open_process(
        command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=env
    )
    try:
        doc = await _wait_server_json(data_dir / "run" / "server.json", server)
        await _run(args, doc, data_dir, command)
    finally:
        with trio.CancelScope(shield=True):
            server.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await server.wait()
            if server.returncode is None:
                server.kill()
                await server.wait()


async def _run(
    args: argparse.Namespace, doc: dict[str, Any], data_dir: Path, command: list[str]
) -> None:
    url, node_url, pid = doc["url"], doc["node_url"], int(doc["pid"])
    ca = str(data_dir / "tls" / "ca.pem")
    admin_pem = data_dir / "keys" / "admin.pem"
    admin_key = chef_auth.load_private_key(admin_pem.read_bytes())
    fakenode = _load_fakenode()
    gate = trio.Event()
    outputs = args.outputs

    class GatedNode(fakenode.FakeNode):  # type: ignore[misc,name-defined]
        """A fake node whose runs wait for the gate, then print ``outputs`` lines."""

        async def _execute(self, ws: Any, job_id: str) -> None:
            await gate.wait()
            offset = 0
            for i in range(outputs):
                line = b"line %d of %s\n" % (i, self.name.encode())
                await ws.send_message(
                    self.frame(
                        protocol.Output, job_id=job_id, channel="stdout", data=line, offset=offset
                    )
                )
                offset += len(line)
            await ws.send_message(
                self.frame(
                    protocol.Result,
                    job_id=job_id,
                    status="succeeded",
                    exit_code=0,
                    stdout_bytes=offset,
                    stderr_bytes=0,
                    truncated=False,
                    duration_s=0.0,
                )
            )
            self.job = None

    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca), timeout=30) as http:

        async def call(method: str, path: str, body: Any = None) -> httpx.Response:
            data = b"" if body is None else json.dumps(body).encode()
            headers = chef_auth.sign_request(
                method,
                path,
                data,
                "admin",
                admin_key,
                timestamp=datetime.datetime.now(datetime.UTC),
            )
            if data:
                headers["Content-Type"] = "application/json"
            return await http.request(method, url + path, content=data or None, headers=headers)

        names = [f"bench{i}" for i in range(args.nodes)]
        nodes = []
        for name in names:
            r = await call(
                "POST", f"/organizations/{ORG}/clients", {"name": name, "create_key": True}
            )
            r.raise_for_status()
            key = chef_auth.load_private_key(r.json()["chef_key"]["private_key"])
            nodes.append(GatedNode(node_url, ORG, name, key, ca, fakenode.Behaviour()))

        async def subscribers() -> int:
            r = await http.get(url + "/pushy/_status")
            count: int = r.json()["feeds"]["subscribers"]
            return count

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for node in nodes:
                    await nursery.start(node.run)
                r = await call(
                    "POST",
                    f"/organizations/{ORG}/pushy/jobs",
                    {"command": "bench", "nodes": names, "capture_output": True},
                )
                r.raise_for_status()
                job_id = r.json()["id"]
                path = f"/organizations/{ORG}/pushy/job_status_feed/{job_id}"
                cpu_start = _cpu_seconds(pid)
                connect_start = time.perf_counter()
                per_client = [args.subscribers // args.clients] * args.clients
                for i in range(args.subscribers % args.clients):
                    per_client[i] += 1
                results: list[dict[str, Any]] = []

                async def client(count: int) -> None:
                    cmd = [
                        sys.executable,
                        __file__,
                        "--client",
                        "--url",
                        url,
                        "--path",
                        path,
                        "--key",
                        str(admin_pem),
                        "--ca",
                        ca,
                        "--count",
                        str(count),
                    ]
                    done = await trio.run_process(cmd, capture_stdout=True)
                    results.append(json.loads(done.stdout))

                async with trio.open_nursery() as clients:
                    for count in per_client:
                        clients.start_soon(client, count)
                    while True:
                        if await subscribers() >= args.subscribers:
                            break
                        await trio.sleep(0.05)
                    connect_s = time.perf_counter() - connect_start
                    cpu_connected = _cpu_seconds(pid)
                    delivery_start = time.perf_counter()
                    gate.set()
                delivery_s = time.perf_counter() - delivery_start
                cpu_end = _cpu_seconds(pid)
                nursery.cancel_scope.cancel()

    latencies = [x for r in results for x in r["latencies"]]
    subscribed = sum(r["subscribers"] for r in results)
    live_events = args.nodes * (outputs + 1) + 1
    assert subscribed == args.subscribers, subscribed
    assert len(latencies) == subscribed * live_events, (len(latencies), subscribed)
    delivery_cpu = cpu_end - cpu_connected
    spread = max(r["spread"] for r in results)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print("feed benchmark")
    print(f"  server: PYTHONPATH={shlex.quote(str(ROOT))} {shlex.join(command)}")
    print(f"  client: {sys.executable} {Path(__file__).name} --client (x{args.clients} processes)")
    print(f"  {subscribed} subscribers of one job's feed over TLS from {args.clients} processes")
    print(
        f"  job: {args.nodes} fake nodes x {outputs} output lines: {live_events} live events, "
        f"{len(latencies):,} deliveries"
    )
    print(
        f"  latency (receive time - event timestamp): p50 {_percentile(latencies, 0.5) * 1e3:.1f}"
        f" ms, p99 {_percentile(latencies, 0.99) * 1e3:.1f} ms, "
        f"max {max(latencies) * 1e3:.1f} ms, mean {statistics.fmean(latencies) * 1e3:.1f} ms"
    )
    print(f"  connect phase: {connect_s:.2f} s wall, server CPU {cpu_connected - cpu_start:.2f} s")
    print(
        f"  delivery phase: {delivery_s:.2f} s wall, server CPU {delivery_cpu:.3f} s "
        f"({delivery_cpu / len(latencies) * 1e6:.1f} us per delivered event)"
    )
    print(f"  the job's live events were stamped over {spread * 1e3:.0f} ms")
    print(
        f"  client processes: CPU {children.ru_utime + children.ru_stime:.2f} s in all; "
        f"machine: {os.cpu_count()} CPUs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--outputs", type=int, default=10, help="output lines per node")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        trio.run(_client_main, args, Path(args.key).read_bytes())
        return
    with (
        tempfile.TemporaryDirectory(prefix="pushy-bench-feeds-") as tmp,
        (Path(tmp) / "server.log").open("wb") as log,
    ):
        trio.run(_bench, args, Path(tmp), log)


if __name__ == "__main__":
    main()
