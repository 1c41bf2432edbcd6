"""The identity model: organizations, users, clients, keys, groups and memberships.

Pure: :class:`IdentityModel` changes only by :meth:`IdentityModel.apply` of a record, the same
records the store keeps, so replaying the store rebuilds it exactly. Every record is a map
with a ``t`` (type) key:

========================  ===========================================================
``t``                     fields
========================  ===========================================================
``org.put``               ``name, full_name, created_at``
``org.del``               ``name``
``user.put``              ``name, display_name, email, keys`` (list of PEM strings)
``user.del``              ``name``
``member.add``            ``org, user``
``member.del``            ``org, user``
``client.put``            ``org, name, keys, admin``
``client.del``            ``org, name``
``group.put``             ``org, name, users, clients, groups`` (lists of names)
``group.del``             ``org, name``
========================  ===========================================================

Records of other families (jobs, nodes) are ignored here; their own models apply them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

__all__ = [
    "DEFAULT_GROUPS",
    "NAME_RE",
    "ORG_RE",
    "PIVOTAL",
    "Client",
    "Group",
    "IdentityModel",
    "Org",
    "User",
    "client_record",
    "group_record",
    "org_records",
    "user_record",
    "valid_name",
    "valid_org",
]

ORG_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,254}")
NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,255}")
DEFAULT_GROUPS = ("admins", "users", "clients")
PIVOTAL = "pivotal"
"""The superuser: may do anything in any organization."""


def valid_org(name: object) -> bool:
    """Whether ``name`` is a valid organization name."""
    return isinstance(name, str) and ORG_RE.fullmatch(name) is not None


def valid_name(name: object) -> bool:
    """Whether ``name`` is a valid user, client, node or group name (Chef's rule)."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None and name not in (".", "..")


@dataclasses.dataclass(frozen=True, slots=True)
class Org:
    name: str
    full_name: str
    created_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class User:
    name: str
    display_name: str
    email: str
    keys: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Client:
    org: str
    name: str
    keys: tuple[str, ...]
    admin: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Group:
    org: str
    name: str
    users: frozenset[str]
    clients: frozenset[str]
    groups: frozenset[str]


class IdentityModel:
    """Who exists, which keys they hold, and who belongs where."""

    def __init__(self) -> None:
        self.orgs: dict[str, Org] = {}
        self.users: dict[str, User] = {}
        self.members: dict[str, set[str]] = {}
        self.clients: dict[str, dict[str, Client]] = {}
        self.groups: dict[str, dict[str, Group]] = {}

    # --- records ------------------------------------------------------------------------

    def apply(self, r: dict[str, Any]) -> None:
        """Apply one record. Unknown record types are ignored (other models own them)."""
        t = r.get("t")
        if t == "org.put":
            self.orgs[r["name"]] = Org(r["name"], r["full_name"], r["created_at"])
            self.members.setdefault(r["name"], set())
            self.clients.setdefault(r["name"], {})
            self.groups.setdefault(r["name"], {})
        elif t == "org.del":
            name = r["name"]
            for table in (self.orgs, self.members, self.clients, self.groups):
                table.pop(name, None)
        elif t == "user.put":
            self.users[r["name"]] = User(r["name"], r["display_name"], r["email"], tuple(r["keys"]))
        elif t == "user.del":
            self.users.pop(r["name"], None)
            for members in self.members.values():
                members.discard(r["name"])
            for groups in self.groups.values():
                for g in list(groups.values()):
                    if r["name"] in g.users:
                        groups[g.name] = dataclasses.replace(g, users=g.users - {r["name"]})
        elif t == "member.add":
            self.members.setdefault(r["org"], set()).add(r["user"])
            self._add_to(r["org"], "users", users={r["user"]})
        elif t == "member.del":
            self.members.get(r["org"], set()).discard(r["user"])
            groups = self.groups.get(r["org"], {})
            for g in list(groups.values()):
                if r["user"] in g.users:
                    groups[g.name] = dataclasses.replace(g, users=g.users - {r["user"]})
        elif t == "client.put":
            self.clients.setdefault(r["org"], {})[r["name"]] = Client(
                r["org"], r["name"], tuple(r["keys"]), bool(r["admin"])
            )
            self._add_to(r["org"], "clients", clients={r["name"]})
        elif t == "client.del":
            self.clients.get(r["org"], {}).pop(r["name"], None)
            groups = self.groups.get(r["org"], {})
            for g in list(groups.values()):
                if r["name"] in g.clients:
                    groups[g.name] = dataclasses.replace(g, clients=g.clients - {r["name"]})
        elif t == "group.put":
            self.groups.setdefault(r["org"], {})[r["name"]] = Group(
                r["org"],
                r["name"],
                frozenset(r["users"]),
                frozenset(r["clients"]),
                frozenset(r["groups"]),
            )
        elif t == "group.del":
            self.groups.get(r["org"], {}).pop(r["name"], None)

    def _add_to(
        self,
        org: str,
        group: str,
        *,
        users: set[str] | frozenset[str] = frozenset(),
        clients: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        """Every member of an org is in its ``users`` group, every client in ``clients``."""
        g = self.groups.get(org, {}).get(group)
        if g is not None:
            self.groups[org][group] = dataclasses.replace(
                g, users=g.users | users, clients=g.clients | clients
            )

    def snapshot(self) -> dict[str, Any]:
        """The whole model as plain data (msgpack-able); :meth:`load` reads it back."""
        return {
            "orgs": [dataclasses.asdict(o) for o in self.orgs.values()],
            "users": [dataclasses.asdict(u) for u in self.users.values()],
            "members": {org: sorted(m) for org, m in self.members.items()},
            "clients": [dataclasses.asdict(c) for cs in self.clients.values() for c in cs.values()],
            "groups": [
                {
                    "org": g.org,
                    "name": g.name,
                    "users": sorted(g.users),
                    "clients": sorted(g.clients),
                    "groups": sorted(g.groups),
                }
                for gs in self.groups.values()
                for g in gs.values()
            ],
        }

    def load(self, snap: dict[str, Any]) -> None:
        """Replace the model with a :meth:`snapshot`."""
        self.__init__()  # type: ignore[misc]
        for o in snap["orgs"]:
            self.apply({"t": "org.put", **o})
        for u in snap["users"]:
            self.apply({"t": "user.put", **u})
        for org, users in snap["members"].items():
            self.members.setdefault(org, set()).update(users)
        for c in snap["clients"]:
            self.apply({"t": "client.put", **c})
        for g in snap["groups"]:
            self.apply({"t": "group.put", **g})

    # --- queries ------------------------------------------------------------------------

    def principal(self, org: str | None, name: str) -> tuple[str, tuple[str, ...]] | None:
        """``(kind, public keys)`` of the user or client ``name`` seen from ``org``.

        A client of another organization is unknown here. Users are global.
        """
        if org is not None:
            client = self.clients.get(org, {}).get(name)
            if client is not None:
                return "client", client.keys
        user = self.users.get(name)
        if user is not None:
            return "user", user.keys
        return None

    def is_org_member(self, org: str, kind: str, name: str) -> bool:
        """Whether the principal belongs to ``org`` (clients always do where they exist)."""
        if name == PIVOTAL and kind == "user":
            return True
        if kind == "client":
            return name in self.clients.get(org, {})
        return name in self.members.get(org, set())

    def in_group(self, org: str, group: str, kind: str, name: str) -> bool:
        """Whether the principal is in ``group``, directly or through nested groups."""
        groups = self.groups.get(org, {})
        seen: set[str] = set()
        todo = [group]
        while todo:
            g = groups.get(todo.pop())
            if g is None or g.name in seen:
                continue
            seen.add(g.name)
            if (kind == "user" and name in g.users) or (kind == "client" and name in g.clients):
                return True
            todo.extend(g.groups)
        return False


# --- record builders -----------------------------------------------------------


def org_records(
    name: str, full_name: str, admin: str | None = None, *, created_at: float
) -> list[dict[str, Any]]:
    """The records that create an organization with its default groups.

    Args:
        name, full_name: the organization.
        admin: a user made a member and an admin of it, or ``None``.
        created_at: the creation time (Unix seconds), read by the caller: this module does
            not read the clock.
    """
    records: list[dict[str, Any]] = [
        {"t": "org.put", "name": name, "full_name": full_name, "created_at": created_at}
    ]
    for g in DEFAULT_GROUPS:
        users = [admin] if admin and g in ("admins", "users") else []
        records.append(group_record(name, g, users, [], []))
    if admin:
        records.append({"t": "member.add", "org": name, "user": admin})
    return records


def user_record(name: str, display: str, email: str, public_pem: str) -> dict[str, Any]:
    return {
        "t": "user.put",
        "name": name,
        "display_name": display,
        "email": email,
        "keys": [public_pem],
    }


def client_record(org: str, name: str, public_pem: str, admin: bool = False) -> dict[str, Any]:
    return {"t": "client.put", "org": org, "name": name, "keys": [public_pem], "admin": admin}


def group_record(
    org: str, name: str, users: list[str], clients: list[str], groups: list[str]
) -> dict[str, Any]:
    return {
        "t": "group.put",
        "org": org,
        "name": name,
        "users": users,
        "clients": clients,
        "groups": groups,
    }
