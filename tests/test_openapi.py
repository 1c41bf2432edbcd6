"""The OpenAPI document (issue 12 §2): valid OpenAPI 3.1, served as it is kept, and naming
exactly the routes the application registers, each with exactly its methods."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from openapi_spec_validator import validate

from pushy_appliance.http import create_app, openapi_document

from helpers import running_server, test_config

AUTOMATIC = {"HEAD", "OPTIONS"}
"""Methods the framework answers for every route by itself."""


def registered_routes(app: object) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every rule of ``app.url_map``."""
    out = set()
    for rule in app.url_map.iter_rules():  # type: ignore[attr-defined]
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        out |= {(path, method) for method in rule.methods - AUTOMATIC}
    return out


def documented_routes(doc: dict[str, object]) -> set[tuple[str, str]]:
    out = set()
    for path, item in doc["paths"].items():  # type: ignore[attr-defined]
        for method in item:
            if method in ("get", "put", "post", "delete", "patch", "head", "options"):
                out.add((path, method.upper()))
    return out


async def test_the_document_names_exactly_the_registered_routes(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info:
        app = create_app(info.services)
        registered = registered_routes(app)
        documented = documented_routes(openapi_document())
        assert registered - documented == set(), "routes the document lacks"
        assert documented - registered == set(), "documented routes that do not exist"
        assert len(registered) > 30


def test_the_comparison_catches_a_missing_and_an_extra_route() -> None:
    doc = openapi_document()
    del doc["paths"]["/organizations/{org}/pushy/jobs"]["post"]
    doc["paths"]["/nowhere"] = {"get": {"responses": {"200": {"description": "x"}}}}
    routes = documented_routes(doc)
    assert ("/organizations/{org}/pushy/jobs", "POST") not in routes
    assert ("/nowhere", "GET") in routes


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    schemes = doc["components"]["securitySchemes"]
    assert {s["name"] for s in schemes.values()} == {
        "X-Ops-UserId",
        "X-Ops-Sign",
        "X-Ops-Timestamp",
        "X-Ops-Content-Hash",
        "X-Ops-Authorization-1",
        "pushy_session",
    }
    assert schemes["dashboardSession"]["in"] == "cookie"
    start = doc["paths"]["/organizations/{org}/pushy/jobs"]["post"]
    assert set(start["responses"]) >= {"201", "400", "401", "403", "404", "406", "413", "415"}
    assert set(start["responses"]["201"]["links"]) >= {"GetJob", "AbortJob", "GetJobOutput"}


async def test_served_without_authentication_as_kept(tmp_path: Path) -> None:
    config = test_config(tmp_path, insecure_http=True)
    async with running_server(config) as info, httpx.AsyncClient() as http:
        r = await http.get(info.url + "/pushy/openapi.json")
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "application/json"
        assert r.json() == openapi_document()
        r = await http.post(info.url + "/pushy/openapi.json")
        assert r.status_code == 405
