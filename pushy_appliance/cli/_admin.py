"""Administrative commands: orgs, users, clients, groups, the store, the version."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import fsutil
from ..config import resolve_data_dir
from ..errors import ServerRefusedError

__all__ = [
    "cmd_client_create",
    "cmd_client_delete",
    "cmd_group_add",
    "cmd_group_show",
    "cmd_org_create",
    "cmd_store_compact",
    "cmd_store_verify",
    "cmd_user_create",
    "cmd_version",
    "credentials_from",
    "run_client",
]

if TYPE_CHECKING:
    from ..client import Credentials, PushyClient

T = TypeVar("T")


def credentials_from(args: argparse.Namespace, *, superuser: bool = False) -> Credentials:
    """Resolve credentials from the parsed flags (and environment, profiles, data dir).

    With ``superuser``, and no explicit user, the data directory's ``pivotal`` key is used
    when it can be found, so org and user creation work on the server box with no setup.
    """
    from ..client import Credentials, load_credentials

    creds = load_credentials(
        server=getattr(args, "server", None),
        user=getattr(args, "signer", None),
        key=getattr(args, "key", None),
        profile=getattr(args, "profile", None),
        ca_file=getattr(args, "ca_cert", None),
        fingerprint=getattr(args, "fingerprint", None),
        data_dir=getattr(args, "data_dir", None),
    )
    explicit = getattr(args, "key", None) or getattr(args, "signer", None)
    if superuser and not explicit and not os.environ.get("PUSHY_KEY"):
        pivotal = resolve_data_dir(getattr(args, "data_dir", None)) / "keys" / "pivotal.pem"
        if pivotal.exists():
            creds = Credentials(
                creds.server_url, "pivotal", str(pivotal), creds.ca_file, creds.fingerprint
            )
    return creds


def run_client(
    args: argparse.Namespace,
    fn: Callable[[PushyClient], Awaitable[T]],
    *,
    superuser: bool = False,
) -> T:
    """Run ``fn`` with an open client for the resolved credentials."""
    import trio

    from ..client import open_client

    creds = credentials_from(args, superuser=superuser)

    async def go() -> T:
        async with open_client(creds) as client:
            return await fn(client)

    return trio.run(go)


def _org(args: argparse.Namespace, client: PushyClient) -> str:
    return str(getattr(args, "org", None) or client.creds.org)


def _emit_key(path: str | None, pem: str) -> None:
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_durably(p, pem.encode(), mode=0o600)
        print(f"private key written to {p}", file=sys.stderr)
    else:
        sys.stdout.write(pem)


def cmd_version(args: argparse.Namespace) -> int:
    from ._main import version_text

    print(version_text())
    return 0


def cmd_org_create(args: argparse.Namespace) -> int:
    async def go(c: PushyClient) -> Any:
        return await c.json(
            "POST",
            c.api_path("organizations"),
            {"name": args.name, "full_name": args.full_name or args.name},
        )

    doc = run_client(args, go, superuser=True)
    print(f"created organization {args.name}: {doc['uri']}")
    return 0


def cmd_user_create(args: argparse.Namespace) -> int:
    async def go(c: PushyClient) -> Any:
        doc = await c.json(
            "POST",
            c.api_path("users"),
            {"username": args.name, "email": args.email, "create_key": True},
        )
        if args.org:
            base = c.api_path(f"organizations/{args.org}")
            await c.json("POST", f"{base}/users", {"username": args.name})
            if args.admin:
                group = await c.json("GET", f"{base}/groups/admins")
                actors = {
                    "users": sorted({*group["users"], args.name}),
                    "clients": group["clients"],
                    "groups": group["groups"],
                }
                await c.json(
                    "PUT", f"{base}/groups/admins", {"groupname": "admins", "actors": actors}
                )
        return doc

    doc = run_client(args, go, superuser=True)
    _emit_key(args.key_out, doc["chef_key"]["private_key"])
    print(f"created user {args.name}" + (f" in {args.org}" if args.org else ""), file=sys.stderr)
    return 0


def cmd_client_create(args: argparse.Namespace) -> int:
    async def go(c: PushyClient) -> Any:
        return await c.json(
            "POST",
            c.api_path(f"organizations/{_org(args, c)}/clients"),
            {"name": args.name, "create_key": True},
        )

    doc = run_client(args, go)
    _emit_key(args.key_out, doc["chef_key"]["private_key"])
    print(f"created client {args.name}", file=sys.stderr)
    return 0


def cmd_client_delete(args: argparse.Namespace) -> int:
    async def go(c: PushyClient) -> Any:
        return await c.json(
            "DELETE", c.api_path(f"organizations/{_org(args, c)}/clients/{args.name}")
        )

    run_client(args, go)
    print(f"deleted client {args.name}")
    return 0


def cmd_group_add(args: argparse.Namespace) -> int:
    if not (args.users or args.clients or args.groups):
        print("pushy: group add needs at least one --user, --client or --group", file=sys.stderr)
        return 2

    async def go(c: PushyClient) -> Any:
        base = c.api_path(f"organizations/{_org(args, c)}/groups")
        try:
            group = await c.json("GET", f"{base}/{args.name}")
        except ServerRefusedError as e:
            if e.status != 404:
                raise
            await c.json("POST", base, {"groupname": args.name})
            group = {"users": [], "clients": [], "groups": []}
        actors = {
            "users": sorted({*group["users"], *args.users}),
            "clients": sorted({*group["clients"], *args.clients}),
            "groups": sorted({*group["groups"], *args.groups}),
        }
        return await c.json(
            "PUT", f"{base}/{args.name}", {"groupname": args.name, "actors": actors}
        )

    doc = run_client(args, go)
    print(json.dumps(doc, indent=2))
    return 0


def cmd_group_show(args: argparse.Namespace) -> int:
    async def go(c: PushyClient) -> Any:
        return await c.json("GET", c.api_path(f"organizations/{_org(args, c)}/groups/{args.name}"))

    print(json.dumps(run_client(args, go), indent=2))
    return 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    from ..store import verify_store

    directory = resolve_data_dir(args.data_dir) / "store"
    report = verify_store(directory)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def cmd_store_compact(args: argparse.Namespace) -> int:
    import trio

    from ..appliance import compact_store

    data_dir = resolve_data_dir(args.data_dir)
    seq = trio.run(compact_store, data_dir)
    print(f"compacted {data_dir / 'store'}: snapshot at record {seq}")
    return 0
