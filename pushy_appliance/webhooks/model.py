"""Webhooks and their durable delivery queue, as stored (pure).

Records:

====================  =======================================================================
``t``                 fields
====================  =======================================================================
``webhook.create``    ``id, org, url, events, secret, at, by`` (the secret is stored, never
                      shown)
``webhook.delete``    ``id``: the webhook and its deliveries go
``webhook.attempt``   ``delivery, at, n, status`` (the HTTP status, or ``None``), ``error``
                      (why no status, or ``None``), ``ms``, ``state`` (``pending``: to be
                      tried again at ``next_at``; ``delivered``: acknowledged with a 2xx;
                      ``failed``: given up; ``dropped``: the job or webhook is gone)
``job.create``        (the jobs model's) queues a ``job_start`` delivery for every webhook of
                      the job's organization that wants it
``job.step``          (the jobs model's) that closes the job (``JobEntry.closed``: it ended
                      and no node owes it a result) queues its ``job_complete`` deliveries
``job.purge``,        forget the job (or the organization, its webhooks and deliveries)
``org.del``
====================  =======================================================================

**A delivery is queued by the record that ends the job**, as that record is applied (here,
after the jobs model applied it: the database applies its models in order, and this one
comes after ``jobs``): the job's end and its deliveries are one record, so a restart
neither loses a delivery (its job's end is stored, so replaying it queues the delivery
again) nor makes a second one (the delivery's id is derived from the webhook, the job and
the event, and a job closes once). No change to the job engine, no watermark to keep.

**An acknowledged delivery is never sent again after a restart**: its ``webhook.attempt``
with ``state: delivered`` is stored before anything else happens to it, and replaying it
takes the delivery out of the queue. Between the receiver's 2xx and that record being
durable a crash loses the acknowledgement, and the delivery is sent again after the
restart: delivery is at least once, and the ``X-Pushy-Delivery`` id (the same on every
attempt) lets a receiver drop a repeat.

Bounds: at most ``max_pending`` deliveries are queued at once (one more is not queued, but
counted: :attr:`WebhooksModel.dropped` and the webhook's ``dropped``); each webhook keeps its
last ``deliveries_kept`` finished deliveries (``GET …/deliveries``), each delivery its last
:data:`ATTEMPTS_KEPT` attempts.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from ..jobs.model import JobsModel
from .rules import JOB_COMPLETE, JOB_START

__all__ = [
    "ATTEMPTS_KEPT",
    "DELIVERED",
    "DROPPED",
    "FAILED",
    "PENDING",
    "Delivery",
    "Webhook",
    "WebhooksModel",
    "attempt_record",
    "delivery_id",
]

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
DROPPED: Final = "dropped"
ATTEMPTS_KEPT: Final = 10
"""Attempts each delivery keeps (its newest ones; ``attempts`` counts them all)."""


def delivery_id(webhook_id: str, job_id: str, event: str) -> str:
    """The id of a job's delivery of ``event`` to a webhook: the same whenever it is made
    (32 hex characters)."""
    return hashlib.sha256(f"{webhook_id}/{job_id}/{event}".encode()).hexdigest()[:32]


def attempt_record(
    delivery: str,
    *,
    at: float,
    n: int,
    status: int | None,
    error: str | None,
    ms: float,
    state: str,
    next_at: float | None,
) -> dict[str, Any]:
    """A ``webhook.attempt`` record (module docstring)."""
    return {
        "t": "webhook.attempt",
        "delivery": delivery,
        "at": at,
        "n": n,
        "status": status,
        "error": error,
        "ms": ms,
        "state": state,
        "next_at": next_at,
    }


@dataclasses.dataclass(slots=True)
class Delivery:
    """One event of one job for one webhook, and its attempts."""

    id: str
    webhook: str
    org: str
    event: str
    job: str
    enqueued_at: float
    """When the event happened (the time of the job's record that queued it)."""
    next_at: float
    state: str = PENDING
    attempts: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The newest :data:`ATTEMPTS_KEPT` attempts: ``{n, at, status, error, ms}``."""

    def to_plain(self) -> list[Any]:
        return [
            self.id,
            self.webhook,
            self.org,
            self.event,
            self.job,
            self.enqueued_at,
            self.next_at,
            self.state,
            self.attempts,
            list(self.history),  # a copy: the snapshot is written after the models go on
        ]

    @classmethod
    def from_plain(cls, row: list[Any]) -> Delivery:
        return cls(*row)


@dataclasses.dataclass(slots=True)
class Webhook:
    """A webhook of an organization, with its deliveries (oldest first)."""

    id: str
    org: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: float
    created_by: str
    dropped: int = 0
    """Deliveries not queued because ``max_pending`` were."""
    deliveries: dict[str, Delivery] = dataclasses.field(default_factory=dict)
    finished: deque[str] = dataclasses.field(default_factory=deque)
    """Ids of its finished deliveries, oldest first."""

    @property
    def pending(self) -> int:
        return len(self.deliveries) - len(self.finished)


class WebhooksModel:
    """Every webhook and delivery, and the queue of pending deliveries.

    Args:
        jobs: the jobs model (asked whether a job closed, and of which org it is); it must
            apply each record before this model does.
        max_pending: most deliveries queued at once (``webhooks.max_pending``).
        deliveries_kept: finished deliveries kept per webhook (``webhooks.deliveries_kept``).

    Attributes:
        listener: called with a delivery each time it becomes due at a new time (queued, or
            failed and to be tried again): the engine's wake-up. Never called on replay
            before the engine sets it.
    """

    def __init__(
        self, jobs: JobsModel, *, max_pending: int = 10_000, deliveries_kept: int = 100
    ) -> None:
        self.jobs = jobs
        self.max_pending = max_pending
        self.deliveries_kept = deliveries_kept
        self.webhooks: dict[str, Webhook] = {}
        self._by_org: dict[str, dict[str, Webhook]] = {}
        self.pending: dict[str, Delivery] = {}
        self._open: set[str] = set()
        """Jobs that have not closed yet (their ``job_complete`` is still to come)."""
        self.dropped = 0
        self.listener: Callable[[Delivery], None] | None = None

    # --- reads ------------------------------------------------------------------------------

    def of_org(self, org: str) -> list[Webhook]:
        """The organization's webhooks, oldest first."""
        return list(self._by_org.get(org, {}).values())

    def find(self, org: str, webhook_id: str) -> Webhook | None:
        found = self.webhooks.get(webhook_id)
        return found if found is not None and found.org == org else None

    # --- records ----------------------------------------------------------------------------

    def apply(self, r: dict[str, Any]) -> None:
        t = r.get("t")
        if t == "job.create":
            entry = self.jobs.jobs.get(r["id"])
            if entry is None:
                return
            self._queue(entry.org, entry.id, JOB_START, r["at"])
            if entry.closed:
                self._queue(entry.org, entry.id, JOB_COMPLETE, r["at"])
            else:
                self._open.add(entry.id)
        elif t == "job.step":
            job_id = r["id"]
            if job_id in self._open:
                entry = self.jobs.jobs.get(job_id)
                if entry is None:
                    self._open.discard(job_id)
                elif entry.closed:
                    self._open.discard(job_id)
                    self._queue(entry.org, job_id, JOB_COMPLETE, r["at"])
        elif t == "job.purge":
            self._open.discard(r["id"])
        elif t == "webhook.create":
            hook = Webhook(
                r["id"], r["org"], r["url"], tuple(r["events"]), r["secret"], r["at"], r["by"]
            )
            self.webhooks[hook.id] = hook
            self._by_org.setdefault(hook.org, {})[hook.id] = hook
        elif t == "webhook.delete":
            self._delete(r["id"])
        elif t == "webhook.attempt":
            self._attempted(r)
        elif t == "org.del":
            for hook in self.of_org(r["name"]):
                self._delete(hook.id)
            # the jobs model dropped the organization's jobs already
            self._open = {j for j in self._open if j in self.jobs.jobs}

    def _queue(self, org: str, job_id: str, event: str, at: float) -> None:
        for hook in self._by_org.get(org, {}).values():
            if event not in hook.events:
                continue
            did = delivery_id(hook.id, job_id, event)
            if did in hook.deliveries:
                continue
            if len(self.pending) >= self.max_pending:
                hook.dropped += 1
                self.dropped += 1
                continue
            d = Delivery(did, hook.id, org, event, job_id, at, at)
            hook.deliveries[did] = d
            self.pending[did] = d
            if self.listener is not None:
                self.listener(d)

    def _delete(self, webhook_id: str) -> None:
        hook = self.webhooks.pop(webhook_id, None)
        if hook is None:
            return
        own = self._by_org.get(hook.org)
        if own is not None:
            own.pop(webhook_id, None)
            if not own:
                del self._by_org[hook.org]
        for did in hook.deliveries:
            self.pending.pop(did, None)

    def _attempted(self, r: dict[str, Any]) -> None:
        d = self.pending.get(r["delivery"])
        if d is None:
            return  # finished already, or its webhook is gone
        d.attempts = max(d.attempts, int(r["n"]))
        d.history.append(
            {k: r[k] for k in ("n", "at", "status", "error", "ms")},
        )
        del d.history[:-ATTEMPTS_KEPT]
        d.state = r["state"]
        if d.state == PENDING:
            d.next_at = float(r["next_at"])
            if self.listener is not None:
                self.listener(d)
            return
        del self.pending[d.id]
        hook = self.webhooks[d.webhook]
        hook.finished.append(d.id)
        while len(hook.finished) > self.deliveries_kept:
            hook.deliveries.pop(hook.finished.popleft(), None)

    # --- snapshots --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        hooks = []
        for h in self.webhooks.values():
            hooks.append(
                {
                    "id": h.id,
                    "org": h.org,
                    "url": h.url,
                    "events": list(h.events),
                    "secret": h.secret,
                    "at": h.created_at,
                    "by": h.created_by,
                    "dropped": h.dropped,
                    "deliveries": [d.to_plain() for d in h.deliveries.values()],
                    "finished": list(h.finished),
                }
            )
        return {"webhooks": hooks, "open": sorted(self._open), "dropped": self.dropped}

    def load(self, snap: dict[str, Any]) -> None:
        self.webhooks = {}
        self._by_org = {}
        self.pending = {}
        self._open = set(snap["open"])
        self.dropped = int(snap["dropped"])
        for h in snap["webhooks"]:
            hook = Webhook(
                h["id"], h["org"], h["url"], tuple(h["events"]), h["secret"], h["at"], h["by"]
            )
            hook.dropped = h["dropped"]
            hook.finished = deque(h["finished"])
            for row in h["deliveries"]:
                d = Delivery.from_plain(row)
                hook.deliveries[d.id] = d
                if d.state == PENDING:
                    self.pending[d.id] = d
            self.webhooks[hook.id] = hook
            self._by_org.setdefault(hook.org, {})[hook.id] = hook

    def due(self) -> Iterable[Delivery]:
        """Every pending delivery (in no particular order)."""
        return list(self.pending.values())
