"""Administrative commands: orgs, users, clients, groups, the store, the version."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config_files import resolve_data_dir
from ..errors import ConfigError, ServerRefusedError
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    credentials_from,
    print_json,
    run_client,
    run_trio,
)

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
    "cmd_whoami",
    "version_text",
]

if TYPE_CHECKING:
    from ..client import PushyClient


def _org(args: argparse.Namespace, client: PushyClient) -> str:
    return str(getattr(args, "org", None) or client.creds.org)


def _check_key_out(path: str | None) -> None:
    """Refuse a ``--key-out`` that cannot be written, before the server creates anything.

    Raises:
        ConfigError: its directory does not exist (no ``mkdir -p``: a typo must not scatter
            keys), or the path is a directory.
    """
    if not path:
        return
    p = Path(path)
    parent = p.parent
    if not parent.is_dir():
        raise ConfigError("--key-out", None, f"directory {parent} does not exist")
    if p.is_dir():
        raise ConfigError("--key-out", None, f"{p} is a directory")


def _emit_key(path: str | None, pem: str) -> None:
    """Write ``pem`` to ``path`` (mode 0600), or to stdout.

    An existing regular file is truncated and its mode set to 0600 through the open
    descriptor (``fchmod``), so a key never sits in a file others can read; a symlink is
    followed, not replaced, and a device or pipe the user named keeps its mode.

    Raises:
        ConfigError: the file cannot be written.
    """
    if not path:
        sys.stdout.write(pem)
        return
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.fchmod(fd, 0o600)
            f.write(pem)
    except OSError as e:
        raise ConfigError(
            "--key-out", None, f"cannot write {p}: {e.strerror or e} (the key was not saved)"
        ) from None
    print(f"private key written to {p}", file=sys.stderr)


def version_text() -> str:
    """``pushy version``: ours, Python's and the bundled libraries'."""
    from importlib import metadata

    lines = [f"pushy {__version__}", f"python {sys.version.split()[0]}"]
    for dist in (
        "trio",
        "hypercorn",
        "quart-trio",
        "quart",
        "trio-websocket",
        "cryptography",
        "msgpack",
        "httpx",
    ):
        try:
            lines.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{dist} (unknown)")
    return "\n".join(lines)


def cmd_version(args: argparse.Namespace) -> int:
    print(version_text())
    return EXIT_OK


def cmd_whoami(args: argparse.Namespace) -> int:
    """``pushy whoami``: the resolved credentials and their sources, without the key."""
    creds = credentials_from(args)
    sys.stdout.write("".join(f"{line}\n" for line in creds.describe()))
    return EXIT_OK


def cmd_org_create(args: argparse.Namespace) -> int:
    async def go(c: PushyClient) -> Any:
        return await c.json(
            "POST",
            c.api_path("organizations"),
            {"name": args.name, "full_name": args.full_name or args.name},
        )

    doc = run_client(args, go, superuser=True)
    print(f"created organization {args.name}: {doc['uri']}")
    return EXIT_OK


def cmd_user_create(args: argparse.Namespace) -> int:
    _check_key_out(args.key_out)

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
    return EXIT_OK


def cmd_client_create(args: argparse.Namespace) -> int:
    _check_key_out(args.key_out)

    async def go(c: PushyClient) -> Any:
        return await c.json(
            "POST",
            c.api_path(f"organizations/{_org(args, c)}/clients"),
            {"name": args.name, "create_key": True},
        )

    doc = run_client(args, go)
    _emit_key(args.key_out, doc["chef_key"]["private_key"])
    print(f"created client {args.name}", file=sys.stderr)
    return EXIT_OK


def cmd_client_delete(args: argparse.Namespace) -> int:
    async def go(c: PushyClient) -> Any:
        return await c.json(
            "DELETE", c.api_path(f"organizations/{_org(args, c)}/clients/{args.name}")
        )

    run_client(args, go)
    print(f"deleted client {args.name}")
    return EXIT_OK


def cmd_group_add(args: argparse.Namespace) -> int:
    if not (args.users or args.clients or args.groups):
        print("pushy: group add needs at least one --user, --client or --group", file=sys.stderr)
        return EXIT_USAGE

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

    print_json(run_client(args, go))
    return EXIT_OK


def cmd_group_show(args: argparse.Namespace) -> int:
    async def go(c: PushyClient) -> Any:
        return await c.json("GET", c.api_path(f"organizations/{_org(args, c)}/groups/{args.name}"))

    print_json(run_client(args, go))
    return EXIT_OK


def _store_url(args: argparse.Namespace) -> str | None:
    """``--store``, else ``PUSHY_STORE_URL``: the PostgreSQL store to work on, if any."""
    url: str | None = args.store or os.environ.get("PUSHY_STORE_URL") or None
    return url


def cmd_store_verify(args: argparse.Namespace) -> int:
    from ..store import verify_postgres_store, verify_store

    url = _store_url(args)
    if url is not None:
        report = verify_postgres_store(url)
    else:
        report = verify_store(resolve_data_dir(args.data_dir) / "store")
    for line in report.lines():
        print(line)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_store_compact(args: argparse.Namespace) -> int:
    from ..appliance import compact_store

    data_dir = resolve_data_dir(args.data_dir)
    url = _store_url(args)
    seq = run_trio(compact_store, data_dir, url)
    if url is None:
        print(f"compacted {data_dir / 'store'}: snapshot at record {seq}")
    else:
        from ..store import redact_url

        print(f"compacted {redact_url(url)}: snapshot at record {seq}")
    return EXIT_OK
