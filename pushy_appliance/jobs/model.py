"""The stored view of jobs: what the API reads and what a restart resumes from (pure).

The runner owns each live job's :class:`~.state.JobState`; this model keeps the durable
*record form* of every job, updated by records in O(changed nodes):

=================  ==================================================================
``t``              fields
=================  ==================================================================
``job.create``     ``id, org, spec, state`` (``record.to_columns``; ``record.to_record``
                   in stores written before), ``events``, ``at``
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
``n`` is the job-feed id number (``job-n``); a ``job.create`` stores them as a
:class:`~.compact.EventLog`'s stored form (a list of them in stores written before).
``spec`` holds the request fields the machine does not keep (command, user, dir, env, file,
capture, requester, quorum as asked).

Memory. A job's details (node table, feed events, captured output and results) are held in
the compact forms of :mod:`.compact`. Once a job is closed the database moves them to the
store's archive (:meth:`JobsModel.to_archive`, :meth:`JobEntry.pack`,
:meth:`JobsModel.archived`; ``Database.archive``): the entry keeps its index (id, org,
status, quorum, the spec without the file, times) and the blob's reference, and reads the
details back through :class:`~.history.History`, a bounded cache, when they are asked for.
A snapshot holds archived jobs as columns of their index (:meth:`JobsModel.snapshot`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from .compact import EventLog, NodeTable
from .details import JobDetails, decode_details, is_blob
from .history import History, pack_ref, unpack_ref
from .output import OutputBuffer
from .status import FINISHED_JOB_STATUSES

__all__ = ["DEFAULT_HISTORY_CACHE", "JobEntry", "JobsModel", "OutputBuffer"]


class JobEntry:
    """One job as stored: its index (what ``GET jobs`` lists and filters on) and its details.

    The details are held in one of three ways:

    * in memory (a live job, or one that closed since the last archiving);
    * *packed*: one ``bytes`` value from a snapshot, decoded the first time it is read;
    * *archived*: a reference into the store's archive, read through the model's
      :class:`~.history.History` (its bounded cache) each time they are not cached. An
      archived job's ``spec`` holds no ``file`` (:meth:`file` reads it) and its ``job``
      only ``status`` and ``quorum``; both are shared by the archived jobs that have the
      same ones.
    """

    __slots__ = (
        "_details",
        "_history",
        "_packed",
        "_ref",
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
        details: JobDetails | None = None,
        packed: bytes | None = None,
    ) -> None:
        self.id = id
        self.org = org
        self.spec = spec
        self.job = job
        self.created_at = created_at
        self.updated_at = updated_at
        self.finished_at = finished_at
        if details is None and packed is None:
            details = JobDetails(NodeTable({}), EventLog(), {})
        self._details = details
        self._packed = packed
        self._ref: int | None = None
        self._history: History[JobDetails] | None = None

    # --- the details ----------------------------------------------------------------------

    @property
    def archived(self) -> bool:
        """Whether the details are in the store's archive (not held by the entry)."""
        return self._ref is not None

    @property
    def ref(self) -> tuple[int, int, int] | None:
        """The archived details' blob reference."""
        return None if self._ref is None else unpack_ref(self._ref)

    def details(self) -> JobDetails:
        """The details, wherever they are (an archived job's may be read and decoded now).

        Raises:
            StoreError: archived details that cannot be read.
        """
        found = self._details
        if found is not None:
            return found
        if self._packed is not None:
            found, _size = decode_details(self._packed)
            self._details = found
            self._packed = None
            return found
        assert self._ref is not None and self._history is not None
        return self._history.get(self.id, unpack_ref(self._ref))

    @property
    def nodes(self) -> NodeTable:
        """Node name → its entry (``record.node_record``'s form), in request order."""
        return self.details().nodes

    @property
    def events(self) -> EventLog:
        """The job feed's stored events, in ``n`` order."""
        return self.details().events

    @property
    def output(self) -> dict[str, OutputBuffer]:
        """Node → its captured output and result."""
        return self.details().output

    @property
    def file_specified(self) -> bool:
        """Whether the job was given a file."""
        if "file" in self.spec:
            return self.spec["file"] is not None
        return bool(self.spec.get("file_specified"))

    def file(self) -> str | None:
        """The job's file, with its prefix (an archived job's is read from the archive)."""
        if "file" in self.spec:
            file: str | None = self.spec["file"]
            return file
        return self.details().file if self.file_specified else None

    def pack(self) -> bytes:
        """The details as one blob, for the archive (without changing the entry: safe from
        a worker thread for a closed job, whose details no longer change)."""
        if self._ref is not None:
            raise ValueError(f"job {self.id} is archived already")
        details = self._details
        if details is None:
            assert self._packed is not None
            if is_blob(self._packed):
                return self._packed
            details, _size = decode_details(self._packed)
        job = self.job if details.job is None else details.job
        return details.pack(job, self.file())

    # --- the index ------------------------------------------------------------------------

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
        details = self.details()
        job = self.job if details.job is None else details.job
        return {**job, "nodes": list(details.nodes.values())}

    def set_nodes(self, records: list[list[Any]]) -> None:
        """Store changed node records (the only way node records change after loading)."""
        if records:
            details = self._held()
            for n in records:
                details.nodes.set(n)
            details.changed()

    def _held(self) -> JobDetails:
        """The details, held by the entry from now on with its whole index (an archived or
        packed job taken back)."""
        details = self.details()
        if details.job is not None:
            self.job = details.job
            self.spec = {k: v for k, v in self.spec.items() if k != "file_specified"}
            self.spec["file"] = details.file
            details.job = details.file = None
            if self._ref is not None and self._history is not None:
                self._history.drop(self.id)
            self._ref = None
            self._details = details
        return details

    def buckets(self) -> dict[str, list[str]]:
        """The job document's ``nodes`` (:func:`.status.node_buckets`), computed once per
        change: big jobs are polled."""
        return {b: list(names) for b, names in self.details().buckets().items()}

    def nack_reasons(self) -> dict[str, str]:
        """The job document's ``nack_reasons`` (:func:`.status.nack_reasons`)."""
        return dict(self.details().nack_reasons())

    def results(self) -> dict[str, dict[str, Any]]:
        """The stored results: node → :meth:`OutputBuffer.result`, sorted by node."""
        output = self.output
        return {n: output[n].result() for n in sorted(output) if output[n].finished}

    def last_event_n(self) -> int:
        return self.events.last_n()


DEFAULT_HISTORY_CACHE = 32 * 1024 * 1024
"""Default ``jobs.history_cache_bytes``."""

_INDEX_KEYS = (
    "id",
    "org",
    "spec",
    "status",
    "quorum",
    "created",
    "updated",
    "finished",
    "archive",
    "offset",
    "length",
)
"""The columns of a snapshot's index of jobs (:meth:`JobsModel.snapshot`)."""


class JobsModel:
    """Every stored job, by id, with the records that change them.

    Args:
        output_cap: bytes kept per node and channel.
        history_cache_bytes: archived details kept decoded (:class:`~.history.History`).
    """

    def __init__(
        self, output_cap: int = 1_048_576, history_cache_bytes: int = DEFAULT_HISTORY_CACHE
    ) -> None:
        self.jobs: dict[str, JobEntry] = {}
        self.output_cap = output_cap
        self.last_at = 0.0
        """Time of the newest job record applied (when the server last wrote)."""
        self.history: History[JobDetails] = History(history_cache_bytes, decode_details)
        self._closed: dict[str, None] = {}
        """Closed jobs whose details are not archived yet, oldest first."""
        self._shared: dict[Any, Any] = {}
        """Archived jobs' specs, job maps and orgs, one object for equal ones."""

    def attach_archive(self, read: Callable[[tuple[int, int, int]], bytes]) -> None:
        """Read archived details with ``read`` (the store's ``read_archived``)."""
        self.history.read = read

    # --- records ----------------------------------------------------------------------------

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
                    self._remove(job_id)
            return
        at = r.get("at")
        if isinstance(at, int | float):
            self.last_at = max(self.last_at, float(at))
        if t == "job.create":
            state = r["state"]
            job = {k: v for k, v in state.items() if k not in ("nodes", "node_columns")}
            if "node_columns" in state:
                nodes = NodeTable.from_columns(state["node_columns"])
            else:
                nodes = NodeTable.from_entries(state["nodes"])
            log = EventLog.from_stored(r["events"])
            entry = JobEntry(
                id=r["id"],
                org=r["org"],
                spec=r["spec"],
                job=job,
                details=JobDetails(nodes, log, {}),
                created_at=r["at"],
                updated_at=r["at"],
            )
            self._remove(entry.id)
            self.jobs[entry.id] = entry
            if entry.finished:
                entry.finished_at = r["at"]
            self._note(entry)
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
            details = entry._held()
            entry.job = r["job"]
            entry.set_nodes(r["nodes"])
            details.events.extend(r["events"])
            output = details.output
            for node, channel, offset, data, *size in r.get("outputs") or ():
                output.setdefault(node, OutputBuffer()).add(
                    channel, offset, data, self.output_cap, size[0] if size else None
                )
            for node, res in (r.get("results") or {}).items():
                output.setdefault(node, OutputBuffer()).finish(res)
            self._note(entry)
        elif t == "job.purge":
            self._remove(r["id"])

    def _note(self, entry: JobEntry) -> None:
        if entry.closed and not entry.archived:
            self._closed[entry.id] = None

    def _remove(self, job_id: str) -> None:
        if self.jobs.pop(job_id, None) is not None:
            self._closed.pop(job_id, None)
            self.history.drop(job_id)

    # --- the archive ------------------------------------------------------------------------

    def to_archive(self) -> list[JobEntry]:
        """The closed jobs whose details are still held in memory, oldest first: what the
        database moves to the archive (:meth:`JobEntry.pack`, then :meth:`archived`)."""
        return [self.jobs[job_id] for job_id in self._closed]

    def compact(self) -> int:
        """Hold the details of closed jobs not archived yet as their blob (what
        :meth:`JobEntry.pack` makes, and the archive then takes as it is): a replay of a
        long log closes jobs faster than anything archives them. Returns how many."""
        packed = 0
        for job_id in self._closed:
            entry = self.jobs[job_id]
            if entry._details is not None:
                blob = entry.pack()
                self._share_index(entry)
                entry._details = None
                entry._packed = blob
                packed += 1
        return packed

    def _share_index(self, entry: JobEntry) -> None:
        """Keep only the index of ``entry`` (its details hold the rest), shared."""
        entry.spec = self._index_spec(entry)
        entry.job = self._share(("job", entry.job["status"], entry.job.get("quorum")))
        entry.org = self._share(entry.org)

    def archived(self, entry: JobEntry, ref: tuple[int, int, int]) -> bool:
        """The details of ``entry`` are archived at ``ref``: drop them from memory (they are
        read back through the history cache when asked for) and share its index.

        Returns:
            ``False`` when the job is gone (purged meanwhile): nothing changed.
        """
        if self.jobs.get(entry.id) is not entry:
            return False
        if not entry.archived:
            details = entry._details
            if details is not None and details.job is None:
                details.job = entry.job
                details.file = entry.file()
            self._share_index(entry)
            entry._details = None
            entry._packed = None
            entry._history = self.history
            self._closed.pop(entry.id, None)
        else:
            entry._history = self.history
        entry._ref = pack_ref(ref)
        return True

    def _index_spec(self, entry: JobEntry) -> dict[str, Any]:
        spec = {k: v for k, v in entry.spec.items() if k not in ("file", "file_specified")}
        spec["file_specified"] = entry.file_specified
        shared: dict[str, Any] = self._share(spec)
        return shared

    def _share(self, value: Any) -> Any:
        """One object for equal archived specs, job maps and orgs."""
        if isinstance(value, dict):
            key: Any = ("spec", msgpack.packb(value, use_bin_type=True))
            found = self._shared.get(key)
            if found is None:
                found = self._shared[key] = value
            return found
        if isinstance(value, tuple):
            found = self._shared.get(value)
            if found is None:
                found = self._shared[value] = {"status": value[1], "quorum": value[2]}
            return found
        return self._shared.setdefault(value, value)

    def archive_use(self) -> dict[int, int]:
        """Archive number → end of the last blob that archived jobs use there."""
        use: dict[int, int] = {}
        for entry in self.jobs.values():
            if entry._ref is not None:
                number, offset, length = unpack_ref(entry._ref)
                end = offset + 8 + length
                if end > use.get(number, 0):
                    use[number] = end
        return use

    def archived_bytes(self) -> dict[int, int]:
        """Archive number → bytes of the blobs archived jobs still use there."""
        live: dict[int, int] = {}
        for entry in self.jobs.values():
            if entry._ref is not None:
                number, _offset, length = unpack_ref(entry._ref)
                live[number] = live.get(number, 0) + 8 + length
        return live

    def archived_in(self, numbers: set[int]) -> list[tuple[JobEntry, tuple[int, int, int]]]:
        """The archived jobs whose blobs are in archives ``numbers``, with their refs."""
        out = []
        for entry in self.jobs.values():
            if entry._ref is not None and entry._ref >> 64 in numbers:
                out.append((entry, unpack_ref(entry._ref)))
        return out

    # --- snapshots --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every job, in creation order, as columns of its index (``_INDEX_KEYS``), archived
        ones with their blob references; the others also whole (in ``jobs``, in the same
        order), finished ones among those with their details packed::

            {"format": 2, "specs": [spec, ...], "index": {key: [value per job]},
             "jobs": [whole job, ...]}

        An archived job's ``spec`` column is its index in ``specs`` (equal specs once); the
        others' is -1 and their ``archive``, ``offset``, ``length`` are nil.
        """
        entries = list(self.jobs.values())
        specs: dict[int, int] = {}
        spec_list: list[dict[str, Any]] = []
        for e in entries:
            if e._ref is not None and id(e.spec) not in specs:
                specs[id(e.spec)] = len(spec_list)
                spec_list.append(e.spec)
        refs = [None if e._ref is None else unpack_ref(e._ref) for e in entries]
        index = {
            "id": [e.id for e in entries],
            "org": [e.org for e in entries],
            "spec": [specs.get(id(e.spec), -1) for e in entries],
            "status": [e.job["status"] for e in entries],
            "quorum": [e.job.get("quorum") for e in entries],
            "created": [e.created_at for e in entries],
            "updated": [e.updated_at for e in entries],
            "finished": [e.finished_at for e in entries],
            "archive": [None if r is None else r[0] for r in refs],
            "offset": [None if r is None else r[1] for r in refs],
            "length": [None if r is None else r[2] for r in refs],
        }
        whole: list[dict[str, Any]] = []
        for e in entries:
            if e._ref is not None:
                continue
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
                doc["packed"] = e._packed if e._packed is not None else e.pack()
            else:
                d = e.details()
                doc["nodes"] = d.nodes.columns()
                doc["events"] = d.events.stored()
                doc["output"] = {n: b.to_plain() for n, b in d.output.items()}
            whole.append(doc)
        return {"format": 2, "specs": spec_list, "index": index, "jobs": whole}

    def load(self, snap: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Replace the model with a :meth:`snapshot` (or one of before the archive: a list
        of jobs, finished ones packed)."""
        self.jobs = {}
        self._closed = {}
        self._shared = {}
        self.history.clear()
        if isinstance(snap, list):
            for d in snap:
                self._load_whole(d)
            return
        specs = [self._share(s) for s in snap["specs"]]
        whole = iter(snap["jobs"])
        history = self.history
        index = snap["index"]
        for job_id, org, spec, status, quorum, created, updated, finished, *ref in zip(
            *(index[k] for k in _INDEX_KEYS), strict=True
        ):
            if ref[0] is None:
                d = next(whole)
                if d["id"] != job_id:
                    raise ValueError(f"snapshot: job {d['id']} where {job_id} was expected")
                self._load_whole(d)
                continue
            entry = JobEntry.__new__(JobEntry)
            entry.id = job_id
            entry.org = self._share(org)
            entry.spec = specs[spec]
            entry.job = self._share(("job", status, quorum))
            entry.created_at = created
            entry.updated_at = updated
            entry.finished_at = updated if finished == updated else finished
            entry._details = None
            entry._packed = None
            entry._ref = pack_ref((ref[0], ref[1], ref[2]))
            entry._history = history
            self.jobs[job_id] = entry

    def _load_whole(self, d: dict[str, Any]) -> None:
        packed = d.get("packed")
        details = None
        if packed is None:
            nodes = d["nodes"]
            details = JobDetails(
                NodeTable.from_columns(nodes)
                if isinstance(nodes, dict)
                else NodeTable.from_entries(nodes),
                EventLog.from_stored(d["events"]),
                {n: OutputBuffer.from_plain(b) for n, b in d["output"].items()},
            )
        entry = JobEntry(
            id=d["id"],
            org=d["org"],
            spec=d["spec"],
            job=d["job"],
            created_at=d["created_at"],
            updated_at=d["updated_at"],
            finished_at=d["finished_at"],
            details=details,
            packed=packed,
        )
        self.jobs[entry.id] = entry
        self._note(entry)
