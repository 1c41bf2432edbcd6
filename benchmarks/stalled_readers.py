"""Feed readers that never read, beside real agents running jobs (issue 13 #4).

    python3 benchmarks/stalled_readers.py                       # 1,000 readers, 1 MiB output
    python3 benchmarks/stalled_readers.py --readers 100 --output-bytes 262144

One ``pushy serve`` subprocess on a fresh data directory (heartbeat every 0.5 s, so a node is
offline after 1.5 s without a frame, and a write to a node that stalls 1 s drops it as stuck),
two real ``pushy agent`` subprocesses, and this process as the clients:

1. ``loud`` starts a job that waits for a gate file, then prints ``--output-bytes`` of text
   (captured); ``--readers`` TLS connections (a 4 KiB receive buffer and 1,400-byte segments
   each, as over Ethernet; signed by as many
   clients as the cap per principal needs) ask for that job's feed and never read a byte:
   over HTTP/1.1, or with ``--http2`` over HTTP/2 with a 16 MiB flow-control window (as
   curl's), so the server may send far more than the socket takes;
2. a concurrent job on ``quiet`` starts (``sleep`` then a line), the gate opens, and both
   jobs must complete while a monitor asks ``GET /pushy/_status`` every 50 ms;
3. the server is stopped with SIGTERM while the readers still hold their connections.

Printed: the server's RSS before the readers, with them attached, its peak, and after the
jobs; the slowest ``_status`` answer (the event loop's longest stall, as a client sees it);
whether each job completed and each agent stayed online on its first connection (no
``stuck`` and no heartbeat timeout in the server's log); how many readers were cut off with
``lagged``; and how long the SIGTERM took. The exit status is 0 when the jobs completed, the
agents stayed, and the stop took less than the drain deadline and a second.

``--tree DIR`` runs the server and the agents from another source tree (an older commit's
worktree) for a before/after comparison; ``--baseline`` then leaves out the environment such
a server does not know (``feeds.*`` caps).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.settings
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import soak
from harness import REPO, command_line, proc_stats
from soak import ORG, Api, Server, emit, http_client, start_agent

from pushy_appliance import chef_auth

DRAIN_SECONDS = 10.0
"""The server's drain deadline (``appliance.DRAIN_SECONDS``)."""
STOP_WAIT = 60.0
"""Seconds the SIGTERM is given before the server is killed (and the stop counts as failed)."""
H2_WINDOW = 16 * 1024 * 1024
"""The HTTP/2 readers' flow-control window (stream and connection)."""
READERS_PER_PRINCIPAL = 50
"""Readers signed by one client: below the server's default cap per principal."""
LOUD_SCRIPT = """\
while [ ! -e "$1" ]; do sleep 0.05; done
head -c "$2" /dev/zero | tr '\\0' 'x' | fold -w 99
"""


@dataclasses.dataclass
class Figures:
    readers: int = 0
    protocol: str = "HTTP/1.1"
    readers_refused: int = 0
    output_bytes: int = 0
    rss_before_mib: float = 0.0
    rss_attached_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_after_mib: float = 0.0
    status_max_ms: float = 0.0
    status_p99_ms: float = 0.0
    status_answers: int = 0
    loud_job: str = ""
    quiet_job: str = ""
    jobs_ms: float = 0.0
    lagged: int = 0
    agents_reconnected: int = 0
    dropped_lines: list[str] = dataclasses.field(default_factory=list)
    stop_s: float = 0.0
    stop_status: int | None = None

    @property
    def ok(self) -> bool:
        return (
            self.loud_job == "complete"
            and self.quiet_job == "complete"
            and not self.dropped_lines
            and self.agents_reconnected == 0
            and self.stop_status == 0
            and self.stop_s < DRAIN_SECONDS + 1.0
        )


class StalledReader:
    """A TLS connection that asks for a feed and never reads."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream

    @classmethod
    async def open(
        cls, port: int, ctx: ssl.SSLContext, headers: dict[str, str], path: str
    ) -> StalledReader:
        """Connect to the server's API ``port`` on 127.0.0.1 and ask for ``path``."""
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # an Ethernet-sized segment, as over a real network: on loopback (64 KiB segments)
        # the server's send buffer would grow to megabytes and hide what the server holds
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
        await sock.connect(("127.0.0.1", port))
        stream = trio.SSLStream(trio.SocketStream(sock), ctx, server_hostname="127.0.0.1")
        await stream.do_handshake()
        if stream.selected_alpn_protocol() == "h2":
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: H2_WINDOW})
            conn.increment_flow_control_window(H2_WINDOW)
            fields = [(":method", "GET"), (":path", path), (":scheme", "https")]
            fields.append((":authority", headers.pop("Host")))
            fields += [(k.lower(), v) for k, v in headers.items()]
            conn.send_headers(1, fields, end_stream=True)
            await stream.send_all(conn.data_to_send())
        else:
            lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            await stream.send_all(f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode())
        return cls(stream)

    async def status(self) -> int:
        """Read just the status line (for refusals); the rest stays unread."""
        head = b""
        while b"\r\n" not in head:
            chunk = await self.stream.receive_some(64)
            if not chunk:
                return 0
            head += chunk
        return int(head.split(b" ", 2)[1])

    def abort(self) -> None:
        """Drop the connection without a TLS goodbye."""
        self.stream.transport_stream.socket.close()


def feed_headers(path: str, user: str, key: Any, port: int) -> dict[str, str]:
    headers = chef_auth.sign_request("GET", path, b"", user, key, timestamp=datetime.now(UTC))
    headers.update({"Accept": "text/event-stream", "Host": f"127.0.0.1:{port}"})
    return headers


async def wait_job(api: Api, job: str) -> dict[str, Any]:
    """Poll the job until it is over; returns its document."""
    while True:
        doc: dict[str, Any] = await api.json("GET", f"{ORG}/pushy/jobs/{job}")
        if doc["status"] not in ("new", "voting", "running"):
            return doc
        await trio.sleep(0.1)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        env = {"PUSHY_HEARTBEAT_INTERVAL": "0.5", "PUSHY_LOG_LEVEL": "info"}
        if not args.baseline:
            env["PUSHY_FEEDS_MAX_CONNECTIONS"] = str(max(2048, args.readers + 16))
        if args.tree is not None:
            env["PYTHONPATH"] = str(args.tree)
            soak.REPO = args.tree  # (the soak's server runs from its module's REPO)
        self.tree = args.tree or REPO
        self.server = Server(workdir / "data", workdir / "server.log", env)
        self.figures = Figures(
            readers=args.readers,
            protocol="HTTP/2" if args.http2 else "HTTP/1.1",
            output_bytes=args.output_bytes,
        )
        self.agents: list[trio.Process] = []
        self.readers: list[StalledReader] = []
        self.latencies: list[float] = []
        self.timeline: list[tuple[float, float]] = []
        self.gate_at = 0.0

    def rss_mib(self) -> float:
        assert self.server.proc is not None
        return proc_stats(self.server.proc.pid).rss_kib / 1024

    async def start_agents(self, api: Api) -> None:
        scripts = self.workdir / "scripts"
        scripts.mkdir()
        (scripts / "loud.sh").write_text(LOUD_SCRIPT)
        gate = scripts / "go"
        allow = (
            f"\n[[allow]]\npattern = '^loud$'\n"
            f"run = '/bin/sh {scripts}/loud.sh {gate} {self.args.output_bytes}'\n"
            "\n[[allow]]\npattern = '^quiet$'\nrun = '/bin/sh -c \"sleep 2; echo quiet\"'\n"
        )
        for node in ("loud", "quiet"):
            home = self.workdir / "agents" / node
            self.agents.append(await start_agent(api, self.server, node, home, allow, self.tree))
        while True:
            states = await api.json("GET", f"{ORG}/pushy/node_states")
            if sum(1 for s in states if s["status"] == "online") == 2:
                return
            await trio.sleep(0.1)

    async def principals(self, api: Api) -> list[tuple[str, Any]]:
        """Clients to sign the readers' requests with (``READERS_PER_PRINCIPAL`` each)."""
        count = -(-self.args.readers // READERS_PER_PRINCIPAL)
        out = []
        for i in range(count):
            name = f"reader{i}"
            r = await api.request("POST", f"{ORG}/clients", {"name": name, "create_key": True})
            if r.status_code != 201:
                raise RuntimeError(f"cannot create client {name}: {r.status_code} {r.text}")
            key = chef_auth.load_private_key(r.json()["chef_key"]["private_key"].encode())
            out.append((name, key))
        return out

    async def monitor(self, done: trio.Event) -> None:
        """``GET /pushy/_status`` every 50 ms; notes each answer's latency and the RSS."""
        ctx = ssl.create_default_context(cafile=str(self.server.data_dir / "tls" / "ca.pem"))
        ctx.set_alpn_protocols(["http/1.1"])
        stream = trio.SSLStream(
            await trio.open_tcp_stream("127.0.0.1", self.server.api_port),
            ctx,
            server_hostname="127.0.0.1",
        )
        req = f"GET /pushy/_status HTTP/1.1\r\nHost: 127.0.0.1:{self.server.api_port}\r\n\r\n"
        buf = b""
        while not done.is_set():
            t0 = time.perf_counter()
            await stream.send_all(req.encode())
            while b"\r\n\r\n" not in buf:
                buf += await stream.receive_some(65536)
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            while len(buf) < length:
                buf += await stream.receive_some(65536)
            buf = buf[length:]
            self.latencies.append(time.perf_counter() - t0)
            self.timeline.append((t0 - self.gate_at, self.latencies[-1]))
            self.figures.rss_peak_mib = max(self.figures.rss_peak_mib, self.rss_mib())
            await trio.sleep(0.05)
        await stream.aclose()

    async def run(self) -> Figures:
        f = self.figures
        await self.server.start()
        async with http_client(self.server) as http:
            api = Api(self.server, http)
            await self.start_agents(api)
            users = await self.principals(api)
            r = await api.request(
                "POST", f"{ORG}/pushy/jobs", {"command": "loud", "nodes": ["loud"],
                                              "capture_output": True}
            )  # fmt: skip
            loud = r.json()["id"]
            f.rss_before_mib = self.rss_mib()
            ctx = ssl.create_default_context(cafile=str(self.server.data_dir / "tls" / "ca.pem"))
            ctx.set_alpn_protocols(["h2"] if self.args.http2 else ["http/1.1"])
            path = f"{ORG}/pushy/job_status_feed/{loud}"
            for i in range(self.args.readers):
                name, key = users[i // READERS_PER_PRINCIPAL]
                headers = feed_headers(path, name, key, self.server.api_port)
                self.readers.append(
                    await StalledReader.open(self.server.api_port, ctx, headers, path)
                )
            while True:  # every reader's request is in
                status = await api.json("GET", "/pushy/_status")
                if status["feeds"]["subscribers"] >= self.args.readers:
                    break
                await trio.sleep(0.1)
            f.rss_attached_mib = f.rss_peak_mib = self.rss_mib()

            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.monitor, done)
                t0 = time.perf_counter()
                r = await api.request(
                    "POST", f"{ORG}/pushy/jobs", {"command": "quiet", "nodes": ["quiet"]}
                )
                quiet = r.json()["id"]
                self.gate_at = time.perf_counter()
                (self.workdir / "scripts" / "go").touch()
                for job in (loud, quiet):
                    doc = await wait_job(api, job)
                    if job == loud:
                        f.loud_job = doc["status"]
                    else:
                        f.quiet_job = doc["status"]
                f.jobs_ms = (time.perf_counter() - t0) * 1000
                await trio.sleep(1.0)  # the monitor sees the time after the jobs too
                done.set()
            f.rss_after_mib = self.rss_mib()
            status = await api.json("GET", "/pushy/_status")
            f.lagged = int(status["feeds"].get("lagged", -1))

        await trio.sleep(self.args.hold)
        # SIGTERM while the readers still hold their connections, reading nothing
        assert self.server.proc is not None
        t0 = time.perf_counter()
        self.server.proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_WAIT):
            f.stop_status = await self.server.proc.wait()
        f.stop_s = time.perf_counter() - t0
        if f.stop_status is None:
            self.server.proc.kill()
            await self.server.proc.wait()
        for reader in self.readers:
            reader.abort()
        for proc in self.agents:
            proc.send_signal(signal.SIGTERM)
        for proc in self.agents:
            await proc.wait()

        log = self.server.log_file.read_text(errors="replace")
        f.dropped_lines = [
            line
            for line in log.splitlines()
            if ("stalled" in line or "marking offline" in line or "outbox full" in line)
            and ("node default/loud" in line or "node default/quiet" in line)
        ]
        f.agents_reconnected = sum(
            max(0, log.count(f"node default/{n}: online (incarnation") - 1)
            for n in ("loud", "quiet")
        )
        ordered = sorted(self.latencies)
        if ordered:
            f.status_answers = len(ordered)
            f.status_max_ms = ordered[-1] * 1000
            f.status_p99_ms = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000
        return f


def report(f: Figures) -> None:
    emit(f"$ {command_line()}")
    emit(
        f"  stalled readers        {f.readers} ({f.protocol}) on one job, "
        f"{f.output_bytes} bytes of output"
    )
    emit(
        f"  server RSS             {f.rss_before_mib:.0f} MiB before, {f.rss_attached_mib:.0f} "
        f"with the readers attached, peak {f.rss_peak_mib:.0f}, {f.rss_after_mib:.0f} after"
    )
    emit(
        f"  _status every 50 ms    {f.status_answers} answers, p99 {f.status_p99_ms:.0f} ms, "
        f"slowest {f.status_max_ms:.0f} ms"
    )
    emit(f"  jobs                   loud {f.loud_job}, quiet {f.quiet_job} in {f.jobs_ms:.0f} ms")
    emit(f"  readers cut (lagged)   {f.lagged}")
    emit(
        f"  agents                 {f.agents_reconnected} reconnect(s), "
        f"{len(f.dropped_lines)} drop(s){': ' + f.dropped_lines[0] if f.dropped_lines else ''}"
    )
    emit(f"  SIGTERM                exit {f.stop_status} after {f.stop_s:.1f} s")
    emit(f"  {'OK' if f.ok else 'FAILED'}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readers", type=int, default=1000, help="stalled feed readers")
    p.add_argument("--output-bytes", type=int, default=1_048_576, help="the loud job's output")
    p.add_argument("--http2", action="store_true", help="the readers speak HTTP/2")
    p.add_argument(
        "--hold", type=float, default=0.0, help="seconds to wait before the SIGTERM (to look)"
    )
    p.add_argument("--tree", type=Path, help="run the server and agents from this source tree")
    p.add_argument("--baseline", action="store_true", help="no feeds.* environment")
    p.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    return p


async def bench(args: argparse.Namespace) -> Figures:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pushy-stalled-"))
    workdir.mkdir(parents=True, exist_ok=True)
    b = Bench(args, workdir)
    try:
        return await b.run()
    finally:
        if b.server.proc is not None and b.server.proc.returncode is None:
            b.server.proc.kill()
            await b.server.proc.wait()
        for proc in b.agents:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    figures = trio.run(bench, args)
    report(figures)
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
