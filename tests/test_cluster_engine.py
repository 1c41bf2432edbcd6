"""The job engine across appliances (``docs/SCALE-OUT.md`` §4, §5, §8): two engines (node
registry, link, runner, PostgreSQL coordinator) on one real PostgreSQL store, each its own
store writer, in one process. Frames to a node connected to the other appliance go by mail
and its frames come back the same way; a job whose driver stopped renewing is taken over and
the old driver's next step is refused and never applied; the nodes of an appliance declared
dead go down for the jobs driven elsewhere.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import trio

from pushy_appliance import protocol
from pushy_appliance.cluster import LogHolds, open_coordinator
from pushy_appliance.cluster._postgres import PostgresCoordinator
from pushy_appliance.db import Database
from pushy_appliance.feeds import Feeds
from pushy_appliance.hub import Hub
from pushy_appliance.jobs.model import JobsModel
from pushy_appliance.jobs.runner import JobRunner
from pushy_appliance.jobs.validation import JobRequest
from pushy_appliance.nodes.link import NodeLink
from pushy_appliance.nodes.model import NodeModel
from pushy_appliance.nodes.registry import NodeRegistry, NodeSession
from pushy_appliance.store import open_postgres_store

from helpers import idle_hello

TIMEOUT = 40.0


@dataclasses.dataclass
class App:
    """One appliance's engines."""

    db: Database
    registry: NodeRegistry
    link: NodeLink
    runner: JobRunner
    cluster: PostgresCoordinator
    stop_cluster: trio.CancelScope

    @property
    def jobs(self) -> JobsModel:
        model = self.db.models["jobs"]
        assert isinstance(model, JobsModel)
        return model

    async def connect(self, node: str) -> tuple[NodeSession, trio.MemoryReceiveChannel[bytes]]:
        """A node connected here (its frames stay in the returned outbox)."""
        hello = idle_hello()
        session, outbox = self.registry.open_session("o", node, hello, lambda code, why: None)
        await self.link.node_hello(session, hello)
        return session, outbox

    async def frame(self, session: NodeSession, cls: type[Any], **fields: Any) -> None:
        """The node sends a frame."""
        await self.link.node_frame(session, cls(seq=1, ts=time.time(), **fields))


@asynccontextmanager
async def appliance(url: str, *, ttl: float) -> AsyncIterator[App]:
    async with open_postgres_store(url, exclusive=False) as store:
        db = Database(store, {"nodes": NodeModel(), "jobs": JobsModel()})
        db.recover()
        registry = NodeRegistry(db, "srv", interval=10.0, offline_threshold=3)
        link = NodeLink(registry)
        feeds = Feeds(Hub(), org_retention=60.0)
        cluster = await open_coordinator(url, str(uuid.uuid4()), lease_ttl=ttl)
        runner = JobRunner(
            db, registry, link, feeds, voting_timeout=60.0, reconnect_grace=30.0, cluster=cluster
        )
        holds = LogHolds(runner.model)
        db.watch(holds.applied)
        link.attach_cluster(cluster, holds, runner.cluster_port.drives)
        async with trio.open_nursery() as nursery:
            await nursery.start(db.follower)
            await nursery.start(runner.run)
            scope = trio.CancelScope()

            async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await cluster.run(runner.cluster_port, task_status=task_status)

            await nursery.start(run)
            yield App(db, registry, link, runner, cluster, scope)
            nursery.cancel_scope.cancel()


def request(nodes: list[str], **fields: Any) -> JobRequest:
    base: dict[str, Any] = {
        "command": "x",
        "nodes": tuple(nodes),
        "quorum": len(nodes),
        "run_timeout": 300,
        "user": None,
        "dir": None,
        "env": None,
        "file": None,
        "file_bytes": None,
        "capture_output": True,
        "max_concurrency": None,
        "max_failures": None,
    }
    return JobRequest(**{**base, **fields})


async def until(condition: Callable[[], bool]) -> None:
    """Poll what another task (or the other appliance) changes (the deadline bounds it)."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.02)


async def next_frame(outbox: trio.MemoryReceiveChannel[bytes]) -> protocol.Frame:
    return protocol.decode(await outbox.receive())


def node_status(app: App, job_id: str, node: str) -> str:
    return str(app.jobs.jobs[job_id].nodes[node][1])


RESULT = {
    "status": "succeeded",
    "exit_code": 0,
    "stdout_bytes": 3,
    "stderr_bytes": 0,
    "truncated": False,
    "duration_s": 0.1,
}


async def test_a_job_over_nodes_on_two_appliances(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with appliance(pg_url, ttl=5.0) as a, appliance(pg_url, ttl=5.0) as b:
            changed: list[str] = []  # b's org feed hears of nodes changing elsewhere too
            b.link.watch(lambda org, node: changed.append(node))
            n1, out1 = await a.connect("n1")
            n3, out3 = await b.connect("n3")
            await until(lambda: a.cluster.routed("o", "n3") == b.cluster.appliance_id)
            await until(lambda: "n1" in changed)  # n1's route, learnt by b
            assert not b.link.is_available("o", "n1") and b.link.is_available("o", "n3")
            # every appliance sees a node connected elsewhere online, through its route
            await until(lambda: b.link.status("o", "n1") == ("online", "available"))
            assert b.link.status("o", "n9") == ("offline", "unavailable")
            job_id = await a.runner.create("o", request(["n1", "n3"]), "admin")
            # n3 is reachable through b: it gets the commit there, by mail
            commit = await next_frame(out3)
            assert isinstance(commit, protocol.Commit) and commit.job_id == job_id
            assert isinstance(await next_frame(out1), protocol.Commit)
            # b applied the job from the log: n3 is held by a job driven elsewhere
            await until(lambda: job_id in b.jobs.jobs)
            assert not b.link.is_available("o", "n3") and job_id not in b.runner.live
            await until(lambda: b.link.status("o", "n1") == ("online", "unavailable"))
            assert changed.count("n3") == 2  # its connect, then held by a's job
            await a.frame(n1, protocol.AckCommit, job_id=job_id)
            await b.frame(n3, protocol.AckCommit, job_id=job_id)  # forwarded to a
            assert isinstance(await next_frame(out3), protocol.Run)
            assert isinstance(await next_frame(out1), protocol.Run)
            await until(lambda: a.jobs.jobs[job_id].status == "running")
            for app, session in ((a, n1), (b, n3)):
                await app.frame(session, protocol.AckRun, job_id=job_id)
                await app.link.node_frame(
                    session,
                    protocol.Output(
                        job_id=job_id, channel="stdout", offset=0, data=b"hi\n", seq=2, ts=0.0
                    ),
                )
                await app.frame(session, protocol.Result, job_id=job_id, **RESULT)
            ack = await next_frame(out3)
            assert isinstance(ack, protocol.ResultAck) and ack.job_id == job_id
            await until(lambda: job_id in a.jobs.jobs and a.jobs.jobs[job_id].closed)
            entry = a.jobs.jobs[job_id]
            assert entry.status == "complete"
            assert entry.buckets() == {"succeeded": ["n1", "n3"]}
            assert bytes(entry.output["n3"].channel("stdout")) == b"hi\n"
            # every appliance reads the same job; its lease is given back; nodes free again
            await until(lambda: b.jobs.jobs[job_id].closed)
            assert b.jobs.jobs[job_id].buckets() == {"succeeded": ["n1", "n3"]}
            await until(lambda: b.link.is_available("o", "n3"))
            assert not a.cluster.holds(job_id)


def lease_expired(url: str, job_id: str) -> None:
    """The job's lease expires now (as it does when its holder cannot renew)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE pushy_lease SET expires_at = now() - interval '1 second' WHERE job_id = %s",
            (job_id,),
        )


async def keep_alive(url: str, appliance_id: str) -> None:
    """Renew an appliance's row every 0.2 s."""
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            conn.execute(
                "UPDATE pushy_appliance SET alive_at = now() WHERE id = %s", (appliance_id,)
            )
            await trio.sleep(0.2)


async def test_a_stale_driver_s_step_is_refused_and_the_new_driver_ends_the_job(
    pg_url: str,
) -> None:
    with trio.fail_after(TIMEOUT):
        # a renews every 10 s, b scans for expired leases every 0.33 s (and a's row is kept
        # alive at b's pace: a is not dead, only its lease expired)
        async with (
            appliance(pg_url, ttl=30.0) as a,
            appliance(pg_url, ttl=1.0) as b,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(keep_alive, pg_url, a.cluster.appliance_id)
            n1, out1 = await a.connect("n1")
            n2, out2 = await b.connect("n2")
            await until(lambda: a.cluster.routed("o", "n2") == b.cluster.appliance_id)
            job_id = await a.runner.create("o", request(["n1", "n2"]), "admin")
            assert isinstance(await next_frame(out1), protocol.Commit)
            assert isinstance(await next_frame(out2), protocol.Commit)
            assert a.cluster.fence(job_id) == ((job_id, 1),)
            lease_expired(pg_url, job_id)
            await until(lambda: job_id in b.runner.live)
            assert b.cluster.fence(job_id) == ((job_id, 2),)
            assert job_id in a.runner.live  # a does not know yet: its renewal is 10 s away
            # the resumed job commits its nodes again: n2 here, n1 by mail to a
            assert isinstance(await next_frame(out2), protocol.Commit)
            assert isinstance(await next_frame(out1), protocol.Commit)
            # n1's vote reaches a, whose step (epoch 1) is refused: a stops driving the job
            # and hands the vote to b
            await a.frame(n1, protocol.AckCommit, job_id=job_id)
            await until(lambda: job_id not in a.runner.live)
            await b.frame(n2, protocol.AckCommit, job_id=job_id)
            assert isinstance(await next_frame(out1), protocol.Run)
            assert isinstance(await next_frame(out2), protocol.Run)
            await a.frame(n1, protocol.Result, job_id=job_id, **RESULT)
            await b.frame(n2, protocol.Result, job_id=job_id, **RESULT)
            await until(lambda: job_id in b.jobs.jobs and b.jobs.jobs[job_id].closed)
            for app in (a, b):
                await until(lambda app=app: app.jobs.jobs[job_id].closed)  # type: ignore[misc]
                entry = app.jobs.jobs[job_id]
                assert entry.status == "complete"
                assert entry.buckets() == {"succeeded": ["n1", "n2"]}
                # one vote per node in the log: a's refused step was never applied anywhere
                votes = [d["node"] for _n, name, d in entry.events if name == "quorum_vote"]
                assert sorted(votes) == ["n1", "n2"]
                # the quorum was decided once, by the new driver
                names = [name for _n, name, _d in entry.events]
                assert names.count("quorum_succeeded") == 1
                assert names.count("job_complete") == 1
            nursery.cancel_scope.cancel()


async def test_a_dead_appliance_s_nodes_go_down_in_jobs_driven_elsewhere(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with appliance(pg_url, ttl=1.0) as a, appliance(pg_url, ttl=1.0) as b:
            n1, _out1 = await a.connect("n1")
            n3, out3 = await b.connect("n3")
            await until(lambda: a.cluster.routed("o", "n3") == b.cluster.appliance_id)
            job_id = await a.runner.create("o", request(["n1", "n3"]), "admin")
            await next_frame(out3)
            await until(lambda: job_id in b.jobs.jobs)
            await a.frame(n1, protocol.AckCommit, job_id=job_id)
            await b.frame(n3, protocol.AckCommit, job_id=job_id)
            await until(lambda: a.jobs.jobs[job_id].status == "running")
            b.stop_cluster.cancel()  # b stops renewing its row: after ttl it is dead
            stopped = trio.current_time()
            await until(lambda: a.jobs.jobs[job_id].nodes["n3"][3] is not None)  # away
            assert trio.current_time() - stopped <= 1.0 + 1.0 / 3 + 1.0
            assert a.cluster.routed("o", "n3") is None
            assert a.jobs.jobs[job_id].nodes["n1"][3] is None


async def test_an_abort_asked_of_another_appliance_reaches_the_driver(pg_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with appliance(pg_url, ttl=5.0) as a, appliance(pg_url, ttl=5.0) as b:
            n1, out1 = await a.connect("n1")
            job_id = await a.runner.create("o", request(["n1"]), "admin")
            assert isinstance(await next_frame(out1), protocol.Commit)
            await a.frame(n1, protocol.AckCommit, job_id=job_id)
            assert isinstance(await next_frame(out1), protocol.Run)
            await until(lambda: job_id in b.jobs.jobs and b.jobs.jobs[job_id].status == "running")
            await b.runner.abort("o", job_id)  # returns once the end is applied on b
            assert b.jobs.jobs[job_id].status == "aborted"
            abort = await next_frame(out1)
            assert isinstance(abort, protocol.Abort) and abort.job_id == job_id
            assert a.jobs.jobs[job_id].status == "aborted"
