"""``pushy sandbox``: the server and a few local agents in one process, to try the appliance."""

from __future__ import annotations

import argparse
import errno
import functools
import getpass
import shlex
import signal
import sys
from typing import TYPE_CHECKING

from ..config import ServerConfig
from ..config_files import sandbox_data_dir
from ..errors import ConfigError
from ._common import EXIT_OK
from ._logging import setup_logging

if TYPE_CHECKING:
    from ..sandbox import SandboxInfo

__all__ = ["add_parser", "cmd_sandbox", "sample_job_line"]

SAMPLE_COMMAND = "uname -a"
SANDBOX_SEARCH = "tags:sandbox"
"""The query that finds the sandbox's nodes (their agents' tag)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``pushy sandbox``."""
    p = sub.add_parser(
        "sandbox",
        help="try it: the server and local agents in one process, with the dashboard",
        description="Start the server and N local agents (sandbox-1 … sandbox-N) in one "
        "process on a loopback address, over plain HTTP, and print the dashboard's login "
        "link and a job to paste. The agents run ANY command they are sent, as you: never "
        "listen on anything but loopback (refused). Data (keys, jobs) is kept in the data "
        "directory between runs; delete it to start afresh. Ctrl-C stops everything. "
        "`pushy serve` is the production server.",
    )
    p.add_argument("--nodes", type=int, default=3, metavar="N", help="agents to run (default 3)")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"data directory (default {sandbox_data_dir()}, where the CLI finds it)",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="API and dashboard listener, loopback only (default 127.0.0.1:10003)",
    )
    p.add_argument("--verbose", action="store_true", help="log the server's and agents' work")
    p.set_defaults(handler=cmd_sandbox)


def cmd_sandbox(args: argparse.Namespace) -> int:
    import trio  # here, not at the top: other commands start faster without the server stack

    from ..sandbox import sandbox_config

    config = sandbox_config(listen=args.listen, data_dir=args.data_dir)
    setup_logging("info" if args.verbose else "warning")
    try:
        trio.run(functools.partial(_sandbox_until_signal, config, args.nodes))
    except (BaseExceptionGroup, OSError) as caught:
        error = _sole(caught)
        if isinstance(error, OSError) and error.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            raise ConfigError(
                "--listen",
                None,
                f"cannot listen on {config.listen}: {error.strerror} (try --listen 127.0.0.1:PORT)",
            ) from None
        if error is caught:
            raise
        raise error from None
    return EXIT_OK


def _sole(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def _sandbox_until_signal(config: ServerConfig, nodes: int) -> None:
    import trio

    from ..sandbox import run_sandbox

    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            ready = False

            async def watch() -> None:
                async for _ in signals:
                    if ready:
                        stop.set()  # graceful: agents, then the server
                    else:
                        nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            info = await nursery.start(functools.partial(run_sandbox, config, nodes, stop=stop))
            ready = True
            sys.stdout.write(banner(info))
            sys.stdout.flush()
    sys.stdout.write("pushy sandbox: stopped\n")


def banner(info: SandboxInfo) -> str:
    """What ``pushy sandbox`` prints once it is ready."""
    nodes = info.nodes
    span = nodes[0] if len(nodes) == 1 else f"{nodes[0]} … {nodes[-1]}"
    who = getpass.getuser()
    return "\n".join(
        [
            f"pushy sandbox: {len(nodes)} node(s) ({span}) on {info.server.url}",
            f"  data directory {info.data_dir}",
            "",
            f"  !! WARNING: the sandbox agents run ANY command they are sent, as user {who},",
            "  !! on this machine. The sandbox listens on loopback only. Use it to try pushy.",
            "",
            f"Dashboard (this link works once, for {info.link_ttl:.0f} s; `pushy ui` prints "
            "a new one):",
            f"  {info.login_url}",
            "",
            "Run a job on the sandbox nodes (in another terminal):",
            f"  {sample_job_line(info)}",
            "",
            "Ctrl-C stops the sandbox.",
            "",
        ]
    )


def sample_job_line(info: SandboxInfo) -> str:
    """A ``pushy job start`` line that runs on every sandbox node with no other setup.

    The CLI finds the sandbox's credentials by itself when nothing else is configured (its
    last credential source is the sandbox's default data directory); when something else
    would win (flags in the environment, a ``~/.chef/credentials`` profile, a server's data
    directory, or a ``--data-dir`` elsewhere), the line names the sandbox's credentials in
    ``PUSHY_*`` variables. Its nodes are found by their tag (every sandbox agent has the tag
    ``sandbox``).
    """
    from ..client import load_credentials

    line = f"pushy job start {shlex.quote(SAMPLE_COMMAND)} --search {shlex.quote(SANDBOX_SEARCH)}"
    key = info.data_dir / "keys" / "admin.pem"
    try:
        found = load_credentials()
    except ConfigError:
        found = None
    if found is not None and found.server_url == info.org_url and found.key_file == str(key):
        return line
    env = {"PUSHY_SERVER": info.org_url, "PUSHY_USER": "admin", "PUSHY_KEY": str(key)}
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + line
