"""Request authentication (Chef signed headers) and authorization (groups), pure.

Not HTTP-specific: the REST API and the node WebSocket listener both sign their requests
the same way and ask :class:`Authenticator` the same questions.

The order of checks is the contract of ``API.md`` §1: header presence and protocol version
(400), timestamp (401), organization (404), principal (401), signature (401), replay of a
state-changing request (401, :mod:`pushy_appliance.replay`), membership (403), then the
route's permission (403). All of it runs before the body is validated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import rsa

from . import chef_auth
from .errors import AuthError, NoSuchIdentityError, NotFoundError
from .model import PIVOTAL, IdentityModel
from .replay import ReplayGuard, changes_state

__all__ = ["Authenticator", "Grant", "KeyCache", "Principal", "forbidden", "org_not_found"]


class KeyCache:
    """Parsed public keys by PEM text, so a request does not parse PEM again.

    Bounded: the cache is cleared when it holds ``limit`` keys (keys are cheap to re-parse,
    and a steady state holds one key per principal).
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._limit = limit

    def load(self, pems: tuple[str, ...]) -> list[rsa.RSAPublicKey]:
        out = []
        for pem in pems:
            key = self._keys.get(pem)
            if key is None:
                if len(self._keys) >= self._limit:
                    self._keys.clear()
                key = self._keys[pem] = chef_auth.load_public_key(pem)
            out.append(key)
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who signed the request.

    Attributes:
        kind: ``user`` or ``client``.
        name: the user's or client's name.
        key: the public key (PEM) that verified the signature; empty when the principal was
            not authenticated by a signature (a dashboard session). A node's session is bound
            to it (``nodes.registry``).
    """

    kind: str
    name: str
    key: str = dataclasses.field(default="", compare=False)

    @property
    def is_pivotal(self) -> bool:
        return self.kind == "user" and self.name == PIVOTAL


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """What one authorized request was allowed, kept to ask again later whether it still is
    (an open feed): made by :meth:`Authenticator.grant`, asked by :meth:`Authenticator.holds`.

    Attributes:
        org: the organization.
        who: the principal.
        action: what it was allowed (as for :meth:`Authenticator.require`).
        org_record: the organization as it was (one deleted and made again is another).
        keys: the principal's public keys then, for a signed request (one of them signed
            it); ``None`` for a dashboard session, which is not bound to a key.
    """

    org: str
    who: Principal
    action: str
    org_record: object
    keys: frozenset[str] | None


def forbidden(name: str) -> AuthError:
    """The 403 for an authenticated caller without the permission."""
    return AuthError(
        403, f"User or client '{name}' does not have access to that action on this server."
    )


def org_not_found(org: str) -> NotFoundError:
    """The 404 of ``API.md`` §1 for an unknown organization, in the identity model's words."""
    return NotFoundError(str(NoSuchIdentityError("organization", org)))


class Authenticator:
    """Who signed a request, and whether they may do what they ask.

    Args:
        identity: the identity model the answers come from.
        keys: the parsed-key cache.
        replay: refuses a second use of a state-changing request's signature; ``None``
            accepts replays (Chef Server's own behaviour).
    """

    def __init__(
        self,
        identity: IdentityModel,
        keys: KeyCache | None = None,
        *,
        replay: ReplayGuard | None = None,
    ) -> None:
        self.identity = identity
        self.keys = keys if keys is not None else KeyCache()
        self.replay = replay

    def authenticate(
        self,
        org: str | None,
        *,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        now: datetime,
        read_only: bool = False,
    ) -> Principal:
        """Check a request's signature and the signer's membership of ``org``.

        Args:
            org: the organization the path names, or ``None`` for global routes.
            method, path, headers, body: the request as received (``path`` unquoted, no query).
            now: the server's time, for the timestamp check.
            read_only: the route changes nothing whatever its method (Chef's partial search
                is a ``POST``): its signature may be used again, as a ``GET``'s may.

        Returns:
            The authenticated principal.

        Raises:
            AuthError: 400/401/403 as ``API.md`` §1 lists; 401 for a replayed
                state-changing request (see :class:`~pushy_appliance.replay.ReplayGuard`).
            NotFoundError: the organization does not exist.
        """
        try:
            signed = chef_auth.parse_signed_headers(headers, now=now)
        except AuthError as e:
            # Every 401 names the scheme (RFC 9110 §11.6.1), the clock and timestamp ones too,
            # as the Chef Server does.
            if e.status == 401:
                e.headers.setdefault("WWW-Authenticate", chef_auth.WWW_AUTHENTICATE)
            raise
        identity = self.identity
        if org is not None and not identity.has_org(org):
            raise org_not_found(org)
        found = identity.principal(org, signed.user_id)
        if found is None:
            raise chef_auth.unknown_principal(signed.user_id)
        kind, pems = found
        index = chef_auth.verify_signature(signed, method, path, body, self.keys.load(pems))
        if self.replay is not None and not read_only and changes_state(method):
            self.replay.check(
                signed.user_id, signed.signature, signed.timestamp.timestamp(), now.timestamp()
            )
        if org is not None and not identity.is_org_member(org, kind, signed.user_id):
            raise AuthError(403, f"'{signed.user_id}' is not associated with organization '{org}'")
        return Principal(kind, signed.user_id, pems[index])

    def require(self, org: str, who: Principal, action: str) -> None:
        """Raise the 403 unless ``who`` may perform ``action`` in ``org``.

        Actions: ``read`` (push-jobs reads: ``pushy_job_readers`` if that group exists, else
        any member), ``write`` (start/abort jobs: ``pushy_job_writers`` if it exists, else
        ``admins``), ``admin`` (identity changes: ``admins``), ``member`` (any member).
        """
        if who.is_pivotal:
            return
        identity = self.identity
        if action == "member":
            return
        if action == "read":
            if not identity.has_group(org, "pushy_job_readers"):
                return
            if identity.in_group(org, "pushy_job_readers", who.kind, who.name):
                return
        elif action == "write":
            writers = identity.has_group(org, "pushy_job_writers")
            group = "pushy_job_writers" if writers else "admins"
            if identity.in_group(org, group, who.kind, who.name):
                return
        elif action == "admin":
            if identity.in_group(org, "admins", who.kind, who.name):
                return
            if (
                who.kind == "client"
                and identity.has_client(org, who.name)
                and identity.client(org, who.name).admin
            ):
                return
        raise forbidden(who.name)

    def grant(self, org: str, who: Principal, action: str, *, signed: bool) -> Grant:
        """Remember that ``who`` was just allowed ``action`` in ``org`` (after
        :meth:`authenticate` and :meth:`require` passed).

        Args:
            signed: the request was signed with one of the principal's keys (else it came
                with a dashboard session).
        """
        found = self.identity.principal(org, who.name)
        keys = frozenset(found[1]) if signed and found is not None else None
        return Grant(org, who, action, self.identity.org(org), keys)

    def holds(self, grant: Grant) -> bool:
        """Whether the grant still holds: the same organization exists, the principal still
        exists as the same kind and (signed) still holds every key it held then, belongs
        to the organization, and may do the action (:meth:`require`).

        The key that signed is one of those held then: a principal that lost any of them
        fails, so the removal of that key always does.
        """
        identity = self.identity
        org, who = grant.org, grant.who
        if not identity.has_org(org) or identity.org(org) is not grant.org_record:
            return False
        found = identity.principal(org, who.name)
        if found is None or found[0] != who.kind:
            return False
        if grant.keys is not None and not grant.keys <= frozenset(found[1]):
            return False
        if not identity.is_org_member(org, who.kind, who.name):
            return False
        try:
            self.require(org, who, grant.action)
        except AuthError:
            return False
        return True
