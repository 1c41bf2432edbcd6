"""``pushy agent``: the node agent (``APPLIANCE.md`` §1 and §3)."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
from typing import Any

from ..config import AgentConfig
from ..config_files import load_agent_config
from ._common import run_trio
from ._logging import setup_logging

__all__ = ["add_parsers", "cmd_agent"]

log = logging.getLogger("pushy_appliance.cli")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``pushy agent`` (its own ``--node`` and ``--key``, not the client commands'
    credential options).

    Args:
        sub: the ``pushy`` subcommand parsers.
    """
    p = sub.add_parser(
        "agent",
        help="run the node agent",
        description="Run the node agent: keep a connection to the push-jobs server and run the "
        "whitelisted commands of jobs. Settings come from the config file, then PUSHY_* "
        "environment variables, then these flags (later ones win). SIGHUP re-reads the "
        "whitelist ([[allow]]) from --config without dropping the connection or a running "
        "job; SIGTERM or SIGINT stops the agent (exit 0). Exits 2 on a configuration error, "
        "1 when it cannot go on (another agent holds --state-dir). With several servers "
        "(--server given more than once, or server_urls: appliances of one cluster, one org) "
        "each connection attempt goes to the next URL in the list: after a lost connection "
        "or a failed connect the agent tries the next server within a second, and one full "
        "round of the list counts as one step of the backoff (1 s doubling to 60 s). A job "
        "the agent is running goes on whichever server it reaches.",
    )
    p.add_argument("--config", metavar="FILE", help="agent TOML configuration file")
    p.add_argument(
        "--server",
        metavar="URL",
        action="append",
        help="org URL of the server, https://HOST:PORT/organizations/ORG (server_url); "
        "repeat for the appliances of a cluster, tried in turn (server_urls)",
    )
    p.add_argument("--node", metavar="NAME", help="node (client) name; default: the host name")
    p.add_argument("--key", metavar="FILE", help="the node client's private key (client_key)")
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--ca-cert", metavar="FILE", help="CA certificate to trust (ca_cert)")
    trust.add_argument(
        "--fingerprint",
        metavar="SHA256",
        help="pin the server certificate, SHA256:HEX (server_fingerprint)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the agent keeps its state file (one agent per directory: a second is refused)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level (log.level; default info)",
    )
    p.set_defaults(handler=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM or SIGINT.

    Returns:
        0 after a signal.

    Raises:
        ConfigError: the configuration is incomplete or invalid.
        AgentError: the state directory cannot be used, or another agent holds it.
    """
    flags: dict[str, Any] = {
        "server_urls": tuple(args.server) if args.server else None,
        "node_name": args.node,
        "client_key": args.key,
        "ca_cert": args.ca_cert,
        "server_fingerprint": args.fingerprint,
        "state_dir": args.state_dir,
        "log.level": args.log_level,
    }
    # Imported here, not at the top: other commands start faster without the agent stack.
    from ..agent.main import connect_settings
    from ..agent.whitelist import Whitelist

    config = load_agent_config(args.config, environ=dict(os.environ), flags=flags)
    # Fail here, with a plain ConfigError and exit code 2, rather than inside the nursery.
    connect_settings(config)
    Whitelist.from_entries(config.allow)
    setup_logging(config.log.level, config.log.format)
    run_trio(_run_until_signal, config, args.config)
    return 0


async def _run_until_signal(config: AgentConfig, config_path: str | None) -> None:
    import trio

    from ..agent.main import run_agent

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(run_agent, config, config_path=config_path))
            async for signum in signals:
                log.info("received %s, stopping the agent", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()
