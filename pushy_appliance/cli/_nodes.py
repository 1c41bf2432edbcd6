"""``pushy node status|list|show``: node states, and the inventory (facts, search)."""

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

__all__ = ["add_parsers", "cmd_node_list", "cmd_node_show", "cmd_node_status", "node_rows"]


def add_parsers(sub: Any) -> None:
    """Register ``node`` (status).

    Args:
        sub: the top-level ``argparse`` subparsers object of ``pushy``.
    """
    node = sub.add_parser(
        "node",
        help="node states and facts",
        description="Show the states of the org's nodes, their facts, and search them.",
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

    p = node.add_parser(
        "list",
        help="list nodes with their facts, or those a search finds",
        description="Every node that ever connected, or those --search QUERY finds (Chef's "
        "search syntax over the nodes' last-known facts, docs/SEARCH.md): name, status, "
        "platform, IP address and tags.",
        epilog="examples:\n"
        "  pushy node list --search 'platform:ubuntu AND tags:web'\n"
        "  pushy node list --search 'ipaddress:10.0.0.0/8 AND status:online'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-s", "--search", metavar="QUERY", help="only the nodes this query finds")
    p.add_argument(
        "--json", action="store_true", help="print the API document ({total, start, rows})"
    )
    add_credentials(p)
    p.set_defaults(handler=cmd_node_list)

    p = node.add_parser(
        "show",
        help="show one node's state and facts",
        description="One node: its status, availability, when it was last seen, and every "
        "fact it reported last (nested ones as dotted names).",
    )
    p.add_argument("node", metavar="NODE", help="the node")
    p.add_argument("--json", action="store_true", help="print the API document")
    add_credentials(p)
    p.set_defaults(handler=cmd_node_show)


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def node_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """NODE, STATUS, AVAILABILITY of the rows of ``GET pushy/nodes``."""
    return [(str(r["name"]), str(r["status"]), str(r["availability"])) for r in rows]


def cmd_node_list(args: argparse.Namespace) -> int:
    """``pushy node list [--search QUERY]``: the inventory."""

    async def go(c: PushyClient) -> int:
        params = {"q": args.search} if args.search is not None else None
        doc: dict[str, Any] = await c.json("GET", c.org_path("pushy/nodes"), params=params)
        if args.json:
            print_json(doc)
            return EXIT_OK
        rows = [
            (
                str(r["name"]),
                str(r["status"]),
                _text(r["facts"].get("platform")),
                _text(r["facts"].get("ipaddress")),
                _text(r["facts"].get("tags")),
            )
            for r in doc["rows"]
        ]
        print_table(("NODE", "STATUS", "PLATFORM", "IPADDRESS", "TAGS"), rows)
        online = sum(1 for r in doc["rows"] if r["status"] == "online")
        total = plural(int(doc["total"]), "node")
        found = f" match {args.search!r}" if args.search is not None else ""
        sys.stdout.write(f"{total}{found}: {online} online, {len(rows) - online} offline\n")
        return EXIT_OK

    return run_client(args, go)


def _flat(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        out.append((prefix, _text(value)))


def cmd_node_show(args: argparse.Namespace) -> int:
    """``pushy node show NODE``: one node and its facts."""

    async def go(c: PushyClient) -> int:
        try:
            doc: dict[str, Any] = await c.json("GET", c.org_path(f"pushy/nodes/{args.node}"))
        except ServerRefusedError as e:
            raise naming(e, "node", args.node) from None
        if args.json:
            print_json(doc)
            return EXIT_OK
        facts: list[tuple[str, str]] = []
        _flat("", doc["facts"], facts)
        print_table(
            ("FIELD", "VALUE"),
            [
                ("name", str(doc["name"])),
                ("status", str(doc["status"])),
                ("availability", str(doc["availability"])),
                ("last_seen", str(doc["last_seen"])),
                *sorted(facts),
            ],
        )
        return EXIT_OK

    return run_client(args, go)


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
