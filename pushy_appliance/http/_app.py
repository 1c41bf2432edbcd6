"""The Quart-trio application: request helpers, error mapping and path normalisation.

One place maps the exception tree to HTTP responses (:func:`_install_error_handlers`). No
traceback ever reaches a client: an unexpected error is logged with a request id and answered
``500 {"error":["internal error"],"request_id":…}``.
"""

from __future__ import annotations

import json
import logging
import typing
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..errors import (
    ApiError,
    MethodNotAllowedError,
    NotAcceptableError,
    PayloadTooLargeError,
    UnsupportedMediaError,
    ValidationError,
)
from ..paths import normalize_path
from ._auth import Principal, authenticate, require
from ._context import Services

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
    """Authenticate the current request (see :func:`._auth.authenticate`)."""
    body = await request_body(svc)
    return authenticate(
        svc,
        org,
        method=request.method,
        path=_signed_path(),
        headers=typing.cast(Mapping[str, str], request.headers),
        body=body,
    )


async def authorized(
    svc: Services, org: str, action: str | None = None, *, produces: str = "application/json"
) -> Principal:
    """The common start of an org route: ``Accept`` allows ``produces`` (406), it is signed
    by a member of ``org`` (the checks of ``API.md`` §1, in their order, including 404 for an
    unknown org), and, with ``action``, the caller may do it (see :func:`._auth.require`)."""
    require_accept(produces)
    who = await signed(svc, org)
    if action is not None:
        require(svc, org, who, action)
    return who


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValidationError(
                "invalid environment value (duplicate key)"
                if isinstance(value, str)
                else f"invalid JSON body (duplicate key '{key}')"
            )
        out[key] = value
    return out


def has_lone_surrogates(value: Any) -> bool:
    """Whether a decoded JSON value holds a lone surrogate (a ``"\\ud800"`` escape).

    Such a string is not text: no name or value may carry one, and the store (UTF-8 msgpack)
    could not encode it. Every JSON body is checked once, here, rather than field by field.
    """
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def require_json_content() -> None:
    """Raise 415 unless the request's ``Content-Type`` is JSON (``application/json`` or
    ``…+json``, parameters allowed)."""
    ctype = request.headers.get("Content-Type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaError(ctype)


async def read_json(*, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        UnsupportedMediaError: a non-empty body whose Content-Type is not JSON (415).
        ValidationError: a body that is not JSON or not an object (400 ``invalid JSON body``).
    """
    body = await request.get_data(cache=True)
    assert isinstance(body, bytes)
    if not body.strip() and allow_empty:
        return {}
    require_json_content()
    try:
        value = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as e:
        if isinstance(e, ValidationError):
            raise
        raise ValidationError("invalid JSON body") from None
    except RecursionError:
        raise ValidationError("invalid JSON body") from None
    if not isinstance(value, dict) or (b"\\u" in body and has_lone_surrogates(value)):
        raise ValidationError("invalid JSON body")
    return value


class NormalizePaths:
    """ASGI middleware: repeated slashes collapsed and a trailing slash removed.

    ``/pushy/jobs/`` is ``/pushy/jobs``, as the contract says: the normal form of
    :func:`~pushy_appliance.paths.normalize_path`, which the signed path
    (:func:`chef_auth.canonical_path`) and the node listener use too. ``raw_path`` is
    normalised alike, its percent-escapes (``%2F`` too) left as they are.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            path = scope.get("path", "/")
            norm = normalize_path(path)
            if norm != path:
                scope = dict(scope)
                scope["path"] = norm
                raw = scope.get("raw_path")
                if isinstance(raw, bytes):
                    # latin-1 maps bytes to characters one to one: only slashes change
                    scope["raw_path"] = normalize_path(raw.decode("latin-1")).encode("latin-1")
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


def _install_error_handlers(app: QuartTrio, svc: Services) -> None:
    @app.errorhandler(ApiError)
    async def _api_error(e: ApiError) -> Response:
        return json_response(e.body(), e.status, e.headers)

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
