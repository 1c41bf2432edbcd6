"""Which jobs of the log hold which nodes: the cluster's view of held nodes, derived from the
stored jobs alone (``docs/SCALE-OUT.md`` §4), so that every appliance knows a node held by a
job another appliance drives without a table or a lock.

A job holds a node while the node is live in it (``new``, ``ready``, ``running``) or owes it
a late result (``jobs.state.holds``); a closed job holds nothing. :class:`LogHolds` follows
the jobs' records as the database applies them (own and followed alike); the node link asks
it about jobs it does not drive itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..jobs.model import JobEntry, JobsModel
from ..jobs.status import LIVE_NODE_STATUSES

__all__ = ["LogHolds"]

_LIVE = frozenset(str(s) for s in LIVE_NODE_STATUSES)


def _ignore(org: str, node: str) -> None:
    """The watcher of a :class:`LogHolds` nobody watches."""


def _holds(entry: Sequence[Any]) -> bool:
    """Whether a stored node entry (``jobs.record.node_record``) holds its node."""
    return entry[1] in _LIVE or (len(entry) > 5 and bool(entry[5]))


class LogHolds:
    """Node → the unclosed jobs of the log that hold it.

    Args:
        jobs: the jobs model the records are applied to (read after each record).
    """

    def __init__(self, jobs: JobsModel) -> None:
        self._jobs = jobs
        self._changed: Callable[[str, str], None] = _ignore
        self._by_node: dict[tuple[str, str], dict[str, None]] = {}
        self._by_job: dict[str, tuple[str, set[str]]] = {}
        """job → (its org, the nodes it holds)"""
        for entry in list(jobs.jobs.values()):
            if not entry.closed:
                self._load(entry)

    def watch(self, changed: Callable[[str, str], None]) -> None:
        """Call ``changed(org, node)`` from now on whenever a node becomes held by a job of
        the log or stops being held by any. It must not block or raise."""
        self._changed = changed

    def holders(self, org: str, node: str) -> Sequence[str]:
        """The unclosed jobs that hold the node, the oldest first."""
        jobs = self._by_node.get((org, node))
        return () if jobs is None else tuple(jobs)

    def applied(self, record: dict[str, Any]) -> None:
        """A database watcher: follow ``record`` once the jobs model applied it."""
        t = record.get("t")
        if t == "job.create" or t == "job.step":
            entry = self._jobs.jobs.get(record["id"])
            if entry is None or entry.closed:
                self._drop(record["id"])
            elif t == "job.create":
                self._load(entry)
            else:
                self._change(entry.org, entry.id, record["nodes"])
        elif t == "job.purge":
            self._drop(record["id"])
        elif t == "org.del":
            for job_id in [j for j, _nodes in self._by_job.items() if j not in self._jobs.jobs]:
                self._drop(job_id)

    def _load(self, entry: JobEntry) -> None:
        nodes = entry.nodes
        self._drop(entry.id)
        self._change(entry.org, entry.id, (nodes[name] for name in nodes))

    def _change(self, org: str, job_id: str, entries: Iterable[Sequence[Any]]) -> None:
        _org, held = self._by_job.setdefault(job_id, (org, set()))
        for entry in entries:
            name = entry[0]
            key = (org, name)
            if _holds(entry):
                if name not in held:
                    held.add(name)
                    jobs = self._by_node.setdefault(key, {})
                    jobs[job_id] = None
                    if len(jobs) == 1:
                        self._changed(org, name)
            elif name in held:
                held.discard(name)
                self._unhold(key, job_id)

    def _drop(self, job_id: str) -> None:
        found = self._by_job.pop(job_id, None)
        if found is not None:
            org, held = found
            for name in held:
                self._unhold((org, name), job_id)

    def _unhold(self, key: tuple[str, str], job_id: str) -> None:
        jobs = self._by_node.get(key)
        if jobs is not None:
            jobs.pop(job_id, None)
            if not jobs:
                del self._by_node[key]
                self._changed(*key)
