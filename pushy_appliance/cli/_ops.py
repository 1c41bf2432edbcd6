"""Operations commands: ``pushy audit`` and ``pushy webhook add|list|remove|deliveries``
(``docs/OPERATIONS.md``).

Exit codes as everywhere: 0 done, 2 usage errors, 3 the server could not be reached or
refused the request.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from ..client import PushyClient
from ..errors import ConfigError, ServerRefusedError
from ._common import EXIT_OK, add_credentials, naming, print_json, print_table, run_client

__all__ = ["add_parsers", "parse_since"]

_PAGE: Final = 1000
"""Entries asked for per request (the API's most)."""
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EVENTS: Final = ("job_start", "job_complete")
_SECRET_BYTES: Final = 32


def parse_since(text: str, now: float) -> str:
    """An RFC 3339 time from ``30m``, ``1h``, ``2d``, ``1w`` (that long before ``now``) or
    an RFC 3339 time as given.

    Raises:
        argparse.ArgumentTypeError: neither.
    """
    m = re.fullmatch(r"([0-9]{1,9})([smhdw])", text.strip())
    if m is not None:
        moment = datetime.fromtimestamp(now - int(m.group(1)) * _UNITS[m.group(2)], UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 1h, 2d, 1w) nor an RFC 3339 time"
        ) from None
    return text


def _since(text: str) -> str:
    return parse_since(text, time.time())


def _positive(text: str) -> int:
    if text.strip().isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")


def add_parsers(sub: Any) -> None:
    """Register ``audit`` and ``webhook`` (add, list, remove, deliveries).

    Args:
        sub: the top-level ``argparse`` subparsers object of ``pushy``.
    """
    p = sub.add_parser(
        "audit",
        help="who changed what, and refused requests (org admins)",
        description="Show the org's audit log, newest first: every change made through the "
        "API (who, what, on which target, from where, with which status), refused requests "
        "(401, 403) and node connects, disconnects and rehab. --all-orgs shows every "
        "organization's (the superuser: signed as pivotal when its key is in the data "
        "directory and no --user or --key is given).",
        epilog="examples:\n"
        "  pushy audit --since 1h\n"
        "  pushy audit --actor alice --action job --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--since", type=_since, metavar="WHEN", help="only entries since then (30m, 1h, 2d, "
        "1w, or an RFC 3339 time)"
    )  # fmt: skip
    p.add_argument("--until", type=_since, metavar="WHEN", help="only entries until then")
    p.add_argument("--actor", metavar="NAME", help="only this user's or client's entries")
    p.add_argument(
        "--action",
        metavar="ACTION",
        help="only this action (job.create) or family (job, client, node, refused)",
    )
    p.add_argument(
        "--limit", type=_positive, default=100, metavar="N", help="at most N entries (100)"
    )
    p.add_argument("--all-orgs", action="store_true", help="every organization's (superuser)")
    p.add_argument(
        "--json", action="store_true", help='print {"entries": [...], "more": BOOL} as JSON'
    )
    add_credentials(p)
    p.set_defaults(handler=cmd_audit)

    hook = sub.add_parser(
        "webhook",
        help="notify a URL when jobs start or end (org admins)",
        description="Manage the org's webhooks: signed HTTP POSTs sent when a job starts or "
        "ends (docs/OPERATIONS.md).",
    ).add_subparsers(dest="sub", metavar="ACTION")
    hook.required = True

    p = hook.add_parser(
        "add",
        help="add a webhook",
        description="Add a webhook: each EVENT of the org's jobs is POSTed to URL as JSON, "
        "signed in X-Pushy-Signature (sha256=HMAC of the body, keyed by the secret). The "
        "secret is read from --secret-file (- for stdin) or, without it, generated and "
        "printed once: the server never shows it again.",
    )
    p.add_argument("url", metavar="URL", help="https:// (http:// where the server allows it)")
    p.add_argument(
        "--event",
        dest="events",
        action="append",
        choices=_EVENTS,
        metavar="EVENT",
        help="job_complete (the default) or job_start; repeatable",
    )
    p.add_argument("--secret-file", metavar="FILE", help="read the secret from FILE (- for stdin)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the API document as JSON (with the secret when it was generated)",
    )
    add_credentials(p)
    p.set_defaults(handler=cmd_webhook_add)

    p = hook.add_parser("list", help="list webhooks", description="List the org's webhooks.")
    p.add_argument("--json", action="store_true", help="print the API document as JSON")
    add_credentials(p)
    p.set_defaults(handler=cmd_webhook_list)

    p = hook.add_parser(
        "remove",
        help="remove a webhook",
        description="Remove a webhook; its deliveries not yet made are dropped.",
    )
    p.add_argument("webhook_id", metavar="ID", help="the webhook id, or the start of it")
    add_credentials(p)
    p.set_defaults(handler=cmd_webhook_remove)

    p = hook.add_parser(
        "deliveries",
        help="show a webhook's recent deliveries",
        description="Show a webhook's recent deliveries, newest first: the event, the job, "
        "the state (pending, delivered, failed, dropped), the attempts and the last outcome.",
    )
    p.add_argument("webhook_id", metavar="ID", help="the webhook id, or the start of it")
    p.add_argument("--json", action="store_true", help="print the API document as JSON")
    add_credentials(p)
    p.set_defaults(handler=cmd_webhook_deliveries)


# --- audit ------------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    """``pushy audit``: the audit log, newest first, page after page up to ``--limit``."""
    params = {
        key: value
        for key, value in (
            ("since", args.since),
            ("until", args.until),
            ("actor", args.actor),
            ("action", args.action),
        )
        if value is not None
    }

    async def go(c: PushyClient) -> int:
        path = c.api_path("pushy/audit") if args.all_orgs else c.org_path("pushy/audit")
        entries: list[dict[str, Any]] = []
        more = True
        while more and len(entries) < args.limit:
            page_params = {**params, "limit": str(min(_PAGE, args.limit - len(entries)))}
            if entries:
                page_params["before"] = str(entries[-1]["id"])
            page: dict[str, Any] = await c.json("GET", path, params=page_params)
            entries.extend(page["entries"])
            more = bool(page["more"])
        if args.json:
            print_json({"entries": entries, "more": more})
            return EXIT_OK
        print_table(("TIME", "ACTOR", "ACTION", "TARGET", "STATUS", "FROM"), _rows(entries))
        if more:
            sys.stderr.write(f"pushy: more entries than --limit {args.limit}\n")
        return EXIT_OK

    return run_client(args, go, superuser=args.all_orgs)


def _rows(entries: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for e in entries:
        target = e.get("target") or ""
        if e.get("org") and e["action"] != "org.create":
            target = f"{e['org']}/{target}" if target else e["org"]
        status = "" if e.get("status") is None else str(e["status"])
        if e.get("dropped"):
            status += f" (+{e['dropped']} dropped)"
        peer = e.get("forwarded_for") or e.get("peer") or ""
        actor = str(e.get("actor") or "-")
        rows.append((str(e["at"]), actor, str(e["action"]), str(target), status, str(peer)))
    return rows


# --- webhooks ---------------------------------------------------------------------------------


def _read_secret(path: str) -> str:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as e:
        raise ConfigError(path, None, f"cannot read --secret-file: {e.strerror}") from None
    return text.strip()


def cmd_webhook_add(args: argparse.Namespace) -> int:
    """``pushy webhook add URL``: add a webhook; print its id (and a generated secret)."""
    generated = args.secret_file is None
    secret = secrets.token_hex(_SECRET_BYTES) if generated else _read_secret(args.secret_file)
    body = {"url": args.url, "events": args.events or ["job_complete"], "secret": secret}

    async def go(c: PushyClient) -> int:
        doc: dict[str, Any] = await c.json("POST", c.org_path("pushy/webhooks"), body)
        if args.json:
            print_json({**doc, "secret": secret} if generated else doc)
            return EXIT_OK
        sys.stdout.write(f"webhook {doc['id']}: {', '.join(doc['events'])} to {doc['url']}\n")
        if generated:
            sys.stdout.write(f"secret {secret}\n  (shown once: the server never shows it)\n")
        return EXIT_OK

    return run_client(args, go)


def cmd_webhook_list(args: argparse.Namespace) -> int:
    """``pushy webhook list``."""

    async def go(c: PushyClient) -> int:
        hooks: list[dict[str, Any]] = await c.json("GET", c.org_path("pushy/webhooks"))
        if args.json:
            print_json(hooks)
            return EXIT_OK
        rows = [
            (h["id"], ",".join(h["events"]), str(h["pending"]), str(h["dropped"]), h["url"])
            for h in hooks
        ]
        print_table(("ID", "EVENTS", "PENDING", "DROPPED", "URL"), rows)
        return EXIT_OK

    return run_client(args, go)


async def _webhook_id(c: PushyClient, text: str) -> str:
    """The id of the one webhook whose id starts with ``text``."""
    hooks: list[dict[str, Any]] = await c.json("GET", c.org_path("pushy/webhooks"))
    ids = [h["id"] for h in hooks if str(h["id"]).startswith(text.strip().lower())]
    if len(ids) == 1 and text.strip():
        return str(ids[0])
    if not ids:
        raise ServerRefusedError(404, f"no webhook id starts with '{text}'")
    raise ConfigError("webhook id", None, f"'{text}' is the start of {len(ids)} webhook ids")


def cmd_webhook_remove(args: argparse.Namespace) -> int:
    """``pushy webhook remove ID``."""

    async def go(c: PushyClient) -> int:
        webhook_id = await _webhook_id(c, args.webhook_id)
        try:
            await c.json("DELETE", c.org_path(f"pushy/webhooks/{webhook_id}"))
        except ServerRefusedError as e:
            raise naming(e, "webhook", webhook_id) from None
        sys.stdout.write(f"webhook {webhook_id} removed\n")
        return EXIT_OK

    return run_client(args, go)


def cmd_webhook_deliveries(args: argparse.Namespace) -> int:
    """``pushy webhook deliveries ID``: recent deliveries, newest first."""

    async def go(c: PushyClient) -> int:
        webhook_id = await _webhook_id(c, args.webhook_id)
        path = c.org_path(f"pushy/webhooks/{webhook_id}/deliveries")
        deliveries: list[dict[str, Any]] = await c.json("GET", path)
        if args.json:
            print_json(deliveries)
            return EXIT_OK
        rows = []
        for d in deliveries:
            last = d["last_attempts"][-1] if d["last_attempts"] else None
            outcome = "" if last is None else str(last["status"] or last["error"])
            rows.append((d["id"], d["event"], d["job"], d["state"], str(d["attempts"]), outcome))
        print_table(("DELIVERY", "EVENT", "JOB", "STATE", "ATTEMPTS", "LAST"), rows)
        return EXIT_OK

    return run_client(args, go)
