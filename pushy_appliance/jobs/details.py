"""A job's details: node table, feed events, captured output, and the blob they are
archived as (pure).

An archived job's blob is one msgpack ``bin`` value: a zlib stream (level 1) of one msgpack
map::

    job      the full record.job_record map
    file     the job's file, with its prefix, or nil
    nodes    the node table as record.to_columns's node_columns
    events   the feed events (compact.EventLog's stored form: {data, ends})
    output   node -> OutputBuffer.to_plain() (bytes kept, totals, result fields)

Compressed, a finished 10-node job's details are about 1 KB instead of 5 (feed events repeat
their keys, timestamps and names); compressing costs about 40 µs and reading back 15 µs, and
zlib lets other threads run meanwhile, so a 100,000-node job's is made in a worker thread
without holding the event loop. A snapshot from before the archive packed a finished job as
``[nodes, events, output]`` (node entries and events as lists); :func:`decode_details` reads
both.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgpack

from ..errors import StoreCorruptError, StoreError
from .compact import EventLog, NodeTable
from .output import OutputBuffer
from .status import nack_reasons, node_buckets

__all__ = ["JobDetails", "decode_details", "is_blob"]


class JobDetails:
    """What a job holds besides its index: node table, feed events and captured output (with
    the results), and, for an archived job, its full job record and file.

    Attributes:
        nodes: the node entries.
        events: the feed events.
        output: node → its output and result.
        job: the full ``record.job_record`` map (archived jobs only; ``None`` otherwise).
        file: the job's file (archived jobs only).
    """

    __slots__ = ("_buckets", "_nack_reasons", "events", "file", "job", "nodes", "output")

    def __init__(
        self,
        nodes: NodeTable,
        events: EventLog,
        output: dict[str, OutputBuffer],
        job: dict[str, Any] | None = None,
        file: str | None = None,
    ) -> None:
        self.nodes = nodes
        self.events = events
        self.output = output
        self.job = job
        self.file = file
        self._buckets: dict[str, list[str]] | None = None
        self._nack_reasons: dict[str, str] | None = None

    def changed(self) -> None:
        """Forget what was computed from the nodes (they changed)."""
        self._buckets = self._nack_reasons = None

    def buckets(self) -> dict[str, list[str]]:
        if self._buckets is None:
            self._buckets = node_buckets(self.nodes.statuses())
        return self._buckets

    def nack_reasons(self) -> dict[str, str]:
        if self._nack_reasons is None:
            self._nack_reasons = nack_reasons(self.nodes.with_reasons())
        return self._nack_reasons

    def pack(self, job: dict[str, Any], file: str | None) -> bytes:
        """The details as one blob (``job`` and ``file`` from the entry's index)."""
        inner = msgpack.packb(
            {
                "job": job,
                "file": file,
                "nodes": self.nodes.columns(),
                "events": self.events.stored(),
                "output": {n: b.to_plain() for n, b in self.output.items()},
            },
            use_bin_type=True,
        )
        packed: bytes = msgpack.packb(zlib.compress(inner, 1), use_bin_type=True)
        return packed


def is_blob(payload: bytes) -> bool:
    """Whether ``payload`` is a blob of :meth:`JobDetails.pack` (msgpack ``bin``), not the
    packed details of a snapshot of before the archive (an array)."""
    return payload[:1] in (b"\xc4", b"\xc5", b"\xc6")


def decode_details(payload: bytes) -> tuple[JobDetails, int]:
    """The details of a blob (:meth:`JobDetails.pack`), or of a finished job packed by a
    snapshot of before the archive (``[nodes, events, output]``: no job record or file),
    with their size uncompressed (what they weigh in the history cache).

    Raises:
        StoreCorruptError: the payload is neither.
    """
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        size = len(payload)
        if isinstance(doc, bytes):
            inner = zlib.decompress(doc)
            size = len(inner)
            doc = msgpack.unpackb(inner, raw=False, strict_map_key=False)
        if isinstance(doc, list):
            nodes, events, output = doc
            legacy = JobDetails(
                NodeTable.from_entries(nodes),
                EventLog(events),
                {n: OutputBuffer.from_plain(b) for n, b in output.items()},
            )
            return legacy, size
        details = JobDetails(
            NodeTable.from_columns(doc["nodes"]),
            EventLog.from_stored(doc["events"]),
            {n: OutputBuffer.from_plain(b) for n, b in doc["output"].items()},
            doc["job"],
            doc["file"],
        )
        return details, size
    except (
        ValueError,
        TypeError,
        KeyError,
        StoreError,
        zlib.error,
        msgpack.UnpackException,
    ) as e:
        raise StoreCorruptError("archive", 0, f"not a job's details: {e}") from None
