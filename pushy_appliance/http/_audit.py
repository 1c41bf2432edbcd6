"""The audit log's side of the API: the entry of the current request, refusals, and the
audit routes (``docs/OPERATIONS.md``).

A route that changes state builds its entry with :func:`audit_entry` and hands it to the
commit of the change (``Database.commit(*change, entry)``, ``JobRunner.create(riders=…)``,
``JobRunner.abort(riders=…)``), so the change and its entry are stored together or not at
all. A refused request (401, 403) is handed to the recorder by :func:`note_refusal`, called
from the one mapping of errors to responses (``_errors.py``).

Routes: ``GET /organizations/ORG/pushy/audit`` (the organization's admins) and
``GET /pushy/audit`` (the superuser, every organization), newest first, paged with
``before``.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from ..audit.model import audit_record, entry_document
from ..auth import Principal, forbidden
from ..errors import AuthError, ValidationError
from ..services import Services
from ._request import authorized, json_response, require_accept, signed

__all__ = ["MAX_LIMIT", "audit_entry", "note_refusal", "register"]

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
_MAX_FORWARDED = 256
"""Characters of ``X-Forwarded-For`` kept."""


@functools.lru_cache(maxsize=8)
def _networks(
    entries: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries)


def _trusted(peer: str | None, proxies: Iterable[str]) -> bool:
    if peer is None:
        return False
    nets = _networks(tuple(proxies))
    if not nets:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in net for net in nets)


def client_of(svc: Services) -> tuple[str | None, str | None, str]:
    """``(peer, forwarded_for, key)`` of the current request: the peer's address, the
    ``X-Forwarded-For`` header when the peer is a trusted proxy (``audit.trusted_proxies``),
    and the address the refusal limit counts (the client the proxy names, else the peer)."""
    client = request.scope.get("client")
    peer = str(client[0]) if client else None
    forwarded = None
    key = peer or "-"
    if _trusted(peer, svc.config.audit.trusted_proxies):
        header = request.headers.get("X-Forwarded-For")
        if header:
            forwarded = header[:_MAX_FORWARDED]
            last = header.rsplit(",", 1)[-1].strip()
            if last:
                key = last[:64]
    return peer, forwarded, key


def _route() -> str | None:
    rule = request.url_rule
    return None if rule is None else rule.rule


def audit_entry(
    svc: Services,
    who: Principal | None,
    org: str | None,
    action: str,
    *,
    status: int,
    target: str | None = None,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``audit`` record of the current request (its method, route and peer), to be
    committed with the change it describes.

    Args:
        who: who signed it.
        org: the organization it acted in (``None`` for global routes).
        action: what it did (``job.create``, ``client.delete``, …).
        status: the status the response will have.
        target: the name or id of what it acted on.
        summary: what the body asked, without secrets (``audit.summary``).
    """
    peer, forwarded, _key = client_of(svc)
    return audit_record(
        at=time.time(),
        action=action,
        org=org,
        actor=who.name if who is not None else None,
        actor_kind=who.kind if who is not None else None,
        method=request.method,
        route=_route(),
        target=target,
        summary=summary,
        peer=peer,
        forwarded_for=forwarded,
        status=status,
    )


def note_refusal(svc: Services, e: AuthError) -> None:
    """Queue the entry of a refused request (401, 403) of the signed routes (``/users…``,
    ``/organizations…``, ``/pushy/…``; not the dashboard's ``/ui/…``, whose session check
    is no request of the API); the recorder limits them per peer. The actor is the name the
    request claims (``X-Ops-UserId``: a 401's is not verified)."""
    path = request.path
    signed_route = path.startswith(("/organizations", "/users", "/pushy/"))
    if e.status not in (401, 403) or not signed_route:
        return
    parts = path.split("/")
    org = parts[2][:255] if len(parts) > 2 and parts[1] == "organizations" and parts[2] else None
    peer, forwarded, key = client_of(svc)
    actor = request.headers.get("X-Ops-UserId")
    svc.audit.refused(
        key,
        org=org,
        actor=actor[:255] if actor else None,
        method=request.method,
        route=_route() or path[:512],
        target=None,
        summary={"error": e.message[:256]},
        peer=peer,
        forwarded_for=forwarded,
        status=e.status,
    )


def _time_param(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"invalid {name} (expected an RFC 3339 time)") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _int_param(name: str, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20) or not low <= int(raw) <= high:
        raise ValidationError(f"invalid {name} (must be an integer {low} .. {high})")
    return int(raw)


def _page(svc: Services, org: str | None) -> Response:
    model = svc.audit_log
    limit = _int_param("limit", 1, MAX_LIMIT)
    page = model.query(
        org,
        since=_time_param("since"),
        until=_time_param("until"),
        actor=request.args.get("actor"),
        action=request.args.get("action"),
        before=_int_param("before", 1, 2**63),
        limit=DEFAULT_LIMIT if limit is None else limit,
    )
    return json_response({"entries": [entry_document(e) for e in page.entries], "more": page.more})


def register(app: QuartTrio, svc: Services) -> None:
    """Register the audit routes on ``app``."""

    @app.route("/organizations/<org>/pushy/audit", methods=["GET"])
    async def org_audit(org: str) -> Response:
        await authorized(svc, org, "admin")
        return _page(svc, org)

    @app.route("/pushy/audit", methods=["GET"])
    async def all_audit() -> Response:
        require_accept()
        who = await signed(svc, None)
        if not who.is_pivotal:
            raise forbidden(who.name)
        return _page(svc, None)
