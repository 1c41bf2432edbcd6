"""The job engine through the real API, with fake nodes speaking the real node protocol."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from pushy_appliance.errors import ApiError, JobFinishedError, NoSuchJobError

from fakenode import Behaviour, fake_nodes
from helpers import Signed, admin_client, running_server, test_config

FINISHED = {"complete", "quorum_failed", "timed_out", "aborted", "crashed"}


async def wait_job(
    admin: Signed, job_id: str, statuses: set[str] = FINISHED, limit: float = 10
) -> dict[str, Any]:
    """Poll the job document until its status is one of ``statuses``."""
    with trio.fail_after(limit):
        while True:
            r = await admin.get(f"/organizations/default/pushy/jobs/{job_id}")
            assert r.status_code == 200, r.text
            doc: dict[str, Any] = r.json()
            if doc["status"] in statuses:
                return doc
            await trio.sleep(0.05)


async def start(admin: Signed, body: dict[str, Any]) -> str:
    r = await admin.post("/organizations/default/pushy/jobs", body)
    assert r.status_code == 201, r.text
    doc = r.json()
    assert r.headers["Location"] == doc["uri"]
    assert doc["uri"].endswith(doc["id"])
    return str(doc["id"])


async def test_success_failure_and_output(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        behaviours = {
            "n1": Behaviour(stdout=b"hello\xff\n", stderr=b"warn\n"),
            "n2": Behaviour(),
            "n3": Behaviour(exit_code=1),
        }
        async with fake_nodes(info, admin, behaviours):
            job_id = await start(
                admin,
                {
                    "command": "chef-client",
                    "nodes": ["n1", "n2", "n3"],
                    "quorum": 3,
                    "capture_output": True,
                },
            )
            doc = await wait_job(admin, job_id)
            assert doc["status"] == "complete"
            assert doc["nodes"] == {"succeeded": ["n1", "n2"], "failed": ["n3"]}
            assert doc["capture_output"] is True
            assert doc["quorum"] == 3
            r = await admin.get(f"/organizations/default/pushy/jobs/{job_id}/output/n1/stdout")
            assert r.status_code == 200
            assert r.content == b"hello\xff\n"
            assert r.headers["content-type"] == "application/octet-stream"
            r = await admin.get(f"/organizations/default/pushy/jobs/{job_id}/output/n1/stderr")
            assert r.content == b"warn\n"
            r = await admin.get(f"/organizations/default/pushy/jobs/{job_id}/output/n2/stdout")
            assert r.status_code == 200 and r.content == b""
            r = await admin.get(
                f"/organizations/default/pushy/jobs/{job_id}/output/n1/stdout",
                headers={"Accept": "application/json"},
            )
            assert r.status_code == 406
            r = await admin.get("/organizations/default/pushy/jobs")
            assert [j["id"] for j in r.json()] == [job_id]
            assert "nodes" not in r.json()[0]


async def test_nack_quorum_and_unavailable(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        r = await admin.post(
            "/organizations/default/clients", {"name": "offline1", "create_key": True}
        )
        assert r.status_code == 201
        behaviours = {"n1": Behaviour(nack_commit="not_whitelisted"), "n2": Behaviour()}
        async with fake_nodes(info, admin, behaviours):
            job_id = await start(admin, {"command": "rm -rf /", "nodes": ["n1", "n2"]})
            doc = await wait_job(admin, job_id)
            assert doc["status"] == "quorum_failed"
            assert doc["nodes"]["nacked"] == ["n1"]
            assert doc["nack_reasons"] == {"n1": "not_whitelisted"}
            job_id = await start(
                admin, {"command": "x", "nodes": ["n1", "n2", "offline1", "ghost"], "quorum": 1}
            )
            doc = await wait_job(admin, job_id)
            assert doc["status"] == "complete"
            assert doc["nodes"] == {
                "succeeded": ["n2"],
                "unavailable": ["ghost", "offline1"],
                "nacked": ["n1"],
            }


async def test_abort_and_run_timeout(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        behaviours = {"n1": Behaviour(run_seconds=30), "n2": Behaviour(ignore_run=True)}
        async with fake_nodes(info, admin, behaviours):
            job_id = await start(admin, {"command": "sleep 30", "nodes": ["n1"]})
            await wait_job(admin, job_id, {"running"})
            r = await admin.post(f"/organizations/default/pushy/jobs/{job_id}/abort")
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "aborted"
            assert r.json()["nodes"] == {"aborted": ["n1"]}
            r = await admin.post(f"/organizations/default/pushy/jobs/{job_id}/abort")
            assert r.status_code == 409
            assert r.json() == {"error": "job already finished"}
            job_id = await start(admin, {"command": "sleep 30", "nodes": ["n2"], "run_timeout": 1})
            doc = await wait_job(admin, job_id)
            assert doc["status"] == "timed_out"
            assert doc["nodes"] == {"timed_out": ["n2"]}


async def test_abort_refusals_are_domain_errors_mapped_to_the_contract(tmp_path: Path) -> None:
    """The runner refuses an abort with domain errors; the API answers them as before."""
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        jobs = "/organizations/default/pushy/jobs"
        # a job on a node that is not connected finishes at once
        job_id = await start(admin, {"command": "x", "nodes": ["ghost"]})
        await wait_job(admin, job_id)
        runner = info.services.jobs
        with pytest.raises(JobFinishedError) as finished:
            await runner.abort("default", job_id)
        with pytest.raises(NoSuchJobError) as missing:
            await runner.abort("other-org", job_id)
        assert not isinstance(finished.value, ApiError)
        assert not isinstance(missing.value, ApiError)
        assert missing.value.job_id == job_id
        r = await admin.post(f"{jobs}/{job_id}/abort")
        assert (r.status_code, r.json()) == (409, {"error": "job already finished"})
        for unknown in ("0" * 32, "x" * 100):
            r = await admin.post(f"{jobs}/{unknown}/abort")
            assert (r.status_code, r.json()) == (404, {"error": f"job '{unknown[:64]}' not found"})


async def test_busy_node_nacks_second_job(tmp_path: Path) -> None:
    async with (
        running_server(test_config(tmp_path)) as info,
        admin_client(info) as admin,
        fake_nodes(info, admin, {"n1": Behaviour(run_seconds=2)}),
    ):
        first = await start(admin, {"command": "a", "nodes": ["n1"]})
        await wait_job(admin, first, {"running"})
        second = await start(admin, {"command": "b", "nodes": ["n1"], "quorum": 0})
        doc = await wait_job(admin, second)
        # the busy node is reachable, gets the commit and nacks it (API.md §5)
        assert doc["status"] == "complete"
        assert doc["nodes"] == {"nacked": ["n1"]}
        assert doc["nack_reasons"] == {"n1": "busy"}
        doc = await wait_job(admin, first)
        assert doc["status"] == "complete"


async def test_job_routes_refuse_bad_input(tmp_path: Path) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        r = await admin.post("/organizations/default/pushy/jobs", {"command": "", "nodes": ["a"]})
        assert r.status_code == 400
        assert r.json() == {"error": "invalid command supplied"}
        r = await admin.post("/organizations/default/pushy/jobs", raw=b"nope")
        assert r.status_code == 400
        assert r.json() == {"error": "invalid JSON body"}
        r = await admin.get("/organizations/default/pushy/jobs/" + "0" * 32)
        assert r.status_code == 404
        r = await admin.get("/organizations/default/pushy/jobs?limit=0")
        assert r.status_code == 400
        assert "limit" in r.json()["error"]


async def test_a_node_that_stops_reading_is_closed_as_stuck(tmp_path: Path) -> None:
    # The deaf node stops reading after welcome, but its heartbeats keep it online. Commits
    # with big files fill its socket until a direct write stalls: after 1 s the node is
    # closed as stuck (4008) and goes offline; the server and the other node carry on.
    config = test_config(tmp_path, **{"limits.max_file_bytes": 700_000})
    async with running_server(config) as info, admin_client(info) as admin:
        behaviours = {"deaf": Behaviour(deaf=True), "n1": Behaviour()}
        async with fake_nodes(info, admin, behaviours):
            registry = info.services.nodes
            big = "base64:" + base64.b64encode(os.urandom(690_000)).decode()
            with trio.fail_after(60):
                jobs = 0
                while registry.get("default", "deaf") is not None:
                    assert jobs < 100, "the deaf node was never closed"
                    await start(admin, {"command": "chef-client", "nodes": ["deaf"], "file": big})
                    jobs += 1
                    await trio.sleep(0.1)
                assert registry.statistics().dropped_stuck == 1
                r = await admin.get("/organizations/default/pushy/node_states/deaf")
                assert r.json()["status"] == "offline"
                job_id = await start(admin, {"command": "chef-client", "nodes": ["n1"]})
                assert (await wait_job(admin, job_id))["status"] == "complete"
