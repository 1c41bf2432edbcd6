"""What a new user and an attack run found in the HTTP API (issues 12 §1 and 13 #2, #9, #10),
each through the real appliance on port 0 with real Chef signing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from pushy_appliance import chef_auth

from helpers import Signed, admin_client, running_server, test_config

ORG = "/organizations/default"
JOB = {"command": "chef-client", "nodes": ["web1"]}


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "Traceback" not in record.getMessage()
        assert record.levelno < logging.ERROR, record.getMessage()


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("POST", "/users", {"username": "u1", "create_key": True, "email": None},
         "field 'email' must be a string of at most 1024 characters"),
        ("POST", "/users", {"username": "u1", "create_key": True, "display_name": None},
         "field 'display_name' must be a string of at most 1024 characters"),
        ("POST", "/users", {"username": "u1", "public_key": None},
         "field 'public_key' must be a PEM string"),
        ("POST", "/users", {"username": "u1", "create_key": None},
         "field 'create_key' must be a boolean"),
        ("POST", "/organizations", {"name": "o1", "full_name": None},
         "field 'full_name' must be a string of at most 1024 characters"),
        ("POST", f"{ORG}/clients", {"name": "c1", "create_key": True, "admin": None},
         "field 'admin' must be a boolean"),
        ("POST", f"{ORG}/clients", {"name": None, "create_key": True},
         "field 'name' missing or not a string"),
        ("POST", f"{ORG}/groups", {"groupname": "g1", "actors": None},
         "field 'actors' must be an object"),
        ("POST", f"{ORG}/groups", {"groupname": "g1", "actors": {"users": None}},
         "field 'actors.users' must be a list of names"),
        ("PUT", f"{ORG}/groups/admins", {"groupname": None, "actors": {}},
         "field 'groupname' missing or not a string"),
        ("POST", f"{ORG}/pushy/jobs", {**JOB, "user": None}, "invalid user (expected a string)"),
        ("POST", f"{ORG}/pushy/jobs", {**JOB, "dir": None}, "invalid dir (expected a string)"),
        ("POST", f"{ORG}/pushy/jobs", {**JOB, "file": None},
         "invalid file contents (expected 'base64:...' or 'raw:...')"),
        ("POST", f"{ORG}/pushy/jobs", {**JOB, "env": None},
         "invalid env (expected an object of strings)"),
    ],
)  # fmt: skip
async def test_null_is_not_a_value_of_a_typed_field(
    tmp_path: Path, method: str, path: str, body: dict[str, Any], message: str
) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info, "pivotal") as piv:
        r = await piv.request(method, path, body)
        assert (r.status_code, r.json()) == (400, {"error": message})


async def test_config_without_a_node_is_404_for_every_method(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        for method in ("GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"):
            for path in (f"{ORG}/pushy/config", f"{ORG}/pushy/config/"):
                r = await admin.request(method, path, {} if method in ("PUT", "POST") else None)
                assert r.status_code == 404, (method, path, r.text)
                assert r.json() == {"error": ["not found"]}
        r = await admin.request("HEAD", f"{ORG}/pushy/config")
        assert r.status_code == 404


@pytest.mark.parametrize(
    "host",
    [
        "a" * 64,  # a DNS label over 63 characters: the framework's IDNA step raised
        "a" * 64 + ".example.com:10003",
        "a..b",
        ".",
        "javascript://x",
        "host:99999",
        "host:",
        "host:1:2",
        "[::1",
        "[not-v6]:1",
        "h\u00e9.example",
        "x" * 254,
    ],
)
async def test_an_invalid_host_header_is_400_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    async with running_server(test_config(tmp_path, insecure_http=True)) as info:
        caplog.clear()
        caplog.set_level(logging.DEBUG)
        async with httpx.AsyncClient() as http:
            r = await http.get(info.url + "/pushy/_status", headers={"Host": host.encode()})
            assert (r.status_code, r.json()) == (400, {"error": "invalid Host header"})
            r = await http.get(info.url + "/pushy/_status")
            assert r.status_code == 200
        no_traceback(caplog)


@pytest.mark.parametrize(
    "host", ["a" * 63, "a" * 63 + ".example.com:10003", "127.0.0.1:1", "[::1]:443", "h_1.", "H-1"]
)
async def test_a_valid_host_header_is_served(tmp_path: Path, host: str) -> None:
    config = test_config(tmp_path, insecure_http=True)
    async with running_server(config) as info, httpx.AsyncClient() as http:
        r = await http.get(info.url + "/pushy/_status", headers={"Host": host})
        assert r.status_code == 200, r.text


async def test_percentage_quorum_of_5000_digits_is_400(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        for quorum, message in (
            ("1" * 5000 + "%", "invalid quorum (percentage must be 0% .. 100%)"),
            ("5." + "0" * 5000 + "%", "invalid quorum (at most 6 decimals)"),
        ):
            r = await admin.post(f"{ORG}/pushy/jobs", {**JOB, "quorum": quorum})
            assert (r.status_code, r.json()) == (400, {"error": message})


@pytest.mark.parametrize(
    "value",
    ["\uff11", "\u0663", "\u00b9", "+1", "-1", " 1", "1 ", "1_0", "0x1", "1.0", "", "9" * 5000],
)
async def test_a_number_in_a_query_string_is_ascii_digits(tmp_path: Path, value: str) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        r = await admin.get(f"{ORG}/pushy/jobs?limit={quote(value, safe='')}")
        assert (r.status_code, r.json()) == (
            400,
            {"error": "invalid limit (must be an integer 1 .. 10000)"},
        )
        assert (await admin.get(f"{ORG}/pushy/jobs?limit=1")).status_code == 200


async def _create_job(admin: Signed, headers: dict[str, str]) -> httpx.Response:
    r = await admin.post(f"{ORG}/pushy/jobs", JOB, headers=headers)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == r.json()["uri"]
    return r


async def test_uri_and_location_reflect_only_a_valid_host_and_scheme(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        port = info.url.rsplit(":", 1)[1]
        r = await _create_job(admin, {"X-Forwarded-Proto": "javascript"})
        assert r.json()["uri"].startswith(f"https://127.0.0.1:{port}/organizations/default/")
        r = await _create_job(admin, {"X-Forwarded-Proto": "HTTP, https"})
        assert r.json()["uri"].startswith(f"http://127.0.0.1:{port}/organizations/default/")
        # a valid Host is the host the client reached (no server_name configured)
        r = await _create_job(admin, {"Host": "pushy.example.com"})
        assert r.json()["uri"].startswith("https://pushy.example.com/organizations/default/")
        r = await admin.post(f"{ORG}/pushy/jobs", JOB, headers={"Host": "javascript://x"})
        assert (r.status_code, r.json()) == (400, {"error": "invalid Host header"})
        r = await admin.post("/organizations", {"name": "o2"}, headers={"Host": "evil/x"})
        assert r.status_code == 400


async def test_server_name_wins_over_the_host_header(tmp_path: Path) -> None:
    config = test_config(tmp_path, server_name="pushy.example.com")
    async with running_server(config) as info, admin_client(info) as admin:
        r = await _create_job(admin, {"Host": "evil.example:8443"})
        assert r.json()["uri"].startswith("https://pushy.example.com:8443/organizations/default/")
        r = await _create_job(admin, {"Host": "evil.example", "X-Forwarded-Proto": "http"})
        assert r.json()["uri"].startswith("http://pushy.example.com/organizations/default/")
        r = await admin.get(f"{ORG}/pushy/config/web1", headers={"Host": "evil.example"})
        doc = r.json()
        assert doc["host"] == "pushy.example.com"
        assert doc["push_jobs"]["connect_url"].startswith("wss://pushy.example.com:")
        r = await admin.get(f"{ORG}/clients", headers={"Host": "evil.example:1"})
        assert all(uri.startswith("https://pushy.example.com:1/") for uri in r.json().values())


# --- issue 13 #2: users and clients share one name space per organization -------------------


async def _user(piv: Signed, name: str) -> Signed:
    r = await piv.post("/users", {"username": name, "create_key": True})
    assert r.status_code == 201, r.text
    key = chef_auth.load_private_key(r.json()["chef_key"]["private_key"])
    return Signed(piv.http, piv.base, name, key)


async def test_a_client_cannot_take_the_name_of_a_user_of_the_org(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info, "pivotal") as piv:
        admin = Signed.from_file(piv.http, piv.base, "admin", tmp_path / "keys" / "admin.pem")
        carol = await _user(piv, "carol")
        assert (await piv.post(f"{ORG}/users", {"username": "carol"})).status_code == 201
        for name, kind in (("pivotal", "user"), ("carol", "user"), ("admin", "user")):
            r = await admin.post(f"{ORG}/clients", {"name": name, "create_key": True})
            assert (r.status_code, r.json()) == (
                409,
                {
                    "error": [
                        f"{kind} '{name}' already exists in organization 'default' "
                        "(users and clients share one name space per organization)"
                    ]
                },
            )
        # nothing was created, and every user still signs in
        assert (await admin.get(f"{ORG}/clients")).json() == {}
        for who in (piv, carol, admin):
            assert (await who.get(f"{ORG}/pushy/jobs")).status_code == 200, who.user


async def test_a_user_cannot_join_an_org_whose_client_has_their_name(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info, "pivotal") as piv:
        admin = Signed.from_file(piv.http, piv.base, "admin", tmp_path / "keys" / "admin.pem")
        # dave is a user of no org yet: a client of that name in default shadows nobody
        dave = await _user(piv, "dave")
        r = await admin.post(f"{ORG}/clients", {"name": "dave", "create_key": True})
        assert r.status_code == 201, r.text
        dave_client = Signed(
            piv.http,
            piv.base,
            "dave",
            chef_auth.load_private_key(r.json()["chef_key"]["private_key"]),
        )
        r = await admin.post(f"{ORG}/users", {"username": "dave"})
        assert (r.status_code, r.json()) == (
            409,
            {
                "error": [
                    "client 'dave' already exists in organization 'default' "
                    "(users and clients share one name space per organization)"
                ]
            },
        )
        assert "dave" not in (await admin.get(f"{ORG}/users")).text
        # both keep working where they belong
        assert (await dave_client.get(f"{ORG}/pushy/jobs")).status_code == 200
        r = await piv.post("/organizations", {"name": "acme"})
        assert r.status_code == 201
        r = await piv.post("/organizations/acme/users", {"username": "dave"})
        assert r.status_code == 201
        assert (await dave.get("/organizations/acme/pushy/jobs")).status_code == 200
        # the name is free again once the client is gone
        assert (await admin.delete(f"{ORG}/clients/dave")).status_code == 200
        assert (await admin.post(f"{ORG}/users", {"username": "dave"})).status_code == 201
        assert (await dave.get(f"{ORG}/pushy/jobs")).status_code == 200
