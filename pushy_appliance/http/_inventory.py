"""Inventory routes: the nodes API and the Chef Server search routes knife uses.

* ``GET /organizations/ORG/pushy/nodes?q=QUERY&start=&rows=`` (read): ``{"total", "start",
  "rows": [{"name", "status", "availability", "last_seen", "facts"}]}``, sorted by name;
  ``q`` absent matches every node, ``rows`` absent returns every row from ``start``.
* ``GET /organizations/ORG/pushy/nodes/NODE`` (read): one such row; 404 for a node that
  never connected.
* ``GET /organizations/ORG/search/node?q=&start=&rows=&sort=`` (read): what ``knife search
  node`` and ``knife job start --search`` ask a Chef Server. Rows are Chef node objects
  (:func:`chef_node`); ``rows`` defaults to 1000 and ``sort`` is accepted and ignored, as
  Chef Server does (its rows come in index order; ours by name). ``q`` is percent-decoded
  once more after the query string's own decoding, as Chef Server does: knife-push escapes
  its query before Chef's search client escapes it again.
* ``POST /organizations/ORG/search/node?q=…`` (read): partial search. The body maps result
  names to attribute paths (``{"name": ["name"], "ip": ["ipaddress"]}``); each row is
  ``{"url": ".../organizations/ORG/nodes/NODE", "data": {name: value or null}}``, the paths
  looked up in the node's merged attributes (:func:`partial_data`). It changes nothing, so
  its signature may be sent again (knife pages through results with the same body).

The search routes answer with a ``Server-Timing`` header (``search;dur=MS, app;dur=MS``): the
milliseconds the search took (the walk over the org's nodes, with its checkpoints) and the
whole handler (authorization, search, rows, JSON), for measuring them apart from the network
and TLS (``benchmarks/bench_inventory.py``).

Every route is signed and authorized like the push-jobs reads (``read``). A query that does
not parse is 400 ``{"error": ["invalid search query: … at position N"]}``; a bad ``start``
or ``rows`` on the Chef routes is Chef's 400 ``{"error": ["invalid 'rows' value: 'x'"]}``,
a bad partial-search body ``{"error": ["invalid partial search request body"]}``.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, unquote

from quart import Response, request
from quart_trio import QuartTrio

from ..errors import NotFoundError, SearchRequestError, ValidationError
from ..jsonbody import parse_json_body
from ..nodes.inventory import Inventory, NodeRow
from ..search import Query, compile_query
from ..services import Services
from ._request import (
    authorized,
    base_url,
    json_response,
    request_body,
    require_json_content,
    rfc1123,
)

__all__ = ["CHEF_DEFAULT_ROWS", "chef_node", "node_document", "partial_data", "register"]

CHEF_DEFAULT_ROWS = 1000
"""Rows of a Chef search page when ``rows`` is not given (Chef Server's default)."""

_MAX_COUNT_DIGITS = 20


def node_document(row: NodeRow) -> dict[str, Any]:
    """A row of ``GET …/pushy/nodes``: ``{"name", "status", "availability", "last_seen",
    "facts"}`` (``last_seen`` in RFC 1123 form, like the API's other times)."""
    return {
        "name": row.name,
        "status": row.status,
        "availability": row.availability,
        "last_seen": rfc1123(row.last_seen),
        "facts": row.facts,
    }


def chef_node(name: str, facts: dict[str, Any]) -> dict[str, Any]:
    """The Chef node object of a node: ``automatic`` the facts, ``normal`` its tags.

    ``chef_environment`` is the operator's ``environment`` (``_default`` without one), the
    ``run_list`` its ``roles`` as ``role[NAME]`` items; ``default`` and ``override`` are empty.
    """
    automatic = {k: v for k, v in facts.items() if k not in ("tags", "chef_environment")}
    roles = facts.get("roles")
    return {
        "name": name,
        "chef_type": "node",
        "json_class": "Chef::Node",
        "chef_environment": facts.get("chef_environment") or "_default",
        "run_list": [f"role[{r}]" for r in roles] if isinstance(roles, list) else [],
        "automatic": automatic,
        "normal": {"tags": facts.get("tags") or []},
        "default": {},
        "override": {},
    }


def partial_data(node: dict[str, Any], paths: dict[str, list[str]]) -> dict[str, Any]:
    """The ``data`` of a partial-search row: each name's path looked up in the node.

    As Chef Server does, a path is read from the node's attributes merged (``default``, then
    ``normal``, ``override``, ``automatic``, later ones winning) with ``name``,
    ``chef_environment`` and ``run_list`` on top; a path that leads nowhere gives ``null``.
    """
    merged: dict[str, Any] = {}
    for level in ("default", "normal", "override", "automatic"):
        _deep_merge(merged, node[level])
    for key in ("name", "chef_environment", "run_list"):
        merged[key] = node[key]
    out: dict[str, Any] = {}
    for result_name, path in paths.items():
        value: Any = merged if path else None
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        out[result_name] = value
    return out


def _deep_merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        mine = into.get(key)
        if isinstance(mine, dict) and isinstance(value, dict):
            _deep_merge(mine, value)
        else:
            into[key] = dict(value) if isinstance(value, dict) else value


def _count(name: str, default: int | None, *, chef: bool) -> int | None:
    """The query parameter ``name``: a non-negative integer of ASCII digits, else 400."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if raw.isascii() and raw.isdigit() and len(raw) <= _MAX_COUNT_DIGITS:
        return int(raw)
    if chef:
        raise SearchRequestError(f"invalid '{name}' value: '{raw[:100]}'")
    raise ValidationError(f"invalid {name} (must be an integer 0 or more)")


def _query(text: str | None) -> Query | None:
    return None if text is None else compile_query(text)


def _page(names: list[str], start: int, rows: int | None) -> list[str]:
    return names[start:] if rows is None else names[start : start + rows]


async def _search(inventory: Inventory, org: str, text: str | None) -> tuple[list[str], float]:
    """The names ``text`` matches (every node when ``None``), and the seconds it took."""
    began = time.perf_counter()
    found = await inventory.search(org, _query(text))
    return found, time.perf_counter() - began


def _server_timing(began: float, search: float) -> dict[str, str]:
    app = time.perf_counter() - began
    return {"Server-Timing": f"search;dur={search * 1000:.2f}, app;dur={app * 1000:.2f}"}


def register(app: QuartTrio, svc: Services) -> None:
    """Register the inventory routes on ``app``."""
    inventory: Inventory = svc.inventory

    def row_of(org: str, name: str) -> NodeRow | None:
        return inventory.row(org, name)

    @app.route("/organizations/<org>/pushy/nodes", methods=["GET"])
    async def nodes(org: str) -> Response:
        began = time.perf_counter()
        await authorized(svc, org, "read")
        start = _count("start", 0, chef=False) or 0
        rows = _count("rows", None, chef=False)
        found, took = await _search(inventory, org, request.args.get("q"))
        docs = []
        for name in _page(found, start, rows):
            row = row_of(org, name)
            if row is not None:
                docs.append(node_document(row))
        body = {"total": len(found), "start": start, "rows": docs}
        return json_response(body, headers=_server_timing(began, took))

    @app.route("/organizations/<org>/pushy/nodes/<node>", methods=["GET"])
    async def node(org: str, node: str) -> Response:
        await authorized(svc, org, "read")
        row = row_of(org, node)
        if row is None:
            raise NotFoundError(f"node '{node[:300]}' not found")
        return json_response(node_document(row))

    @app.route("/organizations/<org>/search/node", methods=["GET", "POST"])
    async def chef_search(org: str) -> Response:
        began = time.perf_counter()
        partial = request.method == "POST"
        await authorized(svc, org, "read", read_only=partial)
        paths = None
        if partial:
            raw = await request_body(svc)
            require_json_content()
            paths = _partial_paths(parse_json_body(raw))
        start = _count("start", 0, chef=True) or 0
        rows = _count("rows", CHEF_DEFAULT_ROWS, chef=True)
        text = request.args.get("q")
        # Chef Server decodes q once more: knife-push escapes it before Chef's client does
        found, took = await _search(inventory, org, None if text is None else unquote(text))
        base = f"{base_url(svc)}/organizations/{org}/nodes/"
        out: list[dict[str, Any]] = []
        for name in _page(found, start, rows):
            row = row_of(org, name)
            if row is None:
                continue
            doc = chef_node(name, row.facts)
            if paths is None:
                out.append(doc)
            else:
                out.append({"url": base + quote(name, safe=""), "data": partial_data(doc, paths)})
        body = {"total": len(found), "start": start, "rows": out}
        return json_response(body, headers=_server_timing(began, took))


def _partial_paths(body: Any) -> dict[str, list[str]]:
    """A partial-search body: result name → path (a list of strings), else Chef's 400."""
    if not isinstance(body, dict) or not all(
        isinstance(path, list) and all(isinstance(step, str) for step in path)
        for path in body.values()
    ):
        raise SearchRequestError("invalid partial search request body")
    return body
