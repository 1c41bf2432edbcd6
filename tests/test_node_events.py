"""The org feed's node events (``docs/FEEDS.md``): coalesced rounds, bursts, live only.

Engine half on the autojump clock with :class:`Feeds` over a real hub; the wire half (the
``node_events=true`` opt-in, no ids, the link telling the feeds) with a running server and
fake nodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
import trio.testing
from test_feeds import DEADLINE, ORG, Feed, open_feed, start_job

from pushy_appliance.feeds import (
    NODE_STATUS_BURST,
    NODE_STATUS_INTERVAL,
    FeedEvent,
    Feeds,
    org_topic,
)
from pushy_appliance.hub import Hub, Subscription
from pushy_appliance.sse import Event

from fakenode import Behaviour, fake_nodes
from helpers import admin_client, running_server, test_config

ORG_NAME = "default"
ONLINE = ("online", "available")
BUSY = ("online", "unavailable")
OFFLINE = ("offline", "unavailable")


def drain(sub: Subscription) -> list[FeedEvent]:
    items = []
    while True:
        try:
            items.append(sub.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return items


def data(event: FeedEvent) -> dict[str, Any]:
    """The event's data, checking it has no id line and ``timestamp`` first."""
    lines = event.wire.decode().splitlines()
    assert lines[0] == f"event: {event.name}"
    assert not any(line.startswith("id:") for line in lines), event.wire
    assert event.seq == 0 and event.is_node_event
    doc: dict[str, Any] = json.loads(lines[1].removeprefix("data: "))
    assert next(iter(doc)) == "timestamp"
    return {k: v for k, v in doc.items() if k != "timestamp"}


async def next_round() -> None:
    """Sleep one interval, then let the round due now run."""
    await trio.sleep(NODE_STATUS_INTERVAL)
    await trio.testing.wait_all_tasks_blocked()


def status(node: str, state: tuple[str, str]) -> dict[str, Any]:
    return {"node": node, "status": state[0], "availability": state[1]}


async def test_changes_are_sent_in_rounds_at_most_one_per_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub()
    states: dict[tuple[str, str], tuple[str, str]] = {}
    feeds = Feeds(hub, org_retention=60, node_state=lambda o, n: states.get((o, n), OFFLINE))
    with trio.fail_after(DEADLINE), hub.subscribe(org_topic(ORG_NAME)) as sub:
        async with trio.open_nursery() as nursery:
            await nursery.start(feeds.run)
            # the first change goes out at once
            states[(ORG_NAME, "n1")] = ONLINE
            feeds.node_changed(ORG_NAME, "n1")
            await trio.testing.wait_all_tasks_blocked()
            first = trio.current_time()
            assert [data(e) for e in drain(sub)] == [status("n1", ONLINE)]
            # then at most one round per interval: n1 busy then idle again within the round
            # says nothing; n2 online, busy, gets one event with its latest state
            for state in (BUSY, ONLINE):
                states[(ORG_NAME, "n1")] = state
                feeds.node_changed(ORG_NAME, "n1")
            for state in (ONLINE, BUSY):
                states[(ORG_NAME, "n2")] = state
                feeds.node_changed(ORG_NAME, "n2")
            await trio.testing.wait_all_tasks_blocked()
            assert drain(sub) == []
            await trio.sleep_until(first + NODE_STATUS_INTERVAL)
            await trio.testing.wait_all_tasks_blocked()
            assert [data(e) for e in drain(sub)] == [status("n2", BUSY)]
            # a node going away is offline; a node never mentioned that goes offline: nothing
            states.pop((ORG_NAME, "n2"))
            feeds.node_changed(ORG_NAME, "n2")
            feeds.node_changed(ORG_NAME, "ghost")
            await next_round()
            assert [data(e) for e in drain(sub)] == [status("n2", OFFLINE)]
            # another organization's nodes are not on this feed
            states[("other", "n1")] = ONLINE
            feeds.node_changed("other", "n1")
            await next_round()
            assert drain(sub) == []
            # nothing of it went into the org log (no ids, no retained events)
            assert feeds.org_log(ORG_NAME).last_id is None
            nursery.cancel_scope.cancel()


async def test_a_burst_of_changes_is_one_nodes_changed_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A fleet reconnecting (20,000 nodes here, in 10 batches) gives a reader a few
    ``nodes_changed`` events, never one per node, and later single changes are events again."""
    hub = Hub(buffer=256)
    states: dict[tuple[str, str], tuple[str, str]] = {}
    feeds = Feeds(hub, org_retention=60, node_state=lambda o, n: states.get((o, n), OFFLINE))
    fleet = 20_000
    with trio.fail_after(DEADLINE), hub.subscribe(org_topic(ORG_NAME)) as sub:
        async with trio.open_nursery() as nursery:
            await nursery.start(feeds.run)
            events: list[FeedEvent] = []
            for batch in range(10):
                for i in range(batch * fleet // 10, (batch + 1) * fleet // 10):
                    states[(ORG_NAME, f"n{i}")] = ONLINE
                    feeds.node_changed(ORG_NAME, f"n{i}")
                await trio.sleep(NODE_STATUS_INTERVAL / 4)
                events += drain(sub)
            await next_round()
            events += drain(sub)
            assert not sub.lagged
            assert {e.name for e in events} == {"nodes_changed"}
            assert sum(data(e)["count"] for e in events) == fleet
            # 1.75 s of changes: one round at once, then one per 0.5 s
            assert len(events) <= 4
            # a burst is just above NODE_STATUS_BURST; at it, one event per node
            for i in range(NODE_STATUS_BURST):
                states[(ORG_NAME, f"n{i}")] = BUSY
                feeds.node_changed(ORG_NAME, f"n{i}")
            await next_round()
            singles = drain(sub)
            assert [data(e) for e in singles] == [
                status(f"n{i}", BUSY) for i in range(NODE_STATUS_BURST)
            ]
            nursery.cancel_scope.cancel()


def said(events: list[Event]) -> list[tuple[str, str]]:
    """The ``(status, availability)`` of each ``node_status`` of n1, in order."""
    out = []
    for e in events:
        if e.name == "node_status":
            assert e.id is None and isinstance(e.data, dict)
            assert list(e.data) == ["timestamp", "node", "status", "availability"]
            assert e.data["node"] == "n1"
            out.append((e.data["status"], e.data["availability"]))
    return out


async def wait_said(feed: Feed, state: tuple[str, str]) -> None:
    while not said(feed.events) or said(feed.events)[-1] != state:
        await feed.changed.wait()


async def test_the_org_feed_sends_node_events_only_to_readers_that_ask(tmp_path: Path) -> None:
    """The link tells the feeds of nodes going online, busy, idle and offline; a reader with
    ``node_events=true`` gets them (no ids) between the job events, a reader without gets
    exactly ``start`` and ``job_complete``."""
    config = test_config(tmp_path, **{"feeds.keepalive": 0.2})
    path = f"{ORG}/job_status_feed"
    async with running_server(config) as info, admin_client(info) as admin:
        with trio.fail_after(DEADLINE):
            async with (
                open_feed(admin, f"{path}?node_events=true") as nodes_feed,
                open_feed(admin, path) as plain,
            ):
                await nodes_feed.wait_comment()
                await plain.wait_comment()
                gate = trio.Event()
                async with fake_nodes(info, admin, {"n1": Behaviour(gate=gate)}):
                    await wait_said(nodes_feed, ONLINE)
                    job = await start_job(admin, {"command": "x", "nodes": ["n1"]})
                    await wait_said(nodes_feed, BUSY)  # the job holds it
                    gate.set()
                    await plain.wait_for(2)
                    # the job's end frees n1: the feed says it is idle again
                    await wait_said(nodes_feed, ONLINE)
                    while not any(e.name == "job_complete" for e in nodes_feed.events):
                        await nodes_feed.changed.wait()
                await wait_said(nodes_feed, OFFLINE)
                # the plain reader got exactly the job's events; the other the same with ids
                assert [e.name for e in plain.events] == ["start", "job_complete"]
                assert isinstance(plain.events[0].data, dict)
                assert plain.events[0].data["job"] == job
                named = [(e.name, e.id) for e in nodes_feed.events if e.name != "node_status"]
                assert named == [(e.name, e.id) for e in plain.events]
                # online; busy while the job held it; idle again; offline
                assert said(nodes_feed.events) == [ONLINE, BUSY, ONLINE, OFFLINE]
