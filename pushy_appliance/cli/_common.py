"""What the command modules share: exit codes, the credential flags, the signed client, and
printing documents and tables.

The command modules (``_admin``, ``_jobs``, ``_output``, ``_nodes``) import this; ``_main``
imports them; nothing here imports a command module.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ..config_files import resolve_data_dir
from ..errors import (
    ConfigError,
    ServerRefusedError,
    ServerUnreachableError,
    TLSUntrustedError,
)

if TYPE_CHECKING:
    from ..client import Credentials, PushyClient

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "add_credentials",
    "credentials_from",
    "naming",
    "plural",
    "print_json",
    "print_table",
    "run_client",
    "run_trio",
    "sole_error",
]

EXIT_OK: Final = 0
"""Success."""

EXIT_FAILED: Final = 1
"""The thing ran but did not succeed (a job that did not fully succeed, a failed check)."""

EXIT_USAGE: Final = 2
"""Usage or configuration errors."""

EXIT_UNREACHABLE: Final = 3
"""The server could not be reached or refused the request."""

T = TypeVar("T")


def add_credentials(p: argparse.ArgumentParser, signer_flag: str = "--user") -> None:
    """Add the credential and TLS flags of a command that signs its requests.

    Args:
        p: the command's parser.
        signer_flag: the flag naming who signs (``--sign-as`` where ``--user`` is taken).
    """
    g = p.add_argument_group(
        "credentials (each from the first of: flags, PUSHY_*, ~/.chef/credentials, data dir;"
        " `pushy whoami` shows what is used)"
    )
    g.add_argument(
        "--server",
        metavar="URL",
        help="org URL, https://HOST:PORT/organizations/ORG (PUSHY_SERVER)",
    )
    g.add_argument(
        signer_flag, dest="signer", metavar="NAME", help="user or client to sign as (PUSHY_USER)"
    )
    g.add_argument("--key", metavar="FILE", help="its private key (PUSHY_KEY)")
    g.add_argument(
        "--profile",
        metavar="NAME",
        help="profile of ~/.chef/credentials (PUSHY_PROFILE, default 'default')",
    )
    g.add_argument(
        "--ca-cert",
        metavar="FILE",
        help="CA certificate to trust (PUSHY_CA_CERT; else the profile's ssl_ca_file, else the"
        " data directory's CA)",
    )
    g.add_argument(
        "--fingerprint", metavar="SHA256", help="pin the server certificate (PUSHY_FINGERPRINT)"
    )
    g.add_argument(
        "--data-dir",
        metavar="DIR",
        help="server data directory whose credentials and CA to use (PUSHY_DATA_DIR)",
    )
    p.set_defaults(signer_flag=signer_flag)


def credentials_from(args: argparse.Namespace, *, superuser: bool = False) -> Credentials:
    """Resolve credentials from the parsed flags (and environment, profiles, data dir).

    With ``superuser``, and no explicit user or key, the data directory's ``pivotal`` key is
    used when it can be found, so org and user creation work on the server box with no setup.
    """
    # Imported here, not at the top: commands without a server (serve, agent, store, version)
    # start faster without the HTTP client stack.
    from ..client import load_credentials

    data_dir = getattr(args, "data_dir", None)
    creds = load_credentials(
        server=getattr(args, "server", None),
        user=getattr(args, "signer", None),
        key=getattr(args, "key", None),
        profile=getattr(args, "profile", None),
        ca_file=getattr(args, "ca_cert", None),
        fingerprint=getattr(args, "fingerprint", None),
        data_dir=data_dir,
        user_flag=getattr(args, "signer_flag", "--user"),
    )
    explicit = getattr(args, "key", None) or getattr(args, "signer", None)
    if superuser and not explicit and not os.environ.get("PUSHY_KEY"):
        directory = resolve_data_dir(data_dir)
        pivotal = directory / "keys" / "pivotal.pem"
        if pivotal.exists():
            source = f"data directory {directory}: the superuser's key, for this command"
            creds = dataclasses.replace(
                creds,
                user="pivotal",
                key_file=str(pivotal),
                sources=dataclasses.replace(creds.sources, user=source, key=source),
            )
    return creds


def run_trio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.run(fn, *args)``, with a lone error out of nested nurseries raised as itself.

    A nursery wraps even a single failure in an exception group; the command's caller
    (``_main.main``) reports the appliance's errors by class, so a group holding one error is
    unwrapped (one line on stderr, not a traceback).
    """
    import trio

    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        error = sole_error(group)
        if error is group:
            raise
        raise error from None


def sole_error(error: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups, else ``error``."""
    inner = error
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return error if isinstance(inner, BaseExceptionGroup) else inner


def run_client(
    args: argparse.Namespace,
    fn: Callable[[PushyClient], Awaitable[T]],
    *,
    superuser: bool = False,
) -> T:
    """Run ``fn`` with an open client for the resolved credentials.

    An error that the credentials may explain (the key, CA file or fingerprint cannot be
    used, the server cannot be
    reached or its certificate is not trusted, the server refused the signature or the
    permission: 401, 403) carries a note naming each part of the credentials and where it
    came from; ``_main.main`` prints it under the message.
    """
    from ..client import open_client

    creds = credentials_from(args, superuser=superuser)

    async def go() -> T:
        async with open_client(creds) as client:
            return await fn(client)

    try:
        return run_trio(go)
    except (ServerUnreachableError, TLSUntrustedError) as e:
        _note_credentials(e, creds)
        raise
    except ServerRefusedError as e:
        if e.status in (401, 403):
            _note_credentials(e, creds)
        raise
    except ConfigError as e:
        if e.source in (creds.key_file, creds.ca_file, "fingerprint"):
            _note_credentials(e, creds)
        raise


def _note_credentials(error: BaseException, creds: Credentials) -> None:
    error.add_note("\n".join(["credentials used:", *(f"  {line}" for line in creds.describe())]))


def naming(e: ServerRefusedError, kind: str, name: str) -> ServerRefusedError:
    """``e`` with a message that names the job or node when the server's does not.

    Args:
        e: the refusal.
        kind: ``job`` or ``node``.
        name: the job id or node name.

    Returns:
        ``e`` itself when its message names ``name``, else a copy whose message does.
    """
    if name in e.message:
        return e
    return ServerRefusedError(e.status, f"{kind} {name}: {e.message}")


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 node``, ``2 nodes``: ``n`` and the word in the number it takes.

    Args:
        n: the count.
        word: the singular.
        words: the plural (default ``word + "s"``).
    """
    return f"{n} {word if n == 1 else (words or word + 's')}"


def print_json(doc: Any) -> None:
    """Print ``doc`` as indented JSON."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print rows under headers, columns padded to their widest cell (the last one not)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths[:-1], strict=True)]
        sys.stdout.write("  ".join([*cells, row[-1]]) + "\n")
    sys.stdout.flush()
