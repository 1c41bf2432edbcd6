"""The identity model owns its rules: queries that raise "not found", change methods that
check and return the records to commit, and nothing changes until a record is applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from pushy_appliance.appliance import new_database
from pushy_appliance.errors import (
    ApiError,
    IdentityExistsError,
    NoSuchIdentityError,
    ValidationError,
)
from pushy_appliance.model import PIVOTAL, IdentityModel, org_records
from pushy_appliance.store import open_store

NO_ORG = "organization 'nope' does not exist."
PEM = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"


SHARED = (
    "already exists in organization 'acme' "
    "(users and clients share one name space per organization)"
)


def test_a_client_may_take_the_name_of_a_user_of_another_org(model: IdentityModel) -> None:
    # bob belongs to no organization: a client "bob" of acme shadows no one who signs there
    commit(model, model.create_client("acme", "bob", PEM))
    assert model.principal("acme", "bob") == ("client", (PEM,))
    assert model.principal(None, "bob") == ("user", (PEM,))


def commit(model: IdentityModel, records: list[dict[str, Any]]) -> None:
    for record in records:
        model.apply(record)


@pytest.fixture
def model() -> IdentityModel:
    m = IdentityModel()
    commit(m, m.create_user(PIVOTAL, "Superuser", "", PEM))
    commit(m, m.create_user("admin", "Admin", "", PEM))
    commit(m, m.create_user("bob", "Bob", "bob@example.com", PEM))
    commit(m, m.create_org("acme", "Acme", created_at=1_700_000_000.0, admin="admin"))
    commit(m, m.create_client("acme", "n1", PEM))
    return m


def test_change_methods_return_records_and_change_nothing(model: IdentityModel) -> None:
    before = model.snapshot()
    records = model.create_client("acme", "n2", PEM, admin=True)
    assert records == [
        {"t": "client.put", "org": "acme", "name": "n2", "keys": [PEM], "admin": True}
    ]
    assert model.add_member("acme", "bob") == [{"t": "member.add", "org": "acme", "user": "bob"}]
    assert model.create_group("acme", "ops", ["bob"], ["n1"], ["admins"]) == [
        {
            "t": "group.put",
            "org": "acme",
            "name": "ops",
            "users": ["bob"],
            "clients": ["n1"],
            "groups": ["admins"],
        }
    ]
    assert model.delete_org("acme") == [{"t": "org.del", "name": "acme"}]
    assert model.snapshot() == before
    commit(model, records)
    assert model.client("acme", "n2").admin is True


def test_org_records_take_the_time_from_the_caller() -> None:
    records = org_records("o", "O", created_at=12.5)
    assert records[0] == {"t": "org.put", "name": "o", "full_name": "O", "created_at": 12.5}
    m = IdentityModel()
    commit(m, m.create_org("o", "O", created_at=99.0))
    assert m.org("o").created_at == 99.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.create_org("acme", "x", created_at=0.0), "organization 'acme' already exists"),
        (lambda m: m.create_user("bob", "", "", PEM), "user 'bob' already exists"),
        (lambda m: m.add_member("acme", "admin"), "user 'admin' is already a member of 'acme'"),
        (lambda m: m.create_client("acme", "n1", PEM), "client 'n1' already exists"),
        (lambda m: m.create_group("acme", "admins", [], [], []), "group 'admins' already exists"),
        # users and clients share one name space per organization (issue 13 #2)
        (lambda m: m.create_client("acme", PIVOTAL, PEM), f"user '{PIVOTAL}' {SHARED}"),
        (lambda m: m.create_client("acme", "admin", PEM), f"user 'admin' {SHARED}"),
        (
            lambda m: (commit(m, m.create_user("n1", "", "", PEM)), m.add_member("acme", "n1")),
            f"client 'n1' {SHARED}",
        ),
    ],
)
def test_conflicts(model: IdentityModel, change: Any, message: str) -> None:
    with pytest.raises(IdentityExistsError) as info:
        change(model)
    assert str(info.value) == message
    assert not isinstance(info.value, ApiError)  # a domain error: the adapters map it


@pytest.mark.parametrize(
    ("ask", "kind", "message"),
    [
        (lambda m: m.org("nope"), "organization", NO_ORG),
        (lambda m: m.members("nope"), "organization", NO_ORG),
        (lambda m: m.client_names("nope"), "organization", NO_ORG),
        (lambda m: m.group_names("nope"), "organization", NO_ORG),
        (lambda m: m.client("nope", "n1"), "organization", NO_ORG),
        (lambda m: m.user("carol"), "user", "user 'carol' not found"),
        (lambda m: m.member("acme", "bob"), "member", "user 'bob' is not a member of 'acme'"),
        (lambda m: m.client("acme", "n9"), "client", "client 'n9' not found"),
        (lambda m: m.group("acme", "ops"), "group", "group 'ops' not found"),
        (lambda m: m.delete_org("nope"), "organization", NO_ORG),
        (lambda m: m.delete_user("carol"), "user", "user 'carol' not found"),
        (lambda m: m.add_member("acme", "carol"), "user", "user 'carol' not found"),
        (lambda m: m.add_member("nope", "bob"), "organization", NO_ORG),
        (
            lambda m: m.remove_member("acme", "bob"),
            "member",
            "user 'bob' is not a member of 'acme'",
        ),
        (lambda m: m.create_client("nope", "n1", PEM), "organization", NO_ORG),
        (lambda m: m.delete_client("acme", "n9"), "client", "client 'n9' not found"),
        (lambda m: m.update_group("acme", "ops", [], [], []), "group", "group 'ops' not found"),
        (lambda m: m.delete_group("acme", "ops"), "group", "group 'ops' not found"),
    ],
)
def test_not_found(model: IdentityModel, ask: Any, kind: str, message: str) -> None:
    with pytest.raises(NoSuchIdentityError) as info:
        ask(model)
    assert (info.value.kind, str(info.value)) == (kind, message)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.delete_user(PIVOTAL), "the superuser cannot be deleted"),
        (lambda m: m.delete_group("acme", "users"), "group 'users' cannot be deleted"),
        (
            lambda m: m.create_group("acme", "g", ["carol"], [], []),
            "invalid actors.users: user 'carol' does not exist",
        ),
        (
            lambda m: m.update_group("acme", "admins", [], ["n9"], []),
            "invalid actors.clients: client 'n9' does not exist",
        ),
        (
            lambda m: m.create_group("acme", "g", [], [], ["g2"]),
            "invalid actors.groups: group 'g2' does not exist",
        ),
    ],
)
def test_refused_changes(model: IdentityModel, change: Any, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        change(model)
    assert info.value.message == message


def test_queries(model: IdentityModel) -> None:
    commit(model, model.create_org("beta", "Beta", created_at=0.0))
    commit(model, model.add_member("beta", "bob"))
    assert model.org_names() == ["acme", "beta"]
    assert model.org_names(member="bob") == ["beta"]
    assert model.org_names(member="admin") == ["acme"]
    assert model.user_names() == ["admin", "bob", PIVOTAL]
    assert model.members("acme") == ["admin"]
    assert model.member("beta", "bob").email == "bob@example.com"
    assert model.client_names("acme") == ["n1"]
    assert model.group_names("acme") == ["admins", "clients", "users"]
    assert model.has_org("acme") and not model.has_org("nope")
    assert model.has_user("bob") and not model.has_user("carol")
    assert model.has_client("acme", "n1") and not model.has_client("beta", "n1")
    assert model.has_group("acme", "admins") and not model.has_group("acme", "ops")
    assert model.group("acme", "admins").users == frozenset({"admin"})
    commit(model, model.remove_member("beta", "bob"))
    assert model.members("beta") == []
    commit(model, model.delete_client("acme", "n1"))
    assert model.client_names("acme") == []
    commit(model, model.delete_org("beta"))
    assert model.org_names() == ["acme"]


# --- membership is stored once ------------------------------------------------------------


def test_membership_is_stored_once_and_the_default_groups_derive_it(model: IdentityModel) -> None:
    commit(model, model.add_member("acme", "bob"))
    snap = model.snapshot()
    assert snap["members"]["acme"] == ["admin", "bob"]
    stored = {g["name"]: g for g in snap["groups"]}
    assert stored["users"]["users"] == []  # not a second copy of the members
    assert stored["clients"]["clients"] == []  # nor of the clients
    assert model.group("acme", "users").users == frozenset({"admin", "bob"})
    assert model.group("acme", "clients").clients == frozenset({"n1"})
    assert model.in_group("acme", "users", "user", "bob")
    assert model.in_group("acme", "clients", "client", "n1")
    commit(model, model.remove_member("acme", "bob"))
    commit(model, model.delete_client("acme", "n1"))
    assert model.group("acme", "users").users == frozenset({"admin"})
    assert model.group("acme", "clients").clients == frozenset()
    assert not model.in_group("acme", "users", "user", "bob")
    assert not model.in_group("acme", "clients", "client", "n1")


def test_a_default_group_takes_other_actors_but_not_a_different_membership(
    model: IdentityModel,
) -> None:
    commit(model, model.create_group("acme", "ops", [], [], []))
    records = model.update_group("acme", "users", ["admin"], ["n1"], ["ops"])
    assert records == [
        {
            "t": "group.put",
            "org": "acme",
            "name": "users",
            "users": [],
            "clients": ["n1"],
            "groups": ["ops"],
        }
    ]
    commit(model, records)
    group = model.group("acme", "users")
    assert (group.users, group.clients, group.groups) == ({"admin"}, {"n1"}, {"ops"})
    with pytest.raises(ValidationError, match="the users of group 'users' are the members"):
        model.update_group("acme", "users", ["admin", "bob"], [], [])
    with pytest.raises(ValidationError, match="the clients of group 'clients' are the clients"):
        model.update_group("acme", "clients", [], [], [])
    commit(model, model.update_group("acme", "clients", ["bob"], ["n1"], []))
    assert model.group("acme", "clients").users == frozenset({"bob"})


def old_group(
    name: str,
    users: tuple[str, ...] = (),
    clients: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A group of org ``acme`` as the old code stored it (record or snapshot entry)."""
    return {
        "org": "acme",
        "name": name,
        "users": list(users),
        "clients": list(clients),
        "groups": list(groups),
    }


OLD_RECORDS: list[dict[str, Any]] = [
    *(
        {"t": "user.put", "name": n, "display_name": n, "email": "", "keys": ["PEM"]}
        for n in ("pivotal", "admin", "bob", "carol")
    ),
    {"t": "org.put", "name": "acme", "full_name": "Acme", "created_at": 1700000000.0},
    {"t": "group.put", **old_group("admins", ("admin",))},
    {"t": "group.put", **old_group("users", ("admin",))},
    {"t": "group.put", **old_group("clients")},
    {"t": "member.add", "org": "acme", "user": "admin"},
    {"t": "member.add", "org": "acme", "user": "bob"},
    {"t": "member.add", "org": "acme", "user": "carol"},
    {"t": "client.put", "org": "acme", "name": "n1", "keys": ["PEM"], "admin": False},
    {"t": "client.put", "org": "acme", "name": "n2", "keys": ["PEM"], "admin": True},
    {"t": "group.put", **old_group("ops", ("carol",), ("n2",))},
    # an old PUT of the users group: it listed the members (as old member.add wrote them)
    {"t": "group.put", **old_group("users", ("admin", "bob", "carol"), ("n1",), ("ops",))},
    {"t": "group.put", **old_group("pushy_job_readers", groups=("users",))},
    {"t": "client.del", "org": "acme", "name": "n2"},
    {"t": "user.del", "name": "carol"},
    {"t": "member.del", "org": "acme", "user": "bob"},
    {"t": "member.add", "org": "acme", "user": "bob"},
]
"""Records as the code before "membership stored once" wrote them (its org_records, member.add,
client.put and group PUTs)."""

OLD_SNAPSHOT: dict[str, Any] = {
    "orgs": [{"name": "acme", "full_name": "Acme", "created_at": 1700000000.0}],
    "users": [
        {"name": n, "display_name": n, "email": "", "keys": ["PEM"]}
        for n in ("pivotal", "admin", "bob")
    ],
    "members": {"acme": ["admin", "bob"]},
    "clients": [{"org": "acme", "name": "n1", "keys": ["PEM"], "admin": False}],
    "groups": [
        old_group("admins", ("admin",)),
        old_group("users", ("admin", "bob"), ("n1",), ("ops",)),
        old_group("clients", clients=("n1",)),
        old_group("ops"),
        old_group("pushy_job_readers", groups=("users",)),
    ],
}
"""The old code's snapshot after ``OLD_RECORDS`` (derived actors listed in the groups)."""


def assert_old_answers(m: IdentityModel) -> None:
    """What the old code answered for ``OLD_RECORDS`` (taken from it)."""
    assert m.members("acme") == ["admin", "bob"]
    assert m.client_names("acme") == ["n1"]
    docs = {
        g: (sorted(x.users), sorted(x.clients), sorted(x.groups))
        for g in m.group_names("acme")
        for x in (m.group("acme", g),)
    }
    assert docs == {
        "admins": (["admin"], [], []),
        "clients": ([], ["n1"], []),
        "ops": ([], [], []),
        "pushy_job_readers": ([], [], ["users"]),
        "users": (["admin", "bob"], ["n1"], ["ops"]),
    }
    for kind, name, member in [
        ("user", "admin", True),
        ("user", "bob", True),
        ("user", "carol", False),
        ("client", "n1", True),
        ("client", "n2", False),
    ]:
        assert m.in_group("acme", "pushy_job_readers", kind, name) is member, name
        assert m.in_group("acme", "users", kind, name) is member, name
        assert m.is_org_member("acme", kind, name) is member, name
    assert m.org_names(member="bob") == ["acme"]


def test_old_records_replay_to_the_same_answers() -> None:
    m = IdentityModel()
    commit(m, OLD_RECORDS)
    assert_old_answers(m)


def test_an_old_snapshot_loads_to_the_same_answers() -> None:
    m = IdentityModel()
    m.load(OLD_SNAPSHOT)
    assert_old_answers(m)
    again = IdentityModel()
    again.load(m.snapshot())
    assert_old_answers(again)


async def test_an_old_store_recovers_to_the_same_answers(tmp_path: Path) -> None:
    """Old records (one batch, as a commit wrote them) and an old snapshot, through real
    files and ``Database.recover``."""
    with trio.fail_after(10):
        async with open_store(tmp_path / "a") as store:
            await store.append_many([{"t": "batch", "records": OLD_RECORDS[:8]}])
            await store.append_many(OLD_RECORDS[8:])
        async with open_store(tmp_path / "b") as store:
            seq = await store.append_many(OLD_RECORDS)
            await store.write_snapshot({"identity": OLD_SNAPSHOT}, seq)
        for directory in ("a", "b"):
            async with open_store(tmp_path / directory) as store:
                db = new_database(store)
                db.recover()
                identity = db.models["identity"]
                assert isinstance(identity, IdentityModel)
                assert_old_answers(identity)


def test_watchers_hear_of_every_identity_record_and_of_nothing_else() -> None:
    model = IdentityModel()
    heard: list[int] = []
    model.watch(lambda: heard.append(model.generation))
    for record in org_records("acme", "Acme", None, created_at=0.0):
        model.apply(record)
    assert heard == list(range(1, len(heard) + 1)) and len(heard) >= 4
    before = model.generation
    model.apply({"t": "job.step", "id": "x"})  # another model's record
    model.apply({"t": "node.seen", "org": "acme", "name": "n1"})
    assert model.generation == before and len(heard) == before
    model.load(model.snapshot())  # a snapshot loaded keeps the watchers and says so
    assert heard[-1] == model.generation == before + 1
    model.apply({"t": "member.add", "org": "acme", "user": "carol"})
    assert heard[-1] == model.generation == before + 2
