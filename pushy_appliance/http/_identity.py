"""Identity routes: the Chef Infra Server API subset push jobs needs (``API.md`` §4).

The routes parse and authorize; the identity model owns the rules. Reads ask its query
methods; a write holds the name's lock (``Database.exclusive``) around the model's change
method (which checks the change and returns its records) and the commit, so two creations
of the same name cannot both succeed. The request's audit entry is committed with the
change's records (``_audit.audit_entry``). A client and a member of an organization share one
name space there (the name a request is signed with), so both take the same lock,
``("principal", ORG, NAME)``. The response is sent after the record is durable.
"""

from __future__ import annotations

import time
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from .. import chef_auth
from ..audit.summary import identity_summary
from ..auth import Principal, forbidden, org_not_found
from ..errors import KeyFormatError, NoSuchIdentityError, ValidationError
from ..model import Group, valid_name, valid_org
from ..services import Services
from ._audit import audit_entry
from ._request import authorized, base_url, json_response, read_json, require_accept, signed

__all__ = ["register"]


def _check_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"field '{field}' missing or not a string")
    if not valid_name(value):
        raise ValidationError(f"invalid {field} '{value[:300]}'")
    return value


def _check_org_name(value: object, field: str = "name") -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"field '{field}' missing or not a string")
    if not valid_org(value):
        raise ValidationError(f"invalid {field} '{value[:300]}'")
    return value


def _route_name(value: str, what: str) -> str:
    """A name taken from the path: a bad one is simply not found."""
    if not valid_name(value):
        raise NoSuchIdentityError(what, value[:300])
    return value


def _route_org(svc: Services, org: str) -> str:
    if not valid_org(org) or not svc.identity.has_org(org):
        raise org_not_found(org[:300])
    return org


def _optional_str(body: dict[str, Any], field: str, default: str = "") -> str:
    """An optional string field; ``null`` is not a string (``API.md`` §3)."""
    value = body.get(field, default)
    if not isinstance(value, str) or len(value) > 1024:
        raise ValidationError(f"field '{field}' must be a string of at most 1024 characters")
    return value


async def _key_material(body: dict[str, Any]) -> tuple[str, str | None]:
    """``(public PEM, private PEM or None)`` from ``create_key`` / ``public_key``."""
    create = body.get("create_key", False)
    public = body.get("public_key")
    if not isinstance(create, bool):
        raise ValidationError("field 'create_key' must be a boolean")
    if "public_key" in body and not isinstance(public, str):
        raise ValidationError("field 'public_key' must be a PEM string")
    if public is not None and create:
        raise ValidationError("give either 'create_key' or 'public_key', not both")
    if public is not None:
        try:
            key = chef_auth.load_public_key(public)
        except KeyFormatError as e:
            raise ValidationError(f"invalid public_key: {e}") from None
        return chef_auth.public_key_pem(key), None
    # RSA key generation takes tens of milliseconds of CPU: keep it off the event loop.
    private = await trio.to_thread.run_sync(chef_auth.generate_private_key)
    return chef_auth.public_key_pem(private), chef_auth.private_key_pem(private)


def _chef_key(public: str, private: str | None) -> dict[str, Any]:
    key: dict[str, Any] = {"name": "default", "public_key": public, "expiration_date": "infinity"}
    if private is not None:
        key["private_key"] = private
    return key


def _actor_lists(body: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """The ``actors`` of a group body; none when the key is absent (``null`` is refused)."""
    if "actors" not in body:
        return [], [], []
    value = body["actors"]
    if not isinstance(value, dict):
        raise ValidationError("field 'actors' must be an object")
    unknown = set(value) - {"users", "clients", "groups"}
    if unknown:
        raise ValidationError(f"field 'actors' has unknown key '{sorted(unknown)[0]}'")
    out: list[list[str]] = []
    for kind in ("users", "clients", "groups"):
        names = value.get(kind, [])
        if not isinstance(names, list) or len(names) > 100_000:
            raise ValidationError(f"field 'actors.{kind}' must be a list of names")
        out.append(sorted({_check_name(n, f"actors.{kind}") for n in names}))
    return out[0], out[1], out[2]


def group_document(org: str, g: Group) -> dict[str, Any]:
    users, clients, groups = sorted(g.users), sorted(g.clients), sorted(g.groups)
    return {
        "name": g.name,
        "groupname": g.name,
        "orgname": org,
        "actors": users + clients,
        "users": users,
        "clients": clients,
        "groups": groups,
    }


def register(app: QuartTrio, svc: Services) -> None:
    """Register the identity routes on ``app``."""
    db = svc.db
    identity = svc.identity

    def require_pivotal(who: Principal) -> None:
        if not who.is_pivotal:
            raise forbidden(who.name)

    # --- organizations ----------------------------------------------------------------------

    @app.route("/organizations", methods=["GET", "POST"])
    async def organizations() -> Response:
        require_accept()
        who = await signed(svc, None)
        if request.method == "GET":
            names = identity.org_names(member=None if who.is_pivotal else who.name)
            return json_response({o: f"{base_url(svc)}/organizations/{o}" for o in names})
        require_pivotal(who)
        body = await read_json()
        name = _check_org_name(body.get("name"))
        full_name = _optional_str(body, "full_name", name)
        async with db.exclusive(("org", name)):
            await db.commit(
                *identity.create_org(name, full_name, created_at=time.time()),
                audit_entry(
                    svc,
                    who,
                    name,
                    "org.create",
                    status=201,
                    target=name,
                    summary=identity_summary(body, ("name", "full_name")),
                ),
            )
        uri = f"{base_url(svc)}/organizations/{name}"
        return json_response({"uri": uri}, 201, {"Location": uri})

    @app.route("/organizations/<org>", methods=["GET", "DELETE"])
    async def organization(org: str) -> Response:
        who = await authorized(svc, org)
        o = identity.org(org)
        doc = {"name": o.name, "full_name": o.full_name, "guid": org}
        if request.method == "DELETE":
            require_pivotal(who)
            async with db.exclusive(("org", org)):
                await db.commit(
                    *identity.delete_org(org),
                    audit_entry(svc, who, org, "org.delete", status=200, target=org),
                )
        return json_response(doc)

    # --- users ------------------------------------------------------------------------------

    @app.route("/users", methods=["GET", "POST"])
    async def users() -> Response:
        require_accept()
        who = await signed(svc, None)
        require_pivotal(who)
        if request.method == "GET":
            return json_response({u: f"{base_url(svc)}/users/{u}" for u in identity.user_names()})
        body = await read_json()
        name = _check_name(body.get("username"), "username")
        display = _optional_str(body, "display_name", name)
        email = _optional_str(body, "email")
        public, private = await _key_material(body)
        async with db.exclusive(("user", name)):
            await db.commit(
                *identity.create_user(name, display, email, public),
                audit_entry(
                    svc,
                    who,
                    None,
                    "user.create",
                    status=201,
                    target=name,
                    summary=identity_summary(body, ("username", "display_name", "email"), key=True),
                ),
            )
        uri = f"{base_url(svc)}/users/{name}"
        return json_response(
            {"uri": uri, "chef_key": _chef_key(public, private)}, 201, {"Location": uri}
        )

    @app.route("/users/<name>", methods=["GET", "DELETE"])
    async def user(name: str) -> Response:
        require_accept()
        who = await signed(svc, None)
        name = _route_name(name, "user")
        if not (who.is_pivotal or (who.kind == "user" and who.name == name)):
            raise forbidden(who.name)
        u = identity.user(name)
        doc = {
            "username": u.name,
            "display_name": u.display_name,
            "email": u.email,
            "public_key": u.keys[0] if u.keys else None,
        }
        if request.method == "DELETE":
            require_pivotal(who)
            async with db.exclusive(("user", name)):
                await db.commit(
                    *identity.delete_user(name),
                    audit_entry(svc, who, None, "user.delete", status=200, target=name),
                )
        return json_response(doc)

    # --- org membership -----------------------------------------------------------------------

    @app.route("/organizations/<org>/users", methods=["GET", "POST"])
    async def org_users(org: str) -> Response:
        who = await authorized(svc, org)
        if request.method == "GET":
            svc.auth.require(org, who, "member")
            return json_response([{"user": {"username": n}} for n in identity.members(org)])
        svc.auth.require(org, who, "admin")
        body = await read_json()
        name = _check_name(body.get("username"), "username")
        async with db.exclusive(("principal", org, name)):
            await db.commit(
                *identity.add_member(org, name),
                audit_entry(svc, who, org, "member.add", status=201, target=name),
            )
        uri = f"{base_url(svc)}/organizations/{org}/users/{name}"
        return json_response({"uri": uri}, 201, {"Location": uri})

    @app.route("/organizations/<org>/users/<name>", methods=["GET", "DELETE"])
    async def org_user(org: str, name: str) -> Response:
        who = await authorized(svc, org)
        name = _route_name(name, "user")
        u = identity.member(org, name)
        doc = {"username": u.name, "display_name": u.display_name, "email": u.email}
        if request.method == "DELETE":
            svc.auth.require(org, who, "admin")
            async with db.exclusive(("principal", org, name)):
                await db.commit(
                    *identity.remove_member(org, name),
                    audit_entry(svc, who, org, "member.remove", status=200, target=name),
                )
        return json_response(doc)

    # --- clients ----------------------------------------------------------------------------

    @app.route("/organizations/<org>/clients", methods=["GET", "POST"])
    async def clients(org: str) -> Response:
        who = await authorized(svc, org)
        if request.method == "GET":
            svc.auth.require(org, who, "member")
            base = f"{base_url(svc)}/organizations/{org}/clients"
            return json_response({n: f"{base}/{n}" for n in identity.client_names(org)})
        svc.auth.require(org, who, "admin")
        body = await read_json()
        name = _check_name(body.get("name", body.get("clientname")), "name")
        admin = body.get("admin", False)
        if not isinstance(admin, bool):
            raise ValidationError("field 'admin' must be a boolean")
        public, private = await _key_material(body)
        async with db.exclusive(("principal", org, name)):
            await db.commit(
                *identity.create_client(org, name, public, admin),
                audit_entry(
                    svc,
                    who,
                    org,
                    "client.create",
                    status=201,
                    target=name,
                    summary=identity_summary(body, ("name", "clientname", "admin"), key=True),
                ),
            )
        uri = f"{base_url(svc)}/organizations/{org}/clients/{name}"
        return json_response(
            {"uri": uri, "chef_key": _chef_key(public, private)}, 201, {"Location": uri}
        )

    @app.route("/organizations/<org>/clients/<name>", methods=["GET", "DELETE"])
    async def client(org: str, name: str) -> Response:
        who = await authorized(svc, org)
        name = _route_name(name, "client")
        c = identity.client(org, name)
        doc = {
            "name": c.name,
            "clientname": c.name,
            "orgname": org,
            "validator": False,
            "admin": c.admin,
            "public_key": c.keys[0] if c.keys else None,
        }
        if request.method == "DELETE":
            if not (who.kind == "client" and who.name == name):
                svc.auth.require(org, who, "admin")
            async with db.exclusive(("principal", org, name)):
                await db.commit(
                    *identity.delete_client(org, name),
                    audit_entry(svc, who, org, "client.delete", status=200, target=name),
                )
        else:
            svc.auth.require(org, who, "member")
        return json_response(doc)

    # --- groups -----------------------------------------------------------------------------

    @app.route("/organizations/<org>/groups", methods=["GET", "POST"])
    async def groups(org: str) -> Response:
        who = await authorized(svc, org)
        if request.method == "GET":
            svc.auth.require(org, who, "member")
            base = f"{base_url(svc)}/organizations/{org}/groups"
            return json_response({g: f"{base}/{g}" for g in identity.group_names(org)})
        svc.auth.require(org, who, "admin")
        body = await read_json()
        name = _check_name(body.get("groupname", body.get("name")), "groupname")
        users, clients_, subgroups = _actor_lists(body)
        async with db.exclusive(("group", org, name)):
            await db.commit(
                *identity.create_group(org, name, users, clients_, subgroups),
                audit_entry(
                    svc,
                    who,
                    org,
                    "group.create",
                    status=201,
                    target=name,
                    summary=identity_summary(body, ("groupname", "name", "actors")),
                ),
            )
        uri = f"{base_url(svc)}/organizations/{org}/groups/{name}"
        return json_response({"uri": uri}, 201, {"Location": uri})

    @app.route("/organizations/<org>/groups/<name>", methods=["GET", "PUT", "DELETE"])
    async def group(org: str, name: str) -> Response:
        who = await authorized(svc, org)
        name = _route_name(name, "group")
        doc = group_document(org, identity.group(org, name))
        if request.method == "GET":
            svc.auth.require(org, who, "member")
            return json_response(doc)
        svc.auth.require(org, who, "admin")
        if request.method == "DELETE":
            async with db.exclusive(("group", org, name)):
                await db.commit(
                    *identity.delete_group(org, name),
                    audit_entry(svc, who, org, "group.delete", status=200, target=name),
                )
            return json_response(doc)
        body = await read_json()
        if "groupname" in body and _check_name(body["groupname"], "groupname") != name:
            raise ValidationError("renaming a group is not supported (field 'groupname')")
        users, clients_, subgroups = _actor_lists(body)
        async with db.exclusive(("group", org, name)):
            await db.commit(
                *identity.update_group(org, name, users, clients_, subgroups),
                audit_entry(
                    svc,
                    who,
                    org,
                    "group.update",
                    status=200,
                    target=name,
                    summary=identity_summary(body, ("actors",)),
                ),
            )
        return json_response(group_document(org, identity.group(org, name)))

    # --- principals (no authentication) -------------------------------------------------------

    @app.route("/organizations/<org>/principals/<name>", methods=["GET"])
    async def principal(org: str, name: str) -> Response:
        require_accept()
        org = _route_org(svc, org)
        name = _route_name(name, "principal")
        found = identity.principal(org, name)
        if found is None:
            raise NoSuchIdentityError("principal", name)
        kind, keys = found
        return json_response(
            {
                "principals": [
                    {
                        "name": name,
                        "type": kind,
                        "public_key": keys[0] if keys else None,
                        "authz_id": f"{kind}-{name}",
                        "org_member": identity.is_org_member(org, kind, name),
                    }
                ]
            }
        )
