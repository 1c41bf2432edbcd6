"""The stored view of jobs: what the API reads and what a restart resumes from (pure).

The runner owns each live job's :class:`~.state.JobState`; this model keeps the durable
*record form* of every job, updated by records in O(changed nodes):

=================  ==================================================================
``t``              fields
=================  ==================================================================
``job.create``     ``id, org, spec, state`` (``record.to_record``), ``events``, ``at``
``job.step``       ``id, job`` (``record.job_record``), ``nodes`` (changed
                   ``record.node_record`` entries), ``events``, ``at``, ``outputs``
                   (``[node, channel, offset, data]`` chunks, data as bytes, or
                   ``[node, channel, offset, data, size]`` when the chunk stood for
                   ``size`` bytes of which only ``data`` was within the cap), ``results``
                   (``{node: result fields}`` of results received in this step, late ones
                   included: the fields of ``protocol.Result``)
``job.purge``      ``id``
=================  ==================================================================

``events`` are ``[n, name, data]`` with ``data`` already carrying its ``timestamp`` first;
``n`` is the job-feed id number (``job-n``). ``spec`` holds the request fields the machine
does not keep (command, user, dir, env, file, capture, requester, quorum as asked).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from .status import FINISHED_JOB_STATUSES, nack_reasons, node_buckets

__all__ = ["JobEntry", "JobsModel", "OutputBuffer"]


RESULT_FIELDS = ("status", "exit_code", "signal", "duration_s")
"""The result fields an :class:`OutputBuffer` keeps besides its byte counts and truncation."""


@dataclasses.dataclass(slots=True)
class OutputBuffer:
    """One node's captured output and the result that finished it (``finished``).

    Two counts per channel, kept apart: ``*_received``, the bytes of the channel received
    from the node, in order (the first ``cap`` of them kept in ``stdout``/``stderr``, the
    rest counted, never stored); and ``*_reported``, the byte count of the node's result
    (what its process wrote). A result that arrives before its output (the agent sends a
    result again after a reconnect, and the output follows) leaves ``*_received`` alone, so
    the output that follows is still taken.

    Chunks are appended only where they continue the channel (:meth:`add`): the part of a
    chunk the buffer has already is dropped (a re-send), and a chunk that starts past the end
    is dropped whole, never glued on (the node link refuses those as protocol errors; see
    :mod:`...nodes.link`).
    """

    stdout: bytearray = dataclasses.field(default_factory=bytearray)
    stderr: bytearray = dataclasses.field(default_factory=bytearray)
    stdout_received: int = 0
    stderr_received: int = 0
    stdout_reported: int = 0
    stderr_reported: int = 0
    truncated: bool = False
    finished: bool = False
    status: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    duration_s: float | None = None

    @property
    def stdout_total(self) -> int:
        """Bytes of stdout the node wrote: its result's count, or what was received if more."""
        return max(self.stdout_received, self.stdout_reported)

    @property
    def stderr_total(self) -> int:
        """Likewise for stderr."""
        return max(self.stderr_received, self.stderr_reported)

    def received(self, channel: str) -> int:
        """Bytes of ``channel`` received so far (kept or counted beyond the cap)."""
        return self.stdout_received if channel == "stdout" else self.stderr_received

    def finish(self, result: dict[str, Any]) -> None:
        """Take a node's result: the output is complete; keep the result's fields."""
        self.finished = True
        self.truncated = self.truncated or bool(result.get("truncated"))
        self.stdout_reported = int(result.get("stdout_bytes") or 0)
        self.stderr_reported = int(result.get("stderr_bytes") or 0)
        self.status = result.get("status")
        self.exit_code = result.get("exit_code")
        self.signal = result.get("signal")
        self.duration_s = result.get("duration_s")

    def result(self) -> dict[str, Any]:
        """The stored result: the agent's status, exit code, signal, byte counts, truncation
        and duration (of a finished node)."""
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "stdout_bytes": self.stdout_total,
            "stderr_bytes": self.stderr_total,
            "truncated": self.truncated,
            "duration_s": self.duration_s,
        }

    def channel(self, name: str) -> bytearray:
        return self.stdout if name == "stdout" else self.stderr

    def add(
        self, channel: str, offset: int, data: bytes, cap: int, size: int | None = None
    ) -> bool:
        """Take the chunk found at ``offset`` of ``channel`` where it continues the channel.

        Args:
            channel: ``stdout`` or ``stderr``.
            offset: where the chunk starts in the channel.
            data: its bytes (only those within the cap when ``size`` says it was longer).
            cap: bytes kept per channel; the rest is counted (``truncated``), not kept.
            size: the bytes the chunk stood for, when ``data`` was cut at the cap.

        Returns:
            ``False`` when the chunk starts past what was received (a gap): it is dropped.
        """
        size = len(data) if size is None else size
        received = self.received(channel)
        if offset > received:
            return False
        end = offset + size
        if end <= received:
            return True  # already have it (a re-send after a reconnect)
        buf = self.channel(channel)
        kept = data[received - offset :][: max(cap - len(buf), 0)]
        buf += kept
        if end - received > len(kept):
            self.truncated = True
        if channel == "stdout":
            self.stdout_received = end
        else:
            self.stderr_received = end
        return True

    def to_plain(self) -> dict[str, Any]:
        return {
            "stdout": bytes(self.stdout),
            "stderr": bytes(self.stderr),
            "stdout_received": self.stdout_received,
            "stderr_received": self.stderr_received,
            "stdout_reported": self.stdout_reported,
            "stderr_reported": self.stderr_reported,
            "truncated": self.truncated,
            "finished": self.finished,
            **{key: getattr(self, key) for key in RESULT_FIELDS},
        }

    @classmethod
    def from_plain(cls, d: dict[str, Any]) -> OutputBuffer:
        """The buffer of :meth:`to_plain`'s map, or of an older one: without results (no
        ``status``…), or with one ``*_total`` per channel for both counts (received, unless a
        result had finished the buffer: then the result's, and what was kept is what was
        received)."""
        stdout, stderr = bytearray(d["stdout"]), bytearray(d["stderr"])
        if "stdout_received" in d:
            counts = (
                d["stdout_received"],
                d["stderr_received"],
                d["stdout_reported"],
                d["stderr_reported"],
            )
        elif d["finished"]:
            counts = (len(stdout), len(stderr), d["stdout_total"], d["stderr_total"])
        else:
            counts = (d["stdout_total"], d["stderr_total"], 0, 0)
        return cls(
            stdout,
            stderr,
            *counts,
            truncated=d["truncated"],
            finished=d["finished"],
            status=d.get("status"),
            exit_code=d.get("exit_code"),
            signal=d.get("signal"),
            duration_s=d.get("duration_s"),
        )


class JobEntry:
    """One job as stored.

    A finished job's bulk (node table, feed events, captured output) may be held *packed*:
    one msgpack ``bytes`` value, decoded the first time it is read. Start-up then loads
    100,000 finished jobs as 100,000 small byte strings instead of millions of objects, and
    memory holds old jobs compactly until someone reads them.
    """

    __slots__ = (
        "_buckets",
        "_events",
        "_nack_reasons",
        "_nodes",
        "_output",
        "_packed",
        "created_at",
        "finished_at",
        "id",
        "job",
        "org",
        "spec",
        "updated_at",
    )

    def __init__(
        self,
        *,
        id: str,
        org: str,
        spec: dict[str, Any],
        job: dict[str, Any],
        created_at: float,
        updated_at: float,
        finished_at: float | None = None,
        nodes: dict[str, list[Any]] | None = None,
        events: list[list[Any]] | None = None,
        output: dict[str, OutputBuffer] | None = None,
        packed: bytes | None = None,
    ) -> None:
        self.id = id
        self.org = org
        self.spec = spec
        self.job = job
        self.created_at = created_at
        self.updated_at = updated_at
        self.finished_at = finished_at
        self._nodes = nodes if nodes is not None else {}
        self._buckets: dict[str, list[str]] | None = None
        self._nack_reasons: dict[str, str] | None = None
        self._events = events if events is not None else []
        self._output = output if output is not None else {}
        self._packed = packed

    def _unpack(self) -> None:
        packed, self._packed = self._packed, None
        if packed is not None:
            nodes, events, output = msgpack.unpackb(packed, raw=False, strict_map_key=False)
            self._nodes = {n[0]: n for n in nodes}
            self._events = events
            self._output = {n: OutputBuffer.from_plain(b) for n, b in output.items()}

    @property
    def nodes(self) -> dict[str, list[Any]]:
        if self._packed is not None:
            self._unpack()
        return self._nodes

    @property
    def events(self) -> list[list[Any]]:
        if self._packed is not None:
            self._unpack()
        return self._events

    @property
    def output(self) -> dict[str, OutputBuffer]:
        if self._packed is not None:
            self._unpack()
        return self._output

    def packed(self) -> bytes:
        """The bulk as one msgpack value (without unpacking a packed entry)."""
        if self._packed is not None:
            return self._packed
        packed: bytes = msgpack.packb(
            [
                list(self._nodes.values()),
                self._events,
                {n: b.to_plain() for n, b in self._output.items()},
            ],
            use_bin_type=True,
        )
        return packed

    @property
    def status(self) -> str:
        return str(self.job["status"])

    @property
    def finished(self) -> bool:
        """Whether the job's status is final."""
        return self.status in FINISHED_JOB_STATUSES

    @property
    def closed(self) -> bool:
        """Whether the job is over for good: finished, and no node owes it a late result
        (its feed ended with ``job_complete``; see ``state.is_closed``)."""
        return self.finished and self.job.get("late_deadline") is None

    def state_record(self) -> dict[str, Any]:
        """The full ``record.to_record`` form, for ``record.from_record``."""
        return {**self.job, "nodes": list(self.nodes.values())}

    def set_nodes(self, records: list[list[Any]]) -> None:
        """Store changed node records (the only way node records change after loading)."""
        if records:
            nodes = self.nodes
            for n in records:
                nodes[n[0]] = n
            self._buckets = self._nack_reasons = None

    def buckets(self) -> dict[str, list[str]]:
        """The job document's ``nodes`` (:func:`.status.node_buckets`), computed once per
        change: big jobs are polled."""
        if self._buckets is None:
            self._buckets = node_buckets((name, e[1]) for name, e in self.nodes.items())
        return {b: list(names) for b, names in self._buckets.items()}

    def nack_reasons(self) -> dict[str, str]:
        """The job document's ``nack_reasons`` (:func:`.status.nack_reasons`)."""
        if self._nack_reasons is None:
            self._nack_reasons = nack_reasons((name, e[1], e[4]) for name, e in self.nodes.items())
        return dict(self._nack_reasons)

    def results(self) -> dict[str, dict[str, Any]]:
        """The stored results: node → :meth:`OutputBuffer.result`, sorted by node."""
        output = self.output
        return {n: output[n].result() for n in sorted(output) if output[n].finished}

    def last_event_n(self) -> int:
        events = self.events
        return events[-1][0] if events else 0


class JobsModel:
    """Every stored job, by id, with the records that change them.

    Args:
        output_cap: bytes kept per node and channel.
    """

    def __init__(self, output_cap: int = 1_048_576) -> None:
        self.jobs: dict[str, JobEntry] = {}
        self.output_cap = output_cap
        self.last_at = 0.0
        """Time of the newest job record applied (when the server last wrote)."""

    def output_received(self, job_id: str, node: str, channel: str) -> int:
        """Bytes of ``channel`` of ``node``'s output in job ``job_id`` received so far (0 for
        an unknown job or node): where the node's next chunk continues the channel."""
        entry = self.jobs.get(job_id)
        buf = None if entry is None else entry.output.get(node)
        return 0 if buf is None else buf.received(channel)

    def apply(self, r: dict[str, Any]) -> None:
        t = r.get("t")
        if t is None or not t.startswith("job."):
            if t == "org.del":
                for job_id in [j.id for j in self.jobs.values() if j.org == r["name"]]:
                    del self.jobs[job_id]
            return
        at = r.get("at")
        if isinstance(at, int | float):
            self.last_at = max(self.last_at, float(at))
        if t == "job.create":
            state = r["state"]
            job = {k: v for k, v in state.items() if k != "nodes"}
            entry = JobEntry(
                id=r["id"],
                org=r["org"],
                spec=r["spec"],
                job=job,
                nodes={n[0]: n for n in state["nodes"]},
                events=list(r["events"]),
                created_at=r["at"],
                updated_at=r["at"],
            )
            self.jobs[entry.id] = entry
            if entry.finished:
                entry.finished_at = r["at"]
            return
        found = self.jobs.get(r["id"])
        if found is None:
            return
        entry = found
        if t == "job.step":
            if r["job"]["status"] != entry.job["status"]:
                entry.updated_at = r["at"]
                if r["job"]["status"] in FINISHED_JOB_STATUSES:
                    entry.finished_at = r["at"]
            entry.job = r["job"]
            entry.set_nodes(r["nodes"])
            entry.events.extend(r["events"])
            for node, channel, offset, data, *size in r.get("outputs") or ():
                entry.output.setdefault(node, OutputBuffer()).add(
                    channel, offset, data, self.output_cap, size[0] if size else None
                )
            for node, res in (r.get("results") or {}).items():
                entry.output.setdefault(node, OutputBuffer()).finish(res)
        elif t == "job.purge":
            del self.jobs[r["id"]]

    def snapshot(self) -> list[dict[str, Any]]:
        """Every job; finished ones with their bulk packed (see :class:`JobEntry`)."""
        out: list[dict[str, Any]] = []
        for e in self.jobs.values():
            doc: dict[str, Any] = {
                "id": e.id,
                "org": e.org,
                "spec": e.spec,
                "job": e.job,
                "created_at": e.created_at,
                "updated_at": e.updated_at,
                "finished_at": e.finished_at,
            }
            if e.finished:
                doc["packed"] = e.packed()
            else:
                doc["nodes"] = list(e.nodes.values())
                doc["events"] = list(e.events)
                doc["output"] = {n: b.to_plain() for n, b in e.output.items()}
            out.append(doc)
        return out

    def load(self, snap: list[dict[str, Any]]) -> None:
        self.jobs = {}
        for d in snap:
            bulk: dict[str, Any]
            if "packed" in d:
                bulk = {"packed": d["packed"]}
            else:
                bulk = {
                    "nodes": {n[0]: n for n in d["nodes"]},
                    "events": d["events"],
                    "output": {n: OutputBuffer.from_plain(b) for n, b in d["output"].items()},
                }
            self.jobs[d["id"]] = JobEntry(
                id=d["id"],
                org=d["org"],
                spec=d["spec"],
                job=d["job"],
                created_at=d["created_at"],
                updated_at=d["updated_at"],
                finished_at=d["finished_at"],
                **bulk,
            )
