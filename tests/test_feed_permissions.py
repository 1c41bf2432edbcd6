"""Open feeds re-check their reader's permission (issue 13 #3): a reader that loses it (removed
from the organization, deleted, its key gone, its organization gone, left out of
``pushy_job_readers``, its dashboard session ended) has its open feeds ended at once, with
nothing more sent; the other readers of the same feeds carry on.

The whole appliance in-process over TLS, a fake node holding a job live, and the feeds read
with httpx streaming. ``feeds.keepalive`` is long, so what ends a feed is the change itself,
not a keep-alive's re-check (except for the session's idle timeout, which only time ends).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from test_feeds import ORG, Feed, open_feed, start_job
from test_ui_http import cookie, login, new_user

from pushy_appliance import chef_auth

from fakenode import Behaviour, fake_nodes
from helpers import Signed, admin_client, running_server, test_config

DEADLINE = 20.0
ORG_FEED = f"{ORG}/job_status_feed"


@asynccontextmanager
async def world(tmp_path: Path, **flags: Any) -> AsyncIterator[tuple[Signed, Signed]]:
    """The appliance (keep-alives a minute apart) with a node ``n1`` whose runs last a
    minute: its admin and pivotal."""
    config = test_config(tmp_path, **{"feeds.keepalive": 60.0, **flags})
    async with (
        running_server(config) as info,
        admin_client(info) as admin,
        admin_client(info, "pivotal") as pivotal,
        fake_nodes(info, admin, {"n1": Behaviour(run_seconds=60)}),
    ):
        yield admin, pivotal


async def new_client(admin: Signed, name: str, org: str = "default") -> Signed:
    r = await admin.post(f"/organizations/{org}/clients", {"name": name, "create_key": True})
    assert r.status_code == 201, r.text
    key = chef_auth.load_private_key(r.json()["chef_key"]["private_key"].encode())
    return Signed(admin.http, admin.base, name, key)


async def revoked_count(admin: Signed) -> int:
    r = await admin.http.get(admin.base + "/pushy/_status")
    count: int = r.json()["feeds"]["revoked"]
    return count


async def ends_without_more(feed: Feed) -> None:
    """The server ends ``feed`` at once, and sent nothing after the change."""
    seen = len(feed.events)
    with trio.fail_after(5):
        await feed.wait_ended()
    assert len(feed.events) == seen


async def still_live(feed: Feed, admin: Signed) -> None:
    """``feed`` (an org feed) still gets events: a new job's ``start`` arrives."""
    seen = len(feed.events)
    job = await start_job(admin, {"command": "x", "nodes": ["ghost"], "quorum": 0})
    events = await feed.wait_for(seen + 1)
    assert events[seen].name == "start" and isinstance(events[seen].data, dict)
    assert events[seen].data["job"] == job
    assert not feed.ended


Change = Callable[[Signed, Signed, Signed], Awaitable[None]]
"""What takes a reader's permission away: ``(admin, pivotal, reader)``."""


async def remove_member(admin: Signed, pivotal: Signed, reader: Signed) -> None:
    r = await pivotal.delete(f"/organizations/default/users/{reader.user}")
    assert r.status_code == 200, r.text


async def delete_user(admin: Signed, pivotal: Signed, reader: Signed) -> None:
    r = await pivotal.delete(f"/users/{reader.user}")
    assert r.status_code == 200, r.text


async def readers_group_without_it(admin: Signed, pivotal: Signed, reader: Signed) -> None:
    actors = {"users": ["admin"], "clients": [], "groups": []}
    body = {"groupname": "pushy_job_readers", "actors": actors}
    r = await admin.post("/organizations/default/groups", body)
    assert r.status_code == 201, r.text


async def delete_client(admin: Signed, pivotal: Signed, reader: Signed) -> None:
    r = await admin.delete(f"/organizations/default/clients/{reader.user}")
    assert r.status_code == 200, r.text


async def replace_client_key(admin: Signed, pivotal: Signed, reader: Signed) -> None:
    """The client is deleted and made again under its name with a new key."""
    await delete_client(admin, pivotal, reader)
    again = await new_client(admin, reader.user)
    assert again.key.public_key().public_numbers() != reader.key.public_key().public_numbers()


CHANGES: list[tuple[str, str, Change]] = [
    ("user", "removed from the org", remove_member),
    ("user", "deleted", delete_user),
    ("user", "left out of a new pushy_job_readers", readers_group_without_it),
    ("client", "deleted", delete_client),
    ("client", "made again with a new key", replace_client_key),
    ("client", "left out of a new pushy_job_readers", readers_group_without_it),
]


@pytest.mark.parametrize(
    ("kind", "change"),
    [(kind, change) for kind, _, change in CHANGES],
    ids=[f"{kind} {what}" for kind, what, _ in CHANGES],
)
async def test_a_reader_that_loses_the_permission_loses_its_open_feeds(
    tmp_path: Path, kind: str, change: Change
) -> None:
    async with world(tmp_path) as (admin, pivotal):
        with trio.fail_after(DEADLINE):
            reader = await (
                new_user(pivotal, "carol") if kind == "user" else new_client(admin, "robot")
            )
            body = {"command": "x", "nodes": ["n1"], "env": {"SECRET": "s3cr3t"}}
            job = await start_job(admin, body)
            job_feed = f"{ORG}/job_status_feed/{job}"
            async with (
                open_feed(reader, ORG_FEED) as org,
                open_feed(reader, job_feed) as live,
                open_feed(admin, ORG_FEED) as bystander,
                open_feed(admin, job_feed) as bystander_job,
            ):
                assert (org.status, live.status) == (200, 200)
                await live.wait_for(3)  # start, quorum_vote, quorum_succeeded
                await change(admin, pivotal, reader)
                await ends_without_more(org)
                await ends_without_more(live)
                # the others read on: the org feed, and the job feed to the job's end
                await still_live(bystander, admin)
                r = await admin.post(f"{ORG}/jobs/{job}/abort")
                assert r.status_code == 200, r.text
                events = await bystander_job.wait_for(len(live.events) + 1)
                assert [e.name for e in live.events] == [e.name for e in events[: len(live.events)]]
                assert not bystander.ended
            assert await revoked_count(admin) == 2
            # and a feed asked for again is refused
            r = await reader.get(ORG_FEED, headers={"Accept": "text/event-stream"})
            assert r.status_code in (401, 403), r.text


async def test_a_reader_in_pushy_job_readers_keeps_its_feed_and_loses_it_when_taken_out(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as (admin, pivotal):
        with trio.fail_after(DEADLINE):
            carol = await new_user(pivotal, "carol")
            dave = await new_user(pivotal, "dave")
            path = "/organizations/default/groups/pushy_job_readers"

            def members(*users: str) -> dict[str, Any]:
                actors = {"users": list(users), "clients": [], "groups": []}
                return {"groupname": "pushy_job_readers", "actors": actors}

            r = await admin.post("/organizations/default/groups", members("admin", "carol", "dave"))
            assert r.status_code == 201, r.text
            async with open_feed(carol, ORG_FEED) as feed, open_feed(dave, ORG_FEED) as other:
                # changes that leave carol a reader end nothing
                r = await admin.put(path, members("admin", "carol"))
                assert r.status_code == 200, r.text
                await ends_without_more(other)
                await still_live(feed, admin)
                r = await pivotal.delete("/organizations/default/users/dave")
                assert r.status_code == 200, r.text
                await still_live(feed, admin)
                # taken out of the group: its feed ends
                r = await admin.put(path, members("admin"))
                assert r.status_code == 200, r.text
                await ends_without_more(feed)
            assert await revoked_count(admin) == 2


async def test_deleting_the_organization_ends_its_feeds(tmp_path: Path) -> None:
    async with world(tmp_path) as (admin, pivotal):
        with trio.fail_after(DEADLINE):
            r = await pivotal.post("/organizations", {"name": "other", "full_name": "Other"})
            assert r.status_code == 201, r.text
            carol = await new_user(pivotal, "carol", "other")
            other_feed = "/organizations/other/pushy/job_status_feed"
            async with (
                open_feed(carol, other_feed) as feed,
                open_feed(pivotal, other_feed) as superuser,
                open_feed(pivotal, ORG_FEED) as elsewhere,
            ):
                r = await pivotal.delete("/organizations/other")
                assert r.status_code == 200, r.text
                await ends_without_more(feed)
                await ends_without_more(superuser)  # even the superuser's: the org is gone
                # made again under the same name, it is another organization
                r = await pivotal.post("/organizations", {"name": "other", "full_name": "Other"})
                assert r.status_code == 201, r.text
                await still_live(elsewhere, admin)
            assert await revoked_count(admin) == 2


@asynccontextmanager
async def cookie_feed(client: Signed, sid: str, path: str) -> AsyncIterator[Feed]:
    """Read ``path`` through the dashboard session ``sid`` (no signing)."""
    feed = Feed()

    async def reader(*, task_status: trio.TaskStatus[None]) -> None:
        headers = cookie(sid, Accept="text/event-stream")
        async with client.http.stream("GET", client.base + path, headers=headers) as r:
            feed.status = r.status_code
            task_status.started()
            async for chunk in r.aiter_raw():
                feed._got(chunk)
        feed.ended = True
        feed.changed.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(reader)
        yield feed
        nursery.cancel_scope.cancel()


async def test_feeds_of_a_dashboard_session_end_with_the_session(tmp_path: Path) -> None:
    async with world(tmp_path) as (admin, pivotal):
        with trio.fail_after(DEADLINE):
            carol = await new_user(pivotal, "carol")
            dave = await new_user(pivotal, "dave")
            (sid, csrf), (sid2, _) = await login(carol), await login(carol)
            (dave_sid, dave_csrf) = await login(dave)
            async with (
                cookie_feed(carol, sid, ORG_FEED) as feed,
                cookie_feed(carol, sid2, ORG_FEED) as second,
                cookie_feed(dave, dave_sid, ORG_FEED) as daves,
            ):
                assert (feed.status, second.status, daves.status) == (200, 200, 200)
                # another session's logout ends nothing of this one
                r = await dave.http.post(
                    f"{dave.base}/ui/logout",
                    headers=cookie(dave_sid, **{"X-Pushy-CSRF": dave_csrf}),
                )
                assert r.status_code == 204, r.text
                await ends_without_more(daves)
                await still_live(feed, admin)
                # its own logout ends its feed (not the feeds of the user's other session)
                r = await carol.http.post(
                    f"{carol.base}/ui/logout", headers=cookie(sid, **{"X-Pushy-CSRF": csrf})
                )
                assert r.status_code == 204, r.text
                await ends_without_more(feed)
                await still_live(second, admin)
                # the session's principal taken out of the org ends the other one
                r = await pivotal.delete("/organizations/default/users/carol")
                assert r.status_code == 200, r.text
                await ends_without_more(second)
            assert await revoked_count(admin) == 3


async def test_a_dashboard_session_that_times_out_ends_its_feed(tmp_path: Path) -> None:
    """Only time ends an idle session: the feed's keep-alive re-check finds it."""
    flags = {"ui.session_idle_timeout": 2.0, "feeds.keepalive": 0.25}
    async with world(tmp_path, **flags) as (admin, pivotal):
        with trio.fail_after(DEADLINE):
            carol = await new_user(pivotal, "carol")
            sid, _ = await login(carol)
            began = trio.current_time()
            async with cookie_feed(carol, sid, ORG_FEED) as feed:
                assert feed.status == 200
                await feed.wait_ended()
            took = trio.current_time() - began
            assert 2.0 <= took < 4.0, took
            assert await revoked_count(admin) == 1
