"""The audit log's pure parts and engines (``audit/``): the model's records, queries and
snapshots, the per-peer refusal limit, body summaries without secrets, the batching
recorder and retention, on an in-memory store (``docs/OPERATIONS.md``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgpack
import trio
from test_engine_outage import Disk
from test_node_link import open_node, queued

from pushy_appliance.appliance import new_database
from pushy_appliance.audit.model import AuditModel, audit_record, purge_record
from pushy_appliance.audit.recorder import FLUSH_SECONDS, AuditRecorder
from pushy_appliance.audit.refusals import RefusalLimiter
from pushy_appliance.audit.retention import AuditRetention
from pushy_appliance.audit.summary import identity_summary, job_summary, url_origin
from pushy_appliance.jobs.validation import validate_job_request
from pushy_appliance.nodes.link import NodeLink
from pushy_appliance.store import open_store

from helpers import idle_hello, memory_registry


def entry(
    at: float, action: str = "job.create", org: str | None = "o1", **kw: Any
) -> dict[str, Any]:
    return audit_record(at=at, action=action, org=org, **kw)


def test_model_queries_newest_first_filtered_and_paged() -> None:
    m = AuditModel()
    m.apply(entry(1.0, actor="alice", target="j1"))
    m.apply(entry(2.0, "job.abort", actor="bob", target="j1"))
    m.apply(entry(3.0, "client.create", org="o2", actor="alice"))
    m.apply({"t": "node.seen", "org": "o1", "name": "web1", "status": "online", "at": 4.0})
    m.apply({"t": "node.seen", "org": "o1", "name": "web1", "status": "offline", "at": 5.0})
    page = m.query("o1")
    assert [(e.id, e.action) for e in page.entries] == [
        (5, "node.disconnect"),
        (4, "node.connect"),
        (2, "job.abort"),
        (1, "job.create"),
    ]
    assert page.entries[0].target == "web1" and not page.more
    assert [e.id for e in m.query(None).entries] == [5, 4, 3, 2, 1]
    assert [e.id for e in m.query("o1", action="job").entries] == [2, 1]
    assert [e.id for e in m.query("o1", action="job.abort").entries] == [2]
    assert [e.id for e in m.query("o1", action="jo").entries] == []
    assert [e.id for e in m.query(None, actor="alice").entries] == [3, 1]
    assert [e.id for e in m.query("o1", since=2.0, until=4.0).entries] == [4, 2]
    first = m.query("o1", limit=2)
    assert ([e.id for e in first.entries], first.more) == ([5, 4], True)
    rest = m.query("o1", limit=2, before=4)
    assert ([e.id for e in rest.entries], rest.more) == ([2, 1], False)


def test_model_bounds_purges_detaches_and_round_trips() -> None:
    m = AuditModel(max_entries=3)
    for i in range(5):
        m.apply(entry(float(i), target=f"j{i}"))
    assert [e.target for e in m.query("o1").entries] == ["j4", "j3", "j2"]
    assert m.evicted == 2
    m.apply(purge_record(3.0))  # older than 3.0
    assert [e.target for e in m.query("o1").entries] == ["j4", "j3"]
    m.apply(entry(6.0, org="o2", dropped=4, action="refused"))
    m.apply({"t": "org.del", "name": "o1"})
    assert m.query("o1").entries == []
    assert [e.target for e in m.query(None).entries] == [None, "j4", "j3"]
    copy = AuditModel(max_entries=3)
    copy.load(m.snapshot())
    assert copy.query(None) == m.query(None)
    assert copy.query("o1").entries == [] and copy.query("o2") == m.query("o2")
    assert copy.query("o2").entries[0].dropped == 4
    copy.apply(entry(7.0))
    assert copy.query(None).entries[0].id == m.next_id


def test_refusal_limiter_counts_what_it_drops() -> None:
    lim = RefusalLimiter(per_minute=2, max_peers=2)
    assert [lim.admit("p", 0.0) for _ in range(5)] == [0, 0, None, None, None]
    assert lim.admit("p", 30.0) == 3  # one token back after 30 s; it reports the 3 drops
    assert lim.admit("p", 30.0) is None
    assert (lim.recorded, lim.dropped) == (3, 4)
    assert lim.admit("q", 30.0) == 0
    assert lim.admit("r", 30.0) == 0  # "p" (least recently refused) is forgotten
    assert len(lim) == 2 and lim.unreported == 1
    assert lim.admit("p", 30.0) == 0  # afresh


def test_summaries_keep_no_secret() -> None:
    req = validate_job_request(
        {
            "command": "deploy",
            "nodes": [f"n{i}" for i in range(30)],
            "env": {"TOKEN": "hunter2"},
            "file": "raw:private",
        },
        max_file_bytes=1000,
        max_nodes=100,
        default_run_timeout=60,
    )
    s = job_summary(req)
    assert s["env"] == ["TOKEN"] and s["file_bytes"] == len(b"private")
    assert s["node_count"] == 30 and len(s["nodes"]) == 20
    assert "hunter2" not in repr(s) and "private" not in repr(s)
    # limits as the job stores them: any integer a request carries fits a msgpack record
    big = validate_job_request(
        {"command": "x", "nodes": ["a", "b"], "max_failures": 2**64, "max_concurrency": 2**70},
        max_file_bytes=1000,
        max_nodes=100,
        default_run_timeout=60,
    )
    assert (job_summary(big)["max_failures"], job_summary(big)["max_concurrency"]) == (2, 2)
    msgpack.packb(job_summary(big))
    body = {"name": "c1", "public_key": "-----BEGIN PUBLIC KEY-----", "admin": True, "x": 1}
    assert identity_summary(body, ("name", "admin", "x"), key=True) == {
        "name": "c1",
        "admin": True,
        "key": "given",
    }
    assert identity_summary({"create_key": True}, (), key=True) == {"key": "created"}
    assert url_origin("https://h.example.com:8443/p/a?token=t") == "https://h.example.com:8443"
    assert url_origin("http://[::1]/x") == "http://[::1]"


async def test_recorder_batches_refusals_and_rehab(autojump_clock: trio.abc.Clock) -> None:
    async with open_store(None) as store:
        db = new_database(store)
        rec = AuditRecorder(db, refusals_per_minute=1, refusal_peers=10, now=lambda: 100.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(rec.run)
            before = store.statistics().records
            rec.refused("1.2.3.4", peer="1.2.3.4", status=401, org="o1")
            rec.refused("1.2.3.4", peer="1.2.3.4", status=401, org="o1")  # dropped
            rec.node_rehab("o1", "web1", "j1")
            model = db.models["audit"]
            assert isinstance(model, AuditModel)
            assert model.query(None).entries == []
            await trio.sleep(FLUSH_SECONDS + 0.1)
            assert store.statistics().records == before + 1  # one batch
            entries = model.query("o1").entries
            assert [(e.action, e.target, e.summary) for e in entries] == [
                ("node.rehab", "web1", {"job": "j1"}),
                ("refused", None, None),
            ]
            stats = rec.statistics()
            assert (stats.refusals_recorded, stats.refusals_dropped) == (1, 1)
            await trio.sleep(60.0)
            rec.refused("1.2.3.4", peer="1.2.3.4", status=403, org="o1")
            await rec.flush()
            assert model.query("o1").entries[0].dropped == 1
            nursery.cancel_scope.cancel()


async def test_recorder_holds_its_batch_while_the_store_refuses(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_store(None) as store:
        db = new_database(store)
        disk = Disk(store)
        rec = AuditRecorder(db, refusals_per_minute=10, refusal_peers=10, now=lambda: 100.0)
        model = db.models["audit"]
        assert isinstance(model, AuditModel)
        async with trio.open_nursery() as nursery:
            await nursery.start(rec.run)
            disk.full = True
            rec.refused("1.2.3.4", peer="1.2.3.4", status=401, org="o1")
            await trio.sleep(FLUSH_SECONDS + 0.1)
            # the batch is taken and held: newer entries queue behind it, nothing is stored
            rec.node_rehab("o1", "web1", "j1")
            await trio.sleep(600.0)
            assert model.query(None).entries == []
            assert rec.statistics().queued == 1
            disk.full = False
            await trio.sleep(30.0)
            assert [(e.action, e.target) for e in model.query("o1").entries] == [
                ("node.rehab", "web1"),
                ("refused", None),
            ]
            assert rec.statistics().queued == 0
            nursery.cancel_scope.cancel()


async def test_retention_purges_and_survives_replay(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        db = new_database(store)
        db.recover()
        await db.commit(entry(1000.0, target="old"), entry(1000.0 + 86400 * 2, target="new"))
        ret = AuditRetention(db, retention_days=1, now=lambda: 1000.0 + 86400 * 2.5)
        assert await ret.purge_expired() == 1
        assert await ret.purge_expired() == 0
        assert await AuditRetention(db, retention_days=0).purge_expired() == 0
    async with open_store(tmp_path) as store:
        db = new_database(store)
        db.recover()
        model = db.models["audit"]
        assert isinstance(model, AuditModel)
        assert [(e.id, e.target) for e in model.query("o1").entries] == [(2, "new")]


async def test_the_link_tells_of_each_node_it_sends_to_rehab() -> None:
    async with memory_registry() as registry:
        link = NodeLink(registry, now=lambda: 1000.0)
        told: list[tuple[str, str, str | None]] = []
        link.on_rehab = lambda org, node, job: told.append((org, node, job))
        hello = dataclasses.replace(idle_hello(), job_id="j1", job_state="running")
        session, outbox = open_node(link, hello)
        await link.node_hello(session, hello)
        assert [f.TYPE for f in queued(outbox)] == ["abort"]
        assert told == [("o", "n", None)]
