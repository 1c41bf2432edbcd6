"""Webhook routes (``docs/OPERATIONS.md``): an organization's admins add, list, show and
remove its webhooks and read their recent deliveries. A webhook's secret is stored and never
returned; the request's audit entry keeps only its URL's ``scheme://host:port``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from ..audit.model import rfc3339
from ..audit.summary import url_origin
from ..errors import NoSuchWebhookError, WebhookLimitError
from ..jsonbody import parse_json_body
from ..services import Services
from ..webhooks.model import PENDING, Delivery, Webhook
from ..webhooks.rules import validate_webhook_request
from ._audit import audit_entry
from ._request import authorized, base_url, json_response, request_body, require_json_content

__all__ = ["delivery_document", "register", "webhook_document"]


def webhook_document(hook: Webhook) -> dict[str, Any]:
    """A webhook as the API shows it: never its secret."""
    return {
        "id": hook.id,
        "url": hook.url,
        "events": list(hook.events),
        "created_at": rfc3339(hook.created_at),
        "created_by": hook.created_by,
        "pending": hook.pending,
        "dropped": hook.dropped,
    }


def delivery_document(d: Delivery) -> dict[str, Any]:
    """A delivery and its newest attempts (times in RFC 3339)."""
    attempts = [
        {
            "n": a["n"],
            "at": rfc3339(a["at"]),
            "status": a["status"],
            "error": a["error"],
            "ms": a["ms"],
        }
        for a in d.history
    ]
    doc: dict[str, Any] = {
        "id": d.id,
        "event": d.event,
        "job": d.job,
        "state": d.state,
        "attempts": d.attempts,
        "enqueued_at": rfc3339(d.enqueued_at),
        "last_attempts": attempts,
    }
    if d.state == PENDING:
        doc["next_at"] = rfc3339(d.next_at)
    return doc


def register(app: QuartTrio, svc: Services) -> None:
    """Register the webhook routes on ``app``."""
    db = svc.db
    limits = svc.config.webhooks

    def find(org: str, webhook_id: str) -> Webhook:
        found = svc.webhooks.find(org, webhook_id)
        if found is None:
            raise NoSuchWebhookError(webhook_id)
        return found

    @app.route("/organizations/<org>/pushy/webhooks", methods=["GET", "POST"])
    async def webhooks(org: str) -> Response:
        who = await authorized(svc, org, "admin")
        if request.method == "GET":
            return json_response([webhook_document(h) for h in svc.webhooks.of_org(org)])
        raw = await request_body(svc)
        require_json_content()
        req = validate_webhook_request(
            parse_json_body(raw), allow_http=org in limits.allow_http_orgs
        )
        webhook_id = secrets.token_hex(16)
        async with db.exclusive(("webhooks", org)):
            if len(svc.webhooks.of_org(org)) >= limits.max_per_org:
                raise WebhookLimitError(org, limits.max_per_org)
            record = {
                "t": "webhook.create",
                "id": webhook_id,
                "org": org,
                "url": req.url,
                "events": list(req.events),
                "secret": req.secret,
                "at": time.time(),
                "by": who.name,
            }
            summary = {"url": url_origin(req.url), "events": list(req.events)}
            await db.commit(
                record,
                audit_entry(
                    svc, who, org, "webhook.create", status=201, target=webhook_id, summary=summary
                ),
            )
        uri = f"{base_url(svc)}/organizations/{org}/pushy/webhooks/{webhook_id}"
        doc = {**webhook_document(find(org, webhook_id)), "uri": uri}
        return json_response(doc, 201, {"Location": uri})

    @app.route("/organizations/<org>/pushy/webhooks/<webhook_id>", methods=["GET", "DELETE"])
    async def webhook(org: str, webhook_id: str) -> Response:
        who = await authorized(svc, org, "admin")
        hook = find(org, webhook_id)
        doc = webhook_document(hook)
        if request.method == "DELETE":
            async with db.exclusive(("webhooks", org)):
                find(org, webhook_id)
                await db.commit(
                    {"t": "webhook.delete", "id": webhook_id},
                    audit_entry(svc, who, org, "webhook.delete", status=200, target=webhook_id),
                )
        return json_response(doc)

    @app.route("/organizations/<org>/pushy/webhooks/<webhook_id>/deliveries", methods=["GET"])
    async def deliveries(org: str, webhook_id: str) -> Response:
        await authorized(svc, org, "admin")
        hook = find(org, webhook_id)
        newest_first = reversed(list(hook.deliveries.values()))
        return json_response([delivery_document(d) for d in newest_first])
