"""The API's contract as an OpenAPI 3.1 document, served at ``GET /pushy/openapi.json``.

Written here, in Python, as the one source of truth (not a JSON file beside the code): the
error shapes, the signing scheme and the common responses are written once and shared by
every operation, and the limits come from the constants the validation uses, so the
document cannot drift from them. It is one long module on purpose: it is data (one
document), not logic, and splitting it would scatter the one contract a reader checks
against ``API.md``. ``tests/test_openapi.py`` compares its paths and methods with
the routes the application registers (``app.url_map``), both ways, and
``tests/test_api_fuzz.py`` checks the running server against it with schemathesis.

Statuses follow ``API.md``: validation errors are ``{"error": "…"}``, authentication, identity
and routing errors ``{"error": ["…"]}``; an unexpected error would be 500
``{"error": ["internal error"], "request_id": "…"}`` (none is expected: the fuzz run fails
on any 5xx).
"""

from __future__ import annotations

import copy
from typing import Any, Final

from quart import Response
from quart_trio import QuartTrio

from .. import __version__
from ..jobs.rerun import SELECTIONS
from ..jobs.validation import MAX_COMMAND_BYTES, MAX_RUN_TIMEOUT, MAX_USER_CHARS
from ..model import NAME_RE, ORG_RE
from ..services import Services
from ..webhooks.rules import EVENTS, MAX_SECRET_CHARS, MAX_URL_BYTES, MIN_SECRET_CHARS
from ._request import json_response

__all__ = ["OPENAPI_PATH", "openapi_document", "register"]

OPENAPI_PATH: Final = "/pushy/openapi.json"

Schema = dict[str, Any]

_JSON: Final = "application/json"
_SIGNED: Final[list[dict[str, list[str]]]] = [
    {
        "opsUserId": [],
        "opsSign": [],
        "opsTimestamp": [],
        "opsContentHash": [],
        "opsAuthorization": [],
    }
]
_JOB_STATUSES: Final = [
    "new",
    "voting",
    "running",
    "complete",
    "quorum_failed",
    "timed_out",
    "aborted",
    "crashed",
]
_EVENTS: Final = [
    "start",
    "quorum_vote",
    "quorum_succeeded",
    "run_start",
    "run_complete",
    "rehab",
    "job_complete",
    "output",
    "summary",
    "start_of_history",
    "lagged",
    "node_status",
    "nodes_changed",
]
_BUCKETS: Final = [
    "new",
    "ready",
    "running",
    "succeeded",
    "failed",
    "aborted",
    "unavailable",
    "nacked",
    "crashed",
    "was_ready",
    "timed_out",
]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> Schema:
    return {_JSON: {"schema": schema}}


def _error(description: str) -> Schema:
    return {"description": description, "content": _json(_ref("Error"))}


def _ok(schema: Schema, description: str = "OK", status_headers: Schema | None = None) -> Schema:
    out: Schema = {"description": description, "content": _json(schema)}
    if status_headers:
        out["headers"] = status_headers
    return out


_LOCATION: Final = {"Location": {"description": "the new resource's URI", "schema": {}}}

_SIGNED_ERRORS: Final = {
    "400": _error("a validation error (string form) or a missing signing header (list form)"),
    "401": _error("unknown principal, bad signature or timestamp, or a replayed request"),
    "403": _error("not a member of the organization, or not permitted"),
    "404": _error("no such organization or resource"),
    "406": _error("the Accept header excludes what the route produces"),
}
_BODY_ERRORS: Final = {
    "413": _error("a body over limits.max_body_bytes"),
    "415": _error("a body whose Content-Type is not JSON"),
}


def _op(
    op_id: str,
    summary: str,
    responses: dict[str, Schema],
    *,
    tags: list[str],
    body: Schema | None = None,
    body_required: bool = True,
    signed: bool = True,
    params: list[Schema] | None = None,
) -> Schema:
    op: Schema = {"operationId": op_id, "summary": summary, "tags": tags}
    if params:
        op["parameters"] = params
    all_responses = dict(responses)
    if signed:
        op["security"] = _SIGNED
        for code, resp in _SIGNED_ERRORS.items():
            all_responses.setdefault(code, resp)
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": _json(body)}
        for code, resp in _BODY_ERRORS.items():
            all_responses.setdefault(code, resp)
        all_responses.setdefault("400", _error("invalid JSON body or a field's rule"))
    op["responses"] = all_responses
    return op


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}  # fmt: skip


def _schemas() -> dict[str, Schema]:
    name = {"type": "string", "pattern": f"^{NAME_RE.pattern}$"}
    uri = {"type": "string"}
    uri_map = {"type": "object", "additionalProperties": uri}
    string = {"type": "string", "maxLength": 1024}
    actors = {
        "type": "object",
        "additionalProperties": False,
        "properties": {k: {"type": "array", "items": name} for k in ("users", "clients", "groups")},
    }
    pem = {"type": "string", "description": "a PEM public key"}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    ]
                },
                "request_id": {"type": "string"},
            },
        },
        "Status": {
            "type": "object",
            "required": ["status", "incarnation_id", "node_fsm_count", "job_processes"],
            "properties": {
                "status": {"const": "it's alive"},
                "incarnation_id": {"type": "string"},
                "node_fsm_count": {"type": "integer", "minimum": 0},
                "job_processes": {"type": "array", "items": {"type": "string"}},
                "version": {"type": "string"},
                "uptime_s": {"type": "number"},
                "nodes": {
                    "type": "object",
                    "properties": {
                        "online": {"type": "integer"},
                        "available": {"type": "integer"},
                    },
                },
                "feeds": {
                    "type": "object",
                    "properties": {
                        "subscribers": {"type": "integer"},
                        "open": {"type": "integer"},
                        "lagged": {"type": "integer"},
                        "revoked": {"type": "integer"},
                    },
                },
                "store": {
                    "type": "object",
                    "properties": {"records": {"type": "integer"}, "bytes": {"type": "integer"}},
                },
            },
        },
        "UriMap": uri_map,
        "Created": {"type": "object", "required": ["uri"], "properties": {"uri": uri}},
        "ChefKey": {
            "type": "object",
            "required": ["name", "public_key"],
            "properties": {
                "name": {"type": "string"},
                "public_key": {"type": "string"},
                "private_key": {"type": "string"},
                "expiration_date": {"type": "string"},
            },
        },
        "CreatedWithKey": {
            "type": "object",
            "required": ["uri", "chef_key"],
            "properties": {"uri": uri, "chef_key": _ref("ChefKey")},
        },
        "NewOrg": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": f"^{ORG_RE.pattern}$"},
                "full_name": string,
            },
        },
        "Org": {
            "type": "object",
            "required": ["name", "full_name", "guid"],
            "properties": {
                "name": {"type": "string"},
                "full_name": {"type": "string"},
                "guid": {"type": "string"},
            },
        },
        "NewUser": {
            "type": "object",
            "required": ["username"],
            "properties": {
                "username": name,
                "display_name": string,
                "email": string,
                "create_key": {"type": "boolean"},
                "public_key": pem,
            },
        },
        "User": {
            "type": "object",
            "required": ["username", "display_name", "email"],
            "properties": {
                "username": {"type": "string"},
                "display_name": {"type": "string"},
                "email": {"type": "string"},
                "public_key": {"type": ["string", "null"]},
            },
        },
        "Membership": {
            "type": "object",
            "required": ["username"],
            "properties": {"username": name},
        },
        "Members": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["user"],
                "properties": {
                    "user": {
                        "type": "object",
                        "required": ["username"],
                        "properties": {"username": {"type": "string"}},
                    }
                },
            },
        },
        "NewClient": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": name,
                "create_key": {"type": "boolean"},
                "public_key": pem,
                "admin": {"type": "boolean"},
            },
        },
        "Client": {
            "type": "object",
            "required": ["name", "clientname", "orgname", "validator", "admin", "public_key"],
            "properties": {
                "name": {"type": "string"},
                "clientname": {"type": "string"},
                "orgname": {"type": "string"},
                "validator": {"type": "boolean"},
                "admin": {"type": "boolean"},
                "public_key": {"type": ["string", "null"]},
            },
        },
        "NewGroup": {
            "type": "object",
            "required": ["groupname"],
            "properties": {"groupname": name, "actors": actors},
        },
        "GroupUpdate": {
            "type": "object",
            "properties": {"groupname": name, "actors": actors},
        },
        "Group": {
            "type": "object",
            "required": ["name", "groupname", "orgname", "actors", "users", "clients", "groups"],
            "properties": {
                "name": {"type": "string"},
                "groupname": {"type": "string"},
                "orgname": {"type": "string"},
                **{
                    k: {"type": "array", "items": {"type": "string"}}
                    for k in ("actors", "users", "clients", "groups")
                },
            },
        },
        "Principals": {
            "type": "object",
            "required": ["principals"],
            "properties": {
                "principals": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type", "public_key", "org_member"],
                        "properties": {
                            "name": {"type": "string"},
                            "type": {"enum": ["user", "client"]},
                            "public_key": {"type": ["string", "null"]},
                            "authz_id": {"type": "string"},
                            "org_member": {"type": "boolean"},
                        },
                    },
                }
            },
        },
        "NodeConfig": {
            "type": "object",
            "required": [
                "type",
                "host",
                "node",
                "organization",
                "public_key",
                "push_jobs",
                "lifetime",
                "max_message_skew",
                "max_body_size",
                "incarnation_id",
            ],
            "properties": {
                "type": {"const": "config"},
                "host": {"type": "string"},
                "node": {"type": "string"},
                "organization": {"type": "string"},
                "public_key": {"type": "string"},
                "push_jobs": {
                    "type": "object",
                    "required": ["heartbeat", "connect_url"],
                    "properties": {
                        "heartbeat": {
                            "type": "object",
                            "required": ["interval", "offline_threshold", "online_threshold"],
                            "properties": {
                                "interval": {"type": "number"},
                                "offline_threshold": {"type": "integer"},
                                "online_threshold": {"type": "integer"},
                            },
                        },
                        "connect_url": {"type": "string"},
                    },
                },
                "lifetime": {"type": "integer"},
                "max_message_skew": {"type": "integer"},
                "max_body_size": {"type": "integer"},
                "incarnation_id": {"type": "string"},
            },
        },
        "NodeState": {
            "type": "object",
            "required": ["node_name", "status", "availability"],
            "properties": {
                "node_name": {"type": "string"},
                "status": {"enum": ["online", "offline"]},
                "availability": {"enum": ["available", "unavailable"]},
                "updated_at": {"type": "string"},
            },
        },
        "NodeRow": {
            "type": "object",
            "required": ["name", "status", "availability", "last_seen", "facts"],
            "properties": {
                "name": {"type": "string"},
                "status": {"enum": ["online", "offline"]},
                "availability": {"enum": ["available", "unavailable"]},
                "last_seen": {
                    "type": "string",
                    "description": "RFC 1123: an online node's last frame, else when it went "
                    "offline",
                },
                "facts": {
                    "type": "object",
                    "description": "the node's last-known facts (ohai's names, docs/SEARCH.md)",
                },
            },
        },
        "NodePage": {
            "type": "object",
            "required": ["total", "start", "rows"],
            "properties": {
                "total": {"type": "integer", "minimum": 0},
                "start": {"type": "integer", "minimum": 0},
                "rows": {"type": "array", "items": _ref("NodeRow")},
            },
        },
        "ChefNode": {
            "type": "object",
            "required": [
                "name",
                "chef_type",
                "json_class",
                "chef_environment",
                "run_list",
                "automatic",
                "normal",
                "default",
                "override",
            ],
            "properties": {
                "name": {"type": "string"},
                "chef_type": {"const": "node"},
                "json_class": {"const": "Chef::Node"},
                "chef_environment": {"type": "string"},
                "run_list": {"type": "array", "items": {"type": "string"}},
                "automatic": {"type": "object"},
                "normal": {"type": "object"},
                "default": {"type": "object"},
                "override": {"type": "object"},
            },
        },
        "ChefSearch": {
            "type": "object",
            "required": ["total", "start", "rows"],
            "properties": {
                "total": {"type": "integer", "minimum": 0},
                "start": {"type": "integer", "minimum": 0},
                "rows": {"type": "array", "items": _ref("ChefNode")},
            },
        },
        "PartialSearchRequest": {
            "type": "object",
            "description": 'result name → attribute path, e.g. {"ip": ["ipaddress"]}',
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "PartialSearch": {
            "type": "object",
            "required": ["total", "start", "rows"],
            "properties": {
                "total": {"type": "integer", "minimum": 0},
                "start": {"type": "integer", "minimum": 0},
                "rows": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["url", "data"],
                        "properties": {"url": {"type": "string"}, "data": {"type": "object"}},
                    },
                },
            },
        },
        "JobRequest": {
            "type": "object",
            "required": ["command"],
            "oneOf": [{"required": ["nodes"]}, {"required": ["search"]}],
            "additionalProperties": False,
            "properties": {
                "command": {
                    "type": "string",
                    "minLength": 1,
                    "description": f"at most {MAX_COMMAND_BYTES} UTF-8 bytes, no NUL",
                },
                "nodes": {"type": "array", "items": name, "minItems": 1, "uniqueItems": True},
                "search": {
                    "type": "string",
                    "minLength": 1,
                    "description": "instead of nodes: a query (Chef's search syntax, "
                    "docs/SEARCH.md) whose matches, found once at creation, are the job's "
                    "nodes; none is 400 no nodes match the search",
                },
                "quorum": {
                    "oneOf": [
                        {"type": "integer", "minimum": 0},
                        {"type": "string", "pattern": r"^[0-9]{1,3}(\.[0-9]{1,6})?%$"},
                    ],
                    "description": "at most len(nodes) (the match count with search); or a "
                    "percentage 0% .. 100% of them",
                },
                "run_timeout": {"type": "integer", "minimum": 1, "maximum": MAX_RUN_TIMEOUT},
                "user": {"type": "string", "minLength": 1, "maxLength": MAX_USER_CHARS},
                "dir": {"type": "string", "pattern": "^/"},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "file": {
                    "type": "string",
                    "pattern": "^(raw:|base64:)",
                    "description": "decoded at most limits.max_file_bytes",
                },
                "capture_output": {"type": "boolean"},
                "max_concurrency": {"type": "integer", "minimum": 1},
                "max_failures": {"type": "integer", "minimum": 0},
            },
        },
        "LoginLink": {
            "type": "object",
            "required": ["url", "expires_in"],
            "properties": {"url": {"type": "string"}, "expires_in": {"type": "integer"}},
        },
        "JobCreated": {
            "type": "object",
            "required": ["id", "uri"],
            "properties": {"id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "uri": uri},
        },
        "JobSummary": {
            "type": "object",
            "required": ["id", "command", "status", "run_timeout", "created_at", "updated_at"],
            "properties": {
                "id": {"type": "string"},
                "command": {"type": "string"},
                "status": {"enum": _JOB_STATUSES},
                "run_timeout": {"type": "integer"},
                "created_at": {"type": "string"},
                "updated_at": {"type": "string"},
                "user": {"type": "string"},
                "dir": {"type": "string"},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "capture_output": {"const": True},
                "file_specified": {"const": True},
                "requester": {"type": "string", "description": "who started the job"},
            },
        },
        "Job": {
            "allOf": [
                _ref("JobSummary"),
                {
                    "type": "object",
                    "required": ["nodes", "quorum"],
                    "properties": {
                        "nodes": {
                            "type": "object",
                            "propertyNames": {"enum": _BUCKETS},
                            "additionalProperties": {"type": "array", "items": {"type": "string"}},
                        },
                        "quorum": {"type": "integer"},
                        "file": {"type": "string"},
                        "nack_reasons": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "max_concurrency": {"type": "integer"},
                        "max_failures": {"type": "integer"},
                        "search": {
                            "type": "string",
                            "description": "the query that named the job's nodes",
                        },
                        "rerun_of": {
                            "type": "string",
                            "description": "the job this one re-runs (POST jobs/ID/rerun)",
                        },
                    },
                },
            ]
        },
        "AbortRequest": {"type": "object", "maxProperties": 0},
        **_ops_schemas(),
        "Event": {
            "type": "object",
            "description": (
                "one Server-Sent Event; data is JSON whose first key is timestamp. A"
                " quorum_vote's data: node, status, and where known reason (a failure's nack"
                " reason) and held_by (the live job holding a node that nacked busy or voted"
                " down); see docs/API-EXTENSIONS.md"
            ),
            "properties": {
                "event": {"enum": _EVENTS},
                "id": {"type": "string", "pattern": "^(job-[0-9]+|org-[0-9]+|start_id)$"},
                "data": {"type": "string", "contentMediaType": "application/json"},
            },
        },
    }


def _paths() -> dict[str, Schema]:
    org = {"name": "org", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": f"^{ORG_RE.pattern}$"}}  # fmt: skip

    def path_param(name: str, schema: Schema | None = None) -> Schema:
        return {"name": name, "in": "path", "required": True,
                "schema": schema or {"type": "string", "minLength": 1}}  # fmt: skip

    name = path_param("name")
    job_id = path_param("job_id")
    node = path_param("node")
    identity = ["identity"]
    jobs = ["jobs"]
    nodes = ["nodes"]
    feeds = ["feeds"]
    created = {"201": _ok(_ref("Created"), "created", _LOCATION), "409": _error("exists")}
    created_key = {
        "201": _ok(_ref("CreatedWithKey"), "created", _LOCATION),
        "409": _error("exists, or the other kind of principal of the org has that name"),
    }
    feed_refusals = {
        "429": _error("the principal has feeds.max_per_principal feeds open"),
        "503": _error("the server has feeds.max_connections feeds open"),
    }
    event_stream = {
        "description": "Server-Sent Events (``event:``, ``id:``, ``data: JSON``)",
        "headers": {
            "Cache-Control": {"schema": {"const": "no-cache"}},
            "X-Accel-Buffering": {"schema": {"const": "no"}},
        },
        "content": {"text/event-stream": {"schema": _ref("Event")}},
    }
    feed_headers = [
        {"name": "Last-Event-ID", "in": "header", "required": False,
         "schema": {"type": "string"}, "description": "resume after this event"},
    ]  # fmt: skip
    node_events = {"name": "node_events", "in": "query", "required": False,
                   "schema": {"type": "string"},
                   "description": "true: also the live node events (docs/FEEDS.md)"}  # fmt: skip
    job_link = {
        "GetJob": {
            "operationId": "getJob",
            "parameters": {"org": "$request.path.org", "job_id": "$response.body#/id"},
        },
        "AbortJob": {
            "operationId": "abortJob",
            "parameters": {"org": "$request.path.org", "job_id": "$response.body#/id"},
        },
        "GetJobOutput": {
            "operationId": "getJobOutput",
            "parameters": {
                "org": "$request.path.org",
                "job_id": "$response.body#/id",
                "node": "$request.body#/nodes/0",
                "channel": "stdout",
            },
        },
        "GetJobFeed": {
            "operationId": "getJobFeed",
            "parameters": {"org": "$request.path.org", "job_id": "$response.body#/id"},
        },
    }
    after_get = {
        "AbortJob": {
            "operationId": "abortJob",
            "parameters": {"org": "$request.path.org", "job_id": "$response.body#/id"},
        },
    }
    after_abort = {
        "GetJob": {
            "operationId": "getJob",
            "parameters": {"org": "$request.path.org", "job_id": "$response.body#/id"},
        },
    }
    client_links = {
        op: {
            "operationId": op_id,
            "parameters": {"org": "$request.path.org", "name": "$request.body#/name"},
        }
        for op, op_id in (("GetClient", "getClient"), ("DeleteClient", "deleteClient"))
    }
    not_found_everywhere = {"404": _error("config/ without a node: 404 for every method")}
    chef_search_params = [
        _query(
            "q",
            {"type": "string"},
            "a search query, percent-decoded once more (as Chef Server does); absent: *:*",
        ),
        _query("start", {"type": "integer", "minimum": 0}, "rows to skip"),
        _query("rows", {"type": "integer", "minimum": 0}, "at most this many (default 1000)"),
        _query("sort", {"type": "string"}, "accepted and ignored, as by Chef Server"),
    ]
    paths: dict[str, Schema] = {
        OPENAPI_PATH: {
            "get": _op(
                "getOpenApi",
                "This document",
                {"200": _ok({"type": "object"})},
                tags=["status"],
                signed=False,
            ),
        },
        "/pushy/_status": {
            "get": _op(
                "getStatus",
                "Liveness and figures (no authentication)",
                {"200": _ok(_ref("Status"))},
                tags=["status"],
                signed=False,
            ),
        },
        "/organizations": {
            "get": _op(
                "listOrgs",
                "Organizations (pivotal: all; a user: theirs)",
                {"200": _ok(_ref("UriMap"))},
                tags=identity,
            ),
            "post": _op(
                "createOrg",
                "Create an organization (pivotal)",
                created,
                tags=identity,
                body=_ref("NewOrg"),
            ),
        },
        "/organizations/{org}": {
            "parameters": [org],
            "get": _op("getOrg", "An organization", {"200": _ok(_ref("Org"))}, tags=identity),
            "delete": _op(
                "deleteOrg",
                "Delete an organization (pivotal)",
                {"200": _ok(_ref("Org"))},
                tags=identity,
            ),
        },
        "/users": {
            "get": _op("listUsers", "Users (pivotal)", {"200": _ok(_ref("UriMap"))}, tags=identity),
            "post": _op(
                "createUser",
                "Create a user (pivotal)",
                created_key,
                tags=identity,
                body=_ref("NewUser"),
            ),
        },
        "/users/{name}": {
            "parameters": [name],
            "get": _op(
                "getUser",
                "A user (pivotal, or the user)",
                {"200": _ok(_ref("User"))},
                tags=identity,
            ),
            "delete": _op(
                "deleteUser", "Delete a user (pivotal)", {"200": _ok(_ref("User"))}, tags=identity
            ),
        },
        "/organizations/{org}/users": {
            "parameters": [org],
            "get": _op("listMembers", "Members", {"200": _ok(_ref("Members"))}, tags=identity),
            "post": _op(
                "addMember",
                "Add a member (admins)",
                {
                    "201": _ok(_ref("Created"), "created", _LOCATION),
                    "409": _error("a member already, or a client of the org has that name"),
                },
                tags=identity,
                body=_ref("Membership"),
            ),
        },
        "/organizations/{org}/users/{name}": {
            "parameters": [org, name],
            "get": _op("getMember", "A member", {"200": _ok(_ref("User"))}, tags=identity),
            "delete": _op(
                "removeMember",
                "Remove a member (admins)",
                {"200": _ok(_ref("User"))},
                tags=identity,
            ),
        },
        "/organizations/{org}/clients": {
            "parameters": [org],
            "get": _op("listClients", "Clients", {"200": _ok(_ref("UriMap"))}, tags=identity),
            "post": _op(
                "createClient",
                "Create a client (admins)",
                {**created_key, "201": {**created_key["201"], "links": client_links}},
                tags=identity,
                body=_ref("NewClient"),
            ),
        },
        "/organizations/{org}/clients/{name}": {
            "parameters": [org, name],
            "get": _op("getClient", "A client", {"200": _ok(_ref("Client"))}, tags=identity),
            "delete": _op(
                "deleteClient",
                "Delete a client (admins, or itself)",
                {"200": _ok(_ref("Client"))},
                tags=identity,
            ),
        },
        "/organizations/{org}/groups": {
            "parameters": [org],
            "get": _op("listGroups", "Groups", {"200": _ok(_ref("UriMap"))}, tags=identity),
            "post": _op(
                "createGroup",
                "Create a group (admins)",
                created,
                tags=identity,
                body=_ref("NewGroup"),
            ),
        },
        "/organizations/{org}/groups/{name}": {
            "parameters": [org, name],
            "get": _op("getGroup", "A group", {"200": _ok(_ref("Group"))}, tags=identity),
            "put": _op(
                "updateGroup",
                "Set a group's actors (admins)",
                {"200": _ok(_ref("Group"))},
                tags=identity,
                body=_ref("GroupUpdate"),
            ),
            "delete": _op(
                "deleteGroup", "Delete a group (admins)", {"200": _ok(_ref("Group"))}, tags=identity
            ),
        },
        "/organizations/{org}/principals/{name}": {
            "parameters": [org, name],
            "get": _op(
                "getPrincipal",
                "A principal's public keys (no authentication)",
                {
                    "200": _ok(_ref("Principals")),
                    "404": _error("no such organization or principal"),
                    "406": _error("the Accept header excludes JSON"),
                },
                tags=identity,
                signed=False,
            ),
        },
        "/organizations/{org}/pushy/config/{node}": {
            "parameters": [org, node],
            "get": _op(
                "getNodeConfig",
                "A node's bootstrap document",
                {"200": _ok(_ref("NodeConfig"))},
                tags=nodes,
                params=[_query("ccpk", {"type": "string"}, "accepted and ignored")],
            ),
        },
        "/organizations/{org}/pushy/config": {
            "parameters": [org],
            **{
                method: _op(
                    f"configWithoutNode{method.capitalize()}",
                    "No node named: 404 for every method",
                    not_found_everywhere,
                    tags=nodes,
                    signed=False,
                )
                for method in ("get", "post", "put", "patch", "delete")
            },
        },
        "/organizations/{org}/pushy/node_states": {
            "parameters": [org],
            "get": _op(
                "listNodeStates",
                "Every node of the org that ever connected",
                {"200": _ok({"type": "array", "items": _ref("NodeState")})},
                tags=nodes,
            ),
        },
        "/organizations/{org}/pushy/node_states/{node}": {
            "parameters": [org, node],
            "get": _op(
                "getNodeState", "One node's state", {"200": _ok(_ref("NodeState"))}, tags=nodes
            ),
        },
        "/organizations/{org}/pushy/nodes": {
            "parameters": [org],
            "get": _op(
                "listNodes",
                "Nodes and their last-known facts, sorted by name; those a query matches",
                {"200": _ok(_ref("NodePage"))},
                tags=nodes,
                params=[
                    _query("q", {"type": "string"}, "a search query (absent: every node)"),
                    _query("start", {"type": "integer", "minimum": 0}, "rows to skip"),
                    _query("rows", {"type": "integer", "minimum": 0}, "at most this many"),
                ],
            ),
        },
        "/organizations/{org}/pushy/nodes/{node}": {
            "parameters": [org, node],
            "get": _op(
                "getNode",
                "One node and its last-known facts",
                {"200": _ok(_ref("NodeRow"))},
                tags=nodes,
            ),
        },
        "/organizations/{org}/search/node": {
            "parameters": [org],
            "get": _op(
                "chefSearchNodes",
                "Chef Server's node search (knife search node, knife job start --search)",
                {"200": _ok(_ref("ChefSearch"))},
                tags=nodes,
                params=chef_search_params,
            ),
            "post": _op(
                "chefPartialSearchNodes",
                "Chef Server's partial node search: the named attributes of each match",
                {"200": _ok(_ref("PartialSearch"))},
                tags=nodes,
                params=chef_search_params,
                body=_ref("PartialSearchRequest"),
            ),
        },
        "/organizations/{org}/pushy/jobs": {
            "parameters": [org],
            "get": _op(
                "listJobs",
                "Job summaries, newest first",
                {"200": _ok({"type": "array", "items": _ref("JobSummary")})},
                tags=jobs,
                params=[
                    _query("status", {"enum": _JOB_STATUSES}, "only jobs in this status"),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 10_000},
                        "at most this many (ASCII digits)",
                    ),
                    _query("before", {"type": "string"}, "only jobs older than this id"),
                    _query(
                        "since",
                        {"type": "string", "format": "date-time"},
                        "only jobs created at or after this time",
                    ),
                    _query("requester", {"type": "string"}, "only jobs this principal started"),
                ],
            ),
            "post": _op(
                "startJob",
                "Start a job (write)",
                {
                    "201": {**_ok(_ref("JobCreated"), "created", _LOCATION), "links": job_link},
                    "503": {
                        **_error(
                            "too many live jobs, or nodes in them (limits.max_live_jobs, "
                            "limits.max_live_job_nodes), or the store refuses writes"
                        ),
                        "headers": {
                            "Retry-After": {
                                "description": "seconds to wait (the caps on live jobs)",
                                "schema": {"type": "integer"},
                            }
                        },
                    },
                },
                tags=jobs,
                body=_ref("JobRequest"),
            ),
        },
        "/organizations/{org}/pushy/jobs/{job_id}": {
            "parameters": [org, job_id],
            "get": _op(
                "getJob",
                "A job",
                {"200": {**_ok(_ref("Job")), "links": after_get}},
                tags=jobs,
                params=[
                    _query("include_file", {"enum": ["true", "false"]}, "return the file itself")
                ],
            ),
        },
        "/organizations/{org}/pushy/jobs/{job_id}/abort": {
            "parameters": [org, job_id],
            "post": _op(
                "abortJob",
                "Abort a voting or running job (write)",
                {
                    "200": {**_ok(_ref("Job")), "links": after_abort},
                    "409": _error("the job has finished"),
                },
                tags=jobs,
                body=_ref("AbortRequest"),
                body_required=False,
            ),
        },
        "/organizations/{org}/pushy/jobs/{job_id}/output/{node}/{channel}": {
            "parameters": [
                org,
                job_id,
                node,
                path_param("channel", {"enum": ["stdout", "stderr"]}),
            ],
            "get": _op(
                "getJobOutput",
                "A finished node's captured output",
                {
                    "200": {
                        "description": "the raw bytes of the channel",
                        "headers": {
                            "X-Pushy-Output-Total-Bytes": {
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}
                            },
                            "X-Pushy-Output-Truncated": {"schema": {"const": "true"}},
                        },
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    "404": _error("no such job or node, capture off, or the node has not finished"),
                },
                tags=jobs,
            ),
        },
    }
    for spelling in ("job_status_feed", "jobs_status_feed"):
        alias = "" if spelling == "job_status_feed" else "Alias"
        paths[f"/organizations/{{org}}/pushy/{spelling}/{{job_id}}"] = {
            "parameters": [org, job_id],
            "get": _op(
                f"getJobFeed{alias}",
                "A job's events: history, then live, to the end",
                {"200": event_stream, **feed_refusals},
                tags=feeds,
                params=feed_headers,
            ),
        }
        paths[f"/organizations/{{org}}/pushy/{spelling}"] = {
            "parameters": [org],
            "get": _op(
                f"getOrgFeed{alias}",
                "The org's job starts and ends, live (and its nodes' changes, when asked)",
                {"200": event_stream, **feed_refusals},
                tags=feeds,
                params=[*feed_headers, node_events],
            ),
        }
    paths.update(_ui_paths(org))
    paths.update(_ops_paths(org, job_id, job_link))
    for path, item in paths.items():
        if path.startswith("/organizations/{org}/pushy/"):
            for op in item.values():
                if isinstance(op, dict) and "security" in op:
                    op["security"] = [*_SIGNED, {"dashboardSession": []}]
    return paths


def _ui_paths(org: Schema) -> dict[str, Schema]:
    """The dashboard's routes (``docs/DASHBOARD.md``)."""
    ui = ["dashboard"]
    html = {"text/html": {"schema": {"type": "string"}}}
    page = {"description": "an HTML page", "content": html}
    return {
        "/organizations/{org}/pushy/ui/links": {
            "parameters": [org],
            "post": _op(
                "createLoginLink",
                "Mint a one-time dashboard login link for the signer, in this org",
                {"201": _ok(_ref("LoginLink"), "created")},
                tags=ui,
                body=_ref("AbortRequest"),
                body_required=False,
            ),
        },
        "/ui": {"get": _op("getDashboard", "The dashboard", {"200": page}, tags=ui, signed=False)},
        "/ui/static/{name}": {
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": _op(
                "getDashboardFile",
                "A file of the dashboard (HTML, CSS, JavaScript module, image)",
                {
                    "200": {"description": "the file", "content": {"*/*": {"schema": {}}}},
                    "304": {"description": "not modified"},
                    "404": _error("no such file"),
                },
                tags=ui,
                signed=False,
            ),
        },
        "/ui/login/{token}": {
            "parameters": [
                {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": _op(
                "redeemLoginLink",
                "Redeem a login link: sets the session cookie and redirects to /ui/",
                {
                    "303": {"description": "signed in; Set-Cookie and Location: /ui/"},
                    "401": {"description": "a used, expired or unknown link", "content": html},
                },
                tags=ui,
                signed=False,
            ),
        },
        "/ui/session": {
            "get": _op(
                "getDashboardSession",
                "The session's principal, org and CSRF token",
                {"200": _ok({"type": "object"}), "401": _error("not signed in")},
                tags=ui,
                signed=False,
            ),
        },
        "/ui/logout": {
            "post": _op(
                "logout",
                "End the dashboard session, if any (needs its CSRF header)",
                {
                    "204": {"description": "signed out; the session cookie is cleared"},
                    "403": _error("missing or wrong X-Pushy-CSRF header"),
                },
                tags=ui,
                signed=False,
            ),
        },
    }


def _ops_schemas() -> dict[str, Schema]:
    """Re-runs, the audit log and webhooks (``docs/OPERATIONS.md``)."""
    nullable_string = {"type": ["string", "null"]}
    rfc3339 = {"type": "string", "format": "date-time"}
    return {
        "RerunRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "nodes": {
                    "oneOf": [
                        {"enum": list(SELECTIONS)},
                        {
                            "type": "array",
                            "items": {"type": "string", "minLength": 1},
                            "minItems": 1,
                            "uniqueItems": True,
                        },
                    ],
                    "description": "failed (default: failed, timed_out, crashed, aborted), "
                    "unsuccessful (those, nacked and unavailable), all, or node names of the "
                    "job",
                },
                "quorum": {
                    "oneOf": [
                        {"type": "integer", "minimum": 0},
                        {"type": "string", "pattern": r"^[0-9]{1,3}(\.[0-9]{1,6})?%$"},
                    ],
                    "description": "default: the original quorum as the same share of the "
                    "new node count, rounded up",
                },
            },
        },
        "AuditEntry": {
            "type": "object",
            "required": ["id", "at", "action", "org", "actor", "status"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "at": rfc3339,
                "action": {"type": "string"},
                "org": nullable_string,
                "actor": nullable_string,
                "actor_kind": {"enum": ["user", "client", None]},
                "method": nullable_string,
                "route": nullable_string,
                "target": nullable_string,
                "summary": {"type": ["object", "null"]},
                "peer": nullable_string,
                "forwarded_for": nullable_string,
                "status": {"type": ["integer", "null"]},
                "dropped": {"type": "integer", "minimum": 1},
            },
        },
        "AuditPage": {
            "type": "object",
            "required": ["entries", "more"],
            "properties": {
                "entries": {"type": "array", "items": _ref("AuditEntry")},
                "more": {"type": "boolean"},
            },
        },
        "WebhookRequest": {
            "type": "object",
            "required": ["url", "events", "secret"],
            "additionalProperties": False,
            "properties": {
                "url": {
                    "type": "string",
                    "maxLength": MAX_URL_BYTES,
                    "description": "https:// (http:// where webhooks.allow_http_orgs allows)",
                },
                "events": {
                    "type": "array",
                    "items": {"enum": list(EVENTS)},
                    "minItems": 1,
                    "uniqueItems": True,
                },
                "secret": {
                    "type": "string",
                    "minLength": MIN_SECRET_CHARS,
                    "maxLength": MAX_SECRET_CHARS,
                    "description": "the HMAC key of X-Pushy-Signature; stored, never returned",
                },
            },
        },
        "Webhook": {
            "type": "object",
            "required": ["id", "url", "events", "created_at", "created_by", "pending", "dropped"],
            "properties": {
                "id": {"type": "string"},
                "url": {"type": "string"},
                "events": {"type": "array", "items": {"enum": list(EVENTS)}},
                "created_at": rfc3339,
                "created_by": {"type": "string"},
                "pending": {"type": "integer", "minimum": 0},
                "dropped": {"type": "integer", "minimum": 0},
                "uri": {"type": "string"},
            },
        },
        "Delivery": {
            "type": "object",
            "required": ["id", "event", "job", "state", "attempts", "enqueued_at"],
            "properties": {
                "id": {"type": "string"},
                "event": {"enum": list(EVENTS)},
                "job": {"type": "string"},
                "state": {"enum": ["pending", "delivered", "failed", "dropped"]},
                "attempts": {"type": "integer", "minimum": 0},
                "enqueued_at": rfc3339,
                "next_at": rfc3339,
                "last_attempts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["n", "at", "status", "error", "ms"],
                        "properties": {
                            "n": {"type": "integer"},
                            "at": rfc3339,
                            "status": {"type": ["integer", "null"]},
                            "error": nullable_string,
                            "ms": {"type": "number"},
                        },
                    },
                },
            },
        },
    }


def _ops_paths(org: Schema, job_id: Schema, job_link: Schema) -> dict[str, Schema]:
    """Re-runs, the audit log and webhooks (``docs/OPERATIONS.md``)."""
    webhook_id = {"name": "webhook_id", "in": "path", "required": True,
                  "schema": {"type": "string", "minLength": 1}}  # fmt: skip
    audit_params = [
        _query("since", {"type": "string", "format": "date-time"}, "only entries at or after"),
        _query("until", {"type": "string", "format": "date-time"}, "only entries at or before"),
        _query("actor", {"type": "string"}, "only this user's or client's entries"),
        _query("action", {"type": "string"}, "only this action (job.create) or family (job)"),
        _query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": 1000},
            "at most this many (default 100)",
        ),
        _query("before", {"type": "integer", "minimum": 1}, "only entries older than this id"),
    ]
    audit_page = {"200": _ok(_ref("AuditPage"))}
    return {
        "/organizations/{org}/pushy/jobs/{job_id}/rerun": {
            "parameters": [org, job_id],
            "post": _op(
                "rerunJob",
                "Start a new job like this one on some of its nodes (write)",
                {
                    "201": {**_ok(_ref("JobCreated"), "created", _LOCATION), "links": job_link},
                    "409": _error("no nodes to re-run"),
                },
                tags=["jobs"],
                body=_ref("RerunRequest"),
                body_required=False,
            ),
        },
        "/organizations/{org}/pushy/audit": {
            "parameters": [org],
            "get": _op(
                "getOrgAudit",
                "The organization's audit log, newest first (admins)",
                audit_page,
                tags=["audit"],
                params=audit_params,
            ),
        },
        "/pushy/audit": {
            "get": _op(
                "getAudit",
                "Every organization's audit log, newest first (pivotal)",
                audit_page,
                tags=["audit"],
                params=audit_params,
            ),
        },
        "/organizations/{org}/pushy/webhooks": {
            "parameters": [org],
            "get": _op(
                "listWebhooks",
                "The organization's webhooks (admins; never their secret)",
                {"200": _ok({"type": "array", "items": _ref("Webhook")})},
                tags=["webhooks"],
            ),
            "post": _op(
                "createWebhook",
                "Add a webhook (admins)",
                {
                    "201": _ok(_ref("Webhook"), "created", _LOCATION),
                    "409": _error("the organization has webhooks.max_per_org webhooks"),
                },
                tags=["webhooks"],
                body=_ref("WebhookRequest"),
            ),
        },
        "/organizations/{org}/pushy/webhooks/{webhook_id}": {
            "parameters": [org, webhook_id],
            "get": _op(
                "getWebhook", "A webhook (admins)", {"200": _ok(_ref("Webhook"))}, tags=["webhooks"]
            ),
            "delete": _op(
                "deleteWebhook",
                "Remove a webhook and its queued deliveries (admins)",
                {"200": _ok(_ref("Webhook"))},
                tags=["webhooks"],
            ),
        },
        "/organizations/{org}/pushy/webhooks/{webhook_id}/deliveries": {
            "parameters": [org, webhook_id],
            "get": _op(
                "listDeliveries",
                "A webhook's recent deliveries, newest first (admins)",
                {"200": _ok({"type": "array", "items": _ref("Delivery")})},
                tags=["webhooks"],
            ),
        },
    }


def _security_schemes() -> dict[str, Schema]:
    described = {
        "opsUserId": ("X-Ops-UserId", "the user or client name that signs"),
        "opsSign": ("X-Ops-Sign", "algorithm=sha1;version=1.0 … algorithm=sha256;version=1.3"),
        "opsTimestamp": ("X-Ops-Timestamp", "YYYY-MM-DDTHH:MM:SSZ, within 900 s of the server"),
        "opsContentHash": ("X-Ops-Content-Hash", "base64 digest of the body"),
        "opsAuthorization": (
            "X-Ops-Authorization-1",
            "the base64 signature in 60-character lines X-Ops-Authorization-1..N",
        ),
    }
    schemes: dict[str, Schema] = {
        key: {
            "type": "apiKey",
            "in": "header",
            "name": header,
            "description": f"Chef signed-header authentication (mixlib-authentication, "
            f"protocols 1.0-1.3): {text}. All five are required together; a state-changing "
            "request's signature is accepted once.",
        }
        for key, (header, text) in described.items()
    }
    schemes["dashboardSession"] = {
        "type": "apiKey",
        "in": "cookie",
        "name": "pushy_session",
        "description": "The dashboard's session cookie (docs/DASHBOARD.md), accepted on the "
        "push-jobs routes of its own org when no X-Ops-UserId header is sent; a state-changing "
        "request also needs the session's X-Pushy-CSRF header.",
    }
    return schemes


_DOCUMENT: Final[Schema] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Pushy Appliance API",
        "version": __version__,
        "description": "The Chef Push Jobs API, the identity subset of the Chef Infra Server "
        "API it needs, and the appliance's additions (API.md). Requests under /organizations "
        "and /users are signed with Chef's signed-header scheme.",
    },
    "paths": _paths(),
    "components": {"schemas": _schemas(), "securitySchemes": _security_schemes()},
    "tags": [
        {"name": t}
        for t in ("status", "identity", "nodes", "jobs", "feeds", "audit", "webhooks", "dashboard")
    ],
}


def openapi_document() -> Schema:
    """The OpenAPI 3.1 document of the API (a fresh copy)."""
    return copy.deepcopy(_DOCUMENT)


def register(app: QuartTrio, svc: Services) -> None:
    """Register ``GET /pushy/openapi.json`` (no authentication) on ``app``."""
    del svc  # the document does not depend on the configuration

    @app.route(OPENAPI_PATH, methods=["GET"])
    async def openapi() -> Response:
        return json_response(_DOCUMENT)
