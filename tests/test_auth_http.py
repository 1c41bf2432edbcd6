"""Chef request signing through the real HTTP server (``API.md`` §1).

Requests are signed by Chef's own Ruby library (``mixlib-authentication``) and sent by httpx
over TLS, verified with the data directory's CA, to the whole appliance running in-process on
port 0. Every refusal is checked for its exact status, JSON body and ``WWW-Authenticate``.
Ruby is required, not optional: without it these tests fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from pushy_appliance import chef_auth
from pushy_appliance.appliance import ServerInfo

from helpers import Signed, running_server, test_config

WWW_AUTHENTICATE = 'X-Ops-Sign version="1.0" version="1.1" version="1.2" version="1.3"'

# Debian's Ruby needs ``openssl`` loaded before mixlib-authentication's ``openssl/digest``.
# ARGV: the request list file. Each request names its own key file. Prints a JSON list of
# header hashes, one per request.
_RUBY_SIGN = """
require "openssl"
require "json"
require "base64"
require "mixlib/authentication/signedheaderauth"
requests = JSON.parse(File.read(ARGV[0]))
out = requests.map do |r|
  key = OpenSSL::PKey::RSA.new(File.read(r["key_file"]))
  Mixlib::Authentication::SignedHeaderAuth.signing_object(
    http_method: r["method"].downcase.to_sym,
    path: r["path"],
    body: Base64.strict_decode64(r["body"]),
    timestamp: r["timestamp"],
    user_id: r["user_id"],
    proto_version: r["version"],
  ).sign(key)
end
puts JSON.generate(out)
"""


@dataclass
class RubyRequest:
    """One request for Ruby to sign; ``headers`` is filled in by :func:`ruby_sign`."""

    method: str
    path: str
    user_id: str
    key_file: Path
    version: str = "1.3"
    body: bytes = b""
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    headers: dict[str, str] = field(default_factory=dict)


async def ruby_sign(requests: list[RubyRequest], tmp: Path) -> None:
    """Sign every request with mixlib-authentication in one Ruby run (fails without Ruby)."""
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.fail("ruby is missing: apt-get install ruby ruby-mixlib-authentication")
    spec = [
        {
            "method": r.method,
            "path": r.path,
            "user_id": r.user_id,
            "key_file": str(r.key_file),
            "version": r.version,
            "body": base64.b64encode(r.body).decode(),
            "timestamp": r.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for r in requests
    ]
    (tmp / "requests.json").write_text(json.dumps(spec))
    with trio.fail_after(60):
        done = await trio.run_process(
            [ruby, "-e", _RUBY_SIGN, str(tmp / "requests.json")],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    signed = json.loads(done.stdout)
    assert len(signed) == len(requests)
    for request, headers in zip(requests, signed, strict=True):
        request.headers = {str(k): str(v) for k, v in headers.items()}


def write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_text(chef_auth.private_key_pem(key))
    return path


@dataclass
class World:
    """The running appliance, an HTTP client trusting its CA, and signed principals."""

    info: ServerInfo
    http: httpx.AsyncClient
    tmp: Path
    pivotal: Signed
    admin_key: Path
    bob_key: Path
    acme_node_key: Path
    node_key: Path

    async def send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes = b"",
        *,
        url_path: str | None = None,
    ) -> httpx.Response:
        h = dict(headers)
        if body:
            h["Content-Type"] = "application/json"
        with trio.fail_after(30):
            return await self.http.request(
                method, self.info.url + (url_path or path), content=body or None, headers=h
            )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """The appliance with: user ``bob`` (in no org), org ``acme`` with client ``acme-node``,
    and client ``node`` (not an admin) in ``default``. Private keys are files for Ruby."""
    data = tmp_path / "data"
    async with running_server(test_config(data)) as info:
        ctx = ssl.create_default_context(cafile=str(data / "tls" / "ca.pem"))
        async with httpx.AsyncClient(verify=ctx, timeout=30) as http:
            pivotal = Signed.from_file(http, info.url, "pivotal", data / "keys" / "pivotal.pem")
            keys = tmp_path / "keys"
            keys.mkdir()
            bob = write_key(keys / "bob.pem", chef_auth.generate_private_key())
            acme_node = write_key(keys / "acme-node.pem", chef_auth.generate_private_key())
            node = write_key(keys / "node.pem", chef_auth.generate_private_key())

            def public(path: Path) -> str:
                return chef_auth.public_key_pem(chef_auth.load_private_key(path.read_bytes()))

            for path, body in (
                ("/users", {"username": "bob", "public_key": public(bob)}),
                ("/organizations", {"name": "acme"}),
                (
                    "/organizations/acme/clients",
                    {"name": "acme-node", "public_key": public(acme_node)},
                ),
                ("/organizations/default/clients", {"name": "node", "public_key": public(node)}),
            ):
                r = await pivotal.post(path, body)
                assert r.status_code == 201, r.text
            yield World(
                info, http, tmp_path, pivotal, data / "keys" / "admin.pem", bob, acme_node, node
            )


CLIENTS = "/organizations/default/clients"


async def test_ruby_signed_requests_as_admin_are_accepted(world: World) -> None:
    """1.0, 1.1 and 1.3 signed by mixlib-authentication: GET 200 and a POST with a body 201."""
    new_key = chef_auth.public_key_pem(chef_auth.generate_private_key())
    gets = [RubyRequest("GET", CLIENTS, "admin", world.admin_key, v) for v in ("1.0", "1.1", "1.3")]
    posts = [
        RubyRequest(
            "POST",
            CLIENTS,
            "admin",
            world.admin_key,
            v,
            body=json.dumps({"name": f"ruby-{v}", "public_key": new_key}).encode(),
        )
        for v in ("1.0", "1.1", "1.3")
    ]
    # Ruby canonicalizes the path it signs: repeated and trailing slashes do not matter.
    odd = RubyRequest("GET", "/organizations//default/clients/", "admin", world.admin_key)
    await ruby_sign([*gets, *posts, odd], world.tmp)

    for request in gets:
        assert request.headers["X-Ops-Sign"].endswith(f"version={request.version};")
        r = await world.send("GET", CLIENTS, request.headers)
        assert r.status_code == 200, (request.version, r.text)
        assert set(r.json()) == {"node"}
        assert r.json()["node"] == f"{world.info.url}{CLIENTS}/node"
    for request in posts:
        r = await world.send("POST", CLIENTS, request.headers, request.body)
        assert r.status_code == 201, (request.version, r.text)
    r = await world.send("GET", odd.path, odd.headers)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"node", "ruby-1.0", "ruby-1.1", "ruby-1.3"}
    # A query string is not part of the signed path.
    r = await world.send("GET", CLIENTS, gets[2].headers, url_path=CLIENTS + "?x=1")
    assert r.status_code == 200, r.text


async def test_protocol_1_2_from_our_signer_is_accepted(world: World) -> None:
    """mixlib-authentication has no 1.2; the Chef Server's does, and so do we."""
    key = chef_auth.load_private_key(world.admin_key.read_bytes())
    headers = chef_auth.sign_request(
        "GET", CLIENTS, b"", "admin", key, version="1.2", timestamp=datetime.now(UTC)
    )
    r = await world.send("GET", CLIENTS, headers)
    assert r.status_code == 200, r.text


def _invalid_signature(user: str) -> dict[str, Any]:
    return {"error": [f"Invalid signature for user or client '{user}'"]}


def _unknown(user: str) -> dict[str, Any]:
    return {
        "error": [
            f"Failed to authenticate as '{user}'. Ensure that your node_name and client key "
            "are correct."
        ]
    }


def _without(*names: str) -> Callable[[dict[str, str]], dict[str, str]]:
    """Drop headers by name, in any case (Ruby sends ``X-Ops-Userid``)."""
    lowered = {n.lower() for n in names}
    return lambda h: {k: v for k, v in h.items() if k.lower() not in lowered}


def _with(**changes: str) -> Callable[[dict[str, str]], dict[str, str]]:
    """Replace headers (``X_Ops_Sign`` names ``X-Ops-Sign``), whatever case they were sent in."""
    names = {k.replace("_", "-"): v for k, v in changes.items()}
    return lambda h: _without(*names)(h) | names


@dataclass
class Case:
    """A refused request: how it is signed (by Ruby), then changed, then what it must get."""

    name: str
    status: int
    body: dict[str, Any]
    user: str = "admin"
    key: str = "admin"
    version: str = "1.3"
    method: str = "GET"
    sent_method: str | None = None
    signed_path: str = CLIENTS
    sent_path: str | None = None
    signed_body: bytes = b""
    sent_body: bytes | None = None
    age: timedelta = timedelta(0)
    mutate: Callable[[dict[str, str]], dict[str, str]] = lambda h: h
    www_authenticate: bool = False


_CREATE = b'{"name": "intruder", "create_key": true}'
_MISSING_ALL = (
    "missing required authentication header(s) "
    "'X-Ops-UserId', 'X-Ops-Timestamp', 'X-Ops-Sign', 'X-Ops-Content-Hash'"
)

CASES = [
    Case("wrong key", 401, _invalid_signature("admin"), key="bob", www_authenticate=True),
    Case(
        "wrong key 1.0",
        401,
        _invalid_signature("admin"),
        key="bob",
        version="1.0",
        www_authenticate=True,
    ),
    Case(
        "tampered body",
        401,
        _invalid_signature("admin"),
        method="POST",
        signed_body=_CREATE,
        sent_body=b'{"name": "intruder2", "create_key": true}',
        www_authenticate=True,
    ),
    Case(
        # the content hash is right for the sent body, the signature is not
        "tampered body with its hash",
        401,
        _invalid_signature("admin"),
        method="POST",
        signed_body=_CREATE,
        sent_body=b"{}",
        mutate=_with(X_Ops_Content_Hash=base64.b64encode(hashlib.sha256(b"{}").digest()).decode()),
        www_authenticate=True,
    ),
    Case(
        "tampered path",
        401,
        _invalid_signature("admin"),
        sent_path="/organizations/default/groups",
        www_authenticate=True,
    ),
    Case(
        "tampered method",
        401,
        _invalid_signature("admin"),
        signed_path=CLIENTS + "/node",
        sent_method="DELETE",
        www_authenticate=True,
    ),
    Case(
        "other user id",
        401,
        _invalid_signature("pivotal"),
        mutate=_with(X_Ops_UserId="pivotal"),
        www_authenticate=True,
    ),
    Case(
        "timestamp 16 minutes old",
        401,
        {"error": ["Failed to authenticate as admin. Synchronize the clock on your host."]},
        age=timedelta(minutes=16),
        www_authenticate=True,
    ),
    Case(
        "timestamp 16 minutes ahead",
        401,
        {"error": ["Failed to authenticate as admin. Synchronize the clock on your host."]},
        age=timedelta(minutes=-16),
        www_authenticate=True,
    ),
    Case(
        "malformed timestamp",
        401,
        {"error": ["bad header(s) 'X-Ops-Timestamp'"]},
        mutate=_with(X_Ops_Timestamp="yesterday at noon"),
        www_authenticate=True,
    ),
    Case(
        "missing user id and sign",
        400,
        {"error": ["missing required authentication header(s) 'X-Ops-UserId', 'X-Ops-Sign'"]},
        mutate=_without("X-Ops-UserId", "X-Ops-Sign"),
    ),
    Case(
        "empty content hash",
        400,
        {"error": ["missing required authentication header(s) 'X-Ops-Content-Hash'"]},
        mutate=_with(X_Ops_Content_Hash=""),
    ),
    Case(
        "missing timestamp",
        400,
        {"error": ["missing required authentication header(s) 'X-Ops-Timestamp'"]},
        mutate=_without("X-Ops-Timestamp"),
    ),
    Case("no headers at all", 400, {"error": [_MISSING_ALL]}, mutate=lambda h: {}),
    Case(
        "no authorization lines",
        401,
        _invalid_signature("admin"),
        mutate=lambda h: {k: v for k, v in h.items() if not k.startswith("X-Ops-Authorization")},
        www_authenticate=True,
    ),
    Case(
        "unsupported version",
        400,
        {"error": ["Unsupported authentication protocol version"]},
        mutate=_with(X_Ops_Sign="algorithm=sha1;version=1.4;"),
    ),
    Case(
        "algorithm not of the version",
        400,
        {"error": ["Unsupported authentication protocol version"]},
        mutate=_with(X_Ops_Sign="algorithm=sha1;version=1.3;"),
    ),
    Case(
        "unknown organization",
        404,
        {"error": ["organization 'nope' does not exist."]},
        signed_path="/organizations/nope/clients",
    ),
    Case("unknown user", 401, _unknown("ghost"), user="ghost", www_authenticate=True),
    Case(
        "user not in the organization",
        403,
        {"error": ["'bob' is not associated with organization 'default'"]},
        user="bob",
        key="bob",
    ),
    Case(
        "a client of acme is unknown in default",
        401,
        _unknown("acme-node"),
        user="acme-node",
        key="acme-node",
        www_authenticate=True,
    ),
    Case(
        "authenticated but not permitted",
        403,
        {"error": ["User or client 'node' does not have access to that action on this server."]},
        user="node",
        key="node",
        method="POST",
        signed_body=_CREATE,
    ),
]


async def test_every_refusal_has_its_exact_status_and_body(world: World) -> None:
    keys = {
        "admin": world.admin_key,
        "bob": world.bob_key,
        "acme-node": world.acme_node_key,
        "node": world.node_key,
    }
    now = datetime.now(UTC)
    requests = [
        RubyRequest(
            c.method,
            c.signed_path,
            c.user,
            keys[c.key],
            c.version,
            body=c.signed_body,
            timestamp=now - c.age,
        )
        for c in CASES
    ]
    await ruby_sign(requests, world.tmp)
    for case, request in zip(CASES, requests, strict=True):
        body = case.signed_body if case.sent_body is None else case.sent_body
        r = await world.send(
            case.sent_method or case.method,
            case.signed_path,
            case.mutate(dict(request.headers)),
            body,
            url_path=case.sent_path,
        )
        assert (r.status_code, r.json()) == (case.status, case.body), case.name
        assert r.headers["Content-Type"].startswith("application/json"), case.name
        if case.www_authenticate:
            assert r.headers.get("WWW-Authenticate") == WWW_AUTHENTICATE, case.name
        else:
            assert "WWW-Authenticate" not in r.headers, case.name
    # Nothing the refused requests asked for happened.
    r = await world.pivotal.get(CLIENTS)
    assert set(r.json()) == {"node"}


async def test_the_same_principals_are_accepted_where_they_belong(world: World) -> None:
    """Controls for the refusals: each key does work for its own principal and org."""
    requests = [
        RubyRequest("GET", "/organizations/acme/clients", "acme-node", world.acme_node_key),
        RubyRequest("GET", CLIENTS, "node", world.node_key),
        RubyRequest("GET", "/users/bob", "bob", world.bob_key, "1.1"),
    ]
    await ruby_sign(requests, world.tmp)
    for request in requests:
        r = await world.send(request.method, request.path, request.headers)
        assert r.status_code == 200, (request.path, r.text)
    # once bob joins default, the 403 becomes a 200
    r = await world.pivotal.post("/organizations/default/users", {"username": "bob"})
    assert r.status_code == 201, r.text
    again = RubyRequest("GET", CLIENTS, "bob", world.bob_key, "1.0")
    await ruby_sign([again], world.tmp)
    r = await world.send("GET", CLIENTS, again.headers)
    assert r.status_code == 200, r.text


async def test_a_deleted_clients_key_is_refused_at_once(world: World) -> None:
    first = RubyRequest("GET", CLIENTS + "/node", "node", world.node_key)
    second = RubyRequest("GET", CLIENTS + "/node", "node", world.node_key)
    await ruby_sign([first, second], world.tmp)
    r = await world.send("GET", first.path, first.headers)
    assert r.status_code == 200, r.text
    r = await world.pivotal.delete(CLIENTS + "/node")
    assert r.status_code == 200, r.text
    r = await world.send("GET", second.path, second.headers)
    assert (r.status_code, r.json()) == (401, _unknown("node"))
    assert r.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
