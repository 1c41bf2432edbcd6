"""The node WebSocket listener: ``/organizations/ORG/pushy/connect/NODE`` on its own port.

Node traffic is the hot path, so it is served by trio-websocket directly, not through the
ASGI stack. The upgrade request is signed like any API request (method ``GET``, the request
path); refusals are HTTP responses with the JSON bodies of ``API.md`` §1, sent before the
upgrade. After the upgrade: the agent's ``hello`` (within ``HELLO_TIMEOUT``), the server's
``welcome``, then frames both ways until either side closes.

Per connection there is a reader (this handler's task) and a writer draining the session's
bounded outbox; the heartbeat ticker and the job engine write directly when that cannot
block (see :mod:`.nodes.registry`; the connection's room probe is a
:class:`~.nodes.sendroom.SendRoom` on its TCP socket, whose send buffer is
``limits.node_send_buffer`` when set). Protocol errors are logged with the node name and the frame
dropped; three within a minute close the connection (1008). Frames over the size cap close it
with 1009 (trio-websocket enforces the cap before a frame is buffered).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from collections import deque
from typing import Any
from urllib.parse import unquote

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from . import protocol
from .errors import ApiError, AuthError, NotFoundError, ProtocolError
from .http import Services
from .http._auth import authenticate
from .nodes.link import NodeLink
from .nodes.registry import CLOSE_PROTOCOL, NodeRegistry, NodeSession
from .nodes.sendroom import SendRoom, set_send_buffer, tcp_socket

__all__ = ["HELLO_TIMEOUT", "serve_nodes"]

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
PROTOCOL_ERRORS_ALLOWED = 3
PROTOCOL_ERROR_WINDOW = 60.0

_PATH = re.compile(r"^/organizations/([^/]+)/pushy/connect/([^/]+)$")


def _reject_body(e: ApiError) -> bytes:
    return json.dumps(e.body()).encode()


class _Connection:
    """One node connection after the upgrade."""

    # Ten thousand of these stay alive at once: slots, and no error deque until an error.
    __slots__ = ("close_code", "close_reason", "errors", "link", "registry", "scope", "svc", "ws")

    def __init__(
        self, svc: Services, registry: NodeRegistry, link: NodeLink, ws: WebSocketConnection
    ) -> None:
        self.svc = svc
        self.registry = registry
        self.link = link
        self.ws = ws
        self.scope = trio.CancelScope()
        self.close_code = 1000
        self.close_reason = ""
        self.errors: deque[float] | None = None

    def request_close(self, code: int, reason: str) -> None:
        self.close_code = code
        self.close_reason = reason
        self.scope.cancel()

    def protocol_error(self, who: str, e: ProtocolError) -> None:
        now = trio.current_time()
        errors = self.errors = self.errors if self.errors is not None else deque()
        errors.append(now)
        while errors and now - errors[0] > PROTOCOL_ERROR_WINDOW:
            errors.popleft()
        log.warning("node %s: protocol error, frame dropped: %s", who, e.reason)
        if len(errors) >= PROTOCOL_ERRORS_ALLOWED:
            log.warning("node %s: %d protocol errors within a minute, closing", who, len(errors))
            self.request_close(CLOSE_PROTOCOL, "too many protocol errors")

    async def send_message(self, data: bytes) -> bool:
        try:
            await self.ws.send_message(data)
        except ConnectionClosed:
            return False
        return True

    async def run(self, org: str, node: str) -> None:
        who = f"{org}/{node}"
        max_size = self.svc.config.limits.max_frame_bytes
        hello: protocol.Hello | None = None
        with trio.move_on_after(HELLO_TIMEOUT):
            try:
                first = await self.ws.get_message()
                frame = protocol.decode(_as_bytes(first), max_size=max_size)
                if not isinstance(frame, protocol.Hello):
                    raise ProtocolError(f"first frame must be hello, got {frame.TYPE}")
                hello = frame
            except ProtocolError as e:
                log.warning("node %s: bad first frame: %s", who, e.reason)
                await self.ws.aclose(CLOSE_PROTOCOL, e.reason[:120])
                return
        if hello is None:
            log.warning("node %s: no hello within %.0f s", who, HELLO_TIMEOUT)
            await self.ws.aclose(CLOSE_PROTOCOL, "no hello")
            return
        # trio-websocket keeps its stream private; without it there is no room probe and
        # every direct write is tried (the stall timeout is the backstop)
        sock = tcp_socket(getattr(self.ws, "_stream", None))
        room = None
        if sock is not None:
            if self.svc.config.limits.node_send_buffer:
                set_send_buffer(sock, self.svc.config.limits.node_send_buffer)
            room = SendRoom.of(sock)
        session, outbox = self.registry.open_session(
            org, node, hello, self.request_close, self.send_message, room
        )
        seqs = protocol.SeqTracker()
        seqs.check(hello.seq)
        config = self.svc.config
        session.send(
            protocol.Welcome,
            server_incarnation_id=self.registry.incarnation_id,
            heartbeat_interval=config.heartbeat.interval,
            offline_threshold=config.heartbeat.offline_threshold,
            voting_timeout=config.jobs.voting_timeout,
            max_output_bytes=config.output.max_bytes_per_channel,
        )
        log.info(
            "node %s: online (incarnation %s, agent %s)",
            who,
            hello.incarnation_id[:8],
            hello.agent_version,
        )
        try:
            # one facts dict, shared by the session and the stored node state
            await self.registry.record_status(
                org, node, "online", session.facts, hello.incarnation_id
            )
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(session.run_writer, outbox)
                    await self.link.node_hello(session, hello)
                    await self._read(session, seqs, who, max_size)
                    nursery.cancel_scope.cancel()
        except* ConnectionClosed:
            pass
        finally:
            with trio.CancelScope(shield=True):
                current = self.registry.forget(session)
                if current:
                    log.info("node %s: offline (%s)", who, self.close_reason or "connection closed")
                    await self.link.node_lost(session)
                    await self.registry.record_status(org, node, "offline")
                with trio.move_on_after(2):
                    await self.ws.aclose(self.close_code, self.close_reason[:120])

    async def _read(
        self, session: NodeSession, seqs: protocol.SeqTracker, who: str, max_size: int
    ) -> None:
        link = self.link
        while True:
            data = await self.ws.get_message()
            session.last_received = trio.current_time()
            try:
                frame = protocol.decode(_as_bytes(data), max_size=max_size)
            except ProtocolError as e:
                self.protocol_error(who, e)
                continue
            if not seqs.check(frame.seq):
                log.warning(
                    "node %s: %s frame with seq %d after %d dropped",
                    who,
                    frame.TYPE,
                    frame.seq,
                    seqs.last,
                )
                continue
            if isinstance(frame, protocol.Heartbeat):
                continue
            if isinstance(
                frame,
                protocol.Hello
                | protocol.Welcome
                | protocol.Commit
                | protocol.Run
                | protocol.ResultAck
                | protocol.Abort
                | protocol.Reload,
            ):
                self.protocol_error(
                    who, ProtocolError(f"unexpected {frame.TYPE} frame from a node")
                )
                continue
            await link.node_frame(session, frame)


def _as_bytes(message: str | bytes) -> bytes:
    if isinstance(message, str):
        raise ProtocolError("text message; frames are binary msgpack")
    return message


async def serve_nodes(
    svc: Services,
    registry: NodeRegistry,
    link: NodeLink,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve node connections until cancelled.

    Args:
        svc: the services (configuration, identities for authentication).
        registry: where sessions are opened.
        link: what a node's messages are handed to (``hello``, job frames, the end).
        host, port: where to listen (port 0: any free port).
        ssl_context: TLS, or ``None`` for plain WebSocket.

    Start-up: ``task_status.started(port)`` with the bound port once listening.
    """

    async def handler(request: WebSocketRequest) -> None:
        path = unquote(request.path.split("?", 1)[0])
        m = _PATH.match(path.rstrip("/"))
        try:
            if m is None:
                raise NotFoundError("not found")
            org, node = m.group(1), m.group(2)
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
            who = authenticate(svc, org, method="GET", path=path, headers=headers, body=b"")
            if who.kind != "client" or who.name != node:
                raise AuthError(403, "Client and node name must match")
        except ApiError as e:
            extra = [(b"Content-Type", b"application/json")]
            extra += [(k.encode(), v.encode()) for k, v in e.headers.items()]
            await request.reject(e.status, extra_headers=extra, body=_reject_body(e))
            return
        ws = await request.accept()
        await _Connection(svc, registry, link, ws).run(org, node)

    async def guarded_handler(request: WebSocketRequest) -> None:
        # A peer that vanishes before hello (or during the upgrade) must not take the
        # listener, and every other node with it, down.
        try:
            await handler(request)
        except ConnectionClosed:
            log.info("node connection %s closed before hello", request.path[:120])

    host_arg: Any = host or None
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_websocket(
                guarded_handler,
                host_arg,
                port,
                ssl_context,
                handler_nursery=nursery,
                message_queue_size=4,
                max_message_size=svc.config.limits.max_frame_bytes,
                connect_timeout=10,
                disconnect_timeout=5,
                task_status=task_status,
            )
        )
        task_status.started(server.port)
