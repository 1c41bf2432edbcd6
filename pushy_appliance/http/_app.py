"""The Quart-trio application: every route registered, errors mapped, paths normalised, and
every request behind the database's read barrier (``Database.barrier``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart_trio import QuartTrio

from ..paths import normalize_path
from ..services import Services
from ..urls import parse_host
from . import (
    _audit,
    _feeds,
    _identity,
    _inventory,
    _jobs,
    _nodes,
    _openapi,
    _status,
    _ui,
    _webhooks,
)
from ._errors import install_error_handlers

__all__ = ["ASGIApp", "NormalizePaths", "RequireValidHost", "create_app"]

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


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


class RequireValidHost:
    """ASGI middleware: a request whose ``Host`` is not a valid ``host[:port]`` is refused.

    400 ``{"error":"invalid Host header"}`` (RFC 9112 §3.2), before the request reaches the
    framework, whose URL binding would fail on it (a label over 63 characters, an empty
    label) with a 500 and a traceback; and so no route ever reflects such a value into a URL
    (:mod:`pushy_appliance.urls`). More than one ``Host`` is refused alike. A request without
    ``Host`` (HTTP/1.0) passes.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            hosts = [v for k, v in scope.get("headers", ()) if k.lower() == b"host"]
            if len(hosts) > 1 or (hosts and parse_host(hosts[0].decode("latin-1")) is None):
                await _refuse(scope, send)
                return
        await self.app(scope, receive, send)


async def _refuse(scope: dict[str, Any], send: Any) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = b'{"error":"invalid Host header"}'
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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


def create_app(svc: Services) -> QuartTrio:
    """Build the application with every route registered.

    Args:
        svc: the services handed to every handler.
    """
    # no static files: every route is one of the API's (and of its OpenAPI document)
    app = QuartTrio("pushy_appliance", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 2 * svc.config.limits.max_body_bytes + 65536
    app.config["BODY_TIMEOUT"] = 60
    app.config["RESPONSE_TIMEOUT"] = 60
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.url_map.strict_slashes = False
    install_error_handlers(app, svc)

    @app.before_request
    async def read_barrier() -> None:
        # read-your-writes across appliances (docs/SCALE-OUT.md §6): every request (and
        # feed connect) reads the models only once what was acknowledged anywhere before it
        # is applied here; at once on the file store
        await svc.db.barrier()

    _status.register(app, svc)
    _identity.register(app, svc)
    _nodes.register(app, svc)
    _inventory.register(app, svc)
    _jobs.register(app, svc)
    _webhooks.register(app, svc)
    _audit.register(app, svc)
    _feeds.register(app, svc)
    _ui.register(app, svc)
    _openapi.register(app, svc)
    return app
