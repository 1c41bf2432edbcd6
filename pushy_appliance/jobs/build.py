"""A new job, built for ``JobRunner.create``: its state after ``Start``, its first feed
events and its ``job.create`` record, made before anything else sees the job.

Pure (no I/O, no clock: ``now`` is handed in), so that the runner can build a huge job in a
worker thread (:data:`~.runner.BUILD_IN_THREAD_NODES`) while the event loop goes on. The
runner drives the job once the record is durable (:mod:`.runner`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..sse import MonotonicStamper, format_timestamp
from . import record
from .compact import pack_events
from .events import Effect, Publish, Start
from .machine import transition
from .state import JobState, holds, new_job
from .validation import JobRequest

__all__ = ["Built", "JobTimers", "build_job", "feed_event"]


@dataclasses.dataclass(frozen=True, slots=True)
class JobTimers:
    """The server's job timers a new job starts with (``jobs.*`` of the config), in seconds."""

    voting_timeout: float
    reconnect_grace: float
    late_result_timeout: float


@dataclasses.dataclass(frozen=True, slots=True)
class Built:
    """A new job as :func:`build_job` makes it, before it is stored."""

    state: JobState
    effects: list[Effect]
    events: list[list[Any]]
    record: dict[str, Any]
    stamper: MonotonicStamper
    held: list[str]


def build_job(
    job_id: str,
    org: str,
    req: JobRequest,
    requester: str,
    online: frozenset[str],
    holders: dict[str, str],
    now: float,
    rerun_of: str | None,
    timers: JobTimers,
) -> Built:
    """A new job after ``Start``, and its ``job.create`` record (pure: safe in a worker
    thread, as it touches nothing another task may change).

    Args:
        job_id: the new job's id.
        org: its organization.
        req: the validated request.
        requester: who asked (the ``start`` event's ``user``, the spec's ``requester``).
        online: the job's nodes that are reachable now.
        holders: the job's nodes that another job holds, and that job's id.
        now: the time of ``Start`` and of the first feed events.
        rerun_of: the job this one re-runs (kept in its spec).
        timers: the server's job timers.
    """
    # Limits beyond the node count change nothing; clamped, any integer the request may
    # carry (2**64 and more) fits the store's msgpack records.
    max_concurrency = _at_most(req.max_concurrency, len(req.nodes))
    max_failures = _at_most(req.max_failures, len(req.nodes))
    state0 = new_job(
        job_id,
        req.nodes,
        quorum=req.quorum,
        run_timeout=req.run_timeout,
        voting_timeout=timers.voting_timeout,
        reconnect_grace=timers.reconnect_grace,
        max_concurrency=max_concurrency,
        max_failures=max_failures,
        late_result_timeout=timers.late_result_timeout,
    )
    spec: dict[str, Any] = {
        "command": req.command,
        "run_timeout": req.run_timeout,
        "quorum": req.quorum,
        "user": req.user,
        "dir": req.dir,
        "env": req.env,
        "file": req.file,
        "capture": req.capture_output,
        "requester": requester,
        "max_concurrency": max_concurrency,
        "max_failures": max_failures,
    }
    if req.search is not None:
        spec["search"] = req.search  # the query that named the nodes, as given
    if rerun_of is not None:
        spec["rerun_of"] = rerun_of
    stamper = MonotonicStamper()
    start_data: dict[str, Any] = {
        "command": req.command,
        "run_timeout": req.run_timeout,
        "quorum": req.quorum,
        "node_count": len(req.nodes),
        "user": requester,
    }
    if req.user is not None:
        start_data["job_user"] = req.user
    if req.dir is not None:
        start_data["dir"] = req.dir
    if req.env is not None:
        start_data["env"] = req.env
    if req.file is not None:
        start_data["file_specified"] = True
    start_data["capture"] = req.capture_output
    events: list[list[Any]] = [feed_event(1, "start", start_data, stamper, now)]
    state, effects = transition(state0, Start(now, online, holders))
    for fx in effects:
        if isinstance(fx, Publish):
            events.append(feed_event(len(events) + 1, fx.event, fx.data, stamper, now))
    created = {
        "t": "job.create",
        "id": job_id,
        "org": org,
        "spec": spec,
        "state": record.to_columns(state),
        "events": pack_events(events),
        "at": now,
    }
    held = [n for n in state.nodes if holds(state, n)]
    return Built(state, list(effects), events, created, stamper, held)


def feed_event(
    n: int, name: str, fields: Mapping[str, Any], stamper: MonotonicStamper, now: float
) -> list[Any]:
    """A job-feed event as stored and published: ``[n, name, data]``, ``timestamp`` first."""
    return [n, name, {"timestamp": format_timestamp(stamper.stamp(now)), **fields}]


def _at_most(value: int | None, limit: int) -> int | None:
    return None if value is None else min(value, limit)
