"""The node↔job link on its own: what a node's messages become, rehab, the table of held
nodes and the two availability predicates. Sessions without a sender keep their frames
queued in the outbox, where the tests read them."""

from __future__ import annotations

import dataclasses
import time

import pytest
import trio

from pushy_appliance import protocol
from pushy_appliance.db import Database
from pushy_appliance.errors import ProtocolError
from pushy_appliance.jobs.compact import EventLog, NodeTable
from pushy_appliance.jobs.details import JobDetails
from pushy_appliance.jobs.events import (
    AckCommit,
    NackCommit,
    NodeBack,
    NodeDown,
    NodeEvent,
    Output,
    Result,
)
from pushy_appliance.jobs.model import JobEntry, JobsModel, OutputBuffer
from pushy_appliance.nodes.link import NodeLink
from pushy_appliance.nodes.model import NodeModel
from pushy_appliance.nodes.registry import NodeRegistry, NodeSession
from pushy_appliance.store import open_store

from helpers import idle_hello, memory_registry

T = 1000.0


class Port:
    """A job port that takes events for the jobs in ``live`` and records them."""

    def __init__(self, *live: str) -> None:
        self.live = set(live)
        self.posted: list[tuple[str, str, NodeEvent]] = []

    async def post(self, org: str, job_id: str, event: NodeEvent) -> bool:
        if job_id not in self.live:
            return False
        self.posted.append((org, job_id, event))
        return True


def queued(outbox: trio.MemoryReceiveChannel[bytes]) -> list[protocol.Frame]:
    frames = []
    while True:
        try:
            frames.append(protocol.decode(outbox.receive_nowait()))
        except trio.WouldBlock:
            return frames


def frame(cls: type[protocol.Frame], **fields: object) -> protocol.Frame:
    return cls(seq=2, ts=time.time(), **fields)


def result_body(job_id: str) -> protocol.ResultBody:
    return protocol.ResultBody(
        job_id=job_id,
        status="succeeded",
        exit_code=0,
        signal=None,
        stdout_bytes=3,
        stderr_bytes=0,
        truncated=False,
        duration_s=0.5,
    )


def open_node(
    link: NodeLink, hello: protocol.Hello | None = None
) -> tuple[NodeSession, trio.MemoryReceiveChannel[bytes]]:
    return link.registry.open_session("o", "n", hello or idle_hello(), lambda code, why: None)


async def test_without_jobs_a_held_job_is_rehab_and_a_result_is_acknowledged() -> None:
    async with memory_registry() as registry:
        link = NodeLink(registry, now=lambda: T)
        hello = dataclasses.replace(
            idle_hello(), job_id="j1", job_state="running", pending_result=result_body("j0")
        )
        session, outbox = open_node(link, hello)
        assert link.available(session)
        await link.node_hello(session, hello)
        assert [(f.TYPE, getattr(f, "job_id", None)) for f in queued(outbox)] == [
            ("result_ack", "j0"),
            ("abort", None),
        ]
        assert not link.reachable(session) and not link.available(session)
        assert link.node_state("o", "n")["availability"] == "unavailable"
        assert link.statistics().available == 0
        # frames of jobs nobody runs: a result is acknowledged, output dropped, others rehab
        await link.node_frame(session, frame(protocol.Aborted, job_id="j1"))
        assert link.available(session)
        await link.node_frame(
            session, frame(protocol.Output, job_id="j1", channel="stdout", data=b"x", offset=0)
        )
        assert queued(outbox) == [] and link.available(session)
        await link.node_frame(
            session,
            frame(protocol.Result, **dataclasses.asdict(result_body("j1"))),
        )
        assert [(f.TYPE, getattr(f, "job_id", None)) for f in queued(outbox)] == [
            ("result_ack", "j1")
        ]
        await link.node_frame(session, frame(protocol.AckCommit, job_id="j1"))
        assert [f.TYPE for f in queued(outbox)] == ["abort"]
        assert not link.reachable(session)
        assert link.reachable_nodes("o", ["n", "ghost"]) == frozenset()


async def test_messages_go_to_the_jobs_that_hold_the_node() -> None:
    async with memory_registry() as registry:
        link = NodeLink(registry, now=lambda: T)
        port = Port("j1", "j2")
        link.connect(port)
        hello = dataclasses.replace(
            idle_hello(), job_id="j1", job_state="running", pending_result=result_body("j1")
        )
        session, outbox = open_node(link, hello)
        session.previous_incarnation = hello.incarnation_id
        link.hold("o", "j1", ["n"])
        link.hold("o", "j2", ["n", "other"])
        assert link.held_by("o", "n") == {"j1", "j2"}
        assert link.reachable(session) and not link.available(session)
        assert link.reachable_nodes("o", ["n"]) == {"n"}
        await link.node_hello(session, hello)
        back = [(job, e) for _, job, e in port.posted]
        assert back == [
            ("j1", NodeBack("n", T, True, "running", Result("n", "succeeded", 0, T))),
            ("j2", NodeBack("n", T, True, "idle", None)),
        ]
        result = back[0][1]
        assert isinstance(result, NodeBack) and result.result is not None
        assert result.result.fields is not None and result.result.fields["stdout_bytes"] == 3
        assert queued(outbox) == []  # the result was taken, the held job is a live one
        port.posted.clear()
        await link.node_frame(session, frame(protocol.AckCommit, job_id="j2"))
        await link.node_frame(
            session, frame(protocol.Output, job_id="j1", channel="stderr", data=b"e", offset=0)
        )
        assert [(job, e) for _, job, e in port.posted] == [
            ("j2", AckCommit("n", T)),
            ("j1", Output("n", "stderr", 0, b"e")),
        ]
        port.posted.clear()
        await link.node_lost(session)
        assert [(job, e) for _, job, e in port.posted] == [
            ("j1", NodeDown("n", T)),
            ("j2", NodeDown("n", T)),
        ]
        link.release("o", "j1", ["n"])
        assert not link.available(session)
        link.release("o", "j2", ["n", "other"])
        assert link.available(session)
        assert link.held_by("o", "other") == frozenset()


async def test_a_new_connection_is_not_held_in_the_rehab_of_the_old_one() -> None:
    async with memory_registry() as registry:
        link = NodeLink(registry, now=lambda: T)
        old, _ = open_node(link)
        link.start_rehab(old)
        assert not link.reachable(old)
        new, _ = open_node(link)
        assert old.close_code is not None  # replaced
        await link.node_hello(new, idle_hello())
        assert link.reachable(new) and link.available(new)
        # the old connection's late answer changes nothing for the new one
        link.expect_aborted(new)
        await link.node_frame(old, frame(protocol.Aborted, job_id=None))
        assert not link.reachable(new)
        await link.node_frame(new, frame(protocol.Aborted, job_id=None))
        assert link.reachable(new)


# --- output offsets -------------------------------------------------------------------------


def _entry(job_id: str, *, capture: bool = True, **output: OutputBuffer) -> JobEntry:
    return JobEntry(
        id=job_id,
        org="o",
        spec={"capture": capture},
        job={"status": "running"},
        created_at=T,
        updated_at=T,
        details=JobDetails(
            NodeTable.from_entries([["n", "running", True, None, None]]), EventLog(), dict(output)
        ),
    )


def out(job_id: str, offset: int, data: bytes, channel: str = "stdout") -> protocol.Frame:
    return frame(protocol.Output, job_id=job_id, channel=channel, data=data, offset=offset)


async def test_output_is_taken_only_where_it_continues_the_channel() -> None:
    async with open_store(None) as store:
        jobs = JobsModel(output_cap=10)
        jobs.jobs["j1"] = _entry("j1")
        registry = NodeRegistry(
            Database(store, {"nodes": NodeModel(), "jobs": jobs}),
            "srv",
            interval=10.0,
            offline_threshold=3,
        )
        link = NodeLink(registry, now=lambda: T)
        port = Port("j1")
        link.connect(port)
        link.hold("o", "j1", ["n"])
        first, _ = open_node(link)

        def posted() -> list[NodeEvent]:
            events = [e for _, _, e in port.posted]
            port.posted.clear()
            return events

        # one connection: exactly contiguous
        await link.node_frame(first, out("j1", 0, b"abcd"))
        await link.node_frame(first, out("j1", 4, b"ef"))
        await link.node_frame(first, out("j1", 0, b"e", "stderr"))  # channels are apart
        assert posted() == [
            Output("n", "stdout", 0, b"abcd"),
            Output("n", "stdout", 4, b"ef"),
            Output("n", "stderr", 0, b"e"),
        ]
        with pytest.raises(ProtocolError, match=r"offset 4: an overlap, .* next offset is 6"):
            await link.node_frame(first, out("j1", 4, b"ef"))
        with pytest.raises(ProtocolError, match=r"offset 7: a gap, .* next offset is 6"):
            await link.node_frame(first, out("j1", 7, b"g"))
        assert posted() == []
        # a new connection restarts at or before what the server holds: the held part is
        # trimmed, and its chunks are contiguous among themselves (some still held)
        second, _ = open_node(link)
        await link.node_frame(second, out("j1", 0, b"abc"))
        await link.node_frame(second, out("j1", 3, b"defgh"))
        # past the cap (10 bytes) a chunk is counted, not stored: its size goes along
        await link.node_frame(second, out("j1", 8, b"ijklmn"))
        await link.node_frame(second, out("j1", 14, b"op"))
        assert posted() == [
            Output("n", "stdout", 6, b"gh"),
            Output("n", "stdout", 8, b"ij", 6),
            Output("n", "stdout", 14, b"", 2),
        ]
        # the replaced connection's late frame is not heard
        third, _ = open_node(link)
        await link.node_frame(second, out("j1", 16, b"q"))
        # a gap is refused on a new connection too, and offsets far out cost nothing
        with pytest.raises(ProtocolError, match="offset 1000000000: a gap, the server holds 16"):
            await link.node_frame(third, out("j1", 10**9, b"x"))
        await link.node_frame(third, out("j1", 16, b"q"))
        assert posted() == [Output("n", "stdout", 16, b"", 1)]
        # a job that no longer holds the node takes nothing
        link.release("o", "j1", ["n"])
        await link.node_frame(third, out("j1", 17, b"r"))
        assert posted() == []


async def test_after_a_restart_what_the_server_holds_is_the_stored_output() -> None:
    async with open_store(None) as store:
        jobs = JobsModel(output_cap=100)
        stored = OutputBuffer(stdout=bytearray(b"abcde"), stdout_received=5)
        jobs.jobs["j1"] = _entry("j1", n=stored)
        db = Database(store, {"nodes": NodeModel(), "jobs": jobs})
        link = NodeLink(NodeRegistry(db, "srv", interval=10.0, offline_threshold=3))
        port = Port("j1")
        link.connect(port)
        link.hold("o", "j1", ["n"])
        session, _ = open_node(link)
        with pytest.raises(ProtocolError, match="a gap, the server holds 5 bytes"):
            await link.node_frame(session, out("j1", 6, b"g"))
        await link.node_frame(session, out("j1", 0, b"abcdefg"))
        assert [e for _, _, e in port.posted] == [Output("n", "stdout", 5, b"fg")]


async def test_a_result_sent_again_after_a_reconnect_is_taken_after_its_output() -> None:
    """The same incarnation reports a result in ``hello`` for a live job that captures
    output: it is back running (its output and the result frame follow). Without capture,
    or from another incarnation, the result in ``hello`` is taken at once."""
    async with open_store(None) as store:
        jobs = JobsModel()
        jobs.jobs["cap"] = _entry("cap")
        jobs.jobs["raw"] = _entry("raw", capture=False)
        db = Database(store, {"nodes": NodeModel(), "jobs": jobs})
        link = NodeLink(NodeRegistry(db, "srv", interval=10.0, offline_threshold=3), now=lambda: T)
        for job_id, same, expected in [
            ("cap", True, NodeBack("n", T, True, "running", None)),
            ("cap", False, NodeBack("n", T, False, "idle", Result("n", "succeeded", 0, T))),
            ("raw", True, NodeBack("n", T, True, "idle", Result("n", "succeeded", 0, T))),
        ]:
            port = Port(job_id)
            link.connect(port)
            link.hold("o", job_id, ["n"])
            hello = dataclasses.replace(idle_hello(), pending_result=result_body(job_id))
            session, _ = open_node(link, hello)
            session.previous_incarnation = hello.incarnation_id if same else "before"
            await link.node_hello(session, hello)
            assert [e for _, _, e in port.posted] == [expected]
            link.release("o", job_id, ["n"])


async def test_a_busy_nack_names_the_job_that_holds_the_node() -> None:
    async with memory_registry() as registry:
        link = NodeLink(registry, now=lambda: T)
        port = Port("j1", "j2")
        link.connect(port)
        session, _ = open_node(link)
        link.hold("o", "j1", ["n"])  # the job it runs
        link.hold("o", "j2", ["n"])  # the job it was just sent a commit of
        assert link.holder("o", "n") == "j1"
        assert link.holder("o", "n", besides="j1") == "j2"
        assert link.holders("o", ["n", "free"]) == {"n": "j1"}
        await link.node_frame(session, frame(protocol.NackCommit, job_id="j2", reason="busy"))
        await link.node_frame(
            session, frame(protocol.NackCommit, job_id="j2", reason="not_whitelisted")
        )
        assert [e for _, _, e in port.posted] == [
            NackCommit("n", "busy", T, held_by="j1"),
            NackCommit("n", "not_whitelisted", T),
        ]
