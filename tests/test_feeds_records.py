"""The feeds from the records (``docs/SCALE-OUT.md`` §7): the org feed's events and their ids
``org-N`` (``N = S * 2**32 + K``) derived from the records applied (the same on every
appliance that applies the same log), and the job feed of a job another appliance drives
published from its records."""

from __future__ import annotations

from typing import Any

import trio

from pushy_appliance.feeds import Feeds, job_topic, org_topic
from pushy_appliance.hub import Hub
from pushy_appliance.jobs.compact import pack_events

TS = "2026-01-01 00:00:00.000000Z"


def create(job_id: str, *events: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    stored = [[n, name, {"timestamp": TS, **data}] for n, (name, data) in enumerate(events, 1)]
    return {"t": "job.create", "id": job_id, "org": "o", "events": pack_events(stored)}


def step(job_id: str, first: int, *events: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    stored = [[n, name, {"timestamp": TS, **data}] for n, (name, data) in enumerate(events, first)]
    return {"t": "job.step", "id": job_id, "events": stored}


def feeds() -> Feeds:
    return Feeds(Hub(), org_retention=60.0, job_org=lambda job_id: "o", now=lambda: 0.0)


def apply(f: Feeds, seq: int, record: dict[str, Any]) -> None:
    """As the database calls its watchers: a batch's records one by one, at one seq."""
    for inner in record["records"] if record.get("t") == "batch" else [record]:
        f.record_applied(inner, seq)


LOG = [
    (3, create("j1", ("start", {"command": "a"}), ("quorum_vote", {"node": "n"}))),
    (4, {"t": "client.put", "name": "c"}),
    # one batch, two jobs: the second one ended at once
    (
        7,
        {
            "t": "batch",
            "records": [
                step("j1", 3, ("job_complete", {"status": "complete"})),
                create("j2", ("start", {"command": "b"}), ("job_complete", {"status": "x"})),
            ],
        },
    ),
]


def test_org_events_and_ids_come_from_the_records_alike_everywhere() -> None:
    first, second = feeds(), feeds()
    for f in (first, second):
        for seq, record in LOG:
            apply(f, seq, record)
    events = first.org_log("o").events(0.0)
    assert [(e.id, e.name, e.data["job"]) for e in events] == [
        ("org-12884901888", "start", "j1"),
        ("org-30064771072", "job_complete", "j1"),
        ("org-30064771073", "start", "j2"),
        ("org-30064771074", "job_complete", "j2"),
    ]
    assert [e.encode() for e in second.org_log("o").events(0.0)] == [e.encode() for e in events]
    assert dict(events[1].data) == {"timestamp": TS, "job": "j1", "status": "complete"}


async def test_live_org_events_reach_the_org_topic() -> None:
    f = feeds()
    with trio.fail_after(5), f.hub.subscribe(org_topic("o")) as sub:
        apply(f, *LOG[0])
        item = await sub.receive()
        assert b"id: org-12884901888\n" in item.wire


async def test_a_followed_job_s_events_reach_its_feed_and_end_it() -> None:
    f = feeds()
    with trio.fail_after(5), f.hub.subscribe(job_topic("j1")) as sub:
        f.record_followed(LOG[0][1])
        f.record_followed({"t": "client.put", "name": "c"})
        f.record_followed(step("j1", 3, ("job_complete", {"status": "complete"})))
        got = [await sub.receive() for _ in range(3)]
        assert [(e.seq, e.name) for e in got] == [
            (1, "start"),
            (2, "quorum_vote"),
            (3, "job_complete"),
        ]
        assert got[2].wire.startswith(b"event: job_complete\nid: job-3\n")
        # the topic was closed after job_complete: the subscription ends
        assert not f.hub.has_subscribers(job_topic("j1"))
