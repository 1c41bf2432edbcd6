"""Many agents in one process, for tests and load: ``python -m pushy_appliance.agent.multi``.

Each node named on the command line gets its own :func:`~pushy_appliance.agent.main.run_agent`
(own incarnation, state directory ``STATE_ROOT/NODE``, connection and backoff), all signing
with one key, so one process can stand in for many machines. Not part of the ``pushy``
command; SIGTERM or SIGINT stops every agent and exits 0.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from collections.abc import Sequence

import trio

from ..config import AgentConfig
from ..facts import FactsConfig
from .main import run_agent

__all__ = ["main", "run_many"]

log = logging.getLogger(__name__)


async def run_many(
    configs: Sequence[AgentConfig],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one agent per config until cancelled.

    Start-up: ``task_status.started()`` once every agent has started.

    Args:
        configs: one agent configuration per node.
    """
    async with trio.open_nursery() as nursery:
        for config in configs:
            await nursery.start(functools.partial(run_agent, config, handle_sighup=False))
        task_status.started()


async def _until_signal(configs: Sequence[AgentConfig]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_many, configs)
            log.info("%d agents started", len(configs))
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the agents.

    Args:
        argv: the arguments; default ``sys.argv[1:]``.

    Returns:
        0 after SIGTERM or SIGINT.
    """
    parser = argparse.ArgumentParser(prog="python -m pushy_appliance.agent.multi")
    parser.add_argument("--server", required=True, metavar="URL", help="org URL")
    parser.add_argument("--key", required=True, metavar="FILE", help="the nodes' shared key")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--ca-cert", metavar="FILE")
    trust.add_argument("--fingerprint", metavar="SHA256")
    parser.add_argument("--state-root", required=True, metavar="DIR")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("nodes", nargs="+", metavar="NODE")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    configs = [
        AgentConfig(
            server_url=args.server,
            node_name=node,
            client_key=args.key,
            ca_cert=args.ca_cert,
            server_fingerprint=args.fingerprint,
            state_dir=os.path.join(args.state_root, node),
            # one machine standing in for many: no ohai run (seconds) per agent
            facts=FactsConfig(ohai="off"),
        )
        for node in args.nodes
    ]
    trio.run(_until_signal, configs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
