"""The Quart-trio application: request helpers, error mapping and path normalisation.

One place maps the exception tree to HTTP responses (:func:`_install_error_handlers`). No
traceback ever reaches a client: an unexpected error is logged with a request id and answered
``500 {"error":["internal error"],"request_id":…}``.
"""

from __future__ import annotations

import json
import logging
import re
import typing
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..auth import Principal
from ..errors import (
    ApiError,
    DomainError,
    JobFinishedError,
    MethodNotAllowedError,
    NoSuchJobError,
    NotAcceptableError,
    PayloadTooLargeError,
    UnsupportedMediaError,
    ValidationError,
)
from ..jsonbody import MSG_JSON, parse_json_body
from ..services import Services

__all__ = [
    "accepts",
    "create_app",
    "json_response",
    "read_json",
    "signed",
]

log = logging.getLogger("pushy_appliance.http")

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response with compact encoding."""
    return Response(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False),
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


async def signed(svc: Services, org: str | None) -> Principal:
    """Authenticate the current request (see :meth:`auth.Authenticator.authenticate`)."""
    body = await request_body(svc)
    return svc.auth.authenticate(
        org,
        method=request.method,
        path=_signed_path(),
        headers=typing.cast(Mapping[str, str], request.headers),
        body=body,
        now=datetime.now(UTC),
    )


async def authorized(
    svc: Services, org: str, action: str | None = None, *, produces: str = "application/json"
) -> Principal:
    """The common start of an org route: ``Accept`` allows ``produces`` (406), it is signed
    by a member of ``org`` (the checks of ``API.md`` §1, in their order, including 404 for an
    unknown org), and, with ``action``, the caller may do it (see
    :meth:`auth.Authenticator.require`)."""
    require_accept(produces)
    who = await signed(svc, org)
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


class NormalizePaths:
    """ASGI middleware: repeated slashes collapsed and a trailing slash removed.

    ``/pushy/jobs/`` is ``/pushy/jobs``, as the contract says, and the signed path is computed
    the same way by :func:`chef_auth.canonical_path`.
    """

    _slashes = re.compile(r"/{2,}")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            path = scope.get("path", "/")
            norm = self._slashes.sub("/", path)
            if len(norm) > 1 and norm.endswith("/"):
                norm = norm.rstrip("/") or "/"
            if norm != path:
                scope = dict(scope)
                scope["path"] = norm
                raw = scope.get("raw_path")
                if isinstance(raw, bytes):
                    r = re.sub(rb"/{2,}", b"/", raw)
                    if len(r) > 1 and r.endswith(b"/"):
                        r = r.rstrip(b"/") or b"/"
                    scope["raw_path"] = r
        if scope.get("type") == "http":
            send = _shield_end_of_response(send)
        await self.app(scope, receive, send)


def _shield_end_of_response(send: Any) -> Any:
    """Send the last, empty message of a response shielded from cancellation.

    Quart-trio cancels its request nursery as soon as hypercorn reports the disconnect that
    follows the response, which happens while that last ``send`` is still inside hypercorn's
    keep-alive bookkeeping. Cancelled there, the connection loses its idle timer: an idle
    keep-alive connection then never times out and holds a graceful shutdown for the whole
    drain period. The message carries no data, so the shield (on a short deadline) cannot
    wait on a slow client.
    """

    async def end_shielded(message: dict[str, Any]) -> None:
        if (
            message.get("type") == "http.response.body"
            and not message.get("more_body")
            and not message.get("body")
        ):
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 5.0):
                await send(message)
        else:
            await send(message)

    return end_shielded


def _domain_response(e: DomainError) -> Response:
    """The status and body of a domain error (``API.md`` §3: string-form job errors)."""
    if isinstance(e, NoSuchJobError):
        return json_response({"error": str(e)}, 404)
    if isinstance(e, JobFinishedError):
        return json_response({"error": str(e)}, 409)
    return _internal(e)


def _install_error_handlers(app: QuartTrio, svc: Services) -> None:
    @app.errorhandler(ApiError)
    async def _api_error(e: ApiError) -> Response:
        return json_response(e.body(), e.status, e.headers)

    @app.errorhandler(DomainError)
    async def _domain_error(e: DomainError) -> Response:
        return _domain_response(e)

    @app.errorhandler(HTTPException)
    async def _http_error(e: HTTPException) -> Response:
        code = e.code or 500
        if code == 404:
            return json_response({"error": ["not found"]}, 404)
        if code == 405:
            allowed = sorted(getattr(e, "valid_methods", None) or [])
            err = MethodNotAllowedError(allowed)
            return json_response(err.body(), 405, err.headers)
        if code == 413:
            err2 = PayloadTooLargeError(svc.config.limits.max_body_bytes)
            return json_response(err2.body(), 413)
        if code == 408:
            return json_response({"error": "request timed out"}, 408)
        if code < 500:
            return json_response({"error": e.description or e.name}, code)
        return _internal(e)

    @app.errorhandler(Exception)
    async def _unexpected(e: Exception) -> Response:
        return _internal(e)


def _internal(e: BaseException) -> Response:
    request_id = uuid.uuid4().hex
    log.error(
        "internal error request_id=%s %s %s", request_id, request.method, request.path, exc_info=e
    )
    return json_response({"error": ["internal error"], "request_id": request_id}, 500)


def create_app(svc: Services) -> QuartTrio:
    """Build the application with every route registered.

    Args:
        svc: the services handed to every handler.
    """
    from . import _feeds, _identity, _jobs, _nodes, _status  # routes import helpers from here

    app = QuartTrio("pushy_appliance")
    app.config["MAX_CONTENT_LENGTH"] = 2 * svc.config.limits.max_body_bytes + 65536
    app.config["BODY_TIMEOUT"] = 60
    app.config["RESPONSE_TIMEOUT"] = 60
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.url_map.strict_slashes = False
    _install_error_handlers(app, svc)
    _status.register(app, svc)
    _identity.register(app, svc)
    _nodes.register(app, svc)
    _jobs.register(app, svc)
    _feeds.register(app, svc)
    return app
