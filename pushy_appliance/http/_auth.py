"""Authentication (Chef signed headers) and authorization (groups) for HTTP requests.

The order of checks is the contract of ``API.md`` §1: header presence and protocol version
(400), timestamp (401), organization (404), principal (401), signature (401), membership (403),
then the route's permission (403). All of it runs before the body is validated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime

from .. import chef_auth
from ..errors import AuthError, NotFoundError
from ..model import PIVOTAL
from ._context import Services

__all__ = ["Principal", "authenticate", "forbidden", "require"]


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who signed the request."""

    kind: str  # "user" or "client"
    name: str

    @property
    def is_pivotal(self) -> bool:
        return self.kind == "user" and self.name == PIVOTAL


def forbidden(name: str) -> AuthError:
    """The 403 for an authenticated caller without the permission."""
    return AuthError(
        403, f"User or client '{name}' does not have access to that action on this server."
    )


def org_not_found(org: str) -> NotFoundError:
    return NotFoundError(f"organization '{org}' does not exist.")


def authenticate(
    svc: Services,
    org: str | None,
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime | None = None,
) -> Principal:
    """Check a request's signature and the signer's membership of ``org``.

    Args:
        svc: the services (identity model and key cache are used).
        org: the organization the path names, or ``None`` for global routes.
        method, path, headers, body: the request as received (``path`` unquoted, no query).

    Returns:
        The authenticated principal.

    Raises:
        AuthError: 400/401/403 as ``API.md`` §1 lists.
        NotFoundError: the organization does not exist.
    """
    try:
        signed = chef_auth.parse_signed_headers(headers, now=now or datetime.now(UTC))
    except AuthError as e:
        # Every 401 names the scheme (RFC 9110 §11.6.1), the clock and timestamp ones too,
        # as the Chef Server does.
        if e.status == 401:
            e.headers.setdefault("WWW-Authenticate", chef_auth.WWW_AUTHENTICATE)
        raise
    identity = svc.identity
    if org is not None and org not in identity.orgs:
        raise org_not_found(org)
    found = identity.principal(org, signed.user_id)
    if found is None:
        raise chef_auth.unknown_principal(signed.user_id)
    kind, pems = found
    chef_auth.verify_signature(signed, method, path, body, svc.keys.load(pems))
    if org is not None and not identity.is_org_member(org, kind, signed.user_id):
        raise AuthError(403, f"'{signed.user_id}' is not associated with organization '{org}'")
    return Principal(kind, signed.user_id)


def require(svc: Services, org: str, who: Principal, action: str) -> None:
    """Raise the 403 unless ``who`` may perform ``action`` in ``org``.

    Actions: ``read`` (push-jobs reads: ``pushy_job_readers`` if that group exists, else any
    member), ``write`` (start/abort jobs: ``pushy_job_writers`` if it exists, else ``admins``),
    ``admin`` (identity changes: ``admins``), ``member`` (any member).
    """
    if who.is_pivotal:
        return
    identity = svc.identity
    groups = identity.groups.get(org, {})
    if action == "member":
        return
    if action == "read":
        if "pushy_job_readers" not in groups:
            return
        if identity.in_group(org, "pushy_job_readers", who.kind, who.name):
            return
    elif action == "write":
        group = "pushy_job_writers" if "pushy_job_writers" in groups else "admins"
        if identity.in_group(org, group, who.kind, who.name):
            return
    elif action == "admin":
        if identity.in_group(org, "admins", who.kind, who.name):
            return
        if who.kind == "client":
            client = identity.clients.get(org, {}).get(who.name)
            if client is not None and client.admin:
                return
    raise forbidden(who.name)
