"""Finished jobs read through the API once their details are in the archive, before and
after a restart from a snapshot: the job document (with its file and results), the list, the
job feed's history, and ``pushy store verify``; and the cap on live jobs' nodes over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from pushy_appliance.sse import SSEParser
from pushy_appliance.store import verify_store

from helpers import Signed, admin_client, running_server, test_config

ORG = "/organizations/default"
TIMEOUT = 60.0


async def reads(admin: Signed, job_id: str) -> dict[str, Any]:
    """Everything the API shows of a finished job."""
    doc = await admin.get(f"{ORG}/pushy/jobs/{job_id}?include_results=true")
    with_file = await admin.get(f"{ORG}/pushy/jobs/{job_id}?include_file=true")
    listed = await admin.get(f"{ORG}/pushy/jobs")
    feed = await admin.get(f"{ORG}/pushy/job_status_feed/{job_id}")
    output = await admin.get(f"{ORG}/pushy/jobs/{job_id}/output/n1/stdout")
    for r in (doc, with_file, listed, feed):
        assert r.status_code == 200, r.text
    summary = [j for j in listed.json() if j["id"] == job_id]
    events = [(e.name, e.id, e.data) for e in SSEParser().feed(feed.content)]
    return {
        "doc": doc.json(),
        "file": with_file.json().get("file"),
        "summary": summary,
        "feed": events,
        "output": (output.status_code, output.json()),
    }


async def test_archived_jobs_read_the_same_before_and_after_a_restart(tmp_path: Path) -> None:
    config = test_config(tmp_path / "data")
    bodies = [
        {"command": "chef-client", "nodes": ["n1", "n2"], "file": "raw:hello"},
        {"command": "uptime", "nodes": ["n3"], "env": {"A": "1"}, "capture_output": True},
    ]
    with trio.fail_after(TIMEOUT):
        async with running_server(config) as info, admin_client(info) as admin:
            ids = []
            for body in bodies:
                r = await admin.post(f"{ORG}/pushy/jobs", body)
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
            before = {job_id: await reads(admin, job_id) for job_id in ids}
            assert before[ids[0]]["file"] == "raw:hello"
            assert before[ids[0]]["doc"]["nodes"] == {"unavailable": ["n1", "n2"]}
            db = info.services.db
            assert await db.archive() == 2
            jobs = info.services.jobs.model
            assert all(jobs.jobs[job_id].archived for job_id in ids)
            jobs.history.drop(ids[0])
            jobs.history.drop(ids[1])
            assert {job_id: await reads(admin, job_id) for job_id in ids} == before
            await db.snapshot()
        async with running_server(config) as info, admin_client(info) as admin:
            jobs = info.services.jobs.model
            assert all(jobs.jobs[job_id].archived for job_id in ids)
            assert jobs.history.statistics() == (0, 0)
            assert {job_id: await reads(admin, job_id) for job_id in ids} == before
            assert jobs.history.reads == 2
    report = verify_store(tmp_path / "data" / "store")
    assert report.ok and report.blobs == 2, report.lines()


async def test_a_job_beyond_the_cap_on_live_nodes_is_refused_with_retry_after(
    tmp_path: Path,
) -> None:
    config = test_config(tmp_path / "data", **{"limits.max_live_job_nodes": 2})
    with trio.fail_after(TIMEOUT):
        async with running_server(config) as info, admin_client(info) as admin:
            r = await admin.post(f"{ORG}/pushy/jobs", {"command": "x", "nodes": ["a", "b", "c"]})
            assert r.status_code == 503
            assert r.headers["Retry-After"] == "5"
            assert r.json() == {
                "error": "too many nodes in live jobs (3, at most 2): try again when a job "
                "has finished"
            }
            listed = await admin.get(f"{ORG}/pushy/jobs")
            assert listed.json() == []
            r = await admin.post(f"{ORG}/pushy/jobs", {"command": "x", "nodes": ["a", "b"]})
            assert r.status_code == 201, r.text
