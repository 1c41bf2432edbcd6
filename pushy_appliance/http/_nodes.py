"""Node routes: ``config/NODE``, ``node_states`` and ``node_states/NODE`` (``API.md`` §3)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from quart import Response
from quart_trio import QuartTrio

from ..errors import AuthError, NotFoundError
from ..model import valid_name
from ..nodes.link import NodeLink
from ..nodes.registry import NodeRegistry
from ..services import Services
from ._request import authorized, base_url, json_response, rfc1123

__all__ = ["CONFIG_WITHOUT_NODE_METHODS", "register"]

CONFIG_WITHOUT_NODE_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""``config/`` without a node: 404 for each of these methods."""


def _state_doc(link: NodeLink, org: str, name: str) -> dict[str, Any]:
    doc = link.node_state(org, name)
    if "updated_at" in doc:
        doc["updated_at"] = rfc1123(doc["updated_at"])
    return doc


def register(app: QuartTrio, svc: Services) -> None:
    """Register the node routes on ``app``."""
    registry: NodeRegistry = svc.nodes
    link: NodeLink = svc.link

    @app.route("/organizations/<org>/pushy/config/<node>", methods=["GET"])
    async def node_config(org: str, node: str) -> Response:
        who = await authorized(svc, org)
        if who.kind == "client" and who.name != node and not who.is_pivotal:
            raise AuthError(403, "Client and node name must match")
        svc.auth.require(org, who, "read")
        if not valid_name(node):
            raise NotFoundError(f"node '{node[:300]}' not found")
        # the host of the URL the API answers with: server_name, else a valid Host
        host = urlsplit(base_url(svc)).hostname or "localhost"
        url_host = f"[{host}]" if ":" in host else host
        hb = svc.config.heartbeat
        return json_response(
            {
                "type": "config",
                "host": host,
                "node": node,
                "organization": org,
                "public_key": svc.server_public_pem,
                "push_jobs": {
                    "heartbeat": {
                        "interval": hb.interval,
                        "offline_threshold": hb.offline_threshold,
                        "online_threshold": 2,
                    },
                    "connect_url": f"{svc.node_scheme}://{url_host}:{svc.node_port}"
                    f"/organizations/{org}/pushy/connect/{node}",
                },
                "lifetime": 3600,
                "max_message_skew": 300,
                "max_body_size": svc.config.limits.max_frame_bytes,
                "incarnation_id": svc.incarnation_id,
            }
        )

    # The original answered 404 to every method here (its config spec), not 405.
    @app.route(
        "/organizations/<org>/pushy/config",
        methods=list(CONFIG_WITHOUT_NODE_METHODS),
        provide_automatic_options=False,
    )
    async def node_config_without_node(org: str) -> Response:
        raise NotFoundError("not found")

    @app.route("/organizations/<org>/pushy/node_states", methods=["GET"])
    async def node_states(org: str) -> Response:
        await authorized(svc, org, "read")
        names = [n for n in registry.known_nodes(org) if svc.identity.has_client(org, n)]
        return json_response([_state_doc(link, org, n) for n in names])

    @app.route("/organizations/<org>/pushy/node_states/<node>", methods=["GET"])
    async def node_state(org: str, node: str) -> Response:
        await authorized(svc, org, "read")
        if not svc.identity.has_client(org, node):
            raise NotFoundError(f"node '{node[:300]}' not found")
        return json_response(_state_doc(link, org, node))
