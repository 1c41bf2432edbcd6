"""The event feeds' side of the hub: topic names, job-feed publishing and the org feed's log.

A job's feed events are stored by the runner (with the job's state, one store write per
step) and then handed to :meth:`Feeds.publish_job`, which

* publishes the event on the job's topic (:func:`job_topic`);
* for ``start`` and ``job_complete``, the only events of the org feed (``API.md`` §3),
  appends the org event to the organization's :class:`~.hub.OrgEventLog` (kept for
  ``feeds.org_retention`` seconds, so a client can resume with ``Last-Event-ID``) and then
  publishes it on the org topic (:func:`org_topic`);
* after ``job_complete`` (always the job feed's last event) closes the job's topic: its
  readers drain what they have and end.

An event is logged (org feed) or stored (job feed) before it is published, so a feed
handler that subscribes first and reads the log or store second sees every event once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .hub import Hub, OrgEventLog

__all__ = ["Feeds", "job_topic", "org_topic"]


def job_topic(job_id: str) -> str:
    """The hub topic of one job's feed."""
    return f"job:{job_id}"


def org_topic(org: str) -> str:
    """The hub topic of an organization's feed."""
    return f"org:{org}"


class Feeds:
    """Publishes job-feed events and keeps each organization's feed log.

    Args:
        hub: where events are published.
        org_retention: seconds the org feed keeps events for resuming.
        now: the clock of the org log's retention (seconds since the epoch).

    Attributes:
        org_feed_first: the number of this run's first org-feed id (``org-N``).
    """

    def __init__(
        self, hub: Hub, *, org_retention: float, now: Callable[[], float] = time.time
    ) -> None:
        self.hub = hub
        self.org_retention = org_retention
        self._now = now
        self._logs: dict[str, OrgEventLog] = {}
        # Org feed ids of this run start at the start time in microseconds: above every id
        # an earlier run issued (unless it issued more than one event per microsecond, or
        # the clock was set back), so an id from before a restart is unknown, not reused.
        self.org_feed_first = time.time_ns() // 1000

    def org_log(self, org: str) -> OrgEventLog:
        """The org feed's retained events of ``org`` (created empty on first use)."""
        log = self._logs.get(org)
        if log is None:
            log = self._logs[org] = OrgEventLog(self.org_retention, first=self.org_feed_first)
        return log

    def publish_job(self, org: str, job_id: str, event: list[Any]) -> None:
        """Publish a stored job-feed event (``[n, name, data]``, ``data`` stamped).

        ``start`` and ``job_complete`` go to the org feed too; the job's topic is closed
        after ``job_complete``. Never blocks.

        Args:
            org: the job's organization.
            job_id: the job.
            event: the event as stored.
        """
        name = event[1]
        self.hub.publish(job_topic(job_id), event)
        if name in ("start", "job_complete"):
            self._publish_org(org, name, job_id, event[2])
        if name == "job_complete":
            self.hub.close_topic(job_topic(job_id))

    def close_job(self, job_id: str) -> None:
        """Close a job's topic (the job was purged): its readers end."""
        self.hub.close_topic(job_topic(job_id))

    def _publish_org(self, org: str, name: str, job_id: str, data: Mapping[str, Any]) -> None:
        fields = {k: v for k, v in data.items() if k != "timestamp"}
        payload = {"timestamp": data["timestamp"], "job": job_id, **fields}
        event = self.org_log(org).append(name, payload, self._now())
        self.hub.publish(org_topic(org), event)
