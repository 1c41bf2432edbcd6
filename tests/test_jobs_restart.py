"""Jobs survive a crash of the server (``API.md`` §5 Restart): ``kill -9`` of a ``pushy serve``
subprocess while real agents run a job and another job is still voting, then a restart on the
same data directory and ports."""

from __future__ import annotations

import signal
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
import trio
from test_jobs_e2e import (
    JOBS,
    Cluster,
    job_doc,
    output,
    start_job,
    wait_job,
    wait_online,
    write_scripts,
)
from test_node_e2e import free_port, server_process

from pushy_appliance import chef_auth, tls

from helpers import Signed

LIMIT = 60.0
RUN_SECONDS = 20
"""How long the job that outlives the crash runs."""
ENV = {
    "PUSHY_HEARTBEAT_INTERVAL": "0.5",
    # A stopped agent (SIGSTOP, see below) stays online for 10 intervals: time enough to post
    # a job it cannot vote on and kill the server while that job is voting.
    "PUSHY_HEARTBEAT_OFFLINE_THRESHOLD": "10",
    "PUSHY_JOBS_VOTING_TIMEOUT": "60",
    "PUSHY_JOBS_RECONNECT_GRACE": "40",
    "PUSHY_LOG_LEVEL": "debug",
}


async def test_kill_9_during_a_run_and_a_vote_then_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    api_port, node_port = free_port(), free_port()
    url = f"https://127.0.0.1:{api_port}"
    scripts = write_scripts(tmp_path)
    runners = ["n1", "n2", "n3"]
    # "reborn" runs the job too, but its agent is restarted while the server is down
    everyone = [*runners, "reborn", "voter"]

    async with AsyncExitStack() as agents:
        server = await agents.enter_async_context(server_process(data, api_port, node_port, ENV))
        verify = tls.client_ssl_context(ca_file=data / "tls" / "ca.pem")
        http = await agents.enter_async_context(httpx.AsyncClient(verify=verify, timeout=10))
        admin = Signed.from_file(http, url, "admin", data / "keys" / "admin.pem")
        c = Cluster(url, data, admin, tmp_path, scripts)
        for node in everyone:
            await c.start_agent(agents, node)
        with trio.fail_after(LIMIT):
            await wait_online(admin, everyone)

            body = {
                "command": f"slow {RUN_SECONDS}",
                "nodes": [*runners, "reborn"],
                "capture_output": True,
            }
            running = await start_job(admin, body)
            await wait_job(admin, running, {"running"}, running=4)
            # the first line of every node is stored before the crash
            await wait_for_output_events(admin, running, 4)

            # the voter cannot answer its commit: the job stays voting
            c.agents["voter"].process.send_signal(signal.SIGSTOP)
            voting = await start_job(admin, {"command": "say voted", "nodes": ["voter"]})
            doc = await job_doc(admin, voting)
            assert doc["status"] == "voting"
            assert doc["nodes"] == {"new": ["voter"]}

        server.process.send_signal(signal.SIGKILL)
        await server.process.wait()
        killed_at = trio.current_time()
        c.agents["reborn"].process.send_signal(signal.SIGKILL)
        await c.agents["reborn"].process.wait()
        reborn = await c.restart_agent(agents, "reborn")  # a new incarnation, holding the job
        reborn.process.send_signal(signal.SIGSTOP)  # (it connects once the job was looked at)

        async with server_process(data, api_port, node_port, ENV) as server:
            with trio.fail_after(LIMIT):
                doc = await job_doc(admin, voting)
                assert doc["status"] == "voting"  # resumed with the time it had left
                doc = await job_doc(admin, running)
                assert doc["status"] == "running"
                # nodes away (or not yet back) are still running, within the reconnect grace
                assert doc["nodes"] == {"running": [*runners, "reborn"]}
                reborn.process.send_signal(signal.SIGCONT)

                c.agents["voter"].process.send_signal(signal.SIGCONT)
                doc = await wait_job(admin, voting)
                assert doc["status"] == "complete", doc
                assert doc["nodes"] == {"succeeded": ["voter"]}

                # the restarted node cannot report on the job: crashed at once
                doc = await wait_job(admin, running, {"running"}, crashed=1)
                assert doc["nodes"] == {"running": runners, "crashed": ["reborn"]}
                # and it is released, free for another job while the others still run
                await wait_online(admin, ["reborn"])
                job = await start_job(admin, {"command": "say again", "nodes": ["reborn"]})
                doc = await wait_job(admin, job)
                assert doc["nodes"] == {"succeeded": ["reborn"]}

                doc = await wait_job(admin, running)
                assert doc["status"] == "complete", doc
                assert doc["nodes"] == {"succeeded": runners, "crashed": ["reborn"]}
                r = await admin.get(f"{JOBS}/{running}/output/reborn/stdout")
                assert r.status_code == 404  # it never finished
                for node in runners:
                    assert await output(admin, running, node, "stdout") == (
                        f"start {node}\ndone {node}\n".encode()
                    )
                    assert await output(admin, running, node, "stderr") == b""
                # the agents came back to the same job; nobody ran it twice
                assert trio.current_time() - killed_at < RUN_SECONDS
                for node in runners:
                    assert c.agents[node].count(f"job {running} on {node}: committed") == 1
                assert server.count("resumed (running, 4 nodes)") == 1
                assert server.count("resumed (voting, 1 nodes)") == 1


async def wait_for_output_events(admin: Signed, job_id: str, count: int) -> None:
    """Read the (live) job feed until it carried ``count`` ``output`` events."""
    path = f"/organizations/default/pushy/job_status_feed/{job_id}"
    headers = chef_auth.sign_request(
        "GET", path, b"", admin.user, admin.key, timestamp=datetime.now(UTC)
    )
    headers["Accept"] = "text/event-stream"
    seen = 0
    # Leaving by cancellation (not ``break``) unwinds httpx's stream generators at once.
    with trio.CancelScope() as done:
        async with admin.http.stream("GET", admin.base + path, headers=headers) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                seen += line == "event: output"
                if seen >= count:
                    done.cancel()
    assert seen >= count
