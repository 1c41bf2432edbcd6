"""No request to the job routes can produce a 500 (``API.md`` §2): property tests against the
in-process appliance, signed as ``admin``. Also retention: finished jobs are purged."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushy_appliance import chef_auth
from pushy_appliance.jobs.retention import Retention

from fakenode import Behaviour, fake_nodes
from helpers import Signed, admin_client, running_server, signing_time, test_config

ORG = "/organizations/default"
PUSHY = f"{ORG}/pushy"
LIMIT = 60.0
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies -----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
node_names = st.text(alphabet="abcn123-_.:/ \u00e9", min_size=0, max_size=8)
env_maps = st.dictionaries(st.text(max_size=6), st.text(max_size=6) | scalars, max_size=3)
files = st.one_of(
    st.text(max_size=12).map(lambda t: "raw:" + t),
    st.text(alphabet="AZaz09+/=\n!", max_size=16).map(lambda t: "base64:" + t),
    st.text(max_size=12),
    scalars,
)
job_fields: dict[str, st.SearchStrategy[Any]] = {
    "command": st.sampled_from(["chef-client", "", "x" * 5000]) | st.text(max_size=12) | scalars,
    "nodes": st.lists(node_names, max_size=4) | json_values,
    "quorum": st.integers(-2, 6) | st.sampled_from(["50%", "101%", "0%", "x%", "1.5%"]) | scalars,
    "run_timeout": st.integers(-2, 100_000) | scalars,
    "user": st.text(max_size=40) | scalars,
    "dir": st.sampled_from(["/", "/tmp", "rel"]) | st.text(max_size=10) | scalars,
    "env": env_maps | json_values,
    "file": files,
    "capture_output": st.booleans() | scalars,
    "max_concurrency": st.integers(-1, 4) | scalars,
    "max_failures": st.integers(-1, 4) | scalars,
    "bogus": json_values,
}
job_bodies = st.fixed_dictionaries({}, optional=job_fields)
"""Mostly-plausible job bodies: any subset of the keys, each well or badly typed."""

plain = st.characters(exclude_characters="\x00")
lone_surrogates = st.characters(categories=["Cs"])  # what JSON's "\ud800" escape makes


def strings(min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[str]:
    """Text without NUL; one in four may hold lone surrogates."""
    clean = st.text(plain, min_size=min_size, max_size=max_size)
    dirty = st.text(plain | lone_surrogates, min_size=min_size, max_size=max_size)
    return st.one_of(clean, clean, clean, dirty)


big = st.integers(min_value=1) | st.sampled_from([2**64, 2**70, 1e20, 1e308])
valid_jobs = st.fixed_dictionaries(
    {
        "command": strings(1, 20),
        "nodes": st.lists(
            st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), min_size=1, max_size=4, unique=True
        ),
    },
    optional={
        "quorum": st.integers(0, 1) | st.sampled_from(["0%", "50%", "100%"]),
        "run_timeout": st.integers(1, 86_400),
        "user": strings(1, 32),
        "dir": st.sampled_from(["/", "/tmp", "/no such dir"]),
        "env": st.dictionaries(
            st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True),
            strings(max_size=6),
            max_size=3,
        ),
        "file": strings(max_size=12).map(lambda t: "raw:" + t)
        | st.binary(max_size=12).map(lambda b: "base64:" + base64.b64encode(b).decode()),
        "capture_output": st.booleans(),
        "max_concurrency": st.integers(1, 3) | big,
        "max_failures": st.integers(0, 3) | big,
    },
)
"""Job bodies that pass validation: they create real jobs (on nodes that do not exist)."""


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A POST body: a job-like object, any JSON, JSON with repeated keys, or random bytes."""
    kind = draw(st.sampled_from(["valid", "job", "json", "duplicate", "bytes"]))
    if kind == "valid":
        return json.dumps(draw(valid_jobs)).encode()
    if kind == "job":
        return json.dumps(draw(job_bodies)).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "duplicate":
        doc = draw(job_bodies)
        key = draw(st.sampled_from([*job_fields, "env"]))
        text = json.dumps(doc)
        extra = f"{json.dumps(key)}: {json.dumps(draw(json_values))}"
        return ("{" + extra + ("," + text[1:] if len(text) > 2 else "}")).encode()
    return draw(st.binary(max_size=64))


segments = st.text(max_size=12) | st.sampled_from(
    ["jobs", "abort", "output", "stdout", "stderr", "n1", "0" * 32, "node_states", "config", ".."]
)
queries = st.lists(
    st.tuples(
        st.sampled_from(["status", "limit", "before", "since", "include_file", "x"]),
        st.text(max_size=10)
        | st.sampled_from(["10", "0", "complete", "true", "2024-01-01T00:00:00Z", "0001-01-01"]),
    ),
    max_size=3,
)
FEEDS = frozenset({"job_status_feed", "jobs_status_feed"})
"""Feeds of live jobs never end: the GET property leaves them out (``test_feeds`` covers them)."""


class Caller:
    """Signs and sends requests as ``admin``; paths are given decoded and sent percent-encoded,
    the signature covering the decoded path as the server checks it."""

    def __init__(self, admin: Signed) -> None:
        self.admin = admin
        self.statuses: list[tuple[int, str]] = []

    async def send(
        self,
        method: str,
        segs: list[str],
        body: bytes = b"",
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Send one request.

        Raises:
            AssertionError: the answer was a 5xx.
        """
        encoded = PUSHY + "".join("/" + quote(s, safe="") for s in segs)
        headers = chef_auth.sign_request(
            method,
            unquote(encoded),
            body,
            self.admin.user,
            self.admin.key,
            timestamp=signing_time(self.admin.user, method, unquote(encoded), body),
        )
        if body:
            headers["Content-Type"] = content_type
        if query:
            encoded += "?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query)
        r = await self.admin.http.request(
            method, self.admin.base + encoded, content=body or None, headers=headers
        )
        self.statuses.append((r.status_code, encoded))
        if r.status_code >= 500:
            raise AssertionError(f"{method} {encoded} {body[:300]!r} -> {r.status_code} {r.text}")


async def alive(http: httpx.AsyncClient, base: str) -> None:
    r = await http.get(base + "/pushy/_status")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "it's alive"


def run_property(caller: Caller, job_ids: st.SearchStrategy[str], which: str) -> None:
    """Run one property in this (worker) thread; requests go through the trio thread."""

    @SETTINGS
    @given(body=bodies(), content_type=st.sampled_from(["application/json", "text/plain"]))
    def post_jobs(body: bytes, content_type: str) -> None:
        trio.from_thread.run(caller.send, "POST", ["jobs"], body, None, content_type)

    @SETTINGS
    @given(job_id=job_ids, body=bodies() | st.just(b"") | st.just(b"{}"))
    def post_abort(job_id: str, body: bytes) -> None:
        trio.from_thread.run(caller.send, "POST", ["jobs", job_id, "abort"], body)

    nodes = st.sampled_from(["slow1", "ghost"]) | st.text(max_size=10)
    channels = st.sampled_from(["stdout", "stderr"]) | st.text(max_size=8)
    routes = st.one_of(
        st.lists(segments, min_size=1, max_size=5).filter(lambda segs: segs[0] not in FEEDS),
        st.just(["jobs"]),
        st.tuples(st.just("jobs"), job_ids).map(list),
        st.tuples(st.just("jobs"), job_ids, st.just("output"), nodes, channels).map(list),
        st.tuples(st.sampled_from(["node_states", "config"]), nodes).map(list),
    )

    @SETTINGS
    @given(segs=routes, query=queries)
    def get_paths(segs: list[str], query: list[tuple[str, str]]) -> None:
        trio.from_thread.run(caller.send, "GET", segs, b"", query)

    {"post_jobs": post_jobs, "post_abort": post_abort, "get_paths": get_paths}[which]()


async def test_no_request_to_the_job_routes_is_a_500(tmp_path: Path) -> None:
    async with (
        running_server(test_config(tmp_path)) as info,
        admin_client(info) as admin,
        fake_nodes(info, admin, {"slow1": Behaviour(run_seconds=600, stdout=b"x")}),
    ):
        caller = Caller(admin)
        with trio.fail_after(LIMIT):
            finished = await start(admin, {"command": "x", "nodes": ["ghost"]})
            live = await start(admin, {"command": "x", "nodes": ["slow1"], "capture_output": True})
            job_ids = st.sampled_from([finished, live, "0" * 32, live.upper()]) | st.text(
                max_size=40
            )
            for which in ("get_paths", "post_jobs", "post_abort"):
                await trio.to_thread.run_sync(run_property, caller, job_ids, which)
            await alive(admin.http, info.url)
        statuses = {status for status, _ in caller.statuses}
        # the properties reached the routes, not only the authentication ...
        assert {200, 201, 400, 404, 409, 415} <= statuses
        # ... which refused only the paths that the client rewrote ("/.." segments)
        rewritten = [path for status, path in caller.statuses if status == 401]
        assert all("/." in path for path in rewritten), rewritten


async def test_finished_jobs_are_purged_after_the_retention(tmp_path: Path) -> None:
    days = 0.001  # 86.4 s
    config = test_config(tmp_path, **{"jobs.retention_days": days})
    async with running_server(config) as info, admin_client(info) as admin:
        runner = info.services.jobs
        retention = Retention(info.services.db, info.services.feeds, retention_days=days)
        with trio.fail_after(LIMIT):
            async with fake_nodes(info, admin, {"n1": Behaviour(stdout=b"kept\n")}):
                old = await start(admin, {"command": "x", "nodes": ["n1"], "capture_output": True})
                await wait_finished(admin, old)
                newer = await start(admin, {"command": "y", "nodes": ["n1"]})
                await wait_finished(admin, newer)
            r = await admin.get(f"{PUSHY}/jobs/{old}/output/n1/stdout")
            assert (r.status_code, r.content) == (200, b"kept\n")

            finished_old = runner.model.jobs[old].finished_at
            finished_newer = runner.model.jobs[newer].finished_at
            assert finished_old is not None and finished_newer is not None
            assert await retention.purge_expired() == 0  # nothing is that old yet
            # a clock just past the older job's expiry purges it alone
            cut = finished_old + days * 86400 + (finished_newer - finished_old) / 2
            assert finished_newer > finished_old
            assert await retention.purge_expired(cut) == 1
            for path in (f"jobs/{old}", f"jobs/{old}/output/n1/stdout"):
                r = await admin.get(f"{PUSHY}/{path}")
                assert r.status_code == 404, (path, r.text)
            r = await admin.get(f"{PUSHY}/jobs")
            assert [j["id"] for j in r.json()] == [newer]
            assert (await admin.get(f"{PUSHY}/jobs/{newer}")).status_code == 200
            assert await retention.purge_expired(time.time() + days * 86400 + 1) == 1
            assert (await admin.get(f"{PUSHY}/jobs")).json() == []
            await alive(admin.http, info.url)


async def start(admin: Signed, body: dict[str, Any]) -> str:
    r = await admin.post(f"{PUSHY}/jobs", body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def wait_finished(admin: Signed, job_id: str) -> None:
    while True:
        r = await admin.get(f"{PUSHY}/jobs/{job_id}")
        assert r.status_code == 200, r.text
        if r.json()["status"] == "complete":
            return
        await trio.sleep(0.05)
