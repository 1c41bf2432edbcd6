"""Audit retention: entries are purged ``audit.retention_days`` after they were made.

A purge is one ``audit.purge {before}`` record: the audit model drops the entries older than
``before``, and the store's compaction drops their records. ``retention_days`` 0 keeps them
forever (``audit.max_entries`` still bounds how many are held).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from ..db import Database
from .model import AuditModel, purge_record

__all__ = ["CHECK_SECONDS", "AuditRetention"]

log = logging.getLogger(__name__)

CHECK_SECONDS = 3600.0
"""Seconds between two looks for expired entries."""


class AuditRetention:
    """Purges expired audit entries.

    Args:
        db: the database; its ``audit`` model is an :class:`~.model.AuditModel`.
        retention_days: days an entry is kept; 0 keeps them forever.
        now: the clock (seconds since the epoch).
    """

    def __init__(
        self, db: Database, *, retention_days: float, now: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.retention_days = retention_days
        self._now = now

    @property
    def model(self) -> AuditModel:
        model = self.db.models["audit"]
        assert isinstance(model, AuditModel)
        return model

    async def purge_expired(self, now: float | None = None) -> int:
        """Purge the entries made more than ``retention_days`` before ``now``.

        Returns:
            How many entries were purged (0 without a record when none is due).

        Raises:
            StoreUnavailableError: the store refuses writes now (nothing was purged).
        """
        if self.retention_days <= 0:
            return 0
        cutoff = (self._now() if now is None else now) - self.retention_days * 86400
        entries = self.model.entries
        if not entries or entries[0].at >= cutoff:
            return 0
        before = len(entries)
        await self.db.commit(purge_record(cutoff))
        purged = before - len(self.model.entries)
        log.info("audit: purged %d entries older than %g days", purged, self.retention_days)
        return purged

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Purge expired entries now and every :data:`CHECK_SECONDS`, until cancelled; a purge the
        store refuses is tried again as soon as the store writes again.

        Start-up: ready at once (the first purge runs after ``started()``).
        """
        task_status.started()
        await self.db.purge_every(self.purge_expired, seconds=CHECK_SECONDS, what="audit")
