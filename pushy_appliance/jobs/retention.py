"""Retention: finished jobs are purged ``jobs.retention_days`` after they finished.

A purge is one ``job.purge`` record: the stored model drops the job, its events and its
output, and the store's compaction drops their records. The job's feed topic is closed so
no reader waits on a job that is gone. ``retention_days`` 0 keeps every job forever. A purge
the store refuses (disk full) is put off until the store writes again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from ..db import Database
from ..feeds import Feeds
from .model import JobsModel

__all__ = ["CHECK_SECONDS", "Retention"]

log = logging.getLogger(__name__)

CHECK_SECONDS = 3600.0
"""Seconds between two looks for expired jobs."""


class Retention:
    """Purges expired jobs.

    Args:
        db: the database; its ``jobs`` model is a :class:`~.model.JobsModel`.
        feeds: where a purged job's feed topic is closed.
        retention_days: days a finished job is kept; 0 keeps them forever.
        now: the clock (seconds since the epoch).
    """

    def __init__(
        self,
        db: Database,
        feeds: Feeds,
        *,
        retention_days: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.feeds = feeds
        self.retention_days = retention_days
        self._now = now

    @property
    def model(self) -> JobsModel:
        model = self.db.models["jobs"]
        assert isinstance(model, JobsModel)
        return model

    async def purge_expired(self, now: float | None = None) -> int:
        """Purge the jobs that finished more than ``retention_days`` before ``now``.

        Args:
            now: the time to compare with (default: the clock).

        Returns:
            How many jobs were purged.

        Raises:
            StoreUnavailableError: the store refused a purge; the jobs purged before it are
                gone, the others are kept.
        """
        if self.retention_days <= 0:
            return 0
        cutoff = (self._now() if now is None else now) - self.retention_days * 86400
        old = [
            e.id
            for e in self.model.jobs.values()
            if e.finished_at is not None and e.finished_at < cutoff and e.closed
        ]
        for job_id in old:
            await self.db.commit({"t": "job.purge", "id": job_id})
            self.feeds.close_job(job_id)
        if old:
            log.info(
                "purged %d job(s) finished more than %g days ago", len(old), self.retention_days
            )
        return len(old)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Purge expired jobs now and every :data:`CHECK_SECONDS`, until cancelled; a purge the
        store refuses is tried again as soon as the store writes again.

        Start-up: ready at once (the first purge runs after ``started()``).
        """
        task_status.started()
        await self.db.purge_every(self.purge_expired, seconds=CHECK_SECONDS, what="retention")
