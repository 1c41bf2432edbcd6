"""What every route shares: authentication of the current request, content negotiation,
the body (size cap, JSON by :mod:`pushy_appliance.jsonbody`), JSON responses, URLs, dates,
and the job lookup of the job-scoped routes.

The route modules import these; nothing here imports a route module.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, Final
from urllib.parse import unquote

import trio
from quart import Response, request

from ..auth import Principal
from ..errors import (
    NoSuchJobError,
    NotAcceptableError,
    PayloadTooLargeError,
    UnsupportedMediaError,
    ValidationError,
)
from ..jobs.model import JobEntry
from ..jsonbody import MSG_JSON, parse_json_body
from ..services import Services
from ..urls import public_base_url
from ..websession import CSRF_HEADER, SESSION_COOKIE

__all__ = [
    "JSON_STYLE",
    "accepts",
    "authorized",
    "base_url",
    "find_job",
    "json_response",
    "read_json",
    "request_body",
    "require_accept",
    "require_json_content",
    "rfc1123",
    "session_cookie",
    "signed",
]

_JOB_ID = re.compile(r"[0-9a-f]{32}")


JSON_STYLE: Final[dict[str, Any]] = {"separators": (",", ":"), "ensure_ascii": False}
"""How response bodies are encoded: compact, non-ASCII text as UTF-8."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response with compact encoding."""
    return Response(
        json.dumps(body, **JSON_STYLE),
        status=status,
        headers=headers or {},
        content_type="application/json",
    )


def accepts(header: str | None, mime: str) -> bool:
    """Whether an ``Accept`` header allows ``mime`` (no header allows everything)."""
    if not header or not header.strip():
        return True
    major = mime.split("/", 1)[0]
    for part in header.split(","):
        media = part.split(";", 1)[0].strip().lower()
        params = part.split(";")[1:]
        if any(p.strip().replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            continue
        if media in (mime, "*/*", f"{major}/*", "*"):
            return True
    return False


def require_accept(mime: str = "application/json") -> None:
    """Raise 406 when the request's ``Accept`` excludes ``mime``."""
    if not accepts(request.headers.get("Accept"), mime):
        raise NotAcceptableError(mime)


def _signed_path() -> str:
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes | bytearray) else request.path
    return unquote(path.split("?", 1)[0])


async def request_body(svc: Services) -> bytes:
    """The request body, refused with 413 over ``limits.max_body_bytes``.

    Quart's own cap is set higher so an oversized body is read (and answered cleanly) rather
    than the connection reset mid-upload; beyond that hard cap the connection is dropped.
    """
    body = await request.get_data(cache=True)
    assert isinstance(body, bytes)
    if len(body) > svc.config.limits.max_body_bytes:
        raise PayloadTooLargeError(svc.config.limits.max_body_bytes)
    return body


def session_cookie(org: str | None) -> str | None:
    """The dashboard session the current request acts through, or ``None`` when it is signed.

    A request to an org's push-jobs routes (``/organizations/ORG/pushy/…``) that carries the
    dashboard's session cookie and no ``X-Ops-UserId`` acts as that session's principal.
    """
    session_id = request.cookies.get(SESSION_COOKIE)
    if (
        session_id is not None
        and org is not None
        and "X-Ops-UserId" not in request.headers
        and request.path.startswith(f"/organizations/{org}/pushy/")
    ):
        return session_id
    return None


async def signed(svc: Services, org: str | None, *, read_only: bool = False) -> Principal:
    """Authenticate the current request (see :meth:`auth.Authenticator.authenticate`;
    ``read_only``: a route that changes nothing whatever its method).

    A request through a dashboard session (:func:`session_cookie`) acts as that session's
    principal instead (see :meth:`websession.WebSessions.authenticate`;
    ``docs/DASHBOARD.md``).
    """
    body = await request_body(svc)
    session_id = session_cookie(org)
    if session_id is not None and org is not None:
        return svc.web_sessions.authenticate(
            svc.identity,
            session_id,
            org,
            method=request.method,
            csrf=request.headers.get(CSRF_HEADER),
            now=trio.current_time(),
        )
    return svc.auth.authenticate(
        org,
        method=request.method,
        path=_signed_path(),
        headers=typing.cast(Mapping[str, str], request.headers),
        body=body,
        now=datetime.now(UTC),
        read_only=read_only,
    )


async def authorized(
    svc: Services,
    org: str,
    action: str | None = None,
    *,
    produces: str = "application/json",
    read_only: bool = False,
) -> Principal:
    """The common start of an org route: ``Accept`` allows ``produces`` (406), it is signed
    by a member of ``org`` (the checks of ``API.md`` §1, in their order, including 404 for an
    unknown org), and, with ``action``, the caller may do it (see
    :meth:`auth.Authenticator.require`). ``read_only``: see :func:`signed`."""
    require_accept(produces)
    who = await signed(svc, org, read_only=read_only)
    if action is not None:
        svc.auth.require(org, who, action)
    return who


def require_json_content() -> None:
    """Raise 415 unless the request's ``Content-Type`` is JSON (``application/json`` or
    ``…+json``, parameters allowed)."""
    ctype = request.headers.get("Content-Type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaError(ctype)


async def read_json() -> dict[str, Any]:
    """The request body as a JSON object (decoded by :func:`jsonbody.parse_json_body`).

    Raises:
        UnsupportedMediaError: a body whose Content-Type is not JSON (415).
        ValidationError: a body that is not JSON by that policy, or not an object (400).
    """
    body = await request.get_data(cache=True)
    assert isinstance(body, bytes)
    require_json_content()
    value = parse_json_body(body)
    if not isinstance(value, dict):
        raise ValidationError(MSG_JSON)
    return value


def base_url(svc: Services) -> str:
    """``scheme://host[:port]`` of the current request, by the rule of
    :func:`pushy_appliance.urls.public_base_url`: ``server_name`` when configured, else a
    valid ``Host``; ``X-Forwarded-Proto`` only when it is ``http`` or ``https``."""
    server = request.scope.get("server")
    listener = (str(server[0]), int(server[1])) if server and server[1] is not None else None
    return public_base_url(
        server_name=svc.config.server_name,
        host_header=request.headers.get("Host"),
        forwarded_proto=request.headers.get("X-Forwarded-Proto"),
        scheme="https" if request.scheme in ("https", "wss") else "http",
        listener=listener,
    )


def rfc1123(t: float) -> str:
    """``Tue, 04 Sep 2012 23:01:02 GMT``."""
    return formatdate(t, usegmt=True)


async def find_job(svc: Services, org: str, job_id: str) -> JobEntry:
    """The job ``job_id`` of ``org``; 404 for another org's job too (**fix** of the original).

    A finished job's details are read from the store's archive first if they are not in
    memory (a large one off the event loop: ``JobRunner.load_details``).
    """
    entry = svc.jobs.model.jobs.get(job_id) if _JOB_ID.fullmatch(job_id) else None
    if entry is None or entry.org != org:
        raise NoSuchJobError(job_id)
    await svc.jobs.load_details(entry)
    return entry
