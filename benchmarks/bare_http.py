"""The bare-stack ceiling for the API: quart-trio on hypercorn over TLS answering a tiny JSON.

Same hypercorn settings as the appliance (TLS with its certificate, keep-alive 75 s, no access
log). ``GET /hello`` and ``POST /hello`` answer ``{"hello": "world"}``. Prints
``{"event": "listening", "port": …}`` and exits when standard input closes or after
``--lifetime`` seconds.

Run: ``python3 benchmarks/bare_http.py --cert DATA/tls/server.pem --key DATA/tls/server.key``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response
from quart_trio import QuartTrio


def make_app() -> QuartTrio:
    app = QuartTrio("bare")

    @app.route("/hello", methods=["GET", "POST"])
    async def hello() -> Response:
        return Response(json.dumps({"hello": "world"}), content_type="application/json")

    return app


async def main(args: argparse.Namespace) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.keep_alive_timeout = 75.0
    config.accesslog = None
    config.errorlog = logging.getLogger("bare_http")
    config.include_server_header = False
    config.certfile = args.cert
    config.keyfile = args.key
    config.alpn_protocols = ["h2", "http/1.1"]
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                make_app(),
                config,
                shutdown_trigger=done.wait,
                task_status=task_status,
            )
        )
        port = int(binds[0].rsplit(":", 1)[1])
        sys.stdout.write(json.dumps({"event": "listening", "port": port}) + "\n")
        sys.stdout.flush()
        with trio.move_on_after(args.lifetime):
            stdin = trio.lowlevel.FdStream(0)
            while await stdin.receive_some(4096):
                pass
        done.set()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=600.0)
    trio.run(main, parser.parse_args())
