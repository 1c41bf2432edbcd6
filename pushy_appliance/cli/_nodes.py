"""``pushy node status``: nodes online and offline."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..client import PushyClient
from ..errors import ServerRefusedError
from ._common import (
    EXIT_OK,
    add_credentials,
    naming,
    plural,
    print_json,
    print_table,
    run_client,
)

__all__ = ["add_parsers", "cmd_node_status"]


def add_parsers(sub: Any) -> None:
    """Register ``node`` (status).

    Args:
        sub: the top-level ``argparse`` subparsers object of ``pushy``.
    """
    node = sub.add_parser(
        "node", help="node states", description="Show the states of the org's nodes."
    ).add_subparsers(dest="sub", metavar="ACTION")
    node.required = True
    p = node.add_parser(
        "status",
        help="list nodes online and offline",
        description="Without NODE: every node that ever connected. With NODEs: those nodes "
        "(a client that never connected reads offline).",
    )
    p.add_argument("nodes", metavar="NODE", nargs="*", help="only these nodes")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the API document(s) as a JSON array",
    )
    add_credentials(p)
    p.set_defaults(handler=cmd_node_status)


def cmd_node_status(args: argparse.Namespace) -> int:
    """``pushy node status [NODE...]``: nodes online and offline."""

    async def go(c: PushyClient) -> int:
        docs: list[dict[str, Any]]
        if args.nodes:
            docs = []
            for node in args.nodes:
                try:
                    docs.append(await c.json("GET", c.org_path(f"pushy/node_states/{node}")))
                except ServerRefusedError as e:
                    raise naming(e, "node", node) from None
        else:
            docs = await c.json("GET", c.org_path("pushy/node_states"))
        if args.json:
            print_json(docs)
            return EXIT_OK
        rows = [
            (
                str(d["node_name"]),
                str(d["status"]),
                str(d["availability"]),
                str(d.get("updated_at", "never connected")),
            )
            for d in sorted(docs, key=lambda d: str(d["node_name"]))
        ]
        print_table(("NODE", "STATUS", "AVAILABILITY", "UPDATED"), rows)
        online = sum(1 for d in docs if d["status"] == "online")
        total = plural(len(docs), "node")
        sys.stdout.write(f"{total}: {online} online, {len(docs) - online} offline\n")
        return EXIT_OK

    return run_client(args, go)
