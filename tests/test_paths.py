"""One normal form of a request path: the function, the signed path, the API's middleware and
the node listener all agree."""

from __future__ import annotations

import ssl
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionRejected

from pushy_appliance import chef_auth, protocol, tls
from pushy_appliance.agent.connection import open_node_socket
from pushy_appliance.http import NormalizePaths
from pushy_appliance.paths import normalize_path

from helpers import admin_client, running_server, test_config

CASES = [
    ("/", "/"),
    ("", "/"),
    ("//", "/"),
    ("///", "/"),
    ("/a", "/a"),
    ("/a/", "/a"),
    ("//a//b/", "/a/b"),
    ("/a///b///", "/a/b"),
    ("/organizations//acme///pushy/jobs//", "/organizations/acme/pushy/jobs"),
    # percent-escapes are not decoded: an escaped slash is no slash here
    ("/a%2F%2Fb/", "/a%2F%2Fb"),
    ("/a/%2f", "/a/%2f"),
    ("/a%2F/", "/a%2F"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_normalize_path(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected
    assert normalize_path(expected) == expected


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_the_signed_path_is_the_normal_form_without_the_query(raw: str, expected: str) -> None:
    assert chef_auth.canonical_path(raw) == expected
    assert chef_auth.canonical_path(raw + "?q=//x/") == expected


async def _through_middleware(scope: dict[str, Any]) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    async def app(inner: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(inner)

    await NormalizePaths(app)(scope, None, None)
    return seen[0]


@pytest.mark.parametrize(("raw", "expected"), CASES)
async def test_the_api_middleware_uses_the_normal_form(raw: str, expected: str) -> None:
    scope = {"type": "http", "path": raw, "raw_path": raw.encode()}
    out = await _through_middleware(scope)
    assert (out["path"], out["raw_path"]) == (expected, expected.encode())
    assert scope["path"] == raw  # the server's scope is not changed in place


async def test_the_api_middleware_keeps_escaped_slashes_of_the_raw_path() -> None:
    # hypercorn gives the decoded path and the raw one
    scope = {"type": "websocket", "path": "/a//b/", "raw_path": b"/a%2F%2Fb/"}
    out = await _through_middleware(scope)
    assert (out["path"], out["raw_path"]) == ("/a/b", b"/a%2F%2Fb")
    scope = {"type": "lifespan"}
    assert await _through_middleware(scope) is scope


# --- the node listener ----------------------------------------------------------------------


def _hello() -> bytes:
    return protocol.encode(
        protocol.Hello(
            incarnation_id=str(uuid.uuid4()),
            protocol_version=protocol.PROTOCOL_VERSION,
            agent_version="paths-test",
            job_id=None,
            job_state="idle",
            pending_result=None,
            facts={},
            seq=1,
            ts=time.time(),
        )
    )


async def test_the_node_listener_serves_paths_as_the_api_does(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        context = tls.client_ssl_context(ca_file=info.data_dir / "tls" / "ca.pem")
        assert isinstance(context, ssl.SSLContext)
        with trio.fail_after(30):
            r = await admin.post(
                "//organizations//default/clients/", {"name": "n1", "create_key": True}
            )
            assert r.status_code == 201, r.text
            key = chef_auth.load_private_key(r.json()["chef_key"]["private_key"])

            def signed(path: str) -> list[tuple[bytes, bytes]]:
                headers = chef_auth.sign_request(
                    "GET", path, b"", "n1", key, timestamp=datetime.now(UTC)
                )
                return [(k.encode(), v.encode()) for k, v in headers.items()]

            path = "//organizations//default/pushy/connect/n1/"
            async with open_node_socket(
                info.node_url + path, context, extra_headers=signed(path)
            ) as ws:
                await ws.send_message(_hello())
                welcome = protocol.decode(await ws.get_message())
                assert isinstance(welcome, protocol.Welcome)
                r = await admin.get("//organizations//default/pushy/node_states/n1/")
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "online"

            # a path that is not the connect path in any form is not found by either
            path = "//organizations//default/pushy//connect/n1//more/"
            with pytest.raises(ConnectionRejected) as refused:
                async with open_node_socket(
                    info.node_url + path, context, extra_headers=signed(path)
                ):
                    pass
            assert refused.value.status_code == 404
            r = await admin.get("//organizations//default/pushy//node_states/n1//more/")
            assert r.status_code == 404
