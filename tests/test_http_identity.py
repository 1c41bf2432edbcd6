"""The identity routes and the HTTP error contract, against the real appliance on port 0."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from pushy_appliance import chef_auth

from helpers import Signed, admin_client, running_server, test_config


async def test_status_over_tls_verified_by_the_data_dir_ca(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info:
        assert info.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.pem"))
        async with httpx.AsyncClient(verify=ctx) as http:
            r = await http.get(info.url + "/pushy/_status")
            assert r.status_code == 200
            doc = r.json()
            assert doc["status"] == "it's alive"
            assert doc["incarnation_id"] == info.incarnation_id
            assert doc["store"]["records"] >= 1
            r = await http.post(info.url + "/pushy/_status")
            assert r.status_code == 405
            assert "GET" in r.headers["Allow"]
        # an untrusting client is refused by TLS itself
        async with httpx.AsyncClient(verify=ssl.create_default_context()) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(info.url + "/pushy/_status")


async def test_first_start_layout(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info:
        for rel in ("keys/pivotal.pem", "keys/admin.pem", "tls/server.key", "tls/ca.key"):
            assert (tmp_path / rel).stat().st_mode & 0o777 == 0o600, rel
        assert (tmp_path / "tls" / "ca.pem").exists()
        creds = (tmp_path / "credentials").read_text()
        assert f'chef_server_url = "{info.url}/organizations/default"' in creds
        assert 'client_name = "admin"' in creds
        server_json = (tmp_path / "run" / "server.json").read_text()
        assert info.url in server_json
        async with admin_client(info) as admin:
            r = await admin.get("/organizations/default/groups/admins")
            assert r.status_code == 200
            assert r.json()["users"] == ["admin"]


async def test_client_lifecycle_and_conflicts(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        r = await admin.post(
            "/organizations/default/clients", {"name": "node1", "create_key": True}
        )
        assert r.status_code == 201, r.text
        doc = r.json()
        assert doc["uri"].endswith("/organizations/default/clients/node1")
        assert r.headers["Location"] == doc["uri"]
        key = chef_auth.load_private_key(doc["chef_key"]["private_key"])
        r = await admin.post(
            "/organizations/default/clients", {"name": "node1", "create_key": True}
        )
        assert r.status_code == 409
        assert r.json() == {"error": ["client 'node1' already exists"]}
        r = await admin.get("/organizations/default/clients")
        assert set(r.json()) == {"node1"}
        # the new client can sign requests
        node = Signed(admin.http, admin.base, "node1", key)
        r = await node.get("/organizations/default/clients/node1")
        assert r.status_code == 200
        assert r.json()["name"] == "node1"
        # but not write
        r = await node.post("/organizations/default/clients", {"name": "x", "create_key": True})
        assert r.status_code == 403
        assert r.json() == {
            "error": ["User or client 'node1' does not have access to that action on this server."]
        }
        r = await admin.delete("/organizations/default/clients/node1")
        assert r.status_code == 200
        r = await node.get("/organizations/default/clients")
        assert r.status_code == 401


async def test_org_user_group_routes(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info, "pivotal") as piv:
        r = await piv.post("/organizations", {"name": "acme", "full_name": "Acme"})
        assert r.status_code == 201, r.text
        r = await piv.post("/organizations", {"name": "acme"})
        assert r.status_code == 409
        r = await piv.post("/users", {"username": "alice", "create_key": True})
        assert r.status_code == 201
        alice = Signed(
            piv.http,
            piv.base,
            "alice",
            chef_auth.load_private_key(r.json()["chef_key"]["private_key"]),
        )
        # not a member yet
        r = await alice.get("/organizations/acme/clients")
        assert r.status_code == 403
        assert r.json() == {"error": ["'alice' is not associated with organization 'acme'"]}
        r = await piv.post("/organizations/acme/users", {"username": "alice"})
        assert r.status_code == 201
        r = await alice.get("/organizations/acme/clients")
        assert r.status_code == 200
        # nested groups: ops contains alice, admins contains ops
        r = await piv.post(
            "/organizations/acme/groups", {"groupname": "ops", "actors": {"users": ["alice"]}}
        )
        assert r.status_code == 201, r.text
        r = await alice.post("/organizations/acme/clients", {"name": "n1", "create_key": True})
        assert r.status_code == 403
        r = await piv.put(
            "/organizations/acme/groups/admins",
            {"groupname": "admins", "actors": {"users": [], "clients": [], "groups": ["ops"]}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["groups"] == ["ops"]
        r = await alice.post("/organizations/acme/clients", {"name": "n1", "create_key": True})
        assert r.status_code == 201
        n1_key = chef_auth.load_private_key(r.json()["chef_key"]["private_key"])
        r = await piv.get("/organizations/acme/principals/n1")
        assert r.json()["principals"][0]["type"] == "client"
        # a client of acme is an unknown principal in default
        n1 = Signed(piv.http, piv.base, "n1", n1_key)
        assert (await n1.get("/organizations/acme/clients")).status_code == 200
        r = await n1.get("/organizations/default/clients")
        assert r.status_code == 401
        assert "WWW-Authenticate" in r.headers


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "invalid JSON body"),
        (b"[1,2]", 400, "invalid JSON body"),
        (b'{"name": 5}', 400, "field 'name'"),
        (b'{"name": "a/b", "create_key": true}', 400, "invalid name"),
        (b'{"name": "..", "create_key": true}', 400, "invalid name"),
        (b'{"name": "x", "create_key": "yes"}', 400, "create_key"),
        (b'{"name": "x", "public_key": "not a key"}', 400, "public_key"),
    ],
)
async def test_bad_input_is_a_4xx_naming_the_problem(
    tmp_path: Path, body: bytes, status: int, needle: str
) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        r = await admin.post("/organizations/default/clients", raw=body)
        assert r.status_code == status, r.text
        assert needle in r.text
        # and the server keeps serving
        r = await admin.get("/organizations/default/clients")
        assert r.status_code == 200


async def test_limits_and_content_types(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        big = b'{"name":"' + b"x" * 1_000_001 + b'"}'
        r = await admin.post("/organizations/default/clients", raw=big)
        assert r.status_code == 413
        assert r.json() == {"error": "JSON must be no more than 1000000 bytes."}
        r = await admin.post(
            "/organizations/default/clients", raw=b"name=x", headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 415
        r = await admin.get("/organizations/default/clients", headers={"Accept": "text/html"})
        assert r.status_code == 406
        r = await admin.get("/organizations/default/nothing-here")
        assert r.status_code == 404
        assert r.json() == {"error": ["not found"]}
        r = await admin.request("PATCH", "/organizations/default/clients")
        assert r.status_code == 405
        # a trailing slash is ignored
        r = await admin.get("/organizations/default/clients/")
        assert r.status_code == 200
        r = await admin.get("/organizations/nope/clients")
        assert r.status_code == 404
        assert r.json() == {"error": ["organization 'nope' does not exist."]}


async def test_lone_surrogates_are_refused_not_stored(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info, "pivotal") as piv:
        for path, raw in (
            ("/users", b'{"username":"u1","email":"\\ud800","create_key":true}'),
            ("/organizations", b'{"name":"o1","full_name":"\\udfff"}'),
        ):
            r = await piv.post(path, raw=raw)
            assert r.status_code == 400, r.text
            assert r.json() == {"error": "invalid JSON body"}
        # a paired surrogate escape is ordinary text
        r = await piv.post("/organizations", raw=b'{"name":"o2","full_name":"\\ud83d\\ude00"}')
        assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("raw", "client_error", "job_error"),
    [
        (
            b'{"name":"x","name":"y","command":"c","nodes":["n1"],"env":{"A":"1"}}',
            "invalid JSON body (duplicate key 'name')",
            "invalid key supplied",
        ),
        (
            b'{"command":"c","nodes":["n1"],"env":{"A":"1","A":"2"}}',
            "invalid JSON body (duplicate key 'A')",
            "invalid environment value (duplicate key)",
        ),
        (b'{"name":"x","create_key":true,"admin":NaN}', "invalid JSON body", "invalid JSON body"),
        (b'{"name":"\\ud800","command":"\\ud800"}', "invalid JSON body", "invalid JSON body"),
        (b'{"name":' + b"[" * 65 + b"]" * 65 + b"}", "invalid JSON body", "invalid JSON body"),
    ],
)
async def test_one_json_policy_for_identity_and_job_bodies(
    tmp_path: Path, raw: bytes, client_error: str, job_error: str
) -> None:
    """Identity and job routes decode bodies alike; only where the job schema places a
    duplicate key (a top-level key, an ``env`` key) does it report it its own way."""
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        r = await admin.post("/organizations/default/clients", raw=raw)
        assert (r.status_code, r.json()) == (400, {"error": client_error})
        r = await admin.post("/organizations/default/pushy/jobs", raw=raw)
        assert (r.status_code, r.json()) == (400, {"error": job_error})
        r = await admin.get("/organizations/default/clients")
        assert r.json() == {}


async def test_identity_refusals_have_the_contract_bodies(tmp_path: Path) -> None:
    """The identity model's refusals (domain errors) answered in Chef Server's list form."""
    async with running_server(test_config(tmp_path)) as info, admin_client(info, "pivotal") as piv:
        org = "/organizations/default"
        cases: list[tuple[str, str, dict[str, object] | None, int, object]] = [
            ("POST", "/organizations", {"name": "default"}, 409,
             ["organization 'default' already exists"]),
            ("POST", "/users", {"username": "admin", "create_key": True}, 409,
             ["user 'admin' already exists"]),
            ("GET", "/users/ghost", None, 404, ["user 'ghost' not found"]),
            ("DELETE", "/users/pivotal", None, 400, "the superuser cannot be deleted"),
            ("POST", f"{org}/users", {"username": "admin"}, 409,
             ["user 'admin' is already a member of 'default'"]),
            ("POST", f"{org}/users", {"username": "ghost"}, 404, ["user 'ghost' not found"]),
            ("GET", f"{org}/users/pivotal", None, 404,
             ["user 'pivotal' is not a member of 'default'"]),
            ("DELETE", f"{org}/users/ghost", None, 404,
             ["user 'ghost' is not a member of 'default'"]),
            ("GET", f"{org}/clients/ghost", None, 404, ["client 'ghost' not found"]),
            ("DELETE", f"{org}/clients/ghost", None, 404, ["client 'ghost' not found"]),
            ("POST", f"{org}/groups", {"groupname": "admins"}, 409,
             ["group 'admins' already exists"]),
            ("POST", f"{org}/groups", {"groupname": "g", "actors": {"users": ["ghost"]}}, 400,
             "invalid actors.users: user 'ghost' does not exist"),
            ("GET", f"{org}/groups/ghost", None, 404, ["group 'ghost' not found"]),
            ("PUT", f"{org}/groups/ghost", {"actors": {}}, 404, ["group 'ghost' not found"]),
            ("DELETE", f"{org}/groups/users", None, 400, "group 'users' cannot be deleted"),
            ("GET", f"{org}/principals/ghost", None, 404, ["principal 'ghost' not found"]),
            ("GET", "/organizations/nope/principals/admin", None, 404,
             ["organization 'nope' does not exist."]),
        ]  # fmt: skip
        for method, path, body, status, error in cases:
            r = await piv.request(method, path, body)
            assert (r.status_code, r.json()) == (status, {"error": error}), (method, path)


async def test_the_users_and_clients_groups_list_the_memberships(tmp_path: Path) -> None:
    """Membership is stored once; the default groups show it as they always did."""
    async with running_server(test_config(tmp_path)) as info, admin_client(info, "pivotal") as piv:
        org = "/organizations/default"
        assert (await piv.post("/users", {"username": "alice", "create_key": True})).is_success
        assert (await piv.post("/users", {"username": "carol", "create_key": True})).is_success
        assert (await piv.post(f"{org}/users", {"username": "alice"})).status_code == 201
        assert (await piv.post(f"{org}/clients", {"name": "n1", "create_key": True})).is_success
        r = await piv.get(f"{org}/groups/users")
        assert (r.json()["users"], r.json()["clients"]) == (["admin", "alice"], [])
        r = await piv.get(f"{org}/groups/clients")
        assert (r.json()["users"], r.json()["clients"]) == ([], ["n1"])
        # a PUT may add other actors to a default group, not change who is a member
        r = await piv.put(
            f"{org}/groups/users", {"actors": {"users": ["admin", "alice"], "clients": ["n1"]}}
        )
        assert r.status_code == 200, r.text
        assert r.json()["actors"] == ["admin", "alice", "n1"]
        r = await piv.put(f"{org}/groups/users", {"actors": {"users": ["admin", "carol"]}})
        assert r.status_code == 400
        assert r.json()["error"].startswith("invalid actors.users: the users of group 'users'")
        r = await piv.delete(f"{org}/users/alice")
        assert r.status_code == 200
        r = await piv.get(f"{org}/groups/users")
        assert (r.json()["users"], r.json()["clients"]) == (["admin"], ["n1"])
        assert (await piv.delete(f"{org}/clients/n1")).status_code == 200
        r = await piv.get(f"{org}/groups/clients")
        assert r.json()["clients"] == []
