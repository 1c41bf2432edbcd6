"""Node simulator: thousands of protocol-speaking nodes in one process (or a few).

Each simulated node opens a real TCP connection from one of several 127.0.0.x source
addresses, does the TLS handshake, signs its WebSocket upgrade (Chef protocol 1.3, RSA, one
signature per connection), sends ``hello`` (with the default fact set in ohai's names and
formats, as ``bench_search.node_facts`` makes them: a mix of platforms, tags, roles and
environments), and then heartbeats at the interval the server's
``welcome`` gives (with a random phase). It answers ``commit`` with ``ack_commit``, ``run`` with
``ack_run`` and a ``result`` (exit 0), and ``abort`` with ``aborted``. For a job that captures
output, the ``result`` follows one ``output`` line on stdout, one of three texts by node index
(so a job's output falls in three groups, as on a fleet of three kernel versions).

The client side is wsproto over ``trio.SSLStream`` with one reader task and one heartbeat
task per node: the same wire traffic as the agent, at a fraction of the CPU, so that on a small
machine the simulator leaves as much CPU as possible to the server it measures. Incoming
frames are read with plain msgpack (the server's frames are not re-validated here).

Standalone::

    python3 benchmarks/nodesim.py --node-url wss://127.0.0.1:PORT --ca DATA/tls/ca.pem \\
        --key node.pem --count 1000 --procs 2 --lifetime 120

``--node-url`` given several times (the appliances of a cluster, or several bare servers)
spreads the nodes: node ``i`` connects to the ``i mod N``-th URL, and the status lines count
per URL too (``by_url``). It prints one JSON status line per second (totals of all workers)
and exits after ``--lifetime``
seconds or when its standard input closes. The nodes' clients must exist with the public key
of ``--key`` (``run.py`` provisions them). ``--worker`` is the per-process mode the fleet in
``harness.py`` uses.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import ssl
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgpack
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import node_facts
from harness import ORG, SimFleet, node_names, source_address

from pushy_appliance import chef_auth, protocol

COUNTERS = ("connected", "failed", "lost", "hb_sent", "hb_recv", "commits", "runs", "aborts")
URL_COUNTERS = ("connected", "lost", "hb_sent", "hb_recv")
"""The counters kept per node URL as well (``by_url`` in the status line)."""


class Worker:
    """The nodes of one process and their counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.addresses = []
        for node_url in args.node_url:
            url = urlsplit(node_url)
            self.addresses.append((url.hostname or "127.0.0.1", url.port or 443))
        self.key = chef_auth.load_private_key(Path(args.key).read_bytes())
        self.ssl = ssl.create_default_context(cafile=args.ca)
        self.first: int = args.first
        self.count: int = args.count
        self.names = node_names(self.first + self.count)[self.first :]
        self.connect_limit = trio.Semaphore(args.connect_concurrency)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.by_url = [dict.fromkeys(URL_COUNTERS, 0) for _ in self.addresses]
        self.errors: list[str] = []

    def status_line(self) -> bytes:
        doc: dict[str, Any] = {"t": time.time(), **self.counters, "by_url": self.by_url}
        if self.errors:
            doc["errors"] = self.errors[:5]
        return json.dumps(doc).encode() + b"\n"

    async def run(self, lifetime: float) -> None:
        """Run every node until ``lifetime`` passes or stdin closes."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_stdin, nursery.cancel_scope)
            nursery.start_soon(self._report)
            for i, name in enumerate(self.names):
                nursery.start_soon(_Node(self, name, self.first + i).run)
            await trio.sleep(lifetime)
            nursery.cancel_scope.cancel()
        sys.stdout.buffer.write(self.status_line())
        sys.stdout.buffer.flush()

    async def _watch_stdin(self, scope: trio.CancelScope) -> None:
        stdin = trio.lowlevel.FdStream(0)
        while await stdin.receive_some(4096):
            pass
        scope.cancel()

    async def _report(self) -> None:
        frozen = False
        while True:
            done = self.counters["connected"] + self.counters["failed"]
            if not frozen and done >= self.count:
                # The simulator's own collector would otherwise scan every connection's
                # objects again and again and slow the answers the server is waiting for.
                gc.collect()
                gc.freeze()
                frozen = True
            sys.stdout.buffer.write(self.status_line())
            sys.stdout.buffer.flush()
            await trio.sleep(0.5)


class _Node:
    """One simulated node: a TLS WebSocket, a reader and a heartbeat task."""

    def __init__(self, worker: Worker, name: str, index: int) -> None:
        self.w = worker
        self.name = name
        self.index = index
        self.host, self.port = worker.addresses[index % len(worker.addresses)]
        self.url_counters = worker.by_url[index % len(worker.addresses)]
        # the default fact set with ohai's names and formats, as a real agent's hello has
        self.facts = {**node_facts(index, random.Random(index)), "hostname": name}
        self.path = f"/organizations/{ORG}/pushy/connect/{name}"
        self.seq = 0
        self.job: str | None = None
        self.job_state = "idle"
        self.capture = False
        self.interval = 10.0
        self.welcomed = False
        self.stream: trio.SSLStream[trio.SocketStream] | None = None
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.send_lock = trio.StrictFIFOLock()
        self.partial = bytearray()

    async def run(self) -> None:
        c = self.w.counters
        try:
            async with self.w.connect_limit:
                await self._connect()
        except (OSError, trio.BrokenResourceError, ConnectionError, LocalProtocolError) as e:
            c["failed"] += 1
            self.w.errors.append(f"{self.name}: connect: {e!r}")
            return
        c["connected"] += 1
        u = self.url_counters
        u["connected"] += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeats)
                await self._read()
                nursery.cancel_scope.cancel()
        except* (
            OSError,
            trio.BrokenResourceError,
            ConnectionError,
            # a heartbeat sent after the server's close frame arrived: the node is lost too
            LocalProtocolError,
        ) as group:
            self.w.errors.append(f"{self.name}: {group.exceptions[0]!r}")
        c["lost"] += 1
        c["connected"] -= 1
        u["lost"] += 1
        u["connected"] -= 1

    async def _connect(self) -> None:
        w = self.w
        host, port = self.host, self.port
        tcp = await trio.open_tcp_stream(host, port, local_address=source_address(self.index))
        self.stream = trio.SSLStream(tcp, w.ssl, server_hostname=host, https_compatible=True)
        await self.stream.do_handshake()
        signed = chef_auth.sign_request(
            "GET", self.path, b"", self.name, w.key, timestamp=datetime.now(UTC)
        )
        headers = [(k.encode(), v.encode()) for k, v in signed.items()]
        await self.stream.send_all(
            self.ws.send(Request(host=f"{host}:{port}", target=self.path, extra_headers=headers))
        )
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("closed during the upgrade")
            self.ws.receive_data(bytes(data))
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    break
                if isinstance(event, RejectConnection | RejectData):
                    raise ConnectionError(f"upgrade rejected: {event!r}")
            else:
                continue
            break
        hello = protocol.Hello(
            seq=self._next_seq(),
            ts=time.time(),
            incarnation_id=f"{self.name}-{random.getrandbits(64):016x}",
            protocol_version=1,
            agent_version="nodesim",
            job_id=None,
            job_state="idle",
            pending_result=None,
            facts=self.facts,
        )
        await self.stream.send_all(self.ws.send(BytesMessage(data=protocol.encode(hello))))
        while not self.welcomed:
            await self._pump()

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def _send(self, cls: type[Any], **fields: Any) -> None:
        assert self.stream is not None
        async with self.send_lock:
            frame = cls(seq=self._next_seq(), ts=time.time(), **fields)
            await self.stream.send_all(self.ws.send(BytesMessage(data=protocol.encode(frame))))

    async def _heartbeats(self) -> None:
        await trio.sleep(random.uniform(0, self.interval))
        while True:
            await self._send(
                protocol.Heartbeat,
                job_id=self.job,
                job_state=self.job_state if self.job is not None else "idle",
            )
            self.w.counters["hb_sent"] += 1
            self.url_counters["hb_sent"] += 1
            await trio.sleep(self.interval)

    async def _read(self) -> None:
        assert self.stream is not None
        while True:
            await self._pump()

    async def _pump(self) -> None:
        """Receive one chunk and handle every event in it."""
        assert self.stream is not None
        data = await self.stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.ws.receive_data(bytes(data))
        for event in self.ws.events():
            if isinstance(event, BytesMessage):
                self.partial += event.data
                if event.message_finished:
                    message, self.partial = bytes(self.partial), bytearray()
                    await self._frame(msgpack.unpackb(message, raw=False))
            elif isinstance(event, Ping):
                async with self.send_lock:
                    await self.stream.send_all(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                raise ConnectionError(f"server closed with {event.code} {event.reason}")
            elif isinstance(event, TextMessage):
                raise ConnectionError("text message from the server")

    async def _frame(self, f: dict[str, Any]) -> None:
        kind = f.get("type")
        c = self.w.counters
        if kind == "heartbeat":
            c["hb_recv"] += 1
            self.url_counters["hb_recv"] += 1
        elif kind == "welcome":
            self.interval = float(f["heartbeat_interval"])
            self.welcomed = True
        elif kind == "commit":
            c["commits"] += 1
            self.job, self.job_state = f["job_id"], "committed"
            self.capture = bool(f.get("capture"))
            await self._send(protocol.AckCommit, job_id=f["job_id"])
        elif kind == "run":
            c["runs"] += 1
            self.job_state = "running"
            await self._send(protocol.AckRun, job_id=f["job_id"])
            out = b""
            if self.capture:
                out = f"Linux sim 6.1.{self.index % 3} x86_64 GNU/Linux\n".encode()
                await self._send(
                    protocol.Output, job_id=f["job_id"], channel="stdout", data=out, offset=0
                )
            await self._send(
                protocol.Result,
                job_id=f["job_id"],
                status="succeeded",
                exit_code=0,
                stdout_bytes=len(out),
                stderr_bytes=0,
                truncated=False,
                duration_s=0.0,
            )
        elif kind == "result_ack":
            self.job, self.job_state = None, "idle"
        elif kind == "abort":
            c["aborts"] += 1
            job, self.job, self.job_state = self.job, None, "idle"
            await self._send(protocol.Aborted, job_id=f.get("job_id") or job)


async def _fleet_main(args: argparse.Namespace) -> None:
    fleet = SimFleet(
        args.node_url,
        Path(args.ca),
        Path(args.key),
        args.count,
        procs=args.procs,
        lifetime=args.lifetime,
        connect_concurrency=args.connect_concurrency,
    )
    async with fleet.running():
        deadline = trio.current_time() + args.lifetime
        while trio.current_time() < deadline:
            await trio.sleep(1)
            print(json.dumps({"t": time.time(), **fleet.summary()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--node-url",
        required=True,
        action="append",
        help="wss://127.0.0.1:PORT (several: node i connects to the (i mod N)-th)",
    )
    parser.add_argument("--ca", required=True, help="CA file for the node listener")
    parser.add_argument("--key", required=True, help="private key of every simulated node")
    parser.add_argument("--count", type=int, default=100, help="nodes (default 100)")
    parser.add_argument("--first", type=int, default=0, help="index of the first node")
    parser.add_argument("--procs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--lifetime", type=float, default=120.0, help="seconds, then exit")
    parser.add_argument("--connect-concurrency", type=int, default=64)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        gc.set_threshold(20_000, 20, 100)
        trio.run(Worker(args).run, args.lifetime)
    else:
        trio.run(_fleet_main, args)


if __name__ == "__main__":
    main()
