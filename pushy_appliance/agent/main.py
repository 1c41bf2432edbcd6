"""The agent's entry point: :func:`run_agent` (what ``pushy agent`` runs) wires the state
file, the runtime, SIGHUP reloads and the connection together; :func:`connect_settings`
checks the configuration first.
"""

from __future__ import annotations

import functools
import logging
import random
import signal
import socket

import trio

from .. import tls
from ..client import read_private_key, split_org_url
from ..config import AgentConfig
from ..errors import ConfigError
from .connection import ConnectSettings, maintain_connection
from .runtime import AgentRuntime
from .state import StateFile, default_state_dir
from .whitelist import Whitelist

__all__ = ["connect_settings", "run_agent"]

log = logging.getLogger(__name__)


def connect_settings(config: AgentConfig) -> ConnectSettings:
    """Check that ``config`` says who the agent is and where the server is; load the key.

    Args:
        config: the agent's configuration.

    Returns:
        The connection settings (the node name defaults to the host name).

    Raises:
        ConfigError: ``server_url`` (or ``server_urls``) or ``client_key`` is missing, a URL
            is not an org URL, the URLs name different orgs, the key cannot be read, the CA
            file cannot be loaded or the fingerprint is not one (each would otherwise fail
            every connection attempt, for ever).
    """
    urls = config.servers
    if not urls:
        raise ConfigError("config", "server_url", "required (--server URL, or server_urls)")
    if not config.client_key:
        raise ConfigError("config", "client_key", "required (--key FILE)")
    orgs: set[str] = set()
    for i, url in enumerate(urls):
        where = f"server_urls[{i}]" if config.server_urls else "server_url"
        try:
            orgs.add(split_org_url(url)[1])
        except ConfigError as e:
            raise ConfigError("config", where, e.reason) from None
    if len(orgs) > 1:
        raise ConfigError(
            "config",
            "server_urls",
            f"the URLs name different orgs ({', '.join(sorted(orgs))}); a cluster serves one",
        )
    node_name = config.node_name or socket.gethostname()
    key = read_private_key(config.client_key)
    if config.ca_cert:
        tls.client_ssl_context(ca_file=config.ca_cert)
    if config.server_fingerprint:
        tls.parse_fingerprint(config.server_fingerprint)
    return ConnectSettings(
        server_url=urls[0],
        node_name=node_name,
        key_file=config.client_key,
        key=key,
        ca_cert=config.ca_cert,
        fingerprint=config.server_fingerprint,
        server_urls=urls,
    )


async def _reload_on_sighup(
    runtime: AgentRuntime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        task_status.started()
        async for _ in signals:
            log.info(
                "node %s: SIGHUP, reloading the configuration and collecting facts",
                runtime.node_name,
            )
            await runtime.reload()


async def run_agent(
    config: AgentConfig,
    *,
    config_path: str | None = None,
    handle_sighup: bool = True,
    kill_grace: float = 5.0,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[AgentRuntime] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node agent until cancelled.

    Args:
        config: the agent's configuration.
        config_path: the file ``config`` came from; the whitelist and the facts settings are
            re-read from it on SIGHUP and on the server's ``reload`` (``None``: ``config``'s
            stay), and the facts collected again.
        handle_sighup: reload on SIGHUP (only from the main thread, and once per process).
        kill_grace: seconds between SIGTERM and SIGKILL when a job is stopped.
        rng: the random source of the reconnect backoff.

    Start-up: ``task_status.started(runtime)`` once the state file is loaded, the facts
    collected (``facts.ohai``: ohai may take a few seconds) and the first connection attempt
    is under way (not necessarily connected).

    Cancellation: a running job's process group is killed and the connection closed; the
    state file keeps any unacknowledged result for the next start.

    Raises:
        ConfigError: the configuration lacks the server or key, or the whitelist is invalid.
        AgentError: the state directory cannot be used, or another agent holds it, or the
            facts cannot be collected (``facts.ohai = "on"`` without a working ohai).
    """
    settings = connect_settings(config)
    state_file = StateFile(config.state_dir or default_state_dir())
    runtime = AgentRuntime(
        node_name=settings.node_name,
        whitelist=Whitelist.from_entries(config.allow),
        state_file=state_file,
        config_path=config_path,
        working_dir=config.working_dir,
        protected_env=config.protected_env,
        kill_grace=kill_grace,
        facts_config=config.facts,
    )
    with state_file.lock():
        log.info(
            "node %s: agent starting (incarnation %s, %d whitelist entries)",
            settings.node_name,
            runtime.incarnation_id[:8],
            len(runtime.whitelist),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            if handle_sighup:
                await nursery.start(_reload_on_sighup, runtime)
            await nursery.start(functools.partial(maintain_connection, runtime, settings, rng=rng))
            task_status.started(runtime)
