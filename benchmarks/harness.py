"""Shared plumbing of the benchmarks: server subprocesses, their CPU and memory, offline
provisioning of node clients, a lean keep-alive HTTP/1.1 client, and the node-simulator fleet.

Everything here drives processes on 127.0.0.0/8 only and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shlex
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pushy_appliance import chef_auth  # noqa: E402
from pushy_appliance.appliance import lock_data_dir  # noqa: E402
from pushy_appliance.model import client_record, group_record  # noqa: E402
from pushy_appliance.store import open_postgres_store, open_store  # noqa: E402

__all__ = [
    "REPO",
    "HttpConnection",
    "ProcStats",
    "ServerProcess",
    "SimFleet",
    "admin_key",
    "command_line",
    "node_names",
    "proc_stats",
    "profiled",
    "provision_clients",
    "signed_request_bytes",
    "source_address",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
ORG = "default"
SOURCES = 16
"""Source addresses 127.0.0.2 … 127.0.0.17 spread connections over many port ranges."""


def command_line() -> str:
    """The command that started this process, quoted for copy and paste."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def source_address(index: int) -> str:
    """The 127.0.0.x source address of connection ``index``."""
    return f"127.0.0.{2 + index % SOURCES}"


def node_names(count: int, prefix: str = "bench-node-") -> list[str]:
    """The names of simulated nodes 0 … ``count - 1``."""
    return [f"{prefix}{i:06d}" for i in range(count)]


# --- process statistics -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ProcStats:
    """CPU seconds (user + system) and memory of one process.

    Attributes:
        cpu_s: user plus system CPU seconds so far.
        rss_kib: resident set size now.
        hwm_kib: peak resident set size so far.
    """

    cpu_s: float
    rss_kib: int
    hwm_kib: int


def proc_stats(pid: int) -> ProcStats:
    """Read ``/proc/PID/stat`` and ``/proc/PID/status``.

    Raises:
        OSError: the process is gone.
    """
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return ProcStats(cpu, rss, hwm)


# --- the server under test --------------------------------------------------------------------


class ServerProcess:
    """``pushy serve`` as a subprocess on 127.0.0.1 with a fresh or existing data directory.

    Args:
        data_dir: the data directory.
        env: extra environment (``PUSHY_HEARTBEAT_INTERVAL`` …).
    """

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, **(env or {})}
        self.proc: trio.Process | None = None
        self.info: dict[str, Any] = {}
        self.started_s = 0.0

    @property
    def gc_file(self) -> Path | None:
        path = self.env.get("BENCH_GC_STATS")
        return Path(path) if path else None

    def gc_seconds(self) -> float:
        """Seconds the server spent in the garbage collector so far (needs ``gc_stats``)."""
        return sum(self.gc_detail()[1]) if self.gc_file is not None else float("nan")

    def gc_detail(self) -> tuple[list[int], list[float]]:
        """Collections and seconds per generation so far (zeros without ``gc_stats``)."""
        if self.gc_file is not None:
            try:
                doc = json.loads(self.gc_file.read_text())
                return list(doc["collections"]), [float(x) for x in doc["seconds"]]
            except (OSError, ValueError):
                pass
        return [0, 0, 0], [0.0, 0.0, 0.0]

    @property
    def argv(self) -> list[str]:
        head = ["-m", "pushy_appliance.cli"]
        if self.gc_file is not None:
            head = [str(REPO / "benchmarks" / "gcwrap.py")]
        elif self.env.get("BENCH_LOOP_STATS"):
            head = [str(REPO / "benchmarks" / "loopwrap.py")]
        return [
            sys.executable,
            *head,
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            "127.0.0.1:0",
        ]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    def stats(self) -> ProcStats:
        return proc_stats(self.pid)

    async def start(self, within: float = 120.0) -> float:
        """Start the server and wait for ``run/server.json``. Returns the seconds it took.

        Raises:
            RuntimeError: the server exited first.
            trio.TooSlowError: no ``run/server.json`` within ``within`` seconds.
        """
        server_json = self.data_dir / "run" / "server.json"
        server_json.unlink(missing_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir.parent / f"{self.data_dir.name}.log").open("ab")
        t0 = time.perf_counter()
        self.proc = await trio.lowlevel.open_process(
            self.argv, stdout=log, stderr=log, env=self.env, cwd=str(REPO), stdin=subprocess.DEVNULL
        )
        log.close()
        with trio.fail_after(within):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"pushy serve exited with {self.proc.returncode}")
                try:
                    info = json.loads(server_json.read_text())
                except (OSError, ValueError):
                    info = None
                if info is not None and info.get("pid") == self.proc.pid:
                    break
                await trio.sleep(0.005)
        self.started_s = time.perf_counter() - t0
        self.info = info
        return self.started_s

    async def stop(self, within: float = 60.0) -> int:
        """SIGTERM and wait (SIGKILL after ``within`` seconds). Returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(within):
                await self.proc.wait()
            if self.proc.poll() is None:
                self.proc.kill()
        return await self.proc.wait()

    @property
    def http_address(self) -> tuple[str, int]:
        host, port = str(self.info["url"]).split("://", 1)[1].rsplit(":", 1)
        return host, int(port)

    @property
    def node_url(self) -> str:
        return str(self.info["node_url"])


def admin_key(data_dir: Path) -> Any:
    """The bootstrapped admin user's private key."""
    return chef_auth.load_private_key((data_dir / "keys" / "admin.pem").read_bytes())


async def provision_clients(
    data_dir: Path, names: Sequence[str], public_pem: str, store_url: str | None = None
) -> float:
    """Create node clients sharing one public key, offline (server stopped), in big groups
    (in the PostgreSQL store at ``store_url`` when given).

    The records are those the API writes (``client.put``, then one ``group.put`` of the
    ``clients`` group with every name), appended straight to the store: creating 10,000
    clients through the API costs one fsync and one ever-growing group record each.

    Returns:
        Seconds taken.
    """
    t0 = time.perf_counter()
    opened = open_store(data_dir / "store") if store_url is None else open_postgres_store(store_url)
    with lock_data_dir(data_dir):
        async with opened as store:
            group: dict[str, Any] | None = None
            existing: set[str] = set()
            for _seq, record in store.recovered.records:
                if record.get("t") == "client.put" and record.get("org") == ORG:
                    existing.add(record["name"])
                if (
                    record.get("t") == "group.put"
                    and record.get("org") == ORG
                    and record.get("name") == "clients"
                ):
                    group = record
            snap = store.recovered.snapshot
            if snap is not None:
                raise RuntimeError("provisioning expects a store without snapshot")
            new = [n for n in names if n not in existing]
            for i in range(0, len(new), 2000):
                await store.append_many(
                    [client_record(ORG, n, public_pem) for n in new[i : i + 2000]]
                )
            if new:
                users = list(group["users"]) if group else []
                clients = sorted(set(group["clients"] if group else []) | existing | set(new))
                groups = list(group["groups"]) if group else []
                await store.append(group_record(ORG, "clients", users, clients, groups))
    return time.perf_counter() - t0


# --- a lean HTTP/1.1 keep-alive client --------------------------------------------------------


_LAST_SIGNED: dict[tuple[str, str, str, bytes], int] = {}
"""The second the same state-changing request was last signed at (``signed_request_bytes``)."""


def signed_request_bytes(
    method: str,
    path: str,
    host: str,
    user: str,
    key: Any,
    body: bytes = b"",
    *,
    query: str = "",
) -> bytes:
    """A complete, signed HTTP/1.1 request, reusable on a keep-alive connection.

    Chef signatures cover method, path, body hash, time and user (no nonce). A ``GET`` may be
    sent again and again within the server's clock-skew window; a state-changing request is
    accepted once (the server refuses a replayed signature), so the same one signed again
    here gets a timestamp a second after the last (the server accepts up to 15 minutes
    ahead), and a load that repeats one (``store``) runs against a server started with
    ``PUSHY_AUTH_REPLAY_CACHE=0``.
    """
    when = datetime.now(UTC)
    if method.upper() not in ("GET", "HEAD"):
        second = int(when.timestamp())
        digest = (user, method.upper(), path, hashlib.sha256(body).digest())
        last = _LAST_SIGNED.get(digest)
        if last is not None and last >= second:
            second = last + 1
        _LAST_SIGNED[digest] = second
        when = datetime.fromtimestamp(second, UTC)
    headers = chef_auth.sign_request(method, path, body, user, key, timestamp=when)
    headers["Accept"] = "application/json"
    headers["X-Chef-Version"] = "12.0.0"
    headers["Host"] = host
    if body:
        headers["Content-Type"] = "application/json"
    headers["Content-Length"] = str(len(body))
    target = f"{path}?{query}" if query else path
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def plain_request_bytes(method: str, path: str, host: str, body: bytes = b"") -> bytes:
    """An unsigned HTTP/1.1 request (for the bare ceilings)."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if body:
        head += "Content-Type: application/json\r\n"
    return head.encode("latin-1") + b"\r\n" + body


class HttpConnection:
    """One TLS keep-alive HTTP/1.1 connection sending pre-built requests.

    Only what the benchmarks need: responses with ``Content-Length``.
    """

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.headers: dict[str, str] = {}
        """The last response's headers (names in lower case)."""

    @classmethod
    async def connect(cls, host: str, port: int, ca_file: Path, index: int = 0) -> HttpConnection:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.set_alpn_protocols(["http/1.1"])
        tcp = await trio.open_tcp_stream(host, port, local_address=source_address(index))
        stream = trio.SSLStream(tcp, ctx, server_hostname=host, https_compatible=True)
        await stream.do_handshake()
        return cls(stream)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Send one request and read its response. Returns ``(status, body)``.

        Raises:
            ConnectionError: the server closed the connection or answered without length.
        """
        await self.stream.send_all(data)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        head = bytes(self.buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        length = int(self.headers["content-length"]) if "content-length" in self.headers else None
        if length is None:
            raise ConnectionError(f"response without Content-Length: {lines[0]}")
        total = end + 4 + length
        while len(self.buf) < total:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        body = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        return status, body

    async def aclose(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.aclose()


@dataclasses.dataclass(slots=True)
class LoadResult:
    """What :func:`http_load` measured."""

    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_each: list[float] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def http_load(
    host: str | Sequence[tuple[str, int]],
    port: int,
    ca_file: Path,
    requests: Sequence[bytes],
    *,
    seconds: float,
    expect: int,
    server_pid: int | Sequence[int],
    warmup: float = 1.0,
) -> LoadResult:
    """One keep-alive connection per entry of ``requests``, each sending its request in a
    closed loop for ``warmup`` + ``seconds``; only the last ``seconds`` are counted, and the
    CPU of the server (``server_pid``) and of this client process over that window.

    Several servers (the appliances of a cluster): ``host`` is their ``(host, port)``
    addresses (``port`` is then ignored), connection ``i`` goes to the ``i mod N``-th (its
    request, ``requests[i]``, names that one in its ``Host``), and ``server_pid`` lists their
    processes, whose CPU is added up (``LoadResult.server_cpu_each`` keeps each)."""
    result = LoadResult(0, 0, seconds, [])
    addresses = [(host, port)] if isinstance(host, str) else list(host)
    pids = [server_pid] if isinstance(server_pid, int) else list(server_pid)
    conns = [
        await HttpConnection.connect(*addresses[i % len(addresses)], ca_file, i)
        for i in range(len(requests))
    ]
    start = time.perf_counter() + warmup
    stop = start + seconds

    async def sample() -> None:
        await trio.sleep_until(trio.current_time() + warmup)
        s0, c0 = [proc_stats(p) for p in pids], proc_stats(os.getpid())
        await trio.sleep(seconds)
        s1, c1 = [proc_stats(p) for p in pids], proc_stats(os.getpid())
        result.server_cpu_each = [b.cpu_s - a.cpu_s for a, b in zip(s0, s1, strict=True)]
        result.server_cpu_s = sum(result.server_cpu_each)
        result.client_cpu_s = c1.cpu_s - c0.cpu_s

    async def client(conn: HttpConnection, data: bytes) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop:
                return
            status, _body = await conn.request(data)
            t1 = time.perf_counter()
            if t0 >= start:
                result.requests += 1
                result.latencies.append(t1 - t0)
                if status != expect:
                    result.errors += 1

    with trio.fail_after(warmup + seconds + 60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            for conn, data in zip(conns, requests, strict=True):
                nursery.start_soon(client, conn, data)
    for conn in conns:
        await conn.aclose()
    return result


# --- the node-simulator fleet -----------------------------------------------------------------


class SimFleet:
    """Node-simulator worker processes (``nodesim.py --worker``), their status aggregated.

    Args:
        node_url: ``wss://127.0.0.1:PORT``, or several (the appliances of a cluster): node
            ``i`` connects to the ``i mod N``-th, and :meth:`by_url` counts per URL.
        ca_file: the CA that signed the node listener's certificate.
        key_file: the private key every simulated node signs with.
        count: nodes in total, split evenly over ``procs`` processes.
        lifetime: seconds after which every worker exits by itself.
    """

    def __init__(
        self,
        node_url: str | Sequence[str],
        ca_file: Path,
        key_file: Path,
        count: int,
        *,
        procs: int = 1,
        lifetime: float = 600.0,
        connect_concurrency: int = 64,
    ) -> None:
        self.count = count
        self.procs: list[trio.Process] = []
        self.status: dict[int, dict[str, Any]] = {}
        self.argvs: list[list[str]] = []
        self.urls = [node_url] if isinstance(node_url, str) else list(node_url)
        url_args = [arg for url in self.urls for arg in ("--node-url", url)]
        per, extra = divmod(count, procs)
        first = 0
        for w in range(procs):
            n = per + (1 if w < extra else 0)
            self.argvs.append(
                [
                    sys.executable,
                    str(REPO / "benchmarks" / "nodesim.py"),
                    "--worker",
                    *url_args,
                    "--ca",
                    str(ca_file),
                    "--key",
                    str(key_file),
                    "--first",
                    str(first),
                    "--count",
                    str(n),
                    "--lifetime",
                    str(lifetime),
                    "--connect-concurrency",
                    str(connect_concurrency),
                ]
            )
            first += n

    def total(self, key: str) -> int:
        return sum(int(s.get(key, 0)) for s in self.status.values())

    def cpu_s(self) -> float:
        out = 0.0
        for p in self.procs:
            with contextlib.suppress(OSError):
                out += proc_stats(p.pid).cpu_s
        return out

    async def _read(self, index: int, proc: trio.Process) -> None:
        assert proc.stdout is not None
        buf = b""
        async for chunk in proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    self.status[index] = json.loads(line)

    async def wait_for(
        self, key: str, value: int, within: float, *, tolerate_losses: bool = False
    ) -> float:
        """Wait until the workers' ``key`` counters add up to ``value``. Returns seconds.

        Args:
            tolerate_losses: wait instead until every node connected or failed or lost its
                connection (``key`` then counts those that failed or were lost too): the
                caller reports the losses (:meth:`errors`) rather than give up.

        Raises:
            RuntimeError: nodes failed to connect or lost their connection meanwhile, or a
                worker process exited.
            trio.TooSlowError: not reached within ``within`` seconds.
        """
        t0 = time.perf_counter()
        with trio.fail_after(within):
            while True:
                dead = [p.returncode for p in self.procs if p.returncode is not None]
                if dead:
                    raise RuntimeError(f"a simulator worker exited ({dead}): {self.summary()}")
                gone = self.total("lost") + self.total("failed")
                if gone and not tolerate_losses:
                    raise RuntimeError(f"nodes failed: {self.summary()}: {self.errors()[:5]}")
                if self.total(key) + (gone if tolerate_losses else 0) >= value:
                    break
                await trio.sleep(0.05)
        return time.perf_counter() - t0

    def errors(self) -> list[str]:
        """The first errors each worker reported (a node that failed or was lost)."""
        return [e for s in self.status.values() for e in s.get("errors", ())]

    def by_url(self) -> list[dict[str, int]]:
        """The workers' per-URL counters (``connected``, ``lost``, ``hb_sent``, ``hb_recv``)
        added up, one dict per node URL in the order given."""
        out: list[dict[str, int]] = [{} for _ in self.urls]
        for s in self.status.values():
            for total, counters in zip(out, s.get("by_url", ()), strict=True):
                for k, v in counters.items():
                    total[k] = total.get(k, 0) + int(v)
        return out

    def summary(self) -> dict[str, int]:
        keys = ("connected", "failed", "lost", "hb_sent", "hb_recv", "commits", "runs", "aborts")
        return {k: self.total(k) for k in keys}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SimFleet]:
        """Start the workers; on exit close their stdin (they exit) and reap them."""
        async with trio.open_nursery() as nursery:
            for i, argv in enumerate(self.argvs):
                proc = await trio.lowlevel.open_process(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(REPO)
                )
                self.procs.append(proc)
                nursery.start_soon(self._read, i, proc)
            try:
                yield self
            finally:
                for proc in self.procs:
                    if proc.stdin is not None:
                        with contextlib.suppress(
                            trio.BrokenResourceError, trio.ClosedResourceError
                        ):
                            await proc.stdin.aclose()
                with trio.move_on_after(30, shield=True):
                    for proc in self.procs:
                        await proc.wait()
                for proc in self.procs:
                    if proc.returncode is None:
                        proc.kill()
                nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def profiled(pid: int, path: str | None) -> AsyncIterator[None]:
    """Sample ``pid`` with py-spy into ``path`` (collapsed stacks) while the block runs;
    nothing when ``path`` is ``None``."""
    if path is None:
        yield
        return
    proc = await trio.lowlevel.open_process(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--nonblocking",
            "-o",
            path,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await trio.sleep(0.5)
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        with trio.move_on_after(30, shield=True):
            await proc.wait()
        if proc.poll() is None:
            proc.kill()


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: …`` then ``t[0]`` is the elapsed seconds."""
    out = [0.0]
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - t0
