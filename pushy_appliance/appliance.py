"""``serve()``: the whole appliance under one root nursery.

Start-up order: open the store and recover; bootstrap the data directory; start the engines;
bind the node listener; bind the HTTP API; write ``run/server.json``; report ready.

Shutdown (``stop`` set, e.g. by SIGTERM): the HTTP server stops accepting and drains in-flight
requests for up to ``DRAIN_SECONDS``; agents are told the server is going away (close code
1001); open feeds end at once (their clients resume after the restart); a connection still
open when the drain deadline passes (a client that stopped reading: hypercorn shields its
socket writes from cancellation) is shut down at the socket; in a PostgreSQL cluster the
appliance gives its job leases back (``Coordinator.leave``: the others take its jobs over at
once); the store is flushed under a
shielded, bounded cancel scope; ``run/server.json`` is removed. Cancellation of ``serve()``
itself is the hard stop used by tests: the store still
flushes what it had acknowledged (it fsyncs before acknowledging, so nothing acknowledged is
lost either way).

Why one module of about 600 lines: it is the composition root (every engine built and
started under one nursery, then the ordered shutdown); its parts are the wiring itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from . import __version__, chef_auth, fsutil, tls
from .audit.model import AuditModel
from .audit.recorder import AuditRecorder
from .audit.retention import AuditRetention
from .auth import Authenticator
from .bootstrap import bootstrap, write_credentials
from .cluster import Coordinator, LogHolds, Solo, open_coordinator
from .config import AuditConfig, ServerConfig, WebhooksConfig, parse_host_port
from .config_files import resolve_data_dir
from .db import Database
from .errors import ConfigError, DataDirBusyError, StoreError
from .feeds import Feeds
from .http import asgi_app
from .hub import Hub
from .jobs.model import DEFAULT_HISTORY_CACHE, JobsModel
from .jobs.retention import Retention
from .jobs.runner import JobRunner
from .lockfile import exclusive_lock
from .model import IdentityModel
from .nodes.inventory import Inventory
from .nodes.link import NodeLink
from .nodes.model import NodeModel
from .nodes.registry import CLOSE_GOING_AWAY, NodeRegistry
from .nodesock import serve_nodes
from .replay import ReplayGuard
from .services import Services
from .store import Store, open_postgres_store, open_store
from .webhooks.engine import WebhookEngine
from .webhooks.model import WebhooksModel
from .websession import WebSessions

__all__ = ["DRAIN_SECONDS", "ServerInfo", "compact_store", "lock_data_dir", "new_database", "serve"]

log = logging.getLogger(__name__)

DRAIN_SECONDS = 10.0
FEED_END_SECONDS = 1.0
"""Seconds the feeds ended at shutdown have to send their last bytes before the connections
of those still open are shut down."""
DRAIN_MARGIN = 0.5
"""Seconds past ``DRAIN_SECONDS`` (when hypercorn cancels its connections) after which the
connections it still holds are shut down at the socket."""
LISTEN_BACKLOG = 1024
"""Connections the kernel queues for the API's accept (hypercorn's default is 100): a burst
of connections, hostile or a restart's reconnecting clients, waits there instead of having
its SYNs dropped and retried a second later."""
SNAPSHOT_RECORDS = 100_000
"""Records replayed at start-up beyond which the compactor writes a snapshot."""
COMPACT_CHECK_SECONDS = 60.0
ARCHIVE_SECONDS = 10.0
"""Seconds between two moves of closed jobs' details to the store's archive."""
SHUTDOWN_SNAPSHOT_RECORDS = 10_000
"""Records a restart would replay beyond which a graceful stop writes a snapshot first."""
SHUTDOWN_SNAPSHOT_SECONDS = 20.0
GC_CHECK_SECONDS = 1.0
GC_REFREEZE_SESSIONS = 256
"""New node sessions after which the collector's view is frozen again."""
GC_FULL_SECONDS = 3600.0
"""Interval of the full collection that reclaims cycles among frozen objects."""
GC_THRESHOLDS = (50_000, 20, 10)
"""A young generation of 50,000 objects instead of 700: a fan-out allocates in bursts and
the default collected (and promoted) its live frames hundreds of times per job."""


@dataclasses.dataclass(frozen=True, slots=True)
class ServerInfo:
    """What ``serve()`` reports once it is ready (also written to ``run/server.json``)."""

    url: str
    node_url: str
    pid: int
    incarnation_id: str
    version: str
    data_dir: Path
    services: Services = dataclasses.field(repr=False, compare=False)

    def document(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "node_url": self.node_url,
            "pid": self.pid,
            "incarnation_id": self.incarnation_id,
            "version": self.version,
        }


def new_database(
    store: Store,
    output_cap: int = 1_048_576,
    history_cache_bytes: int = DEFAULT_HISTORY_CACHE,
    *,
    audit: AuditConfig | None = None,
    webhooks: WebhooksConfig | None = None,
) -> Database:
    """A database over ``store`` with every model of the appliance (the webhooks model
    after the jobs model, whose records it reads as they are applied); ``audit`` and
    ``webhooks``: their bounds (default: the configuration's defaults)."""
    audit = audit or AuditConfig()
    webhooks = webhooks or WebhooksConfig()
    jobs = JobsModel(output_cap, history_cache_bytes)
    return Database(
        store,
        {
            "identity": IdentityModel(),
            "nodes": NodeModel(),
            "jobs": jobs,
            "audit": AuditModel(audit.max_entries),
            "webhooks": WebhooksModel(
                jobs, max_pending=webhooks.max_pending, deliveries_kept=webhooks.deliveries_kept
            ),
        },
    )


@contextlib.contextmanager
def lock_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold the data directory exclusively (one server, or one offline tool, at a time).

    Raises:
        DataDirBusyError: another process holds it.
        ConfigError: the lock file cannot be created.
    """
    lock = data_dir / "run" / "lock"
    with exclusive_lock(
        lock,
        lambda: DataDirBusyError(str(data_dir)),
        lambda e: ConfigError("data_dir", None, f"cannot create {lock}: {e.strerror or e}"),
    ):
        yield


async def compact_store(data_dir: Path, store_url: str | None = None) -> int:
    """Offline compaction: replay the store, write a snapshot, drop what it covers.

    Args:
        data_dir: the data directory (its ``store``, and its lock).
        store_url: the PostgreSQL store to compact instead (its own open lock keeps a
            running appliance out).

    Returns:
        The sequence number the snapshot covers.

    Raises:
        StoreError: the store is in use or cannot be read.
    """
    if store_url is not None:
        async with open_postgres_store(store_url) as pg_store:
            return await _compact(pg_store)
    with lock_data_dir(data_dir):
        async with open_store(data_dir / "store") as store:
            return await _compact(store)


async def _compact(store: Store) -> int:
    db = new_database(store)
    db.recover()
    return await db.snapshot()


def _url_host(host: str, *, wildcard: bool = True) -> str:
    """``host`` as it goes in a URL; with ``wildcard``, an any-address as the loopback one."""
    if wildcard and host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if wildcard and host == "::":
        return "[::1]"
    if host == "":
        return "0.0.0.0"
    return f"[{host}]" if ":" in host else host


def _hypercorn_config(
    config: ServerConfig, data_dir: Path, host: str, port: int
) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.graceful_timeout = DRAIN_SECONDS
    hc.keep_alive_timeout = 75.0  # also bounds a request whose headers never end
    hc.ssl_handshake_timeout = config.limits.handshake_timeout
    hc.backlog = LISTEN_BACKLOG
    hc.accesslog = None
    hc.errorlog = logging.getLogger("pushy_appliance.http.server")
    hc.include_server_header = False
    hc.h11_max_incomplete_size = 64 * 1024
    if not config.insecure_http:
        hc.certfile = config.tls.cert or str(data_dir / "tls" / "server.pem")
        hc.keyfile = config.tls.key or str(data_dir / "tls" / "server.key")
        hc.alpn_protocols = ["h2", "http/1.1"]
    return hc


async def serve(
    config: ServerConfig,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the appliance until ``stop`` is set (graceful) or the caller cancels (hard).

    Args:
        config: the server configuration.
        stop: set it to shut down gracefully; ``None`` runs until cancelled.

    Start-up:
        ``task_status.started(ServerInfo)`` once the store is recovered, both listeners are
        bound and ``run/server.json`` is written.

    Raises:
        ConfigError, StoreError: the data directory or store cannot be used.
    """
    stop = stop if stop is not None else trio.Event()
    data_dir = resolve_data_dir(config.data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise ConfigError("data_dir", None, f"cannot create {data_dir}: {e.strerror}") from None
    host, port = parse_host_port(config.listen)
    incarnation = str(uuid.uuid4())
    if config.insecure_http:
        log.warning("serving plain HTTP (--insecure-http): for development only")

    with lock_data_dir(data_dir):
        # Start-up builds the models from the store: millions of long-lived objects that the
        # collector would walk again and again (half the start-up time with 100,000 jobs).
        # It is enabled again, over a frozen heap, once the server is ready; an in-process
        # caller (the tests) gets the collector back as it was.
        thresholds = gc.get_threshold()
        gc.disable()
        try:
            await _serve_locked(config, data_dir, host, port, incarnation, stop, task_status)
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
            gc.enable()
    log.info("stopped")


async def _serve_locked(
    config: ServerConfig,
    data_dir: Path,
    host: str,
    port: int,
    incarnation: str,
    stop: trio.Event,
    task_status: trio.TaskStatus[ServerInfo],
) -> None:
    opened = (
        open_store(data_dir / "store")
        if config.store.url is None
        # the appliances of a cluster share the database (the open lock held shared)
        else open_postgres_store(config.store.url, exclusive=False)
    )
    async with opened as store, trio.open_nursery() as root:
        db = new_database(
            store,
            config.output.max_bytes_per_channel,
            config.jobs.history_cache_bytes,
            audit=config.audit,
            webhooks=config.webhooks,
        )
        replayed = db.recover()
        log.info(
            "store recovered: %d records replayed, snapshot at %d",
            replayed,
            store.recovered.snapshot_seq,
        )
        if store.appliance_id is not None:
            log.info("cluster: appliance id %s", store.appliance_id)
        # others' records from the recovered seq on (a follower that fails stops the
        # appliance); bootstrap reads what they wrote too
        await root.start(db.follower)
        await db.barrier()
        await bootstrap(db, data_dir, config)
        started_at = trio.current_time()
        server_public_pem = _server_public_pem(config, data_dir)
        identity = db.models["identity"]
        assert isinstance(identity, IdentityModel)
        jobs_model = db.models["jobs"]
        assert isinstance(jobs_model, JobsModel)
        replay = ReplayGuard(config.auth.replay_cache) if config.auth.replay_cache else None
        auth = Authenticator(identity, replay=replay)
        registry = NodeRegistry(
            db,
            incarnation,
            interval=config.heartbeat.interval,
            offline_threshold=config.heartbeat.offline_threshold,
            outbox_size=config.limits.node_outbox,
        )
        link = NodeLink(registry)
        inventory = Inventory(db, registry, link)
        hub = Hub(buffer=config.feeds.subscriber_buffer, max_bytes=config.feeds.subscriber_bytes)

        feeds = Feeds(
            hub,
            org_retention=config.feeds.org_retention,
            max_readers=config.feeds.max_connections,
            max_readers_per_principal=config.feeds.max_per_principal,
            node_state=link.status,
            job_org=lambda job_id: entry.org if (entry := jobs_model.jobs.get(job_id)) else None,
        )
        # the org feed from every record applied (ids from the seq: the same on every appliance),
        # the job feeds of jobs other appliances drive from their records
        db.watch(lambda record: feeds.record_applied(record, db.applying_seq))
        db.watch_followed(feeds.record_followed)
        link.watch(feeds.node_changed)
        web_sessions = WebSessions(
            link_ttl=config.ui.link_ttl,
            idle_timeout=config.ui.session_idle_timeout,
            max_sessions=config.ui.max_sessions,
        )
        # open feeds re-check their readers' permission when identities or sessions change
        identity.watch(feeds.permissions_changed)
        web_sessions.watch(feeds.permissions_changed)
        coordinator = await _coordinator(config, store.appliance_id)
        runner = JobRunner(
            db,
            registry,
            link,
            feeds,
            voting_timeout=config.jobs.voting_timeout,
            reconnect_grace=config.reconnect_grace,
            late_result_timeout=config.jobs.late_result_timeout,
            max_live_jobs=config.limits.max_live_jobs,
            max_live_job_nodes=config.limits.max_live_job_nodes,
            cluster=coordinator,
        )
        if coordinator.clustered:
            holds = LogHolds(jobs_model)
            db.watch(holds.applied)
            link.attach_cluster(coordinator, holds, runner.cluster_port.drives)
        retention = Retention(db, feeds, retention_days=config.jobs.retention_days)
        recorder = AuditRecorder(
            db,
            refusals_per_minute=config.audit.refusals_per_minute,
            refusal_peers=config.audit.refusal_peers,
        )
        link.on_rehab = recorder.node_rehab
        audit_retention = AuditRetention(db, retention_days=config.audit.retention_days)

        node_scheme = "ws" if config.insecure_http else "wss"
        hc = _hypercorn_config(config, data_dir, host, port)
        node_host, node_port = _node_listen(config, host, port)
        node_ssl = None
        if hc.certfile and hc.keyfile:
            node_ssl = tls.server_ssl_context(hc.certfile, hc.keyfile)
        http_done = trio.Event()
        server_json = data_dir / "run" / "server.json"
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)
            await nursery.start(runner.run)
            await nursery.start(retention.run)
            await nursery.start(feeds.run)
            await nursery.start(hub.run)
            await nursery.start(recorder.run)
            await nursery.start(audit_retention.run)
            nursery.start_soon(_compactor, db)
            nursery.start_soon(_gc_keeper, registry)
            bound_node_port: int = await nursery.start(
                functools.partial(serve_nodes, inventory=inventory),
                config,
                auth,
                registry,
                link,
                node_host,
                node_port,
                node_ssl,
            )
            svc = Services(
                config=config,
                db=db,
                auth=auth,
                nodes=registry,
                link=link,
                inventory=inventory,
                jobs=runner,
                hub=hub,
                feeds=feeds,
                incarnation_id=incarnation,
                started_at=started_at,
                server_public_pem=server_public_pem,
                node_port=bound_node_port,
                node_scheme=node_scheme,
                web_sessions=web_sessions,
                audit=recorder,
            )
            app = asgi_app(svc)
            binds: list[str] = await nursery.start(_run_http, app, hc, stop, http_done)
            bound_port = int(binds[0].rsplit(":", 1)[1])
            # after both listeners are bound: deliveries never go to their ports locally
            webhooks = WebhookEngine(db, config.webhooks, own_ports=(bound_port, bound_node_port))
            await nursery.start(webhooks.run)
            scheme = "http" if config.insecure_http else "https"
            url = f"{scheme}://{_url_host(host)}:{bound_port}"
            node_url = f"{node_scheme}://{_url_host(host)}:{bound_node_port}"
            await nursery.start(
                functools.partial(
                    coordinator.run, runner.cluster_port, api_url=url, node_url=node_url
                )
            )
            ca_file = None if config.insecure_http else data_dir / "tls" / "ca.pem"
            write_credentials(data_dir, url, config.bootstrap.org, ca_file=ca_file)
            info = ServerInfo(url, node_url, os.getpid(), incarnation, __version__, data_dir, svc)
            fsutil.write_durably(server_json, json.dumps(info.document()).encode(), mode=0o644)
            if hc.certfile:
                log.info("server certificate fingerprint %s", _fingerprint_of(hc.certfile))
            # the URLs are what clients dial (127.0.0.1 for a wildcard); the log also says
            # what was really bound, so `serve` on 0.0.0.0 does not look local-only
            api_bound = binds[0].split("://", 1)[-1]
            node_bound = f"{_url_host(node_host, wildcard=False)}:{bound_node_port}"
            log.info("serving %s on %s (nodes %s on %s)", url, api_bound, node_url, node_bound)
            # Everything built so far (the replayed store above all) lives as long as the
            # process: keep the collector from scanning it again and again.
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            gc.enable()
            task_status.started(info)
            try:
                await stop.wait()
                log.info("shutting down: draining requests for up to %.0f s", DRAIN_SECONDS)
                registry.close_all(CLOSE_GOING_AWAY, "server going away")
                # open feeds end now (their clients resume with Last-Event-ID after the
                # restart), so a feed is not what the drain waits for
                hub.close_all()
                await _end_feeds(feeds, bound_port)
                await _drain(http_done, bound_port)
                with trio.move_on_after(SHUTDOWN_SNAPSHOT_SECONDS):
                    await recorder.flush()
                # its jobs are taken over by the others at once, not after lease_ttl
                await coordinator.leave()
                if (
                    store.statistics().records >= SHUTDOWN_SNAPSHOT_RECORDS
                    and await store.take_compactor()
                ):
                    # the next start loads a snapshot instead of replaying the log
                    with trio.move_on_after(SHUTDOWN_SNAPSHOT_SECONDS):
                        await _snapshot(db)
            finally:
                server_json.unlink(missing_ok=True)
                nursery.cancel_scope.cancel()
        root.cancel_scope.cancel()  # the follower


async def _coordinator(config: ServerConfig, appliance_id: str | None) -> Coordinator:
    """The cluster's coordinator: on a store whose log other appliances may share (it has
    an ``appliance_id``: PostgreSQL) the PostgreSQL coordinator, its tables created if
    needed; else :class:`Solo`."""
    if appliance_id is None or config.store.url is None:
        return Solo()
    return await open_coordinator(
        config.store.url, appliance_id, lease_ttl=config.cluster.lease_ttl
    )


async def _end_feeds(feeds: Feeds, port: int) -> None:
    """The feeds were ended (``Hub.close_all``): give them ``FEED_END_SECONDS`` to send their
    last bytes, then shut down the connections of those still open (their clients stopped
    reading), so they do not hold the drain for its whole deadline."""
    with trio.move_on_after(FEED_END_SECONDS):
        await feeds.wait_all_closed()
        return
    cut = _shut_down_connections(port, feeds.open_peers())
    log.info("drain: %d feed connection(s) not reading shut down", cut)


async def _drain(http_done: trio.Event, port: int) -> None:
    """Wait for the HTTP server's drain; past its deadline, shut down the connections it
    still holds (their clients stopped reading, and a shielded write waits for them)."""
    with trio.move_on_after(DRAIN_SECONDS + DRAIN_MARGIN):
        await http_done.wait()
        return
    cut = _shut_down_connections(port)
    log.warning(
        "drain: %d connection(s) still open after %.0f s shut down (clients not reading)",
        cut,
        DRAIN_SECONDS,
    )
    while True:
        with trio.move_on_after(1.0):
            await http_done.wait()
            return
        _shut_down_connections(port)


def _shut_down_connections(port: int, peers: set[tuple[str, int]] | None = None) -> int:
    """``shutdown(SHUT_RDWR)`` every connected TCP socket of this process on local ``port``
    (only those to ``peers``, when given): a write blocked on one of them fails at once.
    Returns how many there were (0 where ``/proc/self/fd`` cannot be read)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return 0
    cut = 0
    for fd in fds:
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor, too)
        with sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if sock.type != socket.SOCK_STREAM or sock.getsockname()[1] != port:
                continue
            try:
                peer = sock.getpeername()  # the listener has none
                if peers is not None and (peer[0], peer[1]) not in peers:
                    continue
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue
            cut += 1
    return cut


async def _gc_keeper(registry: NodeRegistry) -> None:
    """Freeze long-lived objects out of the collector's scans as the fleet grows.

    A node connection is thousands of long-lived objects; with the default collector every
    full collection walks all of them, which at 5,000 nodes cost more CPU than the jobs
    themselves. Each batch of new sessions is moved to the permanent generation (frozen
    objects are still freed by reference counting); once an hour everything is unfrozen and
    collected so cycles left by connections that ended are reclaimed.
    """
    frozen_at = len(registry.sessions)
    last_full = trio.current_time()
    while True:
        await trio.sleep(GC_CHECK_SECONDS)
        sessions = len(registry.sessions)
        if trio.current_time() - last_full >= GC_FULL_SECONDS:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            last_full = trio.current_time()
            frozen_at = sessions
        elif sessions - frozen_at >= GC_REFREEZE_SESSIONS:
            gc.freeze()
            frozen_at = sessions
        elif sessions < frozen_at:
            frozen_at = sessions


async def _compactor(db: Database) -> None:
    """Move closed jobs' details to the store's archive every ``ARCHIVE_SECONDS`` (memory
    holds finished jobs' index only), and snapshot whenever the records a restart would
    replay pass ``SNAPSHOT_RECORDS``, so start-up time stays bounded; the store then drops
    the segments (and archives) the snapshot made obsolete.

    On a log several appliances share, only the one holding the store's compactor lock
    snapshots (``Store.take_compactor``, tried at every check, so another appliance takes
    over within ``COMPACT_CHECK_SECONDS`` when the holder dies)."""
    next_check = trio.current_time() + COMPACT_CHECK_SECONDS
    while True:
        await trio.sleep(ARCHIVE_SECONDS)
        try:
            if db.writable:  # during an outage the store says so itself
                await db.archive()
        except StoreError as e:
            log.warning("archive: closed jobs' details stay in memory for now: %s", e)
        if trio.current_time() >= next_check:
            next_check = trio.current_time() + COMPACT_CHECK_SECONDS
            compactor = await db.store.take_compactor()
            if compactor and db.store.statistics().records >= SNAPSHOT_RECORDS:
                await _snapshot(db)


async def _snapshot(db: Database) -> None:
    """A snapshot that cannot be written (disk full…) is logged, not fatal: the log still
    holds everything, and the compactor tries again at its next check."""
    try:
        await db.snapshot()
    except StoreError as e:
        log.warning("snapshot not written (a restart replays more of the log): %s", e)


def _server_public_pem(config: ServerConfig, data_dir: Path) -> str:
    """The public key agents see in ``config/NODE``: the TLS certificate's, else pivotal's."""
    if not config.insecure_http:
        path = Path(config.tls.cert or data_dir / "tls" / "server.pem")
        try:
            key: Any = x509.load_pem_x509_certificate(path.read_bytes()).public_key()
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) else str(e)
            raise ConfigError("tls.cert", None, f"cannot read {path}: {reason}") from None
    else:
        key = chef_auth.load_private_key((data_dir / "keys" / "pivotal.pem").read_bytes())
    return chef_auth.public_key_pem(key)


def _node_listen(config: ServerConfig, host: str, port: int) -> tuple[str, int]:
    if config.node_listen is not None:
        return parse_host_port(config.node_listen, key="node_listen")
    return host, (0 if port == 0 else 10002)


def _fingerprint_of(cert_file: str) -> str:
    with open(cert_file, "rb") as f:
        return tls.fingerprint(f.read())


async def _run_http(
    app: Any,
    hc: HypercornConfig,
    stop: trio.Event,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await hypercorn_serve(app, hc, shutdown_trigger=stop.wait, task_status=task_status)
    finally:
        done.set()
