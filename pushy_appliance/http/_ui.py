"""The web dashboard: its files at ``/ui/``, login links and sessions (``docs/DASHBOARD.md``).

Routes:

* ``POST /organizations/ORG/pushy/ui/links`` (signed, read permission): a one-time login link
  for the caller in ORG, ``201 {"url": …, "expires_in": SECONDS}``.
* ``GET /ui/login/TOKEN``: redeems the link, sets the session cookie and redirects (303) to
  ``/ui/``; a used, expired or unknown link gets a short page saying so (401).
* ``GET /ui/session``: who the cookie's session is, its org, its CSRF token and what it may
  do (401 without a live session). The page reads its CSRF token here: the cookie itself is
  ``HttpOnly``.
* ``POST /ui/logout`` (CSRF header): ends the session and clears the cookie (204).
* ``GET /ui/`` and ``GET /ui/static/NAME``: the page and its files, read from the package once
  at start-up, each with a strict ``Content-Security-Policy``.

The push-jobs routes the page calls take the same cookie (``_request.signed``).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import mimetypes
from pathlib import Path
from typing import Final

import trio
from quart import Response, request
from quart_trio import QuartTrio

from ..auth import Principal
from ..errors import AuthError, NotFoundError, ValidationError
from ..jsonbody import parse_json_body
from ..services import Services
from ..websession import CSRF_HEADER, SESSION_COOKIE
from ._audit import audit_entry
from ._request import authorized, base_url, json_response, request_body, require_json_content

__all__ = ["STATIC_DIR", "register"]

STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "ui" / "static"
"""The dashboard's files, shipped inside the package (and the single executable)."""

CSP: Final = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_LINK_REFUSED_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Pushy: sign in</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/ui/static/app.css"></head>
<body><main class="signed-out"><h1>This login link cannot be used</h1>
<p>{message}</p><p>Links work once, for {ttl} seconds.</p></main></body></html>
"""


class _File:
    """One file of the dashboard, in memory."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.content_type = _TYPES.get(path.suffix) or (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        self.etag = '"' + hashlib.sha256(self.data).hexdigest()[:32] + '"'

    def response(self) -> Response:
        headers = {**_PAGE_HEADERS, "ETag": self.etag}
        if self.etag in request.headers.get("If-None-Match", ""):
            return Response(b"", status=304, headers=headers)
        return Response(self.data, status=200, headers=headers, content_type=self.content_type)


def load_files(root: Path = STATIC_DIR) -> dict[str, _File]:
    """Every file under ``root`` by its path relative to it (``app.js``, ``pages/job.js``)."""
    return {
        path.relative_to(root).as_posix(): _File(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }


def _page(body: str, status: int) -> Response:
    return Response(body, status=status, headers=dict(_PAGE_HEADERS), content_type=_TYPES[".html"])


def register(app: QuartTrio, svc: Services) -> None:
    """Register the dashboard's routes on ``app``."""
    files = load_files()
    sessions = svc.web_sessions

    @app.route("/ui", methods=["GET"])
    async def ui_index() -> Response:
        return files["index.html"].response()

    @app.route("/ui/static/<path:name>", methods=["GET"])
    async def ui_static(name: str) -> Response:
        found = files.get(name)
        if found is None:
            raise NotFoundError()
        return found.response()

    @app.route("/organizations/<org>/pushy/ui/links", methods=["POST"])
    async def ui_links(org: str) -> Response:
        who = await authorized(svc, org, "read")
        raw = await request_body(svc)
        if raw.strip():
            require_json_content()
            if parse_json_body(raw) != {}:
                raise ValidationError("ui/links takes an empty body or {}")
        token = sessions.mint_link(org, who, trio.current_time())
        # a credential handed out: in the audit log (batched: nothing is stored by it)
        svc.audit.note(audit_entry(svc, who, org, "ui.link", status=201))
        return json_response(
            {"url": f"{base_url(svc)}/ui/login/{token}", "expires_in": round(sessions.link_ttl)},
            201,
        )

    @app.route("/ui/login/<token>", methods=["GET"])
    async def ui_login(token: str) -> Response:
        try:
            session = sessions.redeem(token, trio.current_time())
        except AuthError as e:
            ttl = round(sessions.link_ttl)
            return _page(
                _LINK_REFUSED_PAGE.format(message=html.escape(e.message), ttl=ttl), e.status
            )
        response = Response("", status=303, headers={**_PAGE_HEADERS, "Location": "/ui/"})
        response.set_cookie(
            SESSION_COOKIE, session.id, path="/", secure=True, httponly=True, samesite="Strict"
        )
        return response

    @app.route("/ui/session", methods=["GET"])
    async def ui_session() -> Response:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        now = trio.current_time()
        found = sessions.lookup(session_id, now)
        if found is None:
            raise AuthError(401, "not signed in")
        who = sessions.authenticate(
            svc.identity, session_id, found.org, method="GET", csrf=None, now=now
        )
        doc = {
            "org": found.org,
            "principal": {"kind": who.kind, "name": who.name},
            "csrf": found.csrf,
            "can_read": _may(svc, found.org, who, "read"),
            "can_write": _may(svc, found.org, who, "write"),
            "idle_timeout": sessions.idle_timeout,
        }
        return json_response(doc, headers={"Cache-Control": "no-store"})

    @app.route("/ui/logout", methods=["POST"])
    async def ui_logout() -> Response:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        found = sessions.lookup(session_id, trio.current_time())
        if found is not None:
            csrf = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(csrf.encode(), found.csrf.encode()):
                raise AuthError(403, f"missing or wrong {CSRF_HEADER} header")
            sessions.end(session_id)
        response = Response("", status=204)
        response.delete_cookie(
            SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict"
        )
        return response


def _may(svc: Services, org: str, who: Principal, action: str) -> bool:
    try:
        svc.auth.require(org, who, action)
    except AuthError:
        return False
    return True
