"""The bare-stack ceiling for node traffic: trio-websocket over TLS and nothing else.

It accepts the connections the node simulator makes (same path, same TLS certificate, no
signature check), answers ``hello`` with a ``welcome`` carrying the heartbeat interval, reads
and unpacks every frame, sends every connection a heartbeat each interval from one ticker task,
and on request broadcasts one ``commit`` frame and counts one ``ack_commit`` per node (the
ceiling of the issue) or plays a job's frames without its bookkeeping (``commit``/``ack_commit``,
``run``/``ack_run`` + ``result``, ``result_ack``: the same wire work as the product). Any
server on this stack pays at least this much; the product's figures are divided by these.

Control (used by ``run.py``): JSON status lines on standard output (the first is
``{"event": "listening", "port": …}``); a ``broadcast N`` line on standard input sends the
frame to the first N connections and answers ``{"event": "broadcast", "nodes": N,
"seconds": …}`` once every reply is in; ``job N`` answers ``{"event": "job", …}``. It exits
when standard input closes or after ``--lifetime`` seconds.

Run: ``python3 benchmarks/bare_ws.py --cert DATA/tls/server.pem --key DATA/tls/server.key``
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import ssl
import sys
import time
from typing import Any

import msgpack
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

MAX_FRAME = 1_048_576


class BareServer:
    """Connections, the heartbeat ticker and the broadcast-and-collect."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.conns: list[WebSocketConnection] = []
        self.replies = 0
        self.expected = 0
        self.all_replied = trio.Event()
        self.awaited = "ack_commit"
        self.seq = 0

    def frame(self, body: dict[str, Any]) -> bytes:
        self.seq += 1
        packed: bytes = msgpack.packb({**body, "seq": self.seq, "ts": time.time()})
        return packed

    async def handler(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            hello = msgpack.unpackb(await ws.get_message())
            if hello.get("type") != "hello":
                await ws.aclose(1008, "first frame must be hello")
                return
            await ws.send_message(
                self.frame(
                    {
                        "type": "welcome",
                        "server_incarnation_id": "bare",
                        "heartbeat_interval": self.interval,
                        "offline_threshold": 3,
                        "voting_timeout": 60.0,
                        "max_output_bytes": MAX_FRAME,
                    }
                )
            )
            self.conns.append(ws)
            while True:
                frame = msgpack.unpackb(await ws.get_message())
                if frame.get("type") == self.awaited and self.expected:
                    self.replies += 1
                    if self.replies >= self.expected:
                        self.all_replied.set()
        except ConnectionClosed:
            pass
        finally:
            if ws in self.conns:
                self.conns.remove(ws)

    async def ticker(self) -> None:
        deadline = trio.current_time()
        while True:
            deadline += self.interval
            await trio.sleep_until(deadline)
            data = self.frame({"type": "heartbeat", "server_incarnation_id": "bare"})
            for ws in list(self.conns):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send_message(data)

    async def _round(
        self, targets: list[WebSocketConnection], body: dict[str, Any], awaited: str
    ) -> None:
        self.replies = 0
        self.expected = len(targets)
        self.awaited = awaited
        self.all_replied = trio.Event()
        data = self.frame(body)
        for ws in targets:
            await ws.send_message(data)
        with trio.fail_after(120):
            await self.all_replied.wait()
        self.expected = 0

    async def broadcast(self, n: int) -> float:
        """Send one commit to the first ``n`` connections; seconds until every reply is in."""
        t0 = time.perf_counter()
        await self._round(self.conns[:n], _commit(), "ack_commit")
        return time.perf_counter() - t0

    async def job(self, n: int) -> float:
        """The frames of a job without any of its bookkeeping: ``commit`` to ``n`` nodes and
        every ``ack_commit``, ``run`` and every ``result``, then ``result_ack`` to each."""
        targets = self.conns[:n]
        job = "1" * 32
        t0 = time.perf_counter()
        await self._round(targets, _commit(job), "ack_commit")
        await self._round(targets, {"type": "run", "job_id": job}, "result")
        data = self.frame({"type": "result_ack", "job_id": job})
        for ws in targets:
            await ws.send_message(data)
        return time.perf_counter() - t0


async def _gc_keeper(server: BareServer) -> None:
    """The product's collector settings: big young generation, connections frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)
    frozen_at = 0
    while True:
        await trio.sleep(1)
        if len(server.conns) - frozen_at >= 256:
            gc.freeze()
            frozen_at = len(server.conns)


def _commit(job: str = "0" * 32) -> dict[str, Any]:
    return {
        "type": "commit",
        "job_id": job,
        "command": "chef-client",
        "capture": False,
        "run_timeout": 3600.0,
        "env": {},
    }


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    server = BareServer(args.interval)
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(
            lambda task_status: serve_websocket(
                server.handler,
                "127.0.0.1",
                args.port,
                ctx,
                handler_nursery=nursery,
                message_queue_size=4,
                max_message_size=MAX_FRAME,
                connect_timeout=10,
                disconnect_timeout=5,
                task_status=task_status,
            )
        )
        emit({"event": "listening", "port": listener.port})
        nursery.start_soon(server.ticker)

        async def status() -> None:
            while True:
                emit({"event": "status", "connections": len(server.conns)})
                await trio.sleep(1)

        nursery.start_soon(status)
        if args.tuned_gc:
            nursery.start_soon(_gc_keeper, server)
        with trio.move_on_after(args.lifetime):
            stdin = trio.lowlevel.FdStream(0)
            buf = b""
            while chunk := await stdin.receive_some(4096):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    words = line.split()
                    if words[:1] == [b"broadcast"]:
                        n = int(words[1])
                        seconds = await server.broadcast(n)
                        emit({"event": "broadcast", "nodes": n, "seconds": seconds})
                    elif words[:1] == [b"job"]:
                        n = int(words[1])
                        seconds = await server.job(n)
                        emit({"event": "job", "nodes": n, "seconds": seconds})
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat seconds")
    parser.add_argument("--lifetime", type=float, default=600.0)
    parser.add_argument(
        "--tuned-gc", action="store_true", help="the collector settings the appliance uses"
    )
    trio.run(main, parser.parse_args())
