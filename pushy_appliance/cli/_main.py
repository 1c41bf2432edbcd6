"""Argument parsing and dispatch for ``pushy``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..errors import ClientError, ConfigError, PushyError, ServerRefusedError, StoreError
from . import _admin, _agent, _cluster, _jobs, _nodes, _ops, _sandbox, _serve, _ui
from ._common import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, add_credentials

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, every option described."""
    parser = argparse.ArgumentParser(
        prog="pushy",
        description="Pushy Appliance: Chef Push Jobs server, node agent and operator CLI.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    _sandbox.add_parser(sub)
    _serve.add_parser(sub)

    p = sub.add_parser(
        "version",
        help="print the version and bundled library versions",
        description="Print the version of pushy, of Python and of the bundled libraries.",
    )
    p.set_defaults(handler=_admin.cmd_version)

    p = sub.add_parser(
        "whoami",
        help="show the credentials the client commands would use",
        description="Show the server URL, user, key file and TLS trust that the client "
        "commands would use with these flags and this environment, and where each came from "
        "(flag, environment, profile NAME of FILE, data directory DIR). The key's contents "
        "are never printed; nothing is sent to the server.",
    )
    add_credentials(p)
    p.set_defaults(handler=_admin.cmd_whoami)

    # org / user / client / group
    org = sub.add_parser(
        "org", help="manage organizations", description="Manage organizations."
    ).add_subparsers(dest="sub", metavar="ACTION")
    org.required = True
    p = org.add_parser(
        "create",
        help="create an organization (superuser)",
        description="Create an organization with its groups admins, users and clients. Signed "
        "as the superuser pivotal when its key is in the data directory and no --user or "
        "--key is given.",
    )
    p.add_argument("name", metavar="ORG")
    p.add_argument("--full-name", help="display name (default: ORG)")
    add_credentials(p)
    p.set_defaults(handler=_admin.cmd_org_create, superuser=True)

    user = sub.add_parser("user", help="manage users", description="Manage users.").add_subparsers(
        dest="sub", metavar="ACTION"
    )
    user.required = True
    p = user.add_parser(
        "create",
        help="create a user (superuser), optionally joining an org",
        description="Create a user with a new key (printed, or written to --key-out), "
        "optionally joining it to an organization and its admins. Signed as the superuser "
        "pivotal when its key is in the data directory and no --user or --key is given.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--org", help="organization to join the user to")
    p.add_argument("--admin", action="store_true", help="also add the user to the org's admins")
    p.add_argument(
        "--key-out", metavar="FILE", help="write the new private key here (default: stdout)"
    )
    p.add_argument("--email", default="", help="e-mail address")
    add_credentials(p)
    p.set_defaults(handler=_admin.cmd_user_create, superuser=True)

    client = sub.add_parser(
        "client",
        help="manage clients (nodes)",
        description="Manage clients: each node's agent signs as a client of its org.",
    ).add_subparsers(dest="sub", metavar="ACTION")
    client.required = True
    p = client.add_parser(
        "create",
        help="create a client with a new key",
        description="Create a client with a new key, printed or written to --key-out (mode "
        "0600; its directory must exist). Give the key to the node's agent (--key).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--org", help="organization (default: the credentials' org)")
    p.add_argument(
        "--key-out", metavar="FILE", help="write the new private key here (default: stdout)"
    )
    add_credentials(p)
    p.set_defaults(handler=_admin.cmd_client_create)
    p = client.add_parser(
        "delete",
        help="delete a client (closes its node connection)",
        description="Delete a client: its node connection is closed at once and its key is "
        "refused from then on.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--org", help="organization (default: the credentials' org)")
    add_credentials(p)
    p.set_defaults(handler=_admin.cmd_client_delete)

    group = sub.add_parser(
        "group", help="manage groups", description="Manage groups of users, clients and groups."
    ).add_subparsers(dest="sub", metavar="ACTION")
    group.required = True
    p = group.add_parser(
        "add",
        help="add users, clients or groups to a group (created if absent)",
        description="Add users, clients or groups to a group, creating the group when it "
        "does not exist; prints the group.",
    )
    p.add_argument("name", metavar="GROUP")
    p.add_argument(
        "--user",
        dest="users",
        action="append",
        default=[],
        metavar="U",
        help="user to add (repeatable)",
    )
    p.add_argument(
        "--client",
        dest="clients",
        action="append",
        default=[],
        metavar="C",
        help="client to add (repeatable)",
    )
    p.add_argument(
        "--group",
        dest="groups",
        action="append",
        default=[],
        metavar="G",
        help="group to nest (repeatable)",
    )
    p.add_argument("--org", help="organization (default: the credentials' org)")
    add_credentials(p, signer_flag="--sign-as")
    p.set_defaults(handler=_admin.cmd_group_add)
    p = group.add_parser(
        "show",
        help="show a group's members",
        description="Print a group's members as JSON.",
    )
    p.add_argument("name", metavar="GROUP")
    p.add_argument("--org", help="organization (default: the credentials' org)")
    add_credentials(p)
    p.set_defaults(handler=_admin.cmd_group_show)

    store = sub.add_parser(
        "store",
        help="check or compact the store (offline)",
        description="Check or compact the data directory's store.",
    ).add_subparsers(dest="sub", metavar="ACTION")
    store.required = True
    p = store.add_parser(
        "verify",
        help="check every record's CRC, every snapshot and every archived blob",
        description="Check every record's CRC, every snapshot, and every blob of the archive "
        "of finished jobs' details (its CRC, and that the archives a snapshot refers to are "
        "there and whole) of the store; it may run beside a live server. Exits 1 when "
        "something is damaged.",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="data directory (default: PUSHY_DATA_DIR or the default)"
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="check the store in this PostgreSQL database instead (PUSHY_STORE_URL)",
    )
    p.set_defaults(handler=_admin.cmd_store_verify)
    p = store.add_parser(
        "compact",
        help="write a snapshot and drop what it covers (server stopped)",
        description="Move finished jobs' details to the store's archive, write a snapshot "
        "and drop the segments (and archives) it makes obsolete. The server must be stopped.",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="data directory (default: PUSHY_DATA_DIR or the default)"
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="compact the store in this PostgreSQL database instead (PUSHY_STORE_URL)",
    )
    p.set_defaults(handler=_admin.cmd_store_compact)

    _agent.add_parsers(sub)
    _cluster.add_parser(sub)
    _jobs.add_parsers(sub)
    _nodes.add_parsers(sub)
    _ops.add_parsers(sub)
    _ui.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pushy`` and return its exit code.

    Every error the appliance raises on purpose is reported as one ``pushy: …`` line on
    stderr (plus indented detail lines where they help: what to check, the credentials
    used), never a traceback, with the documented exit code.
    """
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if not words:
        # bare `pushy`: the commands, not just "COMMAND is required"
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        args = parser.parse_args(words)
    except SystemExit as e:
        return int(e.code or 0) if isinstance(e.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except ConfigError as e:
        _report(str(e), e)
        return EXIT_USAGE
    except ServerRefusedError as e:
        _report(f"{e.message} (HTTP {e.status}){_hint(e.status)}", e)
        return EXIT_UNREACHABLE
    except ClientError as e:
        _report(str(e), e)
        return EXIT_UNREACHABLE
    except StoreError as e:
        _report(f"store: {e}", e)
        return EXIT_FAILED
    except PushyError as e:
        _report(str(e), e)
        return EXIT_FAILED


def _report(message: str, error: BaseException) -> None:
    """``pushy: MESSAGE`` and the error's notes (indented detail lines) on stderr."""
    lines = [f"pushy: {message}", *getattr(error, "__notes__", ())]
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


def _hint(status: int) -> str:
    if status == 401:
        return (
            "\n  the server did not accept the signature: check the user name, that the key is"
            " that user's or client's private key, and the clock"
        )
    if status == 403:
        return "\n  not permitted: check the org membership and groups (admins, pushy_job_writers)"
    return ""
