"""Typed, frozen configuration for the server and the agent.

Loaded once, from three sources in order, later ones winning:

1. a TOML file (``--config FILE``);
2. ``PUSHY_*`` environment variables: section and key upper-cased and joined by ``_``
   (``heartbeat.interval`` → ``PUSHY_HEARTBEAT_INTERVAL``);
3. command-line flags, given as a mapping of dotted keys.

The agent's facts are the one exception to the generic loader: see ``config_agent``.

Unknown keys in the file are an error naming them. Environment variables that start with
``PUSHY_`` but name no key are ignored (the CLI uses ``PUSHY_SERVER``, ``PUSHY_USER`` and
friends), except within a known section prefix where they are almost certainly typos
(``PUSHY_HEARTBEAT_INTERVL``): those are an error too.

This module is pure: it parses what it is handed (the file's bytes, the environment as a
mapping, the flags) and reads no file, environment or clock itself. It holds the server's
configuration and its checks, and re-exports the rest: the loader, ``parse_toml``,
``parse_host_port`` and ``LogConfig`` from ``config_base``, the agent's configuration from
``config_agent``. ``config_files`` reads the file
(:func:`~pushy_appliance.config_files.load_server_config`,
:func:`~pushy_appliance.config_files.load_agent_config`) and finds the data directory.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from .config_agent import DEFAULT_ALLOW as DEFAULT_ALLOW
from .config_agent import DEFAULT_PROTECTED_ENV, AgentConfig, AllowEntry, build_agent_config
from .config_base import LOG_LEVELS, LogConfig, load, parse_host_port, parse_toml
from .errors import ConfigError
from .urls import valid_host_name

__all__ = [
    "DEFAULT_PROTECTED_ENV",
    "AgentConfig",
    "AllowEntry",
    "AuditConfig",
    "AuthConfig",
    "ClusterConfig",
    "FeedsConfig",
    "HeartbeatConfig",
    "JobsConfig",
    "LimitsConfig",
    "LogConfig",
    "OutputConfig",
    "ServerConfig",
    "StoreConfig",
    "TLSConfig",
    "UiConfig",
    "WebhooksConfig",
    "build_agent_config",
    "build_server_config",
    "parse_host_port",
    "parse_toml",
]


@dataclasses.dataclass(frozen=True, slots=True)
class TLSConfig:
    cert: str | None = None
    """PEM certificate chain to serve; unset: the generated ``DATA/tls/server.pem``."""
    key: str | None = None
    """PEM private key for ``cert``; unset: the generated ``DATA/tls/server.key``."""


@dataclasses.dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str | None = None
    """``postgresql://…``: keep the store in that PostgreSQL database (docs/SCALE-OUT.md);
    unset: the file store in ``DATA/store``."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterConfig:
    lease_ttl: float = 15.0
    """Seconds a job's lease lasts without renewal: a job whose appliance died is driven
    again by another within ``lease_ttl * 4 / 3`` (PostgreSQL store only, docs/SCALE-OUT.md
    §4)."""


@dataclasses.dataclass(frozen=True, slots=True)
class BootstrapConfig:
    org: str = "default"
    """Name of the organization created on first start."""


@dataclasses.dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    interval: float = 10.0
    """Seconds between heartbeats, both ways (0.5 … 3600)."""
    offline_threshold: int = 3
    """Intervals without a frame after which a node is offline."""


@dataclasses.dataclass(frozen=True, slots=True)
class JobsConfig:
    voting_timeout: float = 60.0
    """Seconds a job waits for votes."""
    default_run_timeout: int = 3600
    """``run_timeout`` of a job that does not give one."""
    reconnect_grace: float | None = None
    """Seconds a running node may be away; unset: 2 × heartbeat interval + 10."""
    retention_days: float = 30.0
    """Days finished jobs are kept; 0 keeps them forever."""
    late_result_timeout: float = 30.0
    """Seconds an aborted or timed-out job waits for the results its stopped nodes owe."""
    history_cache_bytes: int = 33_554_432
    """Finished jobs' details (kept in the store's archive) held decoded in memory once read,
    counted as their msgpack size before compression (decoded they take about twice as
    much); 0 keeps none."""


@dataclasses.dataclass(frozen=True, slots=True)
class OutputConfig:
    max_bytes_per_channel: int = 1_048_576
    """Captured bytes kept per node and channel; the rest is counted, not kept."""


@dataclasses.dataclass(frozen=True, slots=True)
class FeedsConfig:
    keepalive: float = 15.0
    """Seconds of silence after which a feed sends a keep-alive comment."""
    org_retention: float = 60.0
    """Seconds the org feed keeps events for ``Last-Event-ID`` resume."""
    subscriber_buffer: int = 1024
    """Events a feed subscriber may fall behind before it is cut off with ``lagged``."""
    subscriber_bytes: int = 4_194_304
    """Bytes of events a feed subscriber may fall behind before it is cut off with ``lagged``."""
    max_connections: int = 2048
    """Feeds open at once on the server; one more is refused with 503."""
    max_per_principal: int = 64
    """Feeds one user or client may have open at once; one more is refused with 429."""


@dataclasses.dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_body_bytes: int = 1_000_000
    """Largest request body accepted."""
    max_file_bytes: int = 100_000
    """Largest decoded job ``file``."""
    max_frame_bytes: int = 1_048_576
    """Largest node WebSocket frame; larger ones close the connection (1009)."""
    max_nodes_per_job: int = 100_000
    """Most nodes one job may name (1 … 100,000)."""
    max_live_jobs: int = 1000
    """Most jobs that have not finished at once; one more is refused (503, Retry-After)."""
    max_live_job_nodes: int = 1_000_000
    """Most nodes in jobs that have not finished, together; a job that would pass it is
    refused (503, Retry-After)."""
    node_outbox: int = 256
    """Frames queued for one node before the connection is dropped as stuck."""
    node_send_buffer: int = 0
    """``SO_SNDBUF`` of each node socket in bytes; 0 keeps the OS default (autotuned)."""
    handshake_timeout: float = 10.0
    """Seconds a new connection has for its TLS handshake (both listeners) and, on the node
    listener, its upgrade request; it is closed after that."""
    node_handshakes: int = 1024
    """Node connections that may be in their handshake at once; one more drops the oldest."""


@dataclasses.dataclass(frozen=True, slots=True)
class AuthConfig:
    replay_cache: int = 100_000
    """Signatures of state-changing requests remembered to refuse their replay; when full,
    requests signed before the oldest forgotten one are refused (docs/SECURITY.md); 0 turns
    the refusal off (replays accepted, as by Chef Server)."""


@dataclasses.dataclass(frozen=True, slots=True)
class UiConfig:
    """The web dashboard's login links and sessions (``docs/DASHBOARD.md``)."""

    link_ttl: float = 60.0
    """Seconds a one-time login link (``pushy ui``) stays valid."""
    session_idle_timeout: float = 43_200.0
    """Seconds without a request after which a dashboard session ends (12 h)."""
    max_sessions: int = 1000
    """Most sessions held in memory (and most unused links); the least recently used goes."""


@dataclasses.dataclass(frozen=True, slots=True)
class AuditConfig:
    """The audit log (``docs/OPERATIONS.md``)."""

    retention_days: float = 365.0
    """Days an audit entry is kept; 0 keeps them forever (``max_entries`` still applies)."""
    max_entries: int = 1_000_000
    """Most entries held; one more drops the oldest."""
    refusals_per_minute: int = 60
    """Refused requests (401, 403) of one peer recorded per minute; the rest are counted."""
    refusal_peers: int = 10_000
    """Peers whose refusals are counted at once; the least recently refused is forgotten."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or CIDRs of proxies whose ``X-Forwarded-For`` is recorded (and counted as
    the peer); empty: the header is ignored."""


@dataclasses.dataclass(frozen=True, slots=True)
class WebhooksConfig:
    """Job notifications by webhook (``docs/OPERATIONS.md``)."""

    allow: tuple[str, ...] = ()
    """Hosts (``hooks.example.com``, ``*.example.com``) and addresses or CIDRs deliveries
    may go to; empty: any address but loopback, link-local, multicast and reserved ones."""
    allow_http_orgs: tuple[str, ...] = ()
    """Organizations whose webhooks may use ``http://`` (else ``https://`` only)."""
    ca_file: str | None = None
    """CA certificates receivers are checked against; unset: the system's."""
    max_per_org: int = 20
    """Most webhooks of one organization."""
    max_pending: int = 10_000
    """Most deliveries queued at once (all organizations); one more is dropped (counted)."""
    deliveries_kept: int = 100
    """Finished deliveries kept per webhook for ``GET …/deliveries``."""
    max_payload_bytes: int = 65_536
    """Largest delivery body; beyond, the failed nodes' names are cut."""
    workers: int = 8
    """Deliveries in flight at once."""
    per_receiver: int = 2
    """Deliveries in flight at once to one receiver (host and port)."""
    timeout: float = 10.0
    """Seconds one attempt may take (resolving, connecting, the answer's status line)."""
    retry_initial: float = 10.0
    """Seconds before the first retry; each next one waits twice as long."""
    retry_max_interval: float = 3600.0
    """Longest wait between two attempts."""
    retry_for: float = 86_400.0
    """Seconds after the event beyond which a delivery is not tried again (it fails)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``pushy serve`` needs."""

    listen: str = "0.0.0.0:10003"
    """HOST:PORT of the HTTP API."""
    node_listen: str | None = None
    """HOST:PORT of the node WebSocket listener; unset: the API's host, port 10002 (0 with 0)."""
    server_name: str | None = None
    """Host name put in URLs and the certificate; unset: the request's Host, when valid."""
    data_dir: str | None = None
    """Data directory; unset: /var/lib/pushy as root, else $XDG_DATA_HOME/pushy."""
    insecure_http: bool = False
    """Serve plain HTTP (development only)."""
    tls: TLSConfig = TLSConfig()
    store: StoreConfig = StoreConfig()
    cluster: ClusterConfig = ClusterConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    jobs: JobsConfig = JobsConfig()
    output: OutputConfig = OutputConfig()
    feeds: FeedsConfig = FeedsConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    ui: UiConfig = UiConfig()
    audit: AuditConfig = AuditConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    log: LogConfig = dataclasses.field(default_factory=LogConfig)

    @property
    def reconnect_grace(self) -> float:
        """The effective reconnect grace in seconds."""
        if self.jobs.reconnect_grace is not None:
            return self.jobs.reconnect_grace
        return 2 * self.heartbeat.interval + 10.0


def _check_server(c: ServerConfig) -> ServerConfig:
    parse_host_port(c.listen, key="listen")
    if c.server_name is not None and not valid_host_name(c.server_name):
        raise ConfigError(
            "config", "server_name", f"expected a host name or IPv4 address, got {c.server_name!r}"
        )
    if c.node_listen is not None:
        parse_host_port(c.node_listen, key="node_listen")
    if c.store.url is not None and not c.store.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "config", "store.url", "expected a postgresql:// URL (unset: the file store)"
        )
    if not c.cluster.lease_ttl > 0:
        raise ConfigError("config", "cluster.lease_ttl", "must be positive")
    if not 0.05 <= c.heartbeat.interval <= 3600:
        raise ConfigError("config", "heartbeat.interval", "must be between 0.05 and 3600")
    if c.heartbeat.offline_threshold < 1:
        raise ConfigError("config", "heartbeat.offline_threshold", "must be at least 1")
    if c.jobs.voting_timeout <= 0:
        raise ConfigError("config", "jobs.voting_timeout", "must be positive")
    if not 1 <= c.jobs.default_run_timeout <= 86_400:
        raise ConfigError("config", "jobs.default_run_timeout", "must be 1 … 86400")
    if c.jobs.retention_days < 0:
        raise ConfigError("config", "jobs.retention_days", "must be 0 or more")
    if c.limits.node_send_buffer < 0:
        raise ConfigError("config", "limits.node_send_buffer", "must be 0 or more")
    if not 0 <= c.jobs.late_result_timeout <= 86_400:
        raise ConfigError("config", "jobs.late_result_timeout", "must be 0 … 86400")
    if c.jobs.history_cache_bytes < 0:
        raise ConfigError("config", "jobs.history_cache_bytes", "must be 0 or more")
    if c.limits.max_nodes_per_job > 100_000:
        # the API's bound; a job.create record of 100,000 names of 255 characters and
        # their votes stays under the store's 64 MiB record limit
        raise ConfigError("config", "limits.max_nodes_per_job", "must be 1 … 100000")
    for key, val in (
        ("output.max_bytes_per_channel", c.output.max_bytes_per_channel),
        ("limits.max_body_bytes", c.limits.max_body_bytes),
        ("limits.max_file_bytes", c.limits.max_file_bytes),
        ("limits.max_frame_bytes", c.limits.max_frame_bytes),
        ("limits.max_nodes_per_job", c.limits.max_nodes_per_job),
        ("limits.max_live_jobs", c.limits.max_live_jobs),
        ("limits.max_live_job_nodes", c.limits.max_live_job_nodes),
        ("limits.node_outbox", c.limits.node_outbox),
        ("limits.node_handshakes", c.limits.node_handshakes),
        ("feeds.subscriber_buffer", c.feeds.subscriber_buffer),
        ("feeds.subscriber_bytes", c.feeds.subscriber_bytes),
        ("feeds.max_connections", c.feeds.max_connections),
        ("feeds.max_per_principal", c.feeds.max_per_principal),
        ("ui.max_sessions", c.ui.max_sessions),
    ):
        if val < 1:
            raise ConfigError("config", key, "must be positive")
    if c.auth.replay_cache < 0:
        raise ConfigError("config", "auth.replay_cache", "must be 0 (off) or more")
    for key, seconds in (
        ("ui.link_ttl", c.ui.link_ttl),
        ("ui.session_idle_timeout", c.ui.session_idle_timeout),
    ):
        if seconds <= 0:
            raise ConfigError("config", key, "must be positive")
    if c.limits.handshake_timeout <= 0:
        raise ConfigError("config", "limits.handshake_timeout", "must be positive")
    _check_audit(c.audit)
    _check_webhooks(c.webhooks)
    if c.log.level not in LOG_LEVELS:
        raise ConfigError("config", "log.level", "must be debug, info, warning or error")
    if c.log.format not in ("text", "json"):
        raise ConfigError("config", "log.format", "must be text or json")
    if c.bootstrap.org and not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,254}", c.bootstrap.org):
        raise ConfigError(
            "config", "bootstrap.org", f"invalid organization name {c.bootstrap.org!r}"
        )
    return c


def _check_audit(a: AuditConfig) -> None:
    if a.retention_days < 0:
        raise ConfigError("config", "audit.retention_days", "must be 0 or more")
    for key, val in (
        ("audit.max_entries", a.max_entries),
        ("audit.refusals_per_minute", a.refusals_per_minute),
        ("audit.refusal_peers", a.refusal_peers),
    ):
        if val < 1:
            raise ConfigError("config", key, "must be positive")
    for i, entry in enumerate(a.trusted_proxies):
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ConfigError(
                "config", f"audit.trusted_proxies[{i}]", f"not an address or CIDR: {entry!r}"
            ) from None


def _check_webhooks(w: WebhooksConfig) -> None:
    for i, entry in enumerate(w.allow):
        text = entry.strip()
        try:
            ipaddress.ip_network(text, strict=False)
            continue
        except ValueError:
            pass
        if not valid_host_name(text.removeprefix("*.")):
            raise ConfigError(
                "config", f"webhooks.allow[{i}]", f"not a host name, address or CIDR: {entry!r}"
            )
    for i, org in enumerate(w.allow_http_orgs):
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,254}", org):
            raise ConfigError(
                "config", f"webhooks.allow_http_orgs[{i}]", f"invalid organization name {org!r}"
            )
    for key, val in (
        ("webhooks.max_per_org", w.max_per_org),
        ("webhooks.max_pending", w.max_pending),
        ("webhooks.deliveries_kept", w.deliveries_kept),
        ("webhooks.workers", w.workers),
        ("webhooks.per_receiver", w.per_receiver),
    ):
        if val < 1:
            raise ConfigError("config", key, "must be positive")
    if w.max_payload_bytes < 4096:
        raise ConfigError("config", "webhooks.max_payload_bytes", "must be 4096 or more")
    for key, seconds in (
        ("webhooks.timeout", w.timeout),
        ("webhooks.retry_initial", w.retry_initial),
        ("webhooks.retry_max_interval", w.retry_max_interval),
    ):
        if seconds <= 0:
            raise ConfigError("config", key, "must be positive")
    if w.retry_for < 0:
        raise ConfigError("config", "webhooks.retry_for", "must be 0 or more")


def build_server_config(
    file: Mapping[str, Any] | None = None,
    *,
    source: str = "config",
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Build the server's configuration from its three sources, later ones winning.

    Args:
        file: the parsed TOML file (:func:`parse_toml`), or ``None`` for none.
        source: what errors call the file (its path).
        environ: the environment to read ``PUSHY_*`` variables from (``None``: none).
        flags: dotted keys from the command line; ``None`` values are ignored.

    Raises:
        ConfigError: naming the source and key of the first problem found.
    """
    return _check_server(load(ServerConfig, file, source, environ or {}, flags))
