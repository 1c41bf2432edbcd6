"""The dashboard's login links and browser sessions (pure: the caller passes the time).

No password store: a principal who can sign a request (any user or client key) asks for a
one-time *login link* for the organization the request names; opening it turns the link into
a *session*, whose id the browser keeps in a cookie. ``docs/DASHBOARD.md`` is the contract;
in short:

* A link is single use and valid ``link_ttl`` seconds (60 by default). Redeeming it removes it,
  whether or not it had expired.
* A session carries the principal and the organization of its link, and a CSRF token that the
  page sends back in :data:`CSRF_HEADER` with every request that changes something. It ends at
  logout, or after ``idle_timeout`` seconds without a request (12 h by default).
* Both live in memory only, bounded: at most ``max_sessions`` sessions and as many unredeemed
  links. When full, the least recently used session (or the oldest link) is dropped: its owner
  has to ask for a new link, nobody gains access. A restart of the server ends every session.
* :meth:`WebSessions.authenticate` is what a request with the cookie goes through: the session
  must be alive, for the organization of the request's path, and its principal must still
  exist and belong to that organization (a deleted client or a user removed from the org loses
  access at its next request). The route's permission (read, write) is then checked exactly as
  for a signed request, by :meth:`auth.Authenticator.require`.
* A feed opened through a session is closed when the session ends (logout, idle timeout, or
  dropped for a newer one): :meth:`WebSessions.alive` is what it re-checks, and
  :meth:`WebSessions.watch` tells it when a session ended.

Ids and tokens are 256 random bits (:func:`secrets.token_urlsafe`).
"""

from __future__ import annotations

import collections
import dataclasses
import hmac
import secrets
from collections.abc import Callable
from typing import Final

from .auth import Principal
from .errors import AuthError
from .model import IdentityModel

__all__ = [
    "CSRF_HEADER",
    "SAFE_METHODS",
    "SESSION_COOKIE",
    "WebSession",
    "WebSessions",
]

SESSION_COOKIE: Final = "pushy_session"
"""The name of the cookie that holds the session id."""

CSRF_HEADER: Final = "X-Pushy-CSRF"
"""The header a state-changing request with the cookie must carry (the session's CSRF token)."""

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing, so need no CSRF token."""

MSG_SIGNED_OUT: Final = "not signed in, or the session expired: run `pushy ui` for a new link"
MSG_LINK: Final = "this login link is unknown, used or expired: run `pushy ui` for a new one"


@dataclasses.dataclass(slots=True)
class WebSession:
    """One signed-in browser.

    Attributes:
        id: the cookie's value.
        org: the organization the session may see.
        principal: who signed the request that minted the link.
        csrf: the token state-changing requests must echo in :data:`CSRF_HEADER`.
        last_seen: the time of the last request that used it.
    """

    id: str
    org: str
    principal: Principal
    csrf: str
    last_seen: float


@dataclasses.dataclass(frozen=True, slots=True)
class _Link:
    org: str
    principal: Principal
    expires: float


class WebSessions:
    """Login links and sessions, bounded, in memory.

    Args:
        link_ttl: seconds a login link stays valid.
        idle_timeout: seconds without a request after which a session ends.
        max_sessions: most sessions held (and most unredeemed links).
    """

    def __init__(self, *, link_ttl: float, idle_timeout: float, max_sessions: int) -> None:
        self.link_ttl = link_ttl
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        # Insertion order is expiry order (one ttl for all): the oldest link is first.
        self._links: collections.OrderedDict[str, _Link] = collections.OrderedDict()
        # Least recently used first: touching a session moves it to the end.
        self._sessions: collections.OrderedDict[str, WebSession] = collections.OrderedDict()
        self._watchers: list[Callable[[], None]] = []

    def watch(self, ended: Callable[[], None]) -> None:
        """Call ``ended()`` whenever sessions end from now on (logout, idle timeout found,
        dropped for a newer one). It must not block or raise."""
        self._watchers.append(ended)

    def _ended(self) -> None:
        for ended in self._watchers:
            ended()

    def __len__(self) -> int:
        return len(self._sessions)

    def mint_link(self, org: str, principal: Principal, now: float) -> str:
        """A new one-time login token for ``principal`` in ``org``.

        Returns:
            The token (URL-safe text), valid until ``now + link_ttl``.
        """
        self._expire_links(now)
        while len(self._links) >= self.max_sessions:
            self._links.popitem(last=False)
        token = secrets.token_urlsafe(32)
        self._links[token] = _Link(org, principal, now + self.link_ttl)
        return token

    def redeem(self, token: str, now: float) -> WebSession:
        """Turn a login token into a new session; the token is gone afterwards.

        Raises:
            AuthError: 401, the token is unknown, already used or expired.
        """
        self._expire_links(now)
        link = self._links.pop(token, None)
        if link is None or now >= link.expires:
            raise AuthError(401, MSG_LINK)
        self._expire_sessions(now)
        if len(self._sessions) >= self.max_sessions:
            while len(self._sessions) >= self.max_sessions:
                self._sessions.popitem(last=False)
            self._ended()
        session = WebSession(
            id=secrets.token_urlsafe(32),
            org=link.org,
            principal=link.principal,
            csrf=secrets.token_urlsafe(32),
            last_seen=now,
        )
        self._sessions[session.id] = session
        return session

    def lookup(self, session_id: str, now: float) -> WebSession | None:
        """The live session ``session_id`` (its idle clock restarted), or ``None``."""
        self._expire_sessions(now)
        session = self._sessions.get(session_id)
        if session is None:
            return None
        session.last_seen = now
        self._sessions.move_to_end(session_id)
        return session

    def alive(self, session_id: str, now: float) -> bool:
        """Whether the session ``session_id`` is live at ``now`` (its idle clock untouched)."""
        session = self._sessions.get(session_id)
        return session is not None and now - session.last_seen < self.idle_timeout

    def end(self, session_id: str) -> bool:
        """End a session (logout). Returns whether it existed."""
        if self._sessions.pop(session_id, None) is None:
            return False
        self._ended()
        return True

    def authenticate(
        self,
        identity: IdentityModel,
        session_id: str,
        org: str,
        *,
        method: str,
        csrf: str | None,
        now: float,
    ) -> Principal:
        """Who a request with the session cookie acts as, in ``org``.

        Args:
            identity: the identity model (the principal must still exist and be a member).
            session_id: the cookie's value.
            org: the organization of the request's path.
            method: the request's method; any but :data:`SAFE_METHODS` needs ``csrf``.
            csrf: the request's :data:`CSRF_HEADER`, or ``None``.
            now: the server's monotonic time.

        Returns:
            The session's principal.

        Raises:
            AuthError: 401 without a live session or when its principal is gone; 403 for a
                session of another organization, a missing or wrong CSRF token, or a
                principal no longer in the organization.
        """
        session = self.lookup(session_id, now)
        if session is None:
            raise AuthError(401, MSG_SIGNED_OUT)
        who = session.principal
        if session.org != org:
            raise AuthError(403, f"this session is for organization '{session.org}'")
        if method.upper() not in SAFE_METHODS and not (
            csrf is not None and hmac.compare_digest(csrf.encode(), session.csrf.encode())
        ):
            raise AuthError(403, f"missing or wrong {CSRF_HEADER} header")
        found = identity.principal(org, who.name)
        if found is None or found[0] != who.kind:
            self.end(session.id)
            raise AuthError(401, MSG_SIGNED_OUT)
        if not identity.is_org_member(org, who.kind, who.name):
            raise AuthError(403, f"'{who.name}' is not associated with organization '{org}'")
        return who

    def _expire_links(self, now: float) -> None:
        while self._links:
            token, link = next(iter(self._links.items()))
            if now < link.expires:
                return
            del self._links[token]

    def _expire_sessions(self, now: float) -> None:
        expired = False
        while self._sessions:
            sid, session = next(iter(self._sessions.items()))
            if now - session.last_seen < self.idle_timeout:
                break
            del self._sessions[sid]
            expired = True
        if expired:
            self._ended()
