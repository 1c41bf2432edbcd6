"""Dashboard login links and sessions (``websession``), with the time given by the test."""

from __future__ import annotations

import pytest

from pushy_appliance.auth import Principal
from pushy_appliance.errors import AuthError
from pushy_appliance.model import IdentityModel, client_record, org_records, user_record
from pushy_appliance.websession import CSRF_HEADER, MSG_LINK, MSG_SIGNED_OUT, WebSessions

ALICE = Principal("user", "alice")
NODE = Principal("client", "web1")
PEM = "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n"


def identity() -> IdentityModel:
    """Org ``acme`` (admin alice, client web1) and org ``other`` (admin bob)."""
    model = IdentityModel()
    records = [
        user_record("alice", "Alice", "", PEM),
        user_record("bob", "Bob", "", PEM),
        *org_records("acme", "Acme", "alice", created_at=0.0),
        *org_records("other", "Other", "bob", created_at=0.0),
        client_record("acme", "web1", PEM),
    ]
    for r in records:
        model.apply(r)
    return model


def sessions(**kw: float) -> WebSessions:
    args = {"link_ttl": 60.0, "idle_timeout": 3600.0, "max_sessions": 10, **kw}
    return WebSessions(
        link_ttl=args["link_ttl"],
        idle_timeout=args["idle_timeout"],
        max_sessions=int(args["max_sessions"]),
    )


def test_a_link_turns_into_a_session_once() -> None:
    s = sessions()
    token = s.mint_link("acme", ALICE, now=100.0)
    session = s.redeem(token, now=159.9)
    assert (session.org, session.principal, session.last_seen) == ("acme", ALICE, 159.9)
    assert session.id != token and session.csrf not in (token, session.id)
    assert s.lookup(session.id, now=160.0) is session
    with pytest.raises(AuthError) as refused:
        s.redeem(token, now=160.0)
    assert (refused.value.status, refused.value.message) == (401, MSG_LINK)


@pytest.mark.parametrize("delay", [60.0, 61.0, 10_000.0])
def test_an_expired_link_is_refused_and_gone(delay: float) -> None:
    s = sessions()
    token = s.mint_link("acme", ALICE, now=0.0)
    with pytest.raises(AuthError) as refused:
        s.redeem(token, now=delay)
    assert refused.value.status == 401
    assert len(s) == 0


def test_unknown_tokens_are_refused() -> None:
    s = sessions()
    s.mint_link("acme", ALICE, now=0.0)
    with pytest.raises(AuthError):
        s.redeem("guess", now=1.0)


def test_sessions_end_after_the_idle_timeout_and_each_request_restarts_it() -> None:
    s = sessions(idle_timeout=100.0)
    session = s.redeem(s.mint_link("acme", ALICE, now=0.0), now=0.0)
    assert s.lookup(session.id, now=99.0) is session
    assert s.lookup(session.id, now=198.0) is session
    assert s.lookup(session.id, now=298.0) is None
    assert len(s) == 0


def test_logout_ends_the_session() -> None:
    s = sessions()
    session = s.redeem(s.mint_link("acme", ALICE, now=0.0), now=0.0)
    assert s.end(session.id) is True
    assert s.lookup(session.id, now=1.0) is None
    assert s.end(session.id) is False


def test_when_full_the_least_recently_used_session_goes() -> None:
    s = sessions(max_sessions=3)
    made = [s.redeem(s.mint_link("acme", ALICE, now=t), now=t) for t in (0.0, 1.0, 2.0)]
    s.lookup(made[0].id, now=3.0)  # the first is used again: the second is now the oldest
    newest = s.redeem(s.mint_link("acme", ALICE, now=4.0), now=4.0)
    assert len(s) == 3
    assert s.lookup(made[1].id, now=5.0) is None
    for kept in (made[0], made[2], newest):
        assert s.lookup(kept.id, now=5.0) is kept


def test_when_full_the_oldest_link_goes() -> None:
    s = sessions(max_sessions=2)
    tokens = [s.mint_link("acme", ALICE, now=t) for t in (0.0, 1.0, 2.0)]
    with pytest.raises(AuthError):
        s.redeem(tokens[0], now=3.0)
    assert s.redeem(tokens[1], now=3.0).org == "acme"
    assert s.redeem(tokens[2], now=3.0).org == "acme"


def login(s: WebSessions, org: str = "acme", who: Principal = ALICE) -> tuple[str, str]:
    session = s.redeem(s.mint_link(org, who, now=0.0), now=0.0)
    return session.id, session.csrf


def test_authenticate_reads_without_csrf_and_writes_with_it() -> None:
    s, ids = sessions(), identity()
    sid, csrf = login(s)
    assert s.authenticate(ids, sid, "acme", method="GET", csrf=None, now=1.0) == ALICE
    assert s.authenticate(ids, sid, "acme", method="POST", csrf=csrf, now=1.0) == ALICE


@pytest.mark.parametrize("csrf", [None, "", "wrong", "x" * 43])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "patch"])
def test_state_changing_requests_need_the_csrf_token(method: str, csrf: str | None) -> None:
    s, ids = sessions(), identity()
    sid, _ = login(s)
    with pytest.raises(AuthError) as refused:
        s.authenticate(ids, sid, "acme", method=method, csrf=csrf, now=1.0)
    assert refused.value.status == 403
    assert CSRF_HEADER in refused.value.message


def test_a_session_is_for_its_own_org_only() -> None:
    s, ids = sessions(), identity()
    sid, _ = login(s, "other", Principal("user", "bob"))
    with pytest.raises(AuthError) as refused:
        s.authenticate(ids, sid, "acme", method="GET", csrf=None, now=1.0)
    assert (refused.value.status, refused.value.message) == (
        403,
        "this session is for organization 'other'",
    )


def test_unknown_or_expired_session_is_401() -> None:
    s, ids = sessions(idle_timeout=10.0), identity()
    sid, _ = login(s)
    for session_id, now in (("nope", 1.0), (sid, 11.0)):
        with pytest.raises(AuthError) as refused:
            s.authenticate(ids, session_id, "acme", method="GET", csrf=None, now=now)
        assert (refused.value.status, refused.value.message) == (401, MSG_SIGNED_OUT)


def test_a_principal_deleted_or_removed_from_the_org_loses_the_session() -> None:
    s, ids = sessions(), identity()
    node_sid, _ = login(s, "acme", NODE)
    alice_sid, _ = login(s, "acme", ALICE)
    for record in ids.delete_client("acme", "web1"):
        ids.apply(record)
    with pytest.raises(AuthError) as gone:
        s.authenticate(ids, node_sid, "acme", method="GET", csrf=None, now=1.0)
    assert gone.value.status == 401
    assert s.lookup(node_sid, now=1.0) is None
    for record in ids.remove_member("acme", "alice"):
        ids.apply(record)
    with pytest.raises(AuthError) as removed:
        s.authenticate(ids, alice_sid, "acme", method="GET", csrf=None, now=1.0)
    assert (removed.value.status, removed.value.message) == (
        403,
        "'alice' is not associated with organization 'acme'",
    )


def test_watchers_hear_of_every_session_that_ends_and_alive_touches_nothing() -> None:
    s = sessions(idle_timeout=100.0, max_sessions=2)
    ended: list[int] = []
    s.watch(lambda: ended.append(len(s)))
    a = s.redeem(s.mint_link("acme", ALICE, now=0.0), now=0.0)
    b = s.redeem(s.mint_link("acme", ALICE, now=1.0), now=1.0)
    assert ended == []
    assert s.alive(a.id, now=99.0) and not s.alive(a.id, now=100.0)
    assert s.lookup(a.id, now=99.0) is a  # alive() did not restart its idle clock; this does
    s.redeem(s.mint_link("acme", ALICE, now=2.0), now=2.0)  # full: b goes
    assert ended == [1]
    assert not s.alive(b.id, now=2.0)
    assert s.end(a.id) and ended == [1, 1]
    assert not s.end(a.id) and ended == [1, 1]  # nothing ended
    s.lookup("nope", now=500.0)  # the last one timed out, found by any later call
    assert ended == [1, 1, 0]
