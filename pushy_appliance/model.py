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

Membership is stored once. A user belongs to an organization by ``member.add`` (kept in the
members table); a client belongs to the organization it was created in. The default groups
``users`` and ``clients`` list exactly those: their ``users`` (resp. ``clients``) are derived
from the memberships when asked, never stored. A ``group.put`` of ``users`` therefore stores
only its clients and subgroups (and one of ``clients`` only its users and subgroups); a list
of the derived kind in it is ignored. Stores written before this rule (whose ``member.add``
and ``client.put`` also wrote the default group, and whose snapshots list the derived actors)
replay to the same answers, since those lists only ever held the members.

Why one module of about 650 lines: the identity model (organizations, users, clients,
keys, groups) is one consistency domain whose check-then-record methods read each other's
tables; its helpers (records, names, groups) stay beside the rules that use them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

from .errors import IdentityExistsError, NoSuchIdentityError, ValidationError

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
_DERIVED = {"users": "users", "clients": "clients"}
_RECORD_TYPES = frozenset(
    f"{kind}.{op}" for kind in ("org", "user", "client", "group") for op in ("put", "del")
) | {"member.add", "member.del"}
"""Default group -> the kind of actor it lists by derivation (every member, every client)."""
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
    """Who exists, which keys they hold, and who belongs where.

    Readers ask the query methods (``org(name)``, ``client(org, name)``, ``members(org)``, …),
    which return values or raise :class:`NoSuchIdentityError` for a name (or the
    organization asked about) that does not exist. A change is asked of a change
    method (``create_client(…)``, ``add_member(…)``, …): it checks the change against the
    model (raising :class:`IdentityExistsError`, :class:`NoSuchIdentityError` or
    :class:`ValidationError`) and returns the records that make it, which the caller commits
    while it holds the name's lock (``Database.exclusive``); the model itself changes only
    when a committed record is applied.
    """

    def __init__(self) -> None:
        self._orgs: dict[str, Org] = {}
        self._users: dict[str, User] = {}
        self._members: dict[str, set[str]] = {}
        self._clients: dict[str, dict[str, Client]] = {}
        self._groups: dict[str, dict[str, Group]] = {}
        self.generation = 0
        """Counts the identity records applied: a change of it may change who may do what."""
        self._watchers: list[Callable[[], None]] = []

    def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed()`` after every identity record applied from now on (a change of
        who exists, which keys they hold, who belongs where). It must not block or raise;
        it may run between the records of one committed batch, so a watcher that re-checks
        permissions defers the check (open feeds: :meth:`.feeds.Feeds.permissions_changed`).
        """
        self._watchers.append(changed)

    # --- records ------------------------------------------------------------------------

    def apply(self, r: dict[str, Any]) -> None:
        """Apply one record. Unknown record types are ignored (other models own them)."""
        t = r.get("t")
        if t in _RECORD_TYPES:
            self._apply(t, r)
            self.generation += 1
            for changed in self._watchers:
                changed()

    def _apply(self, t: str, r: dict[str, Any]) -> None:
        if t == "org.put":
            self._orgs[r["name"]] = Org(r["name"], r["full_name"], r["created_at"])
            self._members.setdefault(r["name"], set())
            self._clients.setdefault(r["name"], {})
            self._groups.setdefault(r["name"], {})
        elif t == "org.del":
            name = r["name"]
            for table in (self._orgs, self._members, self._clients, self._groups):
                table.pop(name, None)
        elif t == "user.put":
            self._users[r["name"]] = User(
                r["name"], r["display_name"], r["email"], tuple(r["keys"])
            )
        elif t == "user.del":
            self._users.pop(r["name"], None)
            for members in self._members.values():
                members.discard(r["name"])
            for org in self._groups:
                self._leave_groups(org, users={r["name"]})
        elif t == "member.add":
            self._members.setdefault(r["org"], set()).add(r["user"])
        elif t == "member.del":
            self._members.get(r["org"], set()).discard(r["user"])
            self._leave_groups(r["org"], users={r["user"]})
        elif t == "client.put":
            self._clients.setdefault(r["org"], {})[r["name"]] = Client(
                r["org"], r["name"], tuple(r["keys"]), bool(r["admin"])
            )
        elif t == "client.del":
            self._clients.get(r["org"], {}).pop(r["name"], None)
            self._leave_groups(r["org"], clients={r["name"]})
        elif t == "group.put":
            derived = _DERIVED.get(r["name"])
            self._groups.setdefault(r["org"], {})[r["name"]] = Group(
                r["org"],
                r["name"],
                frozenset() if derived == "users" else frozenset(r["users"]),
                frozenset() if derived == "clients" else frozenset(r["clients"]),
                frozenset(r["groups"]),
            )
        elif t == "group.del":
            self._groups.get(r["org"], {}).pop(r["name"], None)

    def _leave_groups(
        self,
        org: str,
        *,
        users: AbstractSet[str] = frozenset(),
        clients: AbstractSet[str] = frozenset(),
    ) -> None:
        """Take the users and clients out of every group of ``org``."""
        groups = self._groups.get(org, {})
        for g in list(groups.values()):
            if g.users & users or g.clients & clients:
                groups[g.name] = dataclasses.replace(
                    g, users=g.users - users, clients=g.clients - clients
                )

    def snapshot(self) -> dict[str, Any]:
        """The whole model as plain data (msgpack-able); :meth:`load` reads it back.

        Groups are written as stored: the derived actors of ``users`` and ``clients`` are
        not (they are the ``members`` and ``clients`` tables).
        """
        return {
            "orgs": [dataclasses.asdict(o) for o in self._orgs.values()],
            "users": [dataclasses.asdict(u) for u in self._users.values()],
            "members": {org: sorted(m) for org, m in self._members.items()},
            "clients": [
                dataclasses.asdict(c) for cs in self._clients.values() for c in cs.values()
            ],
            "groups": [
                {
                    "org": g.org,
                    "name": g.name,
                    "users": sorted(g.users),
                    "clients": sorted(g.clients),
                    "groups": sorted(g.groups),
                }
                for gs in self._groups.values()
                for g in gs.values()
            ],
        }

    def load(self, snap: dict[str, Any]) -> None:
        """Replace the model with a :meth:`snapshot` (its watchers stay)."""
        watchers, generation = self._watchers, self.generation
        self.__init__()  # type: ignore[misc]
        for o in snap["orgs"]:
            self.apply({"t": "org.put", **o})
        for u in snap["users"]:
            self.apply({"t": "user.put", **u})
        for org, users in snap["members"].items():
            self._members.setdefault(org, set()).update(users)
        for c in snap["clients"]:
            self.apply({"t": "client.put", **c})
        for g in snap["groups"]:
            self.apply({"t": "group.put", **g})
        self._watchers, self.generation = watchers, generation + 1
        for changed in watchers:
            changed()

    # --- queries ------------------------------------------------------------------------

    def has_org(self, name: str) -> bool:
        """Whether the organization ``name`` exists."""
        return name in self._orgs

    def org(self, name: str) -> Org:
        """The organization ``name`` (else :class:`NoSuchIdentityError`)."""
        found = self._orgs.get(name)
        if found is None:
            raise NoSuchIdentityError("organization", name)
        return found

    def org_names(self, *, member: str | None = None) -> list[str]:
        """Every organization's name, sorted; with ``member``, those that user belongs to."""
        if member is None:
            return sorted(self._orgs)
        return sorted(o for o in self._orgs if member in self._members.get(o, ()))

    def has_user(self, name: str) -> bool:
        """Whether the user ``name`` exists."""
        return name in self._users

    def user(self, name: str) -> User:
        """The user ``name`` (else :class:`NoSuchIdentityError`)."""
        found = self._users.get(name)
        if found is None:
            raise NoSuchIdentityError("user", name)
        return found

    def user_names(self) -> list[str]:
        """Every user's name, sorted."""
        return sorted(self._users)

    def members(self, org: str) -> list[str]:
        """The names of the users who belong to ``org``, sorted.

        :class:`NoSuchIdentityError` when the organization does not exist.
        """
        self.org(org)
        return sorted(self._members.get(org, ()))

    def member(self, org: str, name: str) -> User:
        """The user ``name``, a member of ``org`` (else :class:`NoSuchIdentityError`: kind
        ``member``, or ``organization``)."""
        self.org(org)
        if name not in self._members.get(org, ()):
            raise NoSuchIdentityError("member", name, org)
        return self.user(name)

    def has_client(self, org: str, name: str) -> bool:
        """Whether ``org`` has the client ``name``."""
        return name in self._clients.get(org, {})

    def client(self, org: str, name: str) -> Client:
        """The client ``name`` of ``org`` (else :class:`NoSuchIdentityError`)."""
        found = self._clients.get(org, {}).get(name)
        if found is None:
            self.org(org)
            raise NoSuchIdentityError("client", name, org)
        return found

    def client_names(self, org: str) -> list[str]:
        """The names of ``org``'s clients, sorted.

        :class:`NoSuchIdentityError` when the organization does not exist.
        """
        self.org(org)
        return sorted(self._clients.get(org, {}))

    def has_group(self, org: str, name: str) -> bool:
        """Whether ``org`` has the group ``name``."""
        return name in self._groups.get(org, {})

    def group(self, org: str, name: str) -> Group:
        """The group ``name`` of ``org`` (else :class:`NoSuchIdentityError`), the derived
        actors of ``users`` and ``clients`` filled in."""
        found = self._groups.get(org, {}).get(name)
        if found is None:
            self.org(org)
            raise NoSuchIdentityError("group", name, org)
        derived = _DERIVED.get(name)
        if derived == "users":
            return dataclasses.replace(found, users=frozenset(self._members.get(org, ())))
        if derived == "clients":
            return dataclasses.replace(found, clients=frozenset(self._clients.get(org, {})))
        return found

    def group_names(self, org: str) -> list[str]:
        """The names of ``org``'s groups, sorted.

        :class:`NoSuchIdentityError` when the organization does not exist.
        """
        self.org(org)
        return sorted(self._groups.get(org, {}))

    def principal(self, org: str | None, name: str) -> tuple[str, tuple[str, ...]] | None:
        """``(kind, public keys)`` of the user or client ``name`` seen from ``org``.

        A client of another organization is unknown here. Users are global. A client of
        ``org`` is found before a user of the same name, so the two kinds share one name
        space per organization: :meth:`create_client` refuses the name of a user who signs
        requests there (a member, or the superuser), :meth:`add_member` the name of a
        client of the organization.
        """
        if org is not None:
            client = self._clients.get(org, {}).get(name)
            if client is not None:
                return "client", client.keys
        user = self._users.get(name)
        if user is not None:
            return "user", user.keys
        return None

    def is_org_member(self, org: str, kind: str, name: str) -> bool:
        """Whether the principal belongs to ``org`` (clients always do where they exist)."""
        if name == PIVOTAL and kind == "user":
            return True
        if kind == "client":
            return name in self._clients.get(org, {})
        return name in self._members.get(org, set())

    def in_group(self, org: str, group: str, kind: str, name: str) -> bool:
        """Whether the principal is in ``group``, directly or through nested groups."""
        groups = self._groups.get(org, {})
        seen: set[str] = set()
        todo = [group]
        while todo:
            g = groups.get(todo.pop())
            if g is None or g.name in seen:
                continue
            seen.add(g.name)
            if self._lists(g, kind, name):
                return True
            todo.extend(g.groups)
        return False

    def _lists(self, g: Group, kind: str, name: str) -> bool:
        """Whether the group lists the principal itself (not through subgroups)."""
        derived = _DERIVED.get(g.name)
        if kind == "user":
            return name in (self._members.get(g.org, ()) if derived == "users" else g.users)
        if kind == "client":
            return name in (self._clients.get(g.org, {}) if derived == "clients" else g.clients)
        return False

    # --- changes: check, then return the records that make them -------------------------

    def create_org(
        self, name: str, full_name: str, *, created_at: float, admin: str | None = None
    ) -> list[dict[str, Any]]:
        """The records that create the organization ``name`` with its default groups.

        Args:
            name, full_name: the organization.
            created_at: the creation time (Unix seconds, read by the caller).
            admin: a user made a member and an admin of it, or ``None``.

        Raises:
            IdentityExistsError: the organization exists.
        """
        if name in self._orgs:
            raise IdentityExistsError("organization", name)
        return org_records(name, full_name, admin, created_at=created_at)

    def delete_org(self, name: str) -> list[dict[str, Any]]:
        """The record that deletes the organization ``name`` and everything in it.

        Raises:
            NoSuchIdentityError: no such organization.
        """
        self.org(name)
        return [{"t": "org.del", "name": name}]

    def create_user(
        self, name: str, display_name: str, email: str, public_pem: str
    ) -> list[dict[str, Any]]:
        """The record that creates the user ``name`` with one public key.

        Raises:
            IdentityExistsError: the user exists.
        """
        if name in self._users:
            raise IdentityExistsError("user", name)
        return [user_record(name, display_name, email, public_pem)]

    def delete_user(self, name: str) -> list[dict[str, Any]]:
        """The record that deletes the user ``name`` (and every membership of it).

        Raises:
            ValidationError: ``name`` is the superuser.
            NoSuchIdentityError: no such user.
        """
        if name == PIVOTAL:
            raise ValidationError("the superuser cannot be deleted")
        self.user(name)
        return [{"t": "user.del", "name": name}]

    def add_member(self, org: str, user: str) -> list[dict[str, Any]]:
        """The record that makes ``user`` a member of ``org``.

        Raises:
            NoSuchIdentityError: no such organization or user.
            IdentityExistsError: the user is a member already (``member``), or ``org`` has a
                client of that name (``client``, ``shared_name``: see :meth:`principal`).
        """
        self.org(org)
        self.user(user)
        if user in self._members.get(org, ()):
            raise IdentityExistsError("member", user, org)
        if user in self._clients.get(org, {}):
            raise IdentityExistsError("client", user, org, shared_name=True)
        return [{"t": "member.add", "org": org, "user": user}]

    def remove_member(self, org: str, user: str) -> list[dict[str, Any]]:
        """The record that ends ``user``'s membership of ``org`` (and of its groups).

        Raises:
            NoSuchIdentityError: the user is not a member, or no such organization.
        """
        self.member(org, user)
        return [{"t": "member.del", "org": org, "user": user}]

    def create_client(
        self, org: str, name: str, public_pem: str, admin: bool = False
    ) -> list[dict[str, Any]]:
        """The record that creates the client ``name`` of ``org`` with one public key.

        Raises:
            NoSuchIdentityError: no such organization.
            IdentityExistsError: the client exists (``client``), or a user of that name
                signs requests to ``org``: a member, or the superuser (``user``,
                ``shared_name``: see :meth:`principal`).
        """
        self.org(org)
        if name in self._clients.get(org, {}):
            raise IdentityExistsError("client", name, org)
        if name in self._users and self.is_org_member(org, "user", name):
            raise IdentityExistsError("user", name, org, shared_name=True)
        return [client_record(org, name, public_pem, admin)]

    def delete_client(self, org: str, name: str) -> list[dict[str, Any]]:
        """The record that deletes the client ``name`` of ``org`` (and its group places).

        Raises:
            NoSuchIdentityError: no such client (or organization).
        """
        self.client(org, name)
        return [{"t": "client.del", "org": org, "name": name}]

    def create_group(
        self, org: str, name: str, users: list[str], clients: list[str], groups: list[str]
    ) -> list[dict[str, Any]]:
        """The record that creates the group ``name`` of ``org`` with these actors.

        Raises:
            NoSuchIdentityError: no such organization.
            IdentityExistsError: the group exists.
            ValidationError: an actor that does not exist (naming the field and the actor).
        """
        self.org(org)
        if name in self._groups.get(org, {}):
            raise IdentityExistsError("group", name, org)
        self._check_actors(org, users, clients, groups)
        return [group_record(org, name, users, clients, groups)]

    def update_group(
        self, org: str, name: str, users: list[str], clients: list[str], groups: list[str]
    ) -> list[dict[str, Any]]:
        """The record that sets the actors of the group ``name`` of ``org``.

        The derived actors of ``users`` (every member) and ``clients`` (every client) are not
        set here: the request must list them as they are, and the record leaves them out.

        Raises:
            NoSuchIdentityError: no such group (or organization).
            ValidationError: an actor that does not exist, or a derived list that differs.
        """
        current = self.group(org, name)
        derived = _DERIVED.get(name)
        if derived == "users":
            if set(users) != current.users:
                raise ValidationError(
                    f"invalid actors.users: the users of group 'users' are the members of "
                    f"'{org}' (add or remove members instead)"
                )
            users = []
        elif derived == "clients":
            if set(clients) != current.clients:
                raise ValidationError(
                    f"invalid actors.clients: the clients of group 'clients' are the clients "
                    f"of '{org}' (create or delete clients instead)"
                )
            clients = []
        self._check_actors(org, users, clients, groups)
        return [group_record(org, name, users, clients, groups)]

    def delete_group(self, org: str, name: str) -> list[dict[str, Any]]:
        """The record that deletes the group ``name`` of ``org``.

        Raises:
            NoSuchIdentityError: no such group (or organization).
            ValidationError: a default group (``admins``, ``users``, ``clients``).
        """
        self.group(org, name)
        if name in DEFAULT_GROUPS:
            raise ValidationError(f"group '{name}' cannot be deleted")
        return [{"t": "group.del", "org": org, "name": name}]

    def _check_actors(
        self, org: str, users: list[str], clients: list[str], groups: list[str]
    ) -> None:
        for u in users:
            if u not in self._users:
                raise ValidationError(f"invalid actors.users: user '{u}' does not exist")
        for c in clients:
            if c not in self._clients.get(org, {}):
                raise ValidationError(f"invalid actors.clients: client '{c}' does not exist")
        for g in groups:
            if g not in self._groups.get(org, {}):
                raise ValidationError(f"invalid actors.groups: group '{g}' does not exist")


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
        # the admin is in ``users`` by the member.add below: that group's users are derived
        users = [admin] if admin and g == "admins" else []
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
