"""The one place that maps exceptions to HTTP responses.

:class:`ApiError` carries its own status and body; a :class:`DomainError` (what a model or
engine refuses) gets the status and body form of ``API.md`` here; a write the store refused
(:class:`StoreUnavailableError`: disk full, I/O error) is ``503 {"error": "store unavailable:
…"}``, with nothing changed; a job that would pass the cap on live jobs
(:class:`JobCapacityError`) is ``503`` with ``Retry-After``; Werkzeug's own errors
(unknown route, wrong method, oversized body, timeout) get the contract's JSON bodies. No
traceback ever reaches a client: an unexpected error is logged with a request id and answered
``500 {"error":["internal error"],"request_id":…}``. A refusal (401, 403) of a signed route
is also handed to the audit log here (:func:`._audit.note_refusal`).
"""

from __future__ import annotations

import logging
import uuid

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..errors import (
    ApiError,
    AuthError,
    DomainError,
    IdentityExistsError,
    JobCapacityError,
    JobFinishedError,
    MethodNotAllowedError,
    NoSuchIdentityError,
    NoSuchJobError,
    NoSuchWebhookError,
    NothingToRerunError,
    PayloadTooLargeError,
    StoreUnavailableError,
    TooManyFeedsError,
    TooManyPrincipalFeedsError,
    WebhookLimitError,
)
from ..services import Services
from ._audit import note_refusal
from ._request import json_response

__all__ = ["install_error_handlers"]

log = logging.getLogger("pushy_appliance.http")


_DOMAIN_ERRORS: dict[type[DomainError], tuple[int, bool]] = {
    NoSuchJobError: (404, False),
    JobFinishedError: (409, False),
    JobCapacityError: (503, False),
    NothingToRerunError: (409, False),
    NoSuchWebhookError: (404, False),
    WebhookLimitError: (409, False),
    NoSuchIdentityError: (404, True),
    IdentityExistsError: (409, True),
    TooManyPrincipalFeedsError: (429, False),
    TooManyFeedsError: (503, False),
}
"""Status and body form by domain error: the job routes answer ``{"error": "…"}`` (``API.md``
§3), the identity routes Chef Server's list form ``{"error": ["…"]}`` (§4)."""

CAPACITY_RETRY_AFTER = 5
"""Seconds a client refused for the cap on live jobs is told to wait (``Retry-After``)."""


def _domain_response(e: DomainError) -> Response:
    mapped = _DOMAIN_ERRORS.get(type(e))
    if mapped is None:
        return _internal(e)
    status, list_form = mapped
    # the server is full, not the request wrong: the same request succeeds later
    headers = {"Retry-After": str(CAPACITY_RETRY_AFTER)} if status == 503 else None
    return json_response({"error": [str(e)] if list_form else str(e)}, status, headers)


def install_error_handlers(app: QuartTrio, svc: Services) -> None:
    """Register the mapping of every exception to its response on ``app``."""

    @app.errorhandler(ApiError)
    async def _api_error(e: ApiError) -> Response:
        if isinstance(e, AuthError):
            note_refusal(svc, e)  # a 401 or 403 goes to the audit log
        return json_response(e.body(), e.status, e.headers)

    @app.errorhandler(DomainError)
    async def _domain_error(e: DomainError) -> Response:
        return _domain_response(e)

    @app.errorhandler(StoreUnavailableError)
    async def _store_unavailable(e: StoreUnavailableError) -> Response:
        # nothing was stored or changed: the client may send the same request again later
        return json_response({"error": str(e)}, 503)

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
