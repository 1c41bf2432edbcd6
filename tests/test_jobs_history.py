"""Finished jobs' details in the archive: the compact node table and event log, archiving
and reading back through the bounded cache, snapshots of the index, and what a job costs
per node in memory."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import msgpack
import pytest

from pushy_appliance.errors import StoreCorruptError
from pushy_appliance.jobs.compact import EventLog, NodeTable, pack_event, pack_events
from pushy_appliance.jobs.details import decode_details
from pushy_appliance.jobs.events import Start
from pushy_appliance.jobs.machine import transition
from pushy_appliance.jobs.model import JobsModel
from pushy_appliance.jobs.record import (
    column_entries,
    from_record,
    node_columns,
    to_columns,
    to_record,
)
from pushy_appliance.jobs.state import new_job


class Archive:
    """An archive in a dict, counting reads (the store's contract, without a store)."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[int, int, int], bytes] = {}
        self.reads = 0
        self.offset = 24

    def put(self, blob: bytes) -> tuple[int, int, int]:
        ref = (1, self.offset, len(blob))
        self.offset += 8 + len(blob)
        self.blobs[ref] = blob
        return ref

    def read(self, ref: tuple[int, int, int]) -> bytes:
        self.reads += 1
        return self.blobs[ref]


def create(
    job_id: str, nodes: list[str], *, status: str = "voting", file: str | None = None
) -> dict[str, Any]:
    state = to_record(
        new_job(
            job_id, nodes, quorum=len(nodes), run_timeout=60, voting_timeout=60, reconnect_grace=9
        )
    )
    state["status"] = status
    return {
        "t": "job.create",
        "id": job_id,
        "org": "default",
        "spec": {
            "command": "chef-client",
            "run_timeout": 60,
            "quorum": len(nodes),
            "user": None,
            "dir": None,
            "env": None,
            "file": file,
            "capture": True,
            "requester": "admin",
        },
        "state": state,
        "events": [[1, "start", {"timestamp": "t1", "command": "chef-client"}]],
        "at": 100.0,
    }


def finish(model: JobsModel, job_id: str, nodes: list[str]) -> None:
    job = dict(model.jobs[job_id].job, status="complete")
    model.apply(
        {
            "t": "job.step",
            "id": job_id,
            "job": job,
            "nodes": [[n, "succeeded", False, None, None] for n in nodes],
            "events": [
                [2, "run_complete", {"timestamp": "t2", "node": nodes[0]}],
                [3, "job_complete", {"timestamp": "t3", "status": "complete"}],
            ],
            "outputs": [[nodes[0], "stdout", 0, b"hello\n"]],
            "results": {nodes[0]: {"status": "succeeded", "exit_code": 0, "stdout_bytes": 6}},
            "at": 200.0,
        }
    )


def archive_all(model: JobsModel, archive: Archive) -> int:
    done = 0
    for entry in model.to_archive():
        done += model.archived(entry, archive.put(entry.pack()))
    return done


def document(model: JobsModel, job_id: str) -> tuple[Any, ...]:
    """Everything a reader can see of a job."""
    e = model.jobs[job_id]
    return (
        e.status,
        e.spec["command"],
        e.file_specified,
        e.file(),
        e.buckets(),
        e.nack_reasons(),
        e.results(),
        list(e.events),
        {n: bytes(b.stdout) for n, b in e.output.items()},
        list(e.nodes.values()),
        e.created_at,
        e.updated_at,
        e.finished_at,
        e.closed,
    )


# --- the compact forms ----------------------------------------------------------------------


def test_node_columns_round_trip_every_kind_of_entry() -> None:
    entries = [
        ["a", "succeeded", False, None, None],
        ["b", "running", True, 1234.5, None],
        ["c", "nacked", False, None, "busy"],
        ["d", "aborted", False, None, "stopped", True],
        *([f"r{i}", "unavailable", False, None, f"reason {i}"] for i in range(6)),
    ]
    columns = node_columns(entries)
    assert column_entries(msgpack.unpackb(msgpack.packb(columns), raw=False)) == entries
    table = NodeTable.from_columns(columns)
    assert list(table.values()) == entries
    assert table["b"] == entries[1] and "x" not in table and len(table) == len(entries)
    assert list(NodeTable.from_entries(entries).values()) == entries
    table.set(["c", "failed", False, None, "exit 3"])
    assert table["c"] == ["c", "failed", False, None, "exit 3"]
    assert list(table)[:3] == ["a", "b", "c"]  # request order kept
    assert dict(table.statuses())["c"] == "failed"
    assert ("c", "failed", "exit 3") in list(table.with_reasons())


def test_a_state_stored_as_columns_comes_back_equal() -> None:
    state0 = new_job(
        "j",
        [f"n{i}" for i in range(50)],
        quorum=50,
        run_timeout=60,
        voting_timeout=60,
        reconnect_grace=9,
    )
    state, _ = transition(state0, Start(10.0, frozenset(f"n{i}" for i in range(0, 50, 2))))
    assert to_record(from_record(to_columns(state))) == to_record(state)
    with pytest.raises(StoreCorruptError.__mro__[1], match="node code"):
        from_record(
            {
                **to_columns(state),
                "node_columns": {"names": ["n0"], "codes": [15], "reasons": [], "away": {}},
            }
        )


def test_the_event_log_reads_like_a_list() -> None:
    events = [[1, "start", {"timestamp": "t1"}], [2, "quorum_vote", {"node": "a"}]]
    log = EventLog(events)
    assert len(log) == 2 and log[1] == events[1] and log[-1] == events[1]
    assert list(log) == events and log == events and log[0:1] == events[:1]
    log.extend([pack_event([3, "job_complete", {}])])
    assert log.last_n() == 3 and EventLog().last_n() == 0
    stored = msgpack.unpackb(msgpack.packb(log.stored()), raw=False)
    assert EventLog.from_stored(stored) == log and EventLog.from_stored(events) == events
    with pytest.raises(IndexError):
        log[3]
    with pytest.raises(ValueError, match="offsets"):
        EventLog.from_stored({"data": stored["data"][:-1], "ends": stored["ends"]})


# --- archiving and reading back -------------------------------------------------------------


def test_a_closed_job_is_archived_and_reads_the_same() -> None:
    model = JobsModel(history_cache_bytes=10_000)
    archive = Archive()
    model.attach_archive(archive.read)
    model.apply(create("done", ["a", "b"], file="raw:hello"))
    finish(model, "done", ["a", "b"])
    model.apply(create("live", ["c"]))
    before = document(model, "done")
    assert [e.id for e in model.to_archive()] == ["done"]
    assert archive_all(model, archive) == 1
    entry = model.jobs["done"]
    assert entry.archived and entry._details is None and "file" not in entry.spec
    assert model.to_archive() == []
    assert archive.reads == 0
    assert document(model, "done") == before
    assert archive.reads == 1
    assert document(model, "done") == before  # from the cache
    assert archive.reads == 1
    model.history.drop("done")
    assert document(model, "done") == before
    assert archive.reads == 2
    assert entry.state_record()["status"] == "complete"


def test_the_cache_keeps_the_most_recently_read_within_its_size() -> None:
    model = JobsModel(history_cache_bytes=1)  # fits nothing: every read goes to the archive
    archive = Archive()
    model.attach_archive(archive.read)
    for job_id in ("j1", "j2"):
        model.apply(create(job_id, ["a"]))
        finish(model, job_id, ["a"])
    archive_all(model, archive)
    assert model.history.statistics() == (0, 0)
    model.jobs["j1"].buckets()
    model.jobs["j1"].buckets()
    assert archive.reads == 2
    size = max(decode_details(blob)[1] for blob in archive.blobs.values())
    assert size > max(ref[2] for ref in archive.blobs)  # weighed uncompressed
    model.history.capacity = size + 1  # room for one
    model.jobs["j1"].buckets()
    model.jobs["j2"].buckets()
    model.jobs["j2"].events  # noqa: B018 - a read
    assert archive.reads == 4
    assert model.history.statistics() == (1, size)
    model.apply({"t": "job.purge", "id": "j2"})
    assert model.history.statistics() == (0, 0)


def test_a_replay_holds_closed_jobs_packed_until_they_are_archived() -> None:
    model = JobsModel(history_cache_bytes=10_000)
    archive = Archive()
    model.attach_archive(archive.read)
    model.apply(create("done", ["a", "b"], file="raw:hello"))
    finish(model, "done", ["a", "b"])
    model.apply(create("live", ["c"]))
    before = {j: document(model, j) for j in model.jobs}
    assert model.compact() == 1
    entry = model.jobs["done"]
    assert entry._details is None and entry._packed is not None
    assert model.jobs["live"]._details is not None
    assert model.compact() == 0  # already packed
    blob = entry._packed
    assert archive_all(model, archive) == 1
    assert entry.ref is not None and archive.blobs[entry.ref] is blob  # archived as it is
    assert {j: document(model, j) for j in model.jobs} == before
    assert archive.reads == 1
    model.apply(create("again", ["d"]))
    finish(model, "again", ["d"])
    model.compact()
    assert document(model, "again")[0] == "complete"  # read back from its blob
    assert model.jobs["again"]._packed is None and archive.reads == 1


def test_a_job_purged_while_it_was_packed_is_not_archived() -> None:
    model = JobsModel()
    archive = Archive()
    model.attach_archive(archive.read)
    model.apply(create("j", ["a"]))
    finish(model, "j", ["a"])
    (entry,) = model.to_archive()
    blob = entry.pack()
    model.apply({"t": "job.purge", "id": "j"})
    assert not model.archived(entry, archive.put(blob))
    assert model.jobs == {}


def test_a_damaged_blob_is_a_store_error_not_a_wrong_document() -> None:
    model = JobsModel(history_cache_bytes=0)
    model.attach_archive(lambda ref: b"\xc1 not msgpack")
    model.apply(create("j", ["a"]))
    finish(model, "j", ["a"])
    model.archived(model.to_archive()[0], (1, 24, 10))
    with pytest.raises(StoreCorruptError):
        model.jobs["j"].buckets()
    with pytest.raises(StoreCorruptError):
        decode_details(msgpack.packb({"job": {}}))


def test_a_snapshot_holds_archived_jobs_as_an_index_in_creation_order() -> None:
    model = JobsModel()
    archive = Archive()
    model.attach_archive(archive.read)
    for job_id in ("old", "live", "new"):
        model.apply(create(job_id, ["a", "b"], file="raw:x" if job_id == "new" else None))
        if job_id != "live":
            finish(model, job_id, ["a", "b"])
    archive_all(model, archive)
    before = {j: document(model, j) for j in model.jobs}
    snap = msgpack.unpackb(msgpack.packb(model.snapshot()), raw=False, strict_map_key=False)
    assert snap["index"]["id"] == ["old", "live", "new"]
    assert snap["index"]["archive"] == [1, None, 1]
    assert len(snap["specs"]) == 2  # the two finished jobs differ in their file only
    assert [d["id"] for d in snap["jobs"]] == ["live"]
    assert {k for k in snap["jobs"][0]} >= {"nodes", "events", "output"}
    assert model.archive_use() == {1: archive.offset}
    restored = JobsModel()
    restored.attach_archive(archive.read)
    restored.load(snap)
    assert list(restored.jobs) == ["old", "live", "new"]
    assert {j: document(restored, j) for j in restored.jobs} == before
    old, new = restored.jobs["old"], restored.jobs["new"]
    assert old.job is new.job and old.org is new.org  # shared
    assert restored.snapshot() == snap


def test_a_snapshot_of_before_the_archive_still_loads_and_archives() -> None:
    model = JobsModel()
    model.apply(create("done", ["a"]))
    finish(model, "done", ["a"])
    entry = model.jobs["done"]
    legacy_packed = msgpack.packb(
        [
            list(entry.nodes.values()),
            list(entry.events),
            {n: b.to_plain() for n, b in entry.output.items()},
        ]
    )
    legacy = [
        {
            "id": "done",
            "org": "default",
            "spec": entry.spec,
            "job": entry.job,
            "created_at": 100.0,
            "updated_at": 200.0,
            "finished_at": 200.0,
            "packed": legacy_packed,
        }
    ]
    before = document(model, "done")
    restored = JobsModel()
    archive = Archive()
    restored.attach_archive(archive.read)
    restored.load(legacy)
    assert document(restored, "done") == before
    restored.load(legacy)
    assert archive_all(restored, archive) == 1
    restored.history.drop("done")
    assert document(restored, "done") == before


# --- the cost per node ----------------------------------------------------------------------


def test_a_huge_job_costs_little_memory_per_node() -> None:
    """A 20,000-node job whose nodes are all offline (each ends unavailable, with a vote):
    the stored model holds it in under 250 bytes per node, its own copy of the names
    included (183 measured; 556 before the compact forms, without the names), and once
    archived in under 1 byte per node."""
    nodes = [f"huge-node-{i:06d}" for i in range(20_000)]
    model = JobsModel()
    archive = Archive()
    model.attach_archive(archive.read)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        state0 = new_job(
            "huge", nodes, quorum=len(nodes), run_timeout=60, voting_timeout=60, reconnect_grace=9
        )
        state, effects = transition(state0, Start(100.0, frozenset()))
        events = [[1, "start", {"timestamp": "2026-12-06 10:00:00.000000Z"}]]
        for fx in effects:
            data = getattr(fx, "data", None)
            if data is not None:
                stamp = f"2026-12-06 10:00:00.{len(events):06d}Z"
                events.append([len(events) + 1, fx.event, {"timestamp": stamp, **data}])
        record = {
            **create("huge", []),
            "state": to_columns(state),
            "events": pack_events(events),
        }
        model.apply(record)
        del state0, state, effects, events, record
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        assert model.jobs["huge"].closed
        archive_all(model, archive)
        model.history.drop("huge")
        gc.collect()
        on_disk = sum(len(blob) for blob in archive.blobs.values())
        archived = tracemalloc.get_traced_memory()[0] - base - on_disk
    finally:
        tracemalloc.stop()
    assert len(model.jobs["huge"].events) == len(nodes) + 2  # start, votes, job_complete
    assert held / len(nodes) < 250, held / len(nodes)
    assert archived / len(nodes) < 1, archived / len(nodes)
    assert on_disk / len(nodes) < 120, on_disk / len(nodes)
