"""``GET /pushy/_status``: liveness and the appliance's own figures (no authentication)."""

from __future__ import annotations

import trio
from quart import Response
from quart_trio import QuartTrio

from .. import __version__
from ..services import Services
from ._request import json_response


def status_document(svc: Services) -> dict[str, object]:
    """The ``_status`` body: the original's fields, then ours (``API.md`` §3)."""
    stats = svc.db.store.statistics()
    nodes = svc.link.statistics() if svc.link is not None else None
    jobs = svc.jobs.live_job_ids() if svc.jobs is not None else []
    hub = svc.hub.statistics() if svc.hub is not None else None
    feeds = svc.feeds.statistics() if svc.feeds is not None else None
    return {
        "status": "it's alive",
        "incarnation_id": svc.incarnation_id,
        "node_fsm_count": nodes.online if nodes else 0,
        "job_processes": jobs,
        "version": __version__,
        "uptime_s": round(trio.current_time() - svc.started_at, 3),
        "nodes": {
            "online": nodes.online if nodes else 0,
            "available": nodes.available if nodes else 0,
        },
        "feeds": {
            "subscribers": hub.subscribers if hub else 0,
            "open": feeds.readers if feeds else 0,
            "lagged": hub.lagged_disconnects if hub else 0,
            "revoked": feeds.revoked if feeds else 0,
        },
        "store": {"records": stats.records, "bytes": stats.bytes},
    }


def register(app: QuartTrio, svc: Services) -> None:
    @app.route("/pushy/_status", methods=["GET"])
    async def _status() -> Response:
        return json_response(status_document(svc))
