"""The audit entries that no change carries: refused requests, node rehab and dashboard
login links.

A state change made through the API stores its audit entry in its own commit (the route
passes it to ``Database.commit``, ``JobRunner.create`` or ``JobRunner.abort``). A refusal
(401, 403), a node sent to rehab and a dashboard login link made (``ui.link``) change
nothing to commit with, so they are queued here (never blocking) and committed in batches,
one ``batch`` record per :data:`FLUSH_SECONDS` at most:

* a refusal must stay a 401 or 403 whatever the disk does: were its entry committed before
  the response, a full disk would turn every refusal into a 503, and a flood of bad
  signatures would cost one fsync each;
* a flood is cheap to absorb: per peer at most ``audit.refusals_per_minute`` are queued
  (:class:`~.refusals.RefusalLimiter`, the rest counted and reported with the peer's next
  recorded refusal), and the queue holds at most :data:`MAX_QUEUED` entries (the rest
  counted in :attr:`AuditRecorder.overflowed` and logged).

The price: a crash loses the entries of the last second (at most), which no acknowledged
change depends on. While the store refuses writes (disk full) the batch is held and
committed once it writes again; new entries queue meanwhile, up to the bound.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from ..db import Database
from ..errors import StoreError, StoreUnavailableError
from .model import NODE_REHAB, REFUSED, audit_record
from .refusals import RefusalLimiter

__all__ = ["FLUSH_SECONDS", "MAX_QUEUED", "AuditRecorder", "RecorderStatistics"]

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
"""Longest an entry waits in the queue before its batch is committed."""
MAX_QUEUED = 10_000
"""Entries queued at most; one more is dropped (counted)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RecorderStatistics:
    """Refusals recorded and dropped by the per-peer limit, entries dropped by the queue's
    bound, entries queued now."""

    refusals_recorded: int
    refusals_dropped: int
    overflowed: int
    queued: int


class AuditRecorder:
    """Queues refusals and node events; commits them in batches.

    Args:
        db: the database (its ``audit`` model applies the records).
        refusals_per_minute, refusal_peers: the per-peer limit (``audit.*``).
        now: the wall clock of the entries (seconds since the epoch).
    """

    def __init__(
        self,
        db: Database,
        *,
        refusals_per_minute: int,
        refusal_peers: int,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.limiter = RefusalLimiter(refusals_per_minute, refusal_peers)
        self._now = now
        self._queue: list[dict[str, Any]] = []
        self._wakeup = trio.Event()
        self.overflowed = 0

    def statistics(self) -> RecorderStatistics:
        return RecorderStatistics(
            self.limiter.recorded, self.limiter.dropped, self.overflowed, len(self._queue)
        )

    def refused(self, key: str, **fields: Any) -> None:
        """A refused request (401, 403); never blocks.

        Args:
            key: the address the per-peer limit counts (the client behind a trusted proxy).
            fields: the entry's fields (:func:`~.model.audit_record`'s, ``at``, ``action`` and
                ``dropped`` aside).
        """
        owed = self.limiter.admit(key, trio.current_time())
        if owed is None:
            return
        self._put(audit_record(at=self._now(), action=REFUSED, dropped=owed, **fields))

    def node_rehab(self, org: str, node: str, job_id: str | None) -> None:
        """Node ``node`` of ``org`` was sent to rehab (``abort {job_id: nil}``), because of
        job ``job_id`` (``None``: a job no live job takes); never blocks."""
        summary = {"job": job_id} if job_id is not None else None
        self._put(
            audit_record(at=self._now(), action=NODE_REHAB, org=org, target=node, summary=summary)
        )

    def note(self, record: dict[str, Any]) -> None:
        """An entry of a request that changed nothing stored (a dashboard login link made);
        never blocks.

        Args:
            record: an ``audit`` record (:func:`~.model.audit_record`).
        """
        self._put(record)

    def _put(self, record: dict[str, Any]) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self.overflowed += 1
            return
        self._queue.append(record)
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit queued entries in batches until cancelled.

        Start-up: ready at once.

        Cancellation: entries still queued are lost (as a crash would lose them).
        """
        task_status.started()
        reported = 0
        while True:
            await self._wakeup.wait()
            await trio.sleep(FLUSH_SECONDS)
            self._wakeup = trio.Event()
            batch, self._queue = self._queue, []
            if self.overflowed != reported:
                log.warning(
                    "audit: %d entries dropped, the queue of %d was full",
                    self.overflowed - reported,
                    MAX_QUEUED,
                )
                reported = self.overflowed
            if batch:
                await self._commit(batch)

    async def flush(self) -> None:
        """Commit what is queued now (a graceful stop); a store that refuses the write loses
        it (logged), as a crash would."""
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            await self.db.commit(*batch)
        except StoreError as e:
            log.warning("audit: %d entries not stored at shutdown (%s)", len(batch), e)

    async def _commit(self, batch: list[dict[str, Any]]) -> None:
        try:
            await self.db.commit(*batch)
        except StoreUnavailableError as e:
            log.warning("audit: %d entries held until the store can write (%s)", len(batch), e)
            await self.db.commit_retrying(*batch)
