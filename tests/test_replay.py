"""Refusing a replayed signed request that changes state (issue 13 #11): the pure guard, then
the real appliance with real signing, then the CLI, which signs again when refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pushy_appliance import chef_auth
from pushy_appliance.client import Credentials, open_client
from pushy_appliance.errors import AuthError, ServerRefusedError
from pushy_appliance.replay import ReplayGuard

from helpers import Signed, admin_client, running_server, test_config

T0 = 1_700_000_000.0
WINDOW = chef_auth.MAX_CLOCK_SKEW
REPLAYED = "Replayed request of user or client 'u': a signed request that changes state is accepted once (sign it again)"  # noqa: E501
STALE = "Request of user or client 'u' is signed too long ago for the server's replay window now (sign it again)"  # noqa: E501


def refused(guard: ReplayGuard, sig: bytes, signed_at: float, now: float) -> str:
    with pytest.raises(AuthError) as err:
        guard.check("u", sig, signed_at, now)
    assert err.value.status == 401
    assert err.value.headers["X-Pushy-Replay"] == "refused"
    assert "WWW-Authenticate" in err.value.headers
    return err.value.message


def test_a_signature_is_accepted_once_within_the_window() -> None:
    guard = ReplayGuard(10)
    guard.check("u", b"sig-a", T0, T0)
    assert refused(guard, b"sig-a", T0, T0 + 1) == REPLAYED
    assert refused(guard, b"sig-a", T0, T0 + WINDOW - 0.001) == REPLAYED
    guard.check("u", b"sig-b", T0, T0)  # another signature
    # once the timestamp leaves the window the clock check refuses it: the guard forgets it
    guard.check("u", b"sig-c", T0 + WINDOW, T0 + WINDOW)
    assert guard.statistics().entries == 1
    assert guard.statistics().replays == 2


def test_a_future_timestamp_is_remembered_until_it_leaves_the_window() -> None:
    guard = ReplayGuard(10)
    guard.check("u", b"ahead", T0 + 600, T0)
    assert refused(guard, b"ahead", T0 + 600, T0 + WINDOW + 1) == REPLAYED


def test_a_full_guard_forgets_nothing_it_would_then_accept() -> None:
    guard = ReplayGuard(3)
    for i in range(3):
        guard.check("u", f"s{i}".encode(), T0 + i, T0 + 3)
    # full: s0 (signed first) is dropped and every request signed at or before T0 is refused
    guard.check("u", b"s3", T0 + 3, T0 + 3)
    assert refused(guard, b"s0", T0, T0 + 4) == STALE
    assert refused(guard, b"never-seen", T0, T0 + 4) == STALE
    assert refused(guard, b"s1", T0 + 1, T0 + 4) == REPLAYED
    stats = guard.statistics()
    assert (stats.entries, stats.capacity, stats.floor) == (3, 3, T0)
    # a request signed now is accepted (and drops s1, raising the floor to T0 + 1)
    guard.check("u", b"s4", T0 + 4, T0 + 4)
    assert refused(guard, b"s1", T0 + 1, T0 + 5) == STALE
    assert guard.statistics().entries == 3


def test_a_flood_within_one_second_refuses_that_second_only() -> None:
    guard = ReplayGuard(2)
    guard.check("u", b"a", T0, T0)
    guard.check("u", b"b", T0, T0)
    assert refused(guard, b"c", T0, T0) == STALE  # the floor is T0 now
    guard.check("u", b"d", T0 + 1, T0 + 1)  # the next second is served


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReplayGuard(0)


ORG = "/organizations/default"


def signed_post(
    who: Signed, path: str, doc: object, when: datetime
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(doc).encode()
    headers = chef_auth.sign_request("POST", path, body, who.user, who.key, timestamp=when)
    headers["Content-Type"] = "application/json"
    return body, headers


async def test_a_captured_post_jobs_is_refused_when_replayed(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        path = f"{ORG}/pushy/jobs"
        body, headers = signed_post(admin, path, {"command": "x", "nodes": ["n1"]}, _now())
        first = await admin.http.post(admin.base + path, content=body, headers=headers)
        assert first.status_code == 201, first.text
        again = await admin.http.post(admin.base + path, content=body, headers=headers)
        assert again.status_code == 401
        assert again.json() == {
            "error": [
                "Replayed request of user or client 'admin': a signed request that changes "
                "state is accepted once (sign it again)"
            ]
        }
        assert again.headers["X-Pushy-Replay"] == "refused"
        jobs = (await admin.get(path)).json()
        assert [j["id"] for j in jobs] == [first.json()["id"]]
        # the same job signed a second later is a new request
        body, headers = signed_post(
            admin, path, {"command": "x", "nodes": ["n1"]}, _now() + timedelta(seconds=1)
        )
        r = await admin.http.post(admin.base + path, content=body, headers=headers)
        assert r.status_code == 201
        # identity writes too
        body, headers = signed_post(admin, f"{ORG}/groups", {"groupname": "g1"}, _now())
        r1 = await admin.http.post(admin.base + f"{ORG}/groups", content=body, headers=headers)
        r2 = await admin.http.post(admin.base + f"{ORG}/groups", content=body, headers=headers)
        assert (r1.status_code, r2.status_code) == (201, 401)
        # a read may be repeated
        headers = chef_auth.sign_request("GET", path, b"", admin.user, admin.key, timestamp=_now())
        for _ in range(3):
            assert (await admin.http.get(admin.base + path, headers=headers)).status_code == 200


async def test_the_cache_size_is_configurable_and_a_full_cache_stays_safe(tmp_path: Path) -> None:
    config = test_config(tmp_path, **{"auth.replay_cache": 2})
    async with running_server(config) as info, admin_client(info) as admin:
        path = f"{ORG}/pushy/jobs"
        old = _now() - timedelta(seconds=30)
        captured = signed_post(admin, path, {"command": "old", "nodes": ["n1"]}, old)
        r = await admin.http.post(admin.base + path, content=captured[0], headers=captured[1])
        assert r.status_code == 201
        for n in range(2):
            assert (
                await admin.post(path, {"command": f"c{n}", "nodes": ["n1"]})
            ).status_code == 201
        # the captured request was forgotten to make room: it is refused all the same
        r = await admin.http.post(admin.base + path, content=captured[0], headers=captured[1])
        assert r.status_code == 401
        assert "signed too long ago" in r.json()["error"][0]
        # so is any request signed as early (the floor); a fresh one is accepted
        assert (
            info.services.auth.replay.statistics().floor == old.replace(microsecond=0).timestamp()
        )
        for when, status in ((old, 401), (_now() + timedelta(seconds=1), 201)):
            body, headers = signed_post(admin, path, {"command": "new", "nodes": ["n1"]}, when)
            r = await admin.http.post(admin.base + path, content=body, headers=headers)
            assert r.status_code == status, r.text


async def test_replay_refusal_can_be_turned_off(tmp_path: Path) -> None:
    config = test_config(tmp_path, **{"auth.replay_cache": 0})
    async with running_server(config) as info, admin_client(info) as admin:
        path = f"{ORG}/pushy/jobs"
        body, headers = signed_post(admin, path, {"command": "x", "nodes": ["n1"]}, _now())
        for _ in range(2):
            r = await admin.http.post(admin.base + path, content=body, headers=headers)
            assert r.status_code == 201


def _now() -> datetime:
    return datetime.now(UTC)


async def test_the_client_signs_again_when_refused_as_a_replay(tmp_path: Path) -> None:
    """Two CLI runs within one second send the same signed abort; the second is answered as
    the contract says (409), not refused as a replay."""
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        r = await admin.post(f"{ORG}/pushy/jobs", {"command": "x", "nodes": ["ghost"]})
        job_id = r.json()["id"]
        abort = f"{ORG}/pushy/jobs/{job_id}/abort"
        await admin.post(abort)  # whatever it finds, the job is finished after it
        creds = Credentials(
            server_url=f"{info.url}{ORG}",
            user="admin",
            key_file=str(tmp_path / "keys" / "admin.pem"),
            ca_file=str(tmp_path / "tls" / "ca.pem"),
        )
        refusals = []
        for _ in range(2):
            async with open_client(creds) as client:
                with pytest.raises(ServerRefusedError) as err:
                    await client.request("POST", abort)
                refusals.append((err.value.status, err.value.message))
        assert refusals == [(409, "job already finished")] * 2
