"""``pushy serve``."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal

from ..config import ServerConfig
from ..config_files import load_server_config
from ..errors import ConfigError, DataDirBusyError
from ._common import run_trio
from ._logging import setup_logging

__all__ = ["add_parser", "cmd_serve"]

log = logging.getLogger("pushy_appliance.cli")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the push-jobs server",
        description="Run the push-jobs server (HTTP API, event feeds and node listener). "
        "With no arguments it creates its data directory and serves https://0.0.0.0:10003.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--data-dir", metavar="DIR", help="data directory (PUSHY_DATA_DIR)")
    p.add_argument("--listen", metavar="HOST:PORT", help="API listener (default 0.0.0.0:10003)")
    p.add_argument(
        "--node-listen",
        metavar="HOST:PORT",
        help="node WebSocket listener (default: the API's host, port 10002; 0 with --listen …:0)",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="keep the store in this PostgreSQL database, postgresql://… (PUSHY_STORE_URL; "
        "default: the file store in DATA/store)",
    )
    p.add_argument(
        "--insecure-http",
        action="store_true",
        default=None,
        help="serve plain HTTP instead of TLS (development only)",
    )
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT.

    Returns:
        0 after a signal.

    Raises:
        ConfigError: the configuration is invalid, a listener cannot be bound, or another
            process holds the data directory (all exit 2).
        StoreError: the store cannot be opened or read.
    """
    config = load_server_config(
        args.config,
        environ=dict(os.environ),
        flags={
            "data_dir": args.data_dir,
            "listen": args.listen,
            "node_listen": args.node_listen,
            "store.url": args.store,
            "insecure_http": args.insecure_http,
        },
    )
    setup_logging(config.log.level, config.log.format)
    try:
        run_trio(_serve_until_signal, config)
    except DataDirBusyError as e:
        raise ConfigError(
            "data_dir",
            None,
            f"{e.data_dir} is in use by another pushy process (a running `pushy serve`, or"
            " `pushy store compact`): stop it, or give another --data-dir",
        ) from None
    except OSError as error:
        if error.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            raise ConfigError(
                "listen",
                None,
                f"cannot listen on {config.listen} or the node port: {error.strerror}",
            ) from None
        raise
    return 0


async def _serve_until_signal(config: ServerConfig) -> None:
    import trio

    from ..appliance import serve

    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    log.info("received %s", signal.Signals(signum).name)
                    stop.set()
                    return

            nursery.start_soon(watch)
            await serve(config, stop=stop)
            nursery.cancel_scope.cancel()
