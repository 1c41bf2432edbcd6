"""The identity model owns its rules: queries that raise "not found", change methods that
check and return the records to commit, and nothing changes until a record is applied."""

from __future__ import annotations

from typing import Any

import pytest

from pushy_appliance.errors import (
    ApiError,
    IdentityExistsError,
    NoSuchIdentityError,
    ValidationError,
)
from pushy_appliance.model import PIVOTAL, IdentityModel, org_records

NO_ORG = "organization 'nope' does not exist."
PEM = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"


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
