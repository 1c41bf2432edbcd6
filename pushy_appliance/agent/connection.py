"""The agent's connection to the appliance (``NODES.md`` §1 and §3).

One attempt: fetch ``GET /organizations/ORG/pushy/config/NODE`` signed with the node's client
key, open its ``connect_url`` with the signing headers on the upgrade request, send
``hello``, wait for ``welcome``, then run four tasks until the connection ends: a writer
draining the bounded outbox, a heartbeat sender (which skips a beat when another frame went
out within the interval), a watchdog that gives up on the server after
:data:`SERVER_LOSS_INTERVALS` intervals without a frame from it, and the reader (a
:class:`~pushy_appliance.frame_reader.FrameReader`, as on the server: protocol errors logged
and dropped, the third within a minute closes with 1008) handing job frames to the
:class:`~pushy_appliance.agent.runtime.AgentRuntime`.

Between attempts (:mod:`~pushy_appliance.agent.failover`): the next of the agent's server
URLs, round after round; within a round a switch waits up to 1 s, and each round ends with
exponential backoff with full jitter, 1 s doubling up to 60 s, reset after a connection that
lived :data:`STABLE_AFTER` seconds. When the server closes with 1001 (going away: a planned
restart), the next attempt instead waits a random splay within one heartbeat interval, and the
backoff starts over, so a restarted server is not stampeded. With one URL that is the plain
backoff. The runtime (and so the job the agent is in) is the same whichever server it reaches:
the ``hello`` names its job.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from .. import chef_auth, protocol
from ..client import Credentials, PushyClient, client_ssl
from ..errors import ClientError, ProtocolError, ServerRefusedError
from ..frame_reader import FrameReader
from ..protocol import Frame
from .failover import BACKOFF_BASE, BACKOFF_CAP, Backoff, ServerRotation
from .runtime import AgentRuntime

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "CLOSE_GOING_AWAY",
    "SERVER_LOSS_INTERVALS",
    "STABLE_AFTER",
    "Backoff",
    "ConnectSettings",
    "NodeConfig",
    "SessionEnd",
    "fetch_node_config",
    "maintain_connection",
    "open_node_socket",
    "run_session",
]

log = logging.getLogger(__name__)

STABLE_AFTER = 60.0
"""Seconds a connection must live for the backoff to start over."""

SERVER_LOSS_INTERVALS = 3
"""Heartbeat intervals without any frame after which the server is taken as lost."""

CLOSE_GOING_AWAY = 1001
"""The close code of a server that is shutting down."""

CONNECT_TIMEOUT = 10.0
"""Seconds for the config request, and for the WebSocket connection and upgrade."""

WELCOME_TIMEOUT = 10.0
"""Seconds to wait for ``welcome`` after ``hello``."""

DISCONNECT_TIMEOUT = 2.0
"""Seconds to wait for the closing handshake."""

OUTBOX_SIZE = 64
"""Frames queued for the writer before senders wait."""

_CLOSE_SERVER_LOST = 4009
_CLOSE_PROTOCOL = 1008


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectSettings:
    """Who the agent is and how it trusts the server.

    Attributes:
        server_url: the org URL, ``https://host:10003/organizations/ORG`` (the first to try).
        node_name: the node's (client's) name.
        key_file: the client's private key file (named in logs and credentials).
        key: that key, loaded.
        ca_cert: CA file to verify the server with, or ``None``.
        fingerprint: the pinned server certificate fingerprint, or ``None``.
        server_urls: every org URL to try, in order (``server_url`` first); empty:
            ``server_url`` alone.
    """

    server_url: str
    node_name: str
    key_file: str
    key: rsa.RSAPrivateKey = dataclasses.field(repr=False)
    ca_cert: str | None = None
    fingerprint: str | None = None
    server_urls: tuple[str, ...] = ()

    @property
    def urls(self) -> tuple[str, ...]:
        """The org URLs to try, in order (at least ``server_url``)."""
        return self.server_urls or (self.server_url,)

    @property
    def credentials(self) -> Credentials:
        """The settings as the signed client's credentials (for ``server_url``)."""
        return Credentials(
            self.server_url, self.node_name, self.key_file, self.ca_cert, self.fingerprint
        )

    def at(self, url: str) -> ConnectSettings:
        """The same settings speaking to ``url``."""
        return self if url == self.server_url else dataclasses.replace(self, server_url=url)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    """What the agent needs from ``config/NODE``.

    Attributes:
        connect_url: the node WebSocket URL (``wss://…/organizations/ORG/pushy/connect/NODE``).
        max_frame_bytes: the largest frame either side may send.
    """

    connect_url: str
    max_frame_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class SessionEnd:
    """How one connection attempt ended.

    Attributes:
        welcomed: whether ``welcome`` arrived.
        lived: seconds from ``welcome`` to the end (0 without one).
        close_code: the server's close code, or ``None`` when it sent none.
        reason: a few words for the log.
        heartbeat_interval: the interval ``welcome`` gave, or ``None``.
    """

    welcomed: bool
    lived: float
    close_code: int | None
    reason: str
    heartbeat_interval: float | None = None


async def fetch_node_config(client: PushyClient, node_name: str) -> NodeConfig:
    """Ask the server where and how to connect.

    Args:
        client: a signed client acting as the node's client.
        node_name: the node.

    Returns:
        The connect URL and frame limit.

    Raises:
        ServerUnreachableError, TLSUntrustedError, ServerRefusedError: as the client raises.
        ProtocolError: the answer lacks a usable ``connect_url``.
    """
    doc = await client.json("GET", client.org_path(f"pushy/config/{node_name}"))
    push_jobs = doc.get("push_jobs") if isinstance(doc, dict) else None
    url = push_jobs.get("connect_url") if isinstance(push_jobs, dict) else None
    if not isinstance(url, str) or urlsplit(url).scheme not in ("ws", "wss"):
        raise ProtocolError(f"config/{node_name}: no ws(s) connect_url in {str(doc)[:200]}")
    max_frame = doc.get("max_body_size")
    if not isinstance(max_frame, int) or isinstance(max_frame, bool) or max_frame < 1024:
        max_frame = 1_048_576
    return NodeConfig(url, max_frame)


def _close_info(exc: ConnectionClosed) -> tuple[int | None, str]:
    """The close code and a readable reason of a closed connection."""
    if exc.reason is None:
        return None, "no close reason"
    return exc.reason.code, f"{exc.reason.code} {exc.reason.reason or exc.reason.name}"


class _Link:
    """A connection's sending side: ``seq`` numbers and the bounded outbox."""

    def __init__(self, outbox: trio.MemorySendChannel[bytes]) -> None:
        self._outbox = outbox
        self._seq = protocol.Sequencer()
        self.last_sent = trio.current_time()

    def next_seq(self) -> int:
        """Take a ``seq`` for a frame sent past the outbox (the ``hello``)."""
        return self._seq.next()

    async def send(self, cls: type[Frame], **fields: Any) -> bool:
        # seq is taken before waiting for room: a memory channel serves blocked senders in
        # order, so frames still leave in seq order.
        frame = cls(seq=self._seq.next(), ts=time.time(), **fields)
        try:
            await self._outbox.send(protocol.encode(frame))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self.last_sent = trio.current_time()
        return True


class _Session:
    """The tasks of one welcomed connection."""

    def __init__(
        self,
        ws: WebSocketConnection,
        runtime: AgentRuntime,
        link: _Link,
        seqs: protocol.SeqTracker,
        interval: float,
        max_frame_bytes: int,
    ) -> None:
        self.ws = ws
        self.runtime = runtime
        self.link = link
        self.seqs = seqs
        self.interval = interval
        self.max_frame_bytes = max_frame_bytes
        self.last_received = trio.current_time()
        self.close_code: int | None = None
        self.reason = "connection closed"

    async def writer(self, outbox: trio.MemoryReceiveChannel[bytes]) -> None:
        try:
            async for data in outbox:
                await self.ws.send_message(data)
        except ConnectionClosed:
            return  # the reader sees the close too and ends the session

    async def heartbeat(self) -> None:
        while True:
            due = self.link.last_sent + self.interval
            if trio.current_time() >= due - self.interval * 0.001:
                fields = self.runtime.heartbeat_fields()
                if not await self.link.send(protocol.Heartbeat, **fields):
                    return
                continue
            await trio.sleep_until(due)

    async def watchdog(self, stop: trio.CancelScope) -> None:
        limit = SERVER_LOSS_INTERVALS * self.interval
        while True:
            deadline = self.last_received + limit
            if trio.current_time() >= deadline:
                log.warning(
                    "node %s: no frame from the server for %.1f s, reconnecting",
                    self.runtime.node_name,
                    trio.current_time() - self.last_received,
                )
                self.close_code = _CLOSE_SERVER_LOST
                self.reason = "server lost"
                stop.cancel()
                return
            await trio.sleep_until(deadline)

    async def reader(self) -> None:
        frames = FrameReader(
            self.ws.get_message,
            self,
            who=self.runtime.node_name,
            accepts=protocol.FROM_SERVER,
            seqs=self.seqs,
            max_size=self.max_frame_bytes,
        )
        try:
            async for frame in frames:
                await self.runtime.handle(frame)
        except ConnectionClosed as exc:
            self.close_code, why = _close_info(exc)
            self.reason = f"closed by the server: {why}"
            return
        self.close_code = _CLOSE_PROTOCOL
        self.reason = "too many protocol errors from the server"
        with trio.move_on_after(DISCONNECT_TIMEOUT):
            await self.ws.aclose(_CLOSE_PROTOCOL, "too many protocol errors")


async def run_session(
    ws: WebSocketConnection, runtime: AgentRuntime, *, max_frame_bytes: int = 1_048_576
) -> SessionEnd:
    """Speak the node protocol on an open WebSocket until it ends.

    Sends ``hello``, waits for ``welcome`` (:data:`WELCOME_TIMEOUT`), attaches the runtime
    (which re-sends unacknowledged results), then runs the writer, heartbeat, watchdog and
    reader until the server closes or is lost.

    Args:
        ws: the upgraded connection.
        runtime: the agent's job runtime.
        max_frame_bytes: the largest frame accepted from the server.

    Returns:
        How it ended. Never raises for the connection's own failures.

    Cancellation: the runtime is detached; the caller closes ``ws``.
    """
    tracker = protocol.SeqTracker()
    send, receive = trio.open_memory_channel[bytes](OUTBOX_SIZE)
    with send, receive:
        link = _Link(send)
        welcome = await _handshake(ws, runtime, link, tracker, max_frame_bytes)
        if isinstance(welcome, SessionEnd):
            return welcome
        welcomed_at = trio.current_time()
        log.info(
            "node %s: connected (server incarnation %s, heartbeat %.3g s)",
            runtime.node_name,
            welcome.server_incarnation_id[:8],
            welcome.heartbeat_interval,
        )
        interval = welcome.heartbeat_interval or 10.0
        session = _Session(ws, runtime, link, tracker, interval, max_frame_bytes)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.writer, receive)
                nursery.start_soon(session.watchdog, nursery.cancel_scope)
                await runtime.attach(link, welcome)
                nursery.start_soon(session.heartbeat)
                await session.reader()
                nursery.cancel_scope.cancel()
        finally:
            runtime.detach(link)
    return SessionEnd(
        True,
        trio.current_time() - welcomed_at,
        session.close_code,
        session.reason,
        interval,
    )


async def _handshake(
    ws: WebSocketConnection,
    runtime: AgentRuntime,
    link: _Link,
    tracker: protocol.SeqTracker,
    max_frame_bytes: int,
) -> protocol.Welcome | SessionEnd:
    """Send ``hello`` and read ``welcome``; a :class:`SessionEnd` when that fails."""
    try:
        hello = protocol.Hello(**runtime.hello_fields(), seq=link.next_seq(), ts=time.time())
        await ws.send_message(protocol.encode(hello))
        with trio.fail_after(WELCOME_TIMEOUT):
            message = await ws.get_message()
        welcome = protocol.decode_message(message, max_size=max_frame_bytes)
        if not isinstance(welcome, protocol.Welcome):
            raise ProtocolError(f"expected welcome, got {welcome.TYPE}")
    except ConnectionClosed as exc:
        code, why = _close_info(exc)
        return SessionEnd(False, 0.0, code, f"closed before welcome: {why}")
    except trio.TooSlowError:
        return SessionEnd(False, 0.0, None, f"no welcome within {WELCOME_TIMEOUT:g} s")
    except ProtocolError as exc:
        return SessionEnd(False, 0.0, None, f"bad welcome: {exc.reason}")
    tracker.check(welcome.seq)
    return welcome


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


@asynccontextmanager
async def open_node_socket(
    url: str,
    ssl_context: ssl.SSLContext | None,
    *,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    max_message_size: int = 1_048_576,
) -> AsyncIterator[WebSocketConnection]:
    """Open a client WebSocket whose TCP stream is closed on exit, whatever happened.

    Like ``trio_websocket.open_websocket_url``, but owning the stream: trio-websocket 0.12
    leaves the socket open after a close the server started and after a refused upgrade.

    Args:
        url: ``ws://`` or ``wss://`` URL.
        ssl_context: the TLS context for ``wss`` (``None``: the system's defaults).
        extra_headers: headers for the upgrade request (the signature).
        max_message_size: larger incoming messages close the connection with 1009.

    Yields:
        The open connection.

    Raises:
        ConnectionRejected: the server refused the upgrade (its status and body attached).
        HandshakeError: no upgrade within :data:`CONNECT_TIMEOUT`.
        OSError, trio.BrokenResourceError: the connection or TLS handshake failed.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    with trio.move_on_after(CONNECT_TIMEOUT) as connecting:
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
        if secure:
            stream = await trio.open_ssl_over_tcp_stream(
                host,
                port,
                ssl_context=ssl_context or ssl.create_default_context(),
                https_compatible=True,
            )
        else:
            stream = await trio.open_tcp_stream(host, port)
    if connecting.cancelled_caught:
        raise HandshakeError(f"no connection to {host}:{port} within {CONNECT_TIMEOUT:g} s")
    try:
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(CONNECT_TIMEOUT) as upgrading:
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    parts.netloc,
                    resource,
                    extra_headers=extra_headers,
                    message_queue_size=16,
                    max_message_size=max_message_size,
                )
            if upgrading.cancelled_caught:
                raise HandshakeError(f"no upgrade from {host}:{port} within {CONNECT_TIMEOUT:g} s")
            try:
                yield ws
            finally:
                with trio.move_on_after(DISCONNECT_TIMEOUT, shield=True):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # A refused upgrade surfaces from trio-websocket's reader task, inside the nursery;
        # like open_websocket_url, hand a lone error over as itself.
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], Exception):
            raise leaves[0] from None
        raise
    finally:
        await trio.aclose_forcefully(stream)


def _ws_ssl(url: str, verify: ssl.SSLContext | bool) -> ssl.SSLContext | None:
    if urlsplit(url).scheme != "wss":
        return None
    if isinstance(verify, ssl.SSLContext):
        return verify
    return ssl.create_default_context()


def _refused(settings: ConnectSettings, status: int, message: str) -> str | None:
    """Why the server refused the node's key (401, 403) and what to check; else ``None``."""
    if status not in (401, 403):
        return None
    node, key, org = settings.node_name, settings.key_file, settings.server_url.rsplit("/", 1)[-1]
    return (
        f"the server refused node {node} signing with key {key} ({status}: {message.strip()});"
        f" check that client {node} exists in org {org} (pushy client create {node}), that"
        f" {key} is its private key (a re-created client has a new key), and the clock"
    )


async def _attempt(runtime: AgentRuntime, settings: ConnectSettings) -> SessionEnd:
    """One connection attempt: config, upgrade, session."""
    node = settings.node_name
    try:
        creds = settings.credentials
        verify = await client_ssl(creds)
        async with httpx.AsyncClient(
            verify=verify, timeout=CONNECT_TIMEOUT, trust_env=False
        ) as http:
            node_config = await fetch_node_config(PushyClient(creds, http, settings.key), node)
        url = node_config.connect_url
        path = urlsplit(url).path
        signed = chef_auth.sign_request(
            "GET", path, b"", node, settings.key, timestamp=datetime.now(UTC)
        )
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in signed.items()]
        log.debug("node %s: connecting to %s", node, url)
        async with open_node_socket(
            url,
            _ws_ssl(url, verify),
            extra_headers=headers,
            max_message_size=node_config.max_frame_bytes,
        ) as ws:
            return await run_session(ws, runtime, max_frame_bytes=node_config.max_frame_bytes)
    except ConnectionRejected as exc:
        body = (exc.body or b"").decode("utf-8", "replace")[:200]
        why = _refused(settings, exc.status_code, body)
        return SessionEnd(False, 0.0, None, why or f"upgrade refused ({exc.status_code}): {body}")
    except ServerRefusedError as exc:
        return SessionEnd(False, 0.0, None, _refused(settings, exc.status, exc.message) or str(exc))
    except ClientError as exc:
        return SessionEnd(False, 0.0, None, str(exc))
    except ProtocolError as exc:
        return SessionEnd(False, 0.0, None, exc.reason)
    except (HandshakeError, OSError, trio.BrokenResourceError) as exc:
        cause = exc.__cause__ or exc
        return SessionEnd(False, 0.0, None, f"cannot connect: {cause!r}")
    except Exception as exc:
        # Whatever else goes wrong with one connection must not end the agent: log it in
        # full and try again after the backoff.
        log.exception("node %s: unexpected error on the connection", node)
        return SessionEnd(False, 0.0, None, f"unexpected error: {exc!r}")


async def maintain_connection(
    runtime: AgentRuntime,
    settings: ConnectSettings,
    *,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the node connected to one of its servers, reconnecting forever.

    Each attempt goes to the next of ``settings.urls``, waiting as
    :class:`~pushy_appliance.agent.failover.ServerRotation` says.

    Start-up: ``task_status.started()`` at once; the first attempt (on the first URL) follows.

    Cancellation: the current connection is closed (bounded by ``DISCONNECT_TIMEOUT``).

    Args:
        runtime: the agent's job runtime.
        settings: who to be, where the servers are and how to trust them.
        rng: the random source of the backoff.
    """
    rotation = ServerRotation(settings.urls, Backoff(rng=rng))
    task_status.started()
    attempt = 0
    while True:
        attempt += 1
        url = rotation.current
        log.info("node %s: connecting to %s (attempt %d)", settings.node_name, url, attempt)
        end = await _attempt(runtime, settings.at(url))
        if end.welcomed:
            attempt = 0
        delay = rotation.after_attempt(
            stable=end.welcomed and end.lived >= STABLE_AFTER,
            going_away=end.welcomed and end.close_code == CLOSE_GOING_AWAY,
            interval=end.heartbeat_interval or 10.0,
        )
        if rotation.current == url:
            log.warning("node %s: %s; retrying in %.2f s", settings.node_name, end.reason, delay)
        else:
            log.warning(
                "node %s: %s (%s); trying %s in %.2f s",
                settings.node_name,
                end.reason,
                url,
                rotation.current,
                delay,
            )
        await trio.sleep(delay)
