"""The node WebSocket listener: ``/organizations/ORG/pushy/connect/NODE`` on its own port.

Node traffic is the hot path, so it is served by trio-websocket directly, not through the
ASGI stack. The upgrade request is signed like any API request (method ``GET``, the request
path); refusals are HTTP responses with the JSON bodies of ``API.md`` §1, sent before the
upgrade; the session it opens is bound to the client key that verified the signature (see
:mod:`.nodes.registry`). After the upgrade: the agent's ``hello`` (within
``HELLO_TIMEOUT``), the server's ``welcome``, then frames both ways until either side closes.
A ``hello`` whose
``protocol_version`` the server does not speak (:data:`~.protocol.SUPPORTED_PROTOCOL_VERSIONS`)
is answered with a close (``CLOSE_UNSUPPORTED_VERSION``, 4010) whose reason names both
versions, before any session is opened: a node's working connection is not replaced by one
that cannot speak to it.

Per connection there is a reader (this handler's task) and a writer draining the session's
bounded outbox; the heartbeat ticker and the job engine write directly when that cannot
block (see :mod:`.nodes.registry`; the connection's room probe is a
:class:`~.nodes.sendroom.SendRoom` on its TCP socket, whose send buffer is
``limits.node_send_buffer`` when set). The reader is a
:class:`~pushy_appliance.frame_reader.FrameReader`: protocol errors are logged with the node
name and the frame dropped; three within a minute close the connection (1008). Frames over the
size cap close it with 1009 (trio-websocket enforces the cap before a frame is buffered).

Before the upgrade: a connection has ``limits.handshake_timeout`` seconds for its TLS
handshake and upgrade request, and at most ``limits.node_handshakes`` may be at that stage at
once (a new one beyond drops the oldest, see :mod:`.handshakes`), so clients that connect and
never finish cannot hold the listener's descriptors.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from datetime import UTC, datetime
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
from .auth import Authenticator
from .config import ServerConfig
from .errors import ApiError, AuthError, NotFoundError, ProtocolError
from .frame_reader import FrameReader
from .handshakes import HandshakeLimit
from .nodes.inventory import Inventory
from .nodes.link import NodeLink
from .nodes.registry import (
    CLOSE_DELETED,
    CLOSE_PROTOCOL,
    CLOSE_UNSUPPORTED_VERSION,
    NodeRegistry,
    NodeSession,
)
from .nodes.sendroom import SendRoom, set_send_buffer, tcp_socket
from .paths import normalize_path

__all__ = ["HELLO_TIMEOUT", "serve_nodes"]

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0

_PATH = re.compile(r"^/organizations/([^/]+)/pushy/connect/([^/]+)$")


def _reject_body(e: ApiError) -> bytes:
    return json.dumps(e.body()).encode()


def _unsupported(version: int) -> str:
    """The close reason for a ``hello`` of a protocol version the server does not speak (it
    fits a close frame: at most 123 bytes)."""
    spoken = ", ".join(str(v) for v in sorted(protocol.SUPPORTED_PROTOCOL_VERSIONS))
    shown = str(version) if -(10**6) < version < 10**6 else "out of range"
    return f"unsupported protocol version {shown}; this server speaks {spoken}"


class _Connection:
    """One node connection after the upgrade."""

    # Ten thousand of these stay alive at once: slots.
    __slots__ = (
        "close_code",
        "close_reason",
        "config",
        "inventory",
        "link",
        "registry",
        "scope",
        "ws",
    )

    def __init__(
        self,
        config: ServerConfig,
        registry: NodeRegistry,
        link: NodeLink,
        ws: WebSocketConnection,
        inventory: Inventory | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.link = link
        self.inventory = inventory
        self.ws = ws
        self.scope = trio.CancelScope()
        self.close_code = 1000
        self.close_reason = ""

    def request_close(self, code: int, reason: str) -> None:
        self.close_code = code
        self.close_reason = reason
        self.scope.cancel()

    async def send_message(self, data: bytes) -> bool:
        try:
            await self.ws.send_message(data)
        except ConnectionClosed:
            return False
        return True

    async def run(self, org: str, node: str, key: str) -> None:
        """Serve the connection of node ``node`` of ``org``, whose upgrade ``key`` signed."""
        who = f"{org}/{node}"
        max_size = self.config.limits.max_frame_bytes
        hello: protocol.Hello | None = None
        with trio.move_on_after(HELLO_TIMEOUT):
            try:
                first = await self.ws.get_message()
                frame = protocol.decode_message(first, max_size=max_size)
                if not isinstance(frame, protocol.Hello):
                    raise ProtocolError(f"first frame must be hello, got {frame.TYPE}")
                hello = frame
                del first, frame  # this frame lives as long as the connection: keep only hello
            except ProtocolError as e:
                log.warning("node %s: bad first frame: %s", who, e.reason)
                await self.ws.aclose(CLOSE_PROTOCOL, e.reason[:120])
                return
        if hello is None:
            log.warning("node %s: no hello within %.0f s", who, HELLO_TIMEOUT)
            await self.ws.aclose(CLOSE_PROTOCOL, "no hello")
            return
        if hello.protocol_version not in protocol.SUPPORTED_PROTOCOL_VERSIONS:
            reason = _unsupported(hello.protocol_version)
            log.warning("node %s: %s", who, reason)
            await self.ws.aclose(CLOSE_UNSUPPORTED_VERSION, reason)
            return
        gone = self.registry.identity_gone(org, node, key)
        if gone is not None:
            # the identity the upgrade was signed with went while the node said hello; no
            # checkpoint from here to open_session, which the registry's watcher then covers
            log.info("node %s: %s before its session opened, closing", who, gone)
            await self.ws.aclose(CLOSE_DELETED, gone)
            return
        # trio-websocket keeps its stream private; without it there is no room probe and
        # every direct write is tried (the stall timeout is the backstop)
        sock = tcp_socket(getattr(self.ws, "_stream", None))
        room = None
        if sock is not None:
            if self.config.limits.node_send_buffer:
                set_send_buffer(sock, self.config.limits.node_send_buffer)
            room = SendRoom.of(sock)
        session, outbox = self.registry.open_session(
            org, node, hello, self.request_close, self.send_message, room, key=key
        )
        seqs = protocol.SeqTracker()
        seqs.check(hello.seq)
        config = self.config
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
            # the facts go with the status only when they changed (the inventory's model)
            same = self.registry.model.same_facts(org, node, hello.facts)
            await self.registry.record_status(
                org, node, "online", None if same else hello.facts, hello.incarnation_id
            )
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(session.run_writer, outbox)
                    await self.link.node_hello(session, hello)
                    # the model holds the facts now; the decoded hello would be a second copy
                    # for as long as the node stays connected
                    del hello
                    reader = FrameReader(
                        self.ws.get_message,
                        session,
                        who=who,
                        accepts=protocol.FROM_AGENT,
                        seqs=seqs,
                        max_size=max_size,
                    )
                    await self._read(session, reader)
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

    async def _read(self, session: NodeSession, reader: FrameReader) -> None:
        link = self.link
        inventory = self.inventory
        async for frame in reader:
            if isinstance(frame, protocol.Facts):
                if inventory is not None:
                    await inventory.node_facts(session, frame.facts)
                continue
            try:
                await link.node_frame(session, frame)
            except ProtocolError as exc:  # an output chunk off its offsets
                reader.protocol_error(exc)
        self.request_close(CLOSE_PROTOCOL, "too many protocol errors")


async def serve_nodes(
    config: ServerConfig,
    auth: Authenticator,
    registry: NodeRegistry,
    link: NodeLink,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    *,
    inventory: Inventory | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve node connections until cancelled.

    Args:
        config: the server configuration (frame cap, heartbeat, job timings, send buffer).
        auth: authenticates the upgrade requests.
        registry: where sessions are opened.
        link: what a node's messages are handed to (``hello``, job frames, the end).
        host, port: where to listen (port 0: any free port).
        ssl_context: TLS for ``wss``, or ``None`` for plain ``ws``.
        inventory: where ``facts`` frames go (``None``: they are dropped).

    Start-up: ``task_status.started(port)`` with the bound port once listening.
    """

    async def handler(request: WebSocketRequest) -> None:
        # decoded and normalised as the API's paths are (NormalizePaths)
        path = normalize_path(unquote(request.path.split("?", 1)[0]))
        m = _PATH.match(path)
        try:
            if m is None:
                raise NotFoundError("not found")
            org, node = m.group(1), m.group(2)
            # no local for the headers: this frame lives as long as the connection
            who = auth.authenticate(
                org,
                method="GET",
                path=path,
                headers={k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers},
                body=b"",
                now=datetime.now(UTC),
            )
            if who.kind != "client" or who.name != node:
                raise AuthError(403, "Client and node name must match")
        except ApiError as e:
            extra = [(b"Content-Type", b"application/json")]
            extra += [(k.encode(), v.encode()) for k, v in e.headers.items()]
            await request.reject(e.status, extra_headers=extra, body=_reject_body(e))
            return
        ws = await request.accept()
        await _Connection(config, registry, link, ws, inventory).run(org, node, who.key)

    async def guarded_handler(request: WebSocketRequest) -> None:
        # The TLS handshake and the upgrade request are in (within connect_timeout).
        handshakes.done()
        # A peer that vanishes before hello (or during the upgrade) must not take the
        # listener, and every other node with it, down.
        try:
            await handler(request)
        except ConnectionClosed:
            log.info("node connection %s closed before hello", request.path[:120])

    host_arg: Any = host or None
    async with trio.open_nursery() as nursery:
        # at most node_handshakes connections that have not sent their upgrade request
        handshakes = HandshakeLimit(nursery, config.limits.node_handshakes, name="node listener")
        server = await nursery.start(
            lambda task_status: serve_websocket(
                guarded_handler,
                host_arg,
                port,
                ssl_context,
                handler_nursery=handshakes.nursery,
                message_queue_size=4,
                max_message_size=config.limits.max_frame_bytes,
                connect_timeout=config.limits.handshake_timeout,
                disconnect_timeout=5,
                task_status=task_status,
            )
        )
        task_status.started(server.port)
