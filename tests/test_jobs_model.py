"""The stored job model: records, output buffers, and snapshots with packed finished jobs."""

from __future__ import annotations

from typing import Any

import msgpack

from pushy_appliance.jobs.model import JobsModel, OutputBuffer
from pushy_appliance.jobs.record import from_record, to_record
from pushy_appliance.jobs.state import new_job


def _create(job_id: str, nodes: list[str], status: str = "voting") -> dict[str, Any]:
    state = to_record(
        new_job(
            job_id, nodes, quorum=len(nodes), run_timeout=60, voting_timeout=60, reconnect_grace=10
        )
    )
    state["status"] = status
    return {
        "t": "job.create",
        "id": job_id,
        "org": "default",
        "spec": {"command": "x", "capture": True},
        "state": state,
        "events": [[1, "start", {"timestamp": "t1"}]],
        "at": 100.0,
    }


def _finish(model: JobsModel, job_id: str) -> None:
    job = dict(model.jobs[job_id].job, status="complete")
    model.apply(
        {
            "t": "job.step",
            "id": job_id,
            "job": job,
            "nodes": [["a", "succeeded", False, None, None], ["b", "failed", False, None, None]],
            "events": [
                [2, "output", {"timestamp": "t2", "node": "a"}],
                [3, "job_complete", {"timestamp": "t3", "status": "complete"}],
            ],
            "outputs": [["a", "stdout", 0, b"hello\xff"], ["a", "stdout", 3, b"lo\xffworld"]],
            "results": {"a": {"stdout_bytes": 11, "stderr_bytes": 0, "truncated": False}},
            "at": 200.0,
        }
    )


def test_steps_update_nodes_events_output_and_times() -> None:
    model = JobsModel()
    model.apply(_create("j1", ["a", "b"]))
    _finish(model, "j1")
    e = model.jobs["j1"]
    assert e.finished and e.finished_at == 200.0 and e.updated_at == 200.0
    assert e.buckets() == {"succeeded": ["a"], "failed": ["b"]}
    assert [ev[0] for ev in e.events] == [1, 2, 3]
    assert bytes(e.output["a"].stdout) == b"hello\xffworld"  # the overlap was dropped
    assert e.output["a"].finished
    assert model.last_at == 200.0


def test_buckets_and_nack_reasons_follow_every_step() -> None:
    model = JobsModel()
    model.apply(_create("j1", ["a", "b"]))
    e = model.jobs["j1"]
    assert e.buckets() == {"new": ["a", "b"]}
    e.buckets()["new"].append("x")  # a caller's copy: the entry is not changed
    assert e.buckets() == {"new": ["a", "b"]}
    assert e.nack_reasons() == {}
    model.apply(
        {
            "t": "job.step",
            "id": "j1",
            "job": e.job,
            "nodes": [["b", "nacked", False, None, "busy"]],
            "events": [],
            "at": 150.0,
        }
    )
    assert e.buckets() == {"new": ["a"], "nacked": ["b"]}
    assert e.nack_reasons() == {"b": "busy"}
    _finish(model, "j1")
    assert e.buckets() == {"succeeded": ["a"], "failed": ["b"]}
    assert e.nack_reasons() == {}


def test_snapshot_packs_finished_jobs_and_loads_them_lazily() -> None:
    model = JobsModel()
    model.apply(_create("done", ["a", "b"]))
    _finish(model, "done")
    model.apply(_create("live", ["c"]))
    snap = model.snapshot()
    by_id = {d["id"]: d for d in snap["jobs"]}
    assert "packed" in by_id["done"] and "nodes" not in by_id["done"]
    assert "nodes" in by_id["live"]
    # the snapshot goes through msgpack like the store's
    restored = JobsModel()
    restored.load(msgpack.unpackb(msgpack.packb(snap, use_bin_type=True), raw=False))
    done = restored.jobs["done"]
    assert done._packed is not None  # not decoded until read
    assert restored.snapshot() == msgpack.unpackb(msgpack.packb(snap, use_bin_type=True), raw=False)
    assert done.buckets() == model.jobs["done"].buckets()
    assert done._packed is None
    assert done.events == model.jobs["done"].events
    assert bytes(done.output["a"].stdout) == b"hello\xffworld"
    assert list(restored.jobs) == ["done", "live"]  # creation order kept (newest-first lists)


def test_purge_and_org_delete_remove_jobs() -> None:
    model = JobsModel()
    model.apply(_create("j1", ["a"]))
    model.apply(_create("j2", ["a"]))
    model.apply({"t": "job.purge", "id": "j1"})
    assert list(model.jobs) == ["j2"]
    model.apply({"t": "org.del", "name": "default"})
    assert model.jobs == {}


def test_output_buffer_caps_and_counts() -> None:
    buf = OutputBuffer()
    buf.add("stdout", 0, b"a" * 10, cap=4)
    buf.add("stdout", 10, b"b" * 5, cap=4)
    assert bytes(buf.stdout) == b"aaaa" and buf.stdout_total == 15 and buf.truncated
    buf.add("stdout", 0, b"a" * 10, cap=4)  # a re-send changes nothing
    assert buf.stdout_total == 15


def test_a_job_that_waits_for_late_results_is_stored_so_a_restart_resumes_waiting() -> None:
    model = JobsModel()
    model.apply(_create("j1", ["a", "b"], status="running"))
    job = dict(model.jobs["j1"].job, status="aborted", late_deadline=130.0)
    model.apply(
        {
            "t": "job.step",
            "id": "j1",
            "job": job,
            # a owes its result (sixth item), b ended before the abort
            "nodes": [
                ["a", "aborted", False, None, None, True],
                ["b", "failed", False, None, None],
            ],
            "events": [],
            "outputs": [["a", "stdout", 0, b"late"]],
            "results": {"b": {"status": "failed", "exit_code": 2, "stdout_bytes": 0}},
            "at": 100.0,
        }
    )
    e = model.jobs["j1"]
    assert e.finished and not e.closed and e.finished_at == 100.0
    assert from_record(e.state_record()).owed == {"a"}
    assert e.results() == {
        "b": {
            "status": "failed",
            "exit_code": 2,
            "signal": None,
            "stdout_bytes": 0,
            "stderr_bytes": 0,
            "truncated": False,
            "duration_s": None,
        }
    }
    result = {"status": "aborted", "exit_code": 143, "stdout_bytes": 4, "truncated": False}
    model.apply(
        {
            "t": "job.step",
            "id": "j1",
            "job": dict(job, late_deadline=None),
            "nodes": [["a", "aborted", False, None, None]],
            "events": [[2, "job_complete", {"timestamp": "t2", "status": "aborted"}]],
            "results": {"a": result},
            "at": 101.0,
        }
    )
    assert e.closed and e.finished_at == 100.0  # finished at the abort, closed now
    assert bytes(e.output["a"].stdout) == b"late" and e.output["a"].finished
    assert e.results()["a"]["exit_code"] == 143
    assert from_record(e.state_record()).owed == frozenset()


def test_output_buffer_keeps_received_apart_from_the_result() -> None:
    """The soak's find: a result that arrives first (in ``hello``) must not make the output
    that follows look like a duplicate; a chunk past a gap is never glued on."""
    buf = OutputBuffer()
    buf.add("stdout", 0, b"line 1\n", cap=100)
    buf.finish({"status": "succeeded", "stdout_bytes": 21, "stderr_bytes": 0})
    assert (buf.stdout_received, buf.stdout_reported, buf.stdout_total) == (7, 21, 21)
    assert not buf.add("stdout", 14, b"line 3\n", cap=100)  # past a gap: dropped
    assert bytes(buf.stdout) == b"line 1\n"
    assert buf.add("stdout", 0, b"line 1\nline 2\nline 3\n", cap=100)  # the re-send
    assert bytes(buf.stdout) == b"line 1\nline 2\nline 3\n"
    assert buf.result()["stdout_bytes"] == 21
    # a chunk cut at the cap stands for its whole size
    buf.add("stderr", 0, b"ab", cap=2, size=5)
    assert (bytes(buf.stderr), buf.stderr_received, buf.truncated) == (b"ab", 5, True)
    # the snapshot keeps both counts
    again = OutputBuffer.from_plain(buf.to_plain())
    assert again == buf


def test_output_buffers_of_older_snapshots_read_as_received() -> None:
    unfinished = {"stdout": b"abc", "stderr": b"", "stdout_total": 3, "stderr_total": 0}
    buf = OutputBuffer.from_plain({**unfinished, "truncated": False, "finished": False})
    assert (buf.stdout_received, buf.stdout_reported) == (3, 0)
    # one a result finished (whose total may be the result's): what was kept was received
    finished = {"stdout": b"abc", "stderr": b"", "stdout_total": 21, "stderr_total": 0}
    buf = OutputBuffer.from_plain({**finished, "truncated": False, "finished": True})
    assert (buf.stdout_received, buf.stdout_reported, buf.stdout_total) == (3, 21, 21)


def test_a_step_chunk_cut_at_the_cap_counts_its_size() -> None:
    model = JobsModel(output_cap=4)
    model.apply(_create("j1", ["a"], status="running"))
    step = {
        "t": "job.step",
        "id": "j1",
        "job": dict(model.jobs["j1"].job),
        "nodes": [],
        "events": [],
        "at": 101.0,
        "outputs": [["a", "stdout", 0, b"abcd", 512_000], ["a", "stdout", 512_000, b"", 512_000]],
    }
    model.apply(step)
    buf = model.jobs["j1"].output["a"]
    assert (bytes(buf.stdout), buf.stdout_received, buf.truncated) == (b"abcd", 1_024_000, True)
    assert model.output_received("j1", "a", "stdout") == 1_024_000
    assert model.output_received("j1", "b", "stdout") == model.output_received("x", "a", "x") == 0
