"""The event feeds through the real server: exact sequences, resume, org history, stalled readers.

Every test runs the whole appliance in-process on port 0 over TLS, with fake nodes speaking the
real node protocol, and reads the feeds with httpx streaming and :class:`sse.SSEParser`.
"""

from __future__ import annotations

import itertools
import json
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from pushy_appliance import chef_auth
from pushy_appliance.appliance import ServerInfo
from pushy_appliance.sse import Event, SSEParser

from fakenode import Behaviour, fake_nodes
from helpers import Signed, admin_client, running_server, test_config

ORG = "/organizations/default/pushy"
DEADLINE = 15.0


def feed_headers(
    who: Signed, path: str, *, last_event_id: str | None = None, accept: str = "text/event-stream"
) -> dict[str, str]:
    headers = chef_auth.sign_request(
        "GET", path, b"", who.user, who.key, timestamp=datetime.now(UTC)
    )
    headers["Accept"] = accept
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return headers


class Feed:
    """One open feed: events as they arrive, and whether the server ended the stream."""

    def __init__(self) -> None:
        self.parser = SSEParser()
        self.raw = bytearray()
        self.events: list[Event] = []
        self.ended = False
        self.status = 0
        self.headers: httpx.Headers = httpx.Headers()
        self.changed = trio.Event()

    def _got(self, chunk: bytes) -> None:
        self.raw += chunk
        self.events += self.parser.feed(chunk)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, count: int) -> list[Event]:
        """Wait until at least ``count`` events arrived."""
        while len(self.events) < count:
            await self.changed.wait()
        return self.events

    async def wait_ended(self) -> None:
        """Wait until the server ended the response."""
        while not self.ended:
            await self.changed.wait()

    def body(self) -> Any:
        """The response body as JSON (a refusal's)."""
        return json.loads(bytes(self.raw))

    async def wait_comment(self) -> None:
        """Wait until a comment (keep-alive) arrived."""
        while self.parser.comments == 0:
            await self.changed.wait()


@asynccontextmanager
async def open_feed(
    who: Signed, path: str, *, last_event_id: str | None = None
) -> AsyncIterator[Feed]:
    """Read a feed in the background; leaving the block disconnects the client."""
    feed = Feed()

    async def reader(*, task_status: trio.TaskStatus[None]) -> None:
        headers = feed_headers(who, path, last_event_id=last_event_id)
        async with who.http.stream("GET", who.base + path, headers=headers) as r:
            feed.status, feed.headers = r.status_code, r.headers
            task_status.started()
            async for chunk in r.aiter_raw():
                feed._got(chunk)
        feed.ended = True
        feed.changed.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(reader)
        yield feed
        nursery.cancel_scope.cancel()


async def read_feed(who: Signed, path: str, *, last_event_id: str | None = None) -> list[Event]:
    """Read a feed until the server ends it."""
    with trio.fail_after(DEADLINE):
        async with open_feed(who, path, last_event_id=last_event_id) as feed:
            while not feed.ended:
                await feed.changed.wait()
            assert feed.status == 200
            return feed.events


async def start_job(admin: Signed, body: dict[str, Any]) -> str:
    r = await admin.post(f"{ORG}/jobs", body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def shape(events: list[Event]) -> list[tuple[str, dict[str, Any]]]:
    """Each event's name and data without its timestamp."""
    out = []
    for e in events:
        assert isinstance(e.data, dict), e.raw
        out.append((e.name, {k: v for k, v in e.data.items() if k != "timestamp"}))
    return out


def check_job_events(events: list[Event]) -> None:
    """Ids ``job-1`` … in order, ``timestamp`` first and strictly increasing."""
    assert [e.id for e in events] == [f"job-{i}" for i in range(1, len(events) + 1)]
    stamps = []
    for e in events:
        assert isinstance(e.data, dict)
        assert next(iter(e.data)) == "timestamp"
        stamps.append(e.data["timestamp"])
    assert all(a < b for a, b in itertools.pairwise(stamps)), stamps
    assert events[-1].name == "job_complete"


async def live_and_late(admin: Signed, body: dict[str, Any]) -> list[Event]:
    """Start a job, read its feed live from the start, then again once it is over.

    Returns:
        The events (both reads must agree exactly, raw bytes included).
    """
    job_id = await start_job(admin, body)
    path = f"{ORG}/job_status_feed/{job_id}"
    live = await read_feed(admin, path)
    late = await read_feed(admin, path)
    check_job_events(live)
    assert late == live
    return live


def start_fields(command: str, nodes: int, *, quorum: int, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "command": command,
        "run_timeout": extra.pop("run_timeout", 3600),
        "quorum": quorum,
        "node_count": nodes,
        "user": "admin",
    }
    fields.update(extra)
    fields.setdefault("capture", False)
    return fields


# --- exact job sequences ----------------------------------------------------------------


async def test_job_feed_sequences(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        r = await admin.post("/organizations/default/clients", {"name": "off1", "create_key": True})
        assert r.status_code == 201
        behaviours = {
            "ok": Behaviour(stdout=b"hello \xe2\x98\x83\n", stderr=b"warn\n"),
            "nack": Behaviour(nack_commit="not_whitelisted"),
            "mute": Behaviour(ignore_run=True),
            "slow": Behaviour(run_seconds=30),
        }
        async with fake_nodes(info, admin, behaviours):
            # succeeds, with every optional start field and captured output
            events = await live_and_late(
                admin,
                {
                    "command": "chef-client",
                    "nodes": ["ok"],
                    "user": "deploy",
                    "dir": "/srv",
                    "env": {"A": "1"},
                    "file": "raw:payload",
                    "capture_output": True,
                },
            )
            assert shape(events) == [
                (
                    "start",
                    start_fields(
                        "chef-client",
                        1,
                        quorum=1,
                        job_user="deploy",
                        dir="/srv",
                        env={"A": "1"},
                        file_specified=True,
                        capture=True,
                    ),
                ),
                ("quorum_vote", {"node": "ok", "status": "success"}),
                ("quorum_succeeded", {}),
                ("run_start", {"node": "ok"}),
                ("output", {"node": "ok", "channel": "stdout", "data": "hello \u2603\n"}),
                ("output", {"node": "ok", "channel": "stderr", "data": "warn\n"}),
                ("run_complete", {"node": "ok", "status": "success"}),
                ("job_complete", {"status": "complete"}),
            ]
            # unavailable nodes (offline client, unknown name) vote down at once
            events = await live_and_late(
                admin, {"command": "x", "nodes": ["ok", "ghost", "off1"], "quorum": 1}
            )
            assert shape(events) == [
                ("start", start_fields("x", 3, quorum=1)),
                ("quorum_vote", {"node": "ghost", "status": "down"}),
                ("quorum_vote", {"node": "off1", "status": "down"}),
                ("quorum_vote", {"node": "ok", "status": "success"}),
                ("quorum_succeeded", {}),
                ("run_start", {"node": "ok"}),
                ("run_complete", {"node": "ok", "status": "success"}),
                ("job_complete", {"status": "complete"}),
            ]
            # nacked: quorum fails; no output events without capture
            events = await live_and_late(admin, {"command": "x", "nodes": ["nack"]})
            assert shape(events) == [
                ("start", start_fields("x", 1, quorum=1)),
                (
                    "quorum_vote",
                    {"node": "nack", "status": "failure", "reason": "not_whitelisted"},
                ),
                ("job_complete", {"status": "quorum_failed"}),
            ]
            # timed out: the node never acknowledges the run
            events = await live_and_late(
                admin, {"command": "x", "nodes": ["mute"], "run_timeout": 1}
            )
            assert shape(events) == [
                ("start", start_fields("x", 1, quorum=1, run_timeout=1)),
                ("quorum_vote", {"node": "mute", "status": "success"}),
                ("quorum_succeeded", {}),
                ("run_complete", {"node": "mute", "status": "timed_out"}),
                ("job_complete", {"status": "timed_out"}),
            ]
            # aborted while running, seen by a reader that was there from the start
            job_id = await start_job(admin, {"command": "sleep", "nodes": ["slow"]})
            path = f"{ORG}/job_status_feed/{job_id}"
            with trio.fail_after(DEADLINE):
                async with open_feed(admin, path) as feed:
                    assert feed.headers["content-type"] == "text/event-stream"
                    assert feed.headers["cache-control"] == "no-cache"
                    assert feed.headers["x-accel-buffering"] == "no"
                    events = await feed.wait_for(4)
                    assert events[3].name == "run_start"
                    r = await admin.post(f"{ORG}/jobs/{job_id}/abort")
                    assert r.status_code == 200, r.text
                    while not feed.ended:
                        await feed.changed.wait()
                    events = feed.events
            check_job_events(events)
            assert shape(events) == [
                ("start", start_fields("sleep", 1, quorum=1)),
                ("quorum_vote", {"node": "slow", "status": "success"}),
                ("quorum_succeeded", {}),
                ("run_start", {"node": "slow"}),
                ("run_complete", {"node": "slow", "status": "aborted"}),
                ("job_complete", {"status": "aborted"}),
            ]
            assert await read_feed(admin, path) == events
            # the seed's spelling is an alias
            assert await read_feed(admin, f"{ORG}/jobs_status_feed/{job_id}") == events


# --- resume -------------------------------------------------------------------------------


async def test_resume_at_every_point_during_and_after_a_job(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        behaviours = {
            f"n{i}": Behaviour(run_seconds=0.05 * i, stdout=b"out %d\n" % i) for i in range(1, 7)
        }
        async with fake_nodes(info, admin, behaviours):
            job_id = await start_job(
                admin, {"command": "x", "nodes": sorted(behaviours), "capture_output": True}
            )
            path = f"{ORG}/job_status_feed/{job_id}"
            resumed: dict[str, list[Event]] = {}

            async def resume(last: str) -> None:
                resumed[last] = await read_feed(admin, path, last_event_id=last)

            # During the job: each time the live reader gets an event, a new reader resumes
            # from it while the job goes on.
            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as nursery, open_feed(admin, path) as live:
                    seen = 0
                    while not (live.ended and seen == len(live.events)):
                        if seen == len(live.events):
                            await live.changed.wait()
                            continue
                        event = live.events[seen]
                        assert event.id is not None
                        nursery.start_soon(resume, event.id)
                        seen += 1
                    events = live.events
            check_job_events(events)
            assert len(events) == 1 + 6 + 1 + 6 + 6 + 6 + 1
            for i, event in enumerate(events):
                assert event.id is not None
                assert resumed[event.id] == events[i + 1 :], event.id
            # After the job: every id again, and ids that name no event start from the top.
            for i, event in enumerate(events):
                assert event.id is not None
                assert await read_feed(admin, path, last_event_id=event.id) == events[i + 1 :]
            for unknown in ("job-0", "job-999", "job-01", "org-3", "garbage", ""):
                assert await read_feed(admin, path, last_event_id=unknown) == events


# --- the organization feed ------------------------------------------------------------------


def org_keys(events: list[Event]) -> list[tuple[int, int]]:
    """``(S, K)`` of each ``org-N`` id, ``N = S * 2**32 + K``."""
    keys = []
    for e in events:
        n = int(str(e.id).removeprefix("org-"))
        keys.append((n >> 32, n & (2**32 - 1)))
    return keys


async def test_org_feed_live_resume_and_start_of_history(tmp_path: Path) -> None:
    config = test_config(tmp_path, **{"feeds.keepalive": 0.2})
    async with running_server(config) as info, admin_client(info) as admin:
        path = f"{ORG}/job_status_feed"
        async with fake_nodes(info, admin, {"n1": Behaviour()}):
            with trio.fail_after(DEADLINE):
                async with open_feed(admin, path) as first:
                    await first.wait_comment()  # subscribed, and idle feeds keep alive
                    job1 = await start_job(admin, {"command": "one", "nodes": ["n1"]})
                    events = await first.wait_for(2)
                    # ids are org-N, N = S * 2**32 + K: S the seq of the stored record the
                    # event comes from (job.create, then the step that ended the job), K its
                    # index there
                    assert [e.name for e in events] == ["start", "job_complete"]
                    assert org_keys(events) == sorted(set(org_keys(events)))
                    assert all(key[1] == 0 for key in org_keys(events))
                    for e in events:
                        assert isinstance(e.data, dict)
                        assert list(e.data)[:2] == ["timestamp", "job"]
                        assert e.data["job"] == job1
                    assert shape(events) == [
                        ("start", {"job": job1, **start_fields("one", 1, quorum=1)}),
                        ("job_complete", {"job": job1, "status": "complete"}),
                    ]
                    # A newcomer without Last-Event-ID sees nothing old, only new jobs.
                    async with open_feed(admin, path) as second:
                        await second.wait_comment()
                        assert second.events == []
                        job2 = await start_job(admin, {"command": "two", "nodes": ["n1"]})
                        await second.wait_for(2)
                        await first.wait_for(4)
                        assert second.events == first.events[2:]
                        assert org_keys(first.events) == sorted(set(org_keys(first.events)))
                        assert shape(second.events)[1] == (
                            "job_complete",
                            {"job": job2, "status": "complete"},
                        )
                    every = first.events
                # A known id: the retained events after it, then live ones.
                for known in range(1, 5):
                    last = str(every[known - 1].id)
                    async with open_feed(admin, path, last_event_id=last) as feed:
                        await feed.wait_comment()
                        assert feed.events == every[known:]
                # Unknown ids: start_of_history, then every retained event.
                newest = org_keys(every)[-1][0]
                never = (f"org-{(newest << 32) + 1}", f"org-{(newest + 100) << 32}", "org-0")
                # (org-1: no record has seq 0; org-N.0: the form of no id)
                for unknown in (*never, "org-1", f"org-{newest}.0", "job-3", "start_id", "x"):
                    async with open_feed(admin, path, last_event_id=unknown) as feed:
                        await feed.wait_comment()
                        head, *rest = feed.events
                        assert (head.name, head.id) == ("start_of_history", "start_id")
                        assert isinstance(head.data, dict) and list(head.data) == ["timestamp"]
                        assert rest == every
                # Never ends on its own; the alias serves the same feed.
                async with open_feed(
                    admin, f"{ORG}/jobs_status_feed", last_event_id=str(every[1].id)
                ) as feed:
                    await feed.wait_comment()
                    assert feed.events == every[2:]
                    assert not feed.ended


async def test_org_feed_ids_of_an_earlier_run_are_unknown_after_a_restart(
    tmp_path: Path,
) -> None:
    path = f"{ORG}/job_status_feed"
    config = test_config(tmp_path, **{"feeds.keepalive": 0.2})

    async def one_job(admin: Signed, node: str) -> list[Event]:
        async with open_feed(admin, path) as feed:
            await feed.wait_comment()
            await start_job(admin, {"command": "x", "nodes": [node]})
            return await feed.wait_for(2)

    async with (
        running_server(config) as info,
        admin_client(info) as admin,
        fake_nodes(info, admin, {"n1": Behaviour()}),
    ):
        with trio.fail_after(DEADLINE):
            before = await one_job(admin, "n1")
    async with (
        running_server(config) as info,
        admin_client(info) as admin,
        fake_nodes(info, admin, {"n2": Behaviour()}),  # n1 is a client already
    ):
        with trio.fail_after(DEADLINE):
            after = await one_job(admin, "n2")
            # New ids are above the old ones (the log's seqs go on); an old id, not in the
            # new run's org log, resumes from the top.
            keys = org_keys(before + after)
            assert keys == sorted(keys) and len(set(keys)) == 4
            for old in before:
                async with open_feed(admin, path, last_event_id=old.id) as resumed:
                    await resumed.wait_comment()
                    head, *rest = resumed.events
                    assert (head.name, head.id) == ("start_of_history", "start_id")
                    assert rest == after


# --- refusals -------------------------------------------------------------------------------


async def test_refusals(tmp_path: Path) -> None:
    async with (
        running_server(test_config(tmp_path)) as info,
        admin_client(info) as admin,
        admin_client(info, "pivotal") as pivotal,
    ):
        job_id = await start_job(admin, {"command": "x", "nodes": ["ghost"], "quorum": 0})
        for path in (
            f"{ORG}/job_status_feed/{job_id}",
            f"{ORG}/jobs_status_feed/{job_id}",
            f"{ORG}/job_status_feed",
            f"{ORG}/jobs_status_feed",
        ):
            for accept in ("application/json", "text/html, application/*", "text/event-stream;q=0"):
                headers = feed_headers(admin, path, accept=accept)
                r = await admin.http.get(admin.base + path, headers=headers)
                assert r.status_code == 406, (path, accept)
            r = await admin.http.get(admin.base + path)  # unsigned
            assert r.status_code == 400
        # a job of another organization, or no such job: 404
        r = await pivotal.post("/organizations", {"name": "other", "full_name": "Other"})
        assert r.status_code == 201, r.text
        for path in (
            f"/organizations/other/pushy/job_status_feed/{job_id}",
            f"{ORG}/job_status_feed/{'0' * 32}",
            f"{ORG}/job_status_feed/nope",
        ):
            r = await pivotal.http.get(pivotal.base + path, headers=feed_headers(pivotal, path))
            assert r.status_code == 404, path
        # a finished job's feed is served in full to a client sending no Accept at all
        path = f"{ORG}/job_status_feed/{job_id}"
        headers = feed_headers(admin, path)
        del headers["Accept"]
        r = await admin.http.get(admin.base + path, headers=headers)
        assert r.status_code == 200
        assert [e.name for e in SSEParser().feed(r.content)] == [
            "start",
            "quorum_vote",
            "quorum_succeeded",
            "job_complete",
        ]


# --- subscriptions, slow and stalled readers --------------------------------------------------


async def subscribers(admin: Signed) -> int:
    r = await admin.http.get(admin.base + "/pushy/_status")
    assert r.status_code == 200
    count: int = r.json()["feeds"]["subscribers"]
    return count


async def wait_subscribers(admin: Signed, count: int) -> None:
    """Poll ``/pushy/_status`` until it reports ``count`` feed subscribers."""
    with trio.fail_after(DEADLINE):
        while True:
            if await subscribers(admin) == count:
                return
            await trio.sleep(0.02)


async def test_disconnected_clients_release_their_subscriptions(tmp_path: Path) -> None:
    config = test_config(tmp_path, **{"feeds.keepalive": 0.2})
    async with (
        running_server(config) as info,
        admin_client(info) as admin,
        fake_nodes(info, admin, {"n1": Behaviour(run_seconds=30)}),
    ):
        job_id = await start_job(admin, {"command": "x", "nodes": ["n1"]})
        with trio.fail_after(DEADLINE):
            async with (
                open_feed(admin, f"{ORG}/job_status_feed") as a,
                open_feed(admin, f"{ORG}/job_status_feed/{job_id}") as b,
                open_feed(admin, f"{ORG}/jobs_status_feed/{job_id}") as c,
            ):
                for feed in (a, b, c):
                    await feed.wait_comment()
                assert await subscribers(admin) == 3
                assert info.services.hub.statistics().subscribers == 3
        await wait_subscribers(admin, 0)
        r = await admin.post(f"{ORG}/jobs/{job_id}/abort")
        assert r.status_code == 200


class StalledReader:
    """A raw TLS client that sends a feed request and then reads nothing until told to."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream

    @classmethod
    async def open(cls, info: ServerInfo, who: Signed, path: str) -> StalledReader:
        host, port = info.url.split("//", 1)[1].rsplit(":", 1)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small receive window makes the server's writes block sooner.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect((host, int(port)))
        ctx = ssl.create_default_context(cafile=str(info.data_dir / "tls" / "ca.pem"))
        stream = trio.SSLStream(trio.SocketStream(sock), ctx, server_hostname=host)
        headers = {"Host": f"{host}:{port}", "Connection": "close", **feed_headers(who, path)}
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        await stream.send_all(f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode())
        return cls(stream)

    async def read_all(self) -> bytes:
        """Read until the server closes the connection."""
        data = bytearray()
        while True:
            try:
                chunk = await self.stream.receive_some(1 << 20)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
        await self.stream.aclose()
        return bytes(data)


def chunked_body(raw: bytes) -> bytes:
    """The body of an HTTP/1.1 response with chunked transfer encoding (possibly cut short)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    body = bytearray()
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        body += rest[:size]
        rest = rest[size + 2 :]
        if size == 0:
            break
    return bytes(body)


BUFFER = 16
"""``feeds.subscriber_buffer`` of the stalled-reader tests: above the largest burst of events
one step publishes (the votes of all 11 nodes and ``quorum_succeeded``), so a reader that
keeps up never lags, and below the 20 events that follow the big output."""

BIG = {"big": Behaviour(stdout=b"x" * 500_000, stderr=b"y" * 500_000)} | {
    f"s{i:02d}": Behaviour(run_seconds=0.3 + 0.02 * i, stdout=b"small %d\n" % i)
    for i in range(1, 11)
}
"""One node prints 1 MB at once, far more than a stalled reader's socket buffers take; ten
more each print a line and finish one by one, a little later."""


async def run_big_job(admin: Signed) -> tuple[str, list[Event], float]:
    """Run the BIG job with a normal reader; returns the job id, its events, and its duration."""
    started = trio.current_time()
    job_id = await start_job(admin, {"command": "x", "nodes": sorted(BIG), "capture_output": True})
    events = await read_feed(admin, f"{ORG}/job_status_feed/{job_id}")
    check_job_events(events)
    return job_id, events, trio.current_time() - started


async def test_stalled_reader_is_cut_off_and_resumes(tmp_path: Path) -> None:
    config = test_config(tmp_path, **{"feeds.subscriber_buffer": BUFFER})
    async with running_server(config) as info, admin_client(info) as admin:
        hub = info.services.hub
        async with fake_nodes(info, admin, BIG):
            # the stalled reader subscribes to the org feed and to the job's feed
            job_id = await start_job(admin, {"command": "warm-up", "nodes": ["n1"]})
            await read_feed(admin, f"{ORG}/job_status_feed/{job_id}")
            with trio.fail_after(DEADLINE):
                job_id, events, _ = await run_big_job(admin)
                path = f"{ORG}/job_status_feed/{job_id}"
                # The job is over; a reader that stalls on its history never lags: nothing
                # is published any more.
                stalled = await StalledReader.open(info, admin, path)
                # A live job with a stalled reader: the job and a normal reader go on.
                job2 = await start_job(
                    admin, {"command": "x", "nodes": sorted(BIG), "capture_output": True}
                )
                path2 = f"{ORG}/job_status_feed/{job2}"
                stalled2 = await StalledReader.open(info, admin, path2)
                events2 = await read_feed(admin, path2)
                check_job_events(events2)
                assert hub.statistics().lagged_disconnects == 1
                # neither stalled reader holds a subscription: a finished job's feed needs
                # none, and the other was cut off
                await wait_subscribers(admin, 0)
                # the stalled reader reads again: what was buffered, then `lagged`
                body = chunked_body(await stalled2.read_all())
                got = SSEParser().feed(body)
                assert got[-1].name == "lagged"
                assert isinstance(got[-1].data, dict) and got[-1].data["buffer"] == BUFFER
                assert got[:-1] == events2[: len(got) - 1]
                assert got[-1].id == (got[-2].id if len(got) > 1 else "job-0")
                # resuming with the lagged event's id yields the rest exactly once
                rest = await read_feed(admin, path2, last_event_id=got[-1].id)
                assert got[:-1] + rest == events2
                # the first stalled reader gets the whole history once it reads
                assert SSEParser().feed(chunked_body(await stalled.read_all())) == events
            await wait_subscribers(admin, 0)


async def test_stalled_reader_delays_nobody_and_holds_no_subscription(tmp_path: Path) -> None:
    config = test_config(tmp_path, **{"feeds.subscriber_buffer": BUFFER})
    async with running_server(config) as info, admin_client(info) as admin:
        hub = info.services.hub
        async with fake_nodes(info, admin, BIG):
            with trio.fail_after(DEADLINE):
                _, _, alone = await run_big_job(admin)
                # a job whose feed has a reader that never reads again
                job_id = await start_job(
                    admin, {"command": "x", "nodes": sorted(BIG), "capture_output": True}
                )
                path = f"{ORG}/job_status_feed/{job_id}"
                stalled = await StalledReader.open(info, admin, path)
                try:
                    started = trio.current_time()
                    events = await read_feed(admin, path)
                    check_job_events(events)
                    with_stalled = trio.current_time() - started
                    assert with_stalled < 3 * alone + 1.0, (with_stalled, alone)
                    assert hub.statistics().lagged_disconnects == 1
                    # cut off: it holds no subscription although it never read a byte
                    await wait_subscribers(admin, 0)
                finally:
                    # the client goes away without reading: the server's write fails
                    await stalled.stream.aclose()
                # A stalled reader of a job with fewer events than its buffer is not cut off,
                # but the job's end releases its subscription.
                job_id = await start_job(
                    admin, {"command": "x", "nodes": ["big"], "capture_output": True}
                )
                path = f"{ORG}/job_status_feed/{job_id}"
                stalled = await StalledReader.open(info, admin, path)
                try:
                    events = await read_feed(admin, path)
                    assert len(events) < BUFFER
                    await wait_subscribers(admin, 0)
                    assert hub.statistics().lagged_disconnects == 1
                finally:
                    await stalled.stream.aclose()
