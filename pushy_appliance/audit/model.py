"""The audit log as stored: who did what, when, from where, and how it ended (pure).

Records (``docs/OPERATIONS.md`` has the contract):

=================  ==========================================================================
``t``              fields
=================  ==========================================================================
``audit``          ``at, action, org, actor, actor_kind, method, route, target, summary,
                   peer, forwarded_for, status`` and, for a refusal, ``dropped`` (refusals of
                   that peer not recorded since its previous recorded one). Committed with
                   the change it describes (``Database.commit(change…, audit)``); refusals
                   and node rehab in batches by :mod:`.recorder`.
``node.seen``      (the node model's) becomes a ``node.connect`` or ``node.disconnect``
                   entry: the status change and its entry are one record, so neither is
                   ever stored without the other.
``audit.purge``    ``before``: entries older than that time are dropped (retention).
``org.del``        the organization's entries leave its own view (its admins, and the
                   admins of an organization created again under that name, no longer see
                   them); the superuser's view across organizations keeps them.
=================  ==========================================================================

Each entry gets the next ``id`` (1, 2, …) as it is applied, so ids follow the store's order
and a restart gives every entry the id it had. At most ``max_entries`` entries are held: one
more drops the oldest (counted in :attr:`AuditModel.evicted`).

Nothing secret is ever in an entry: the routes summarise bodies (:mod:`.summary`).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "NODE_CONNECT",
    "NODE_DISCONNECT",
    "NODE_REHAB",
    "REFUSED",
    "AuditEntry",
    "AuditModel",
    "AuditPage",
    "audit_record",
    "entry_document",
    "purge_record",
]

REFUSED: Final = "refused"
NODE_CONNECT: Final = "node.connect"
NODE_DISCONNECT: Final = "node.disconnect"
NODE_REHAB: Final = "node.rehab"

_FIELDS: Final = (
    "at",
    "action",
    "org",
    "actor",
    "actor_kind",
    "method",
    "route",
    "target",
    "summary",
    "peer",
    "forwarded_for",
    "status",
    "dropped",
)
"""The stored fields of an entry, in the order of its snapshot row (``id`` and
``detached`` before them)."""


def audit_record(
    *,
    at: float,
    action: str,
    org: str | None = None,
    actor: str | None = None,
    actor_kind: str | None = None,
    method: str | None = None,
    route: str | None = None,
    target: str | None = None,
    summary: dict[str, Any] | None = None,
    peer: str | None = None,
    forwarded_for: str | None = None,
    status: int | None = None,
    dropped: int = 0,
) -> dict[str, Any]:
    """An ``audit`` record (see the module docstring for the fields)."""
    record: dict[str, Any] = {
        "t": "audit",
        "at": at,
        "action": action,
        "org": org,
        "actor": actor,
        "actor_kind": actor_kind,
        "method": method,
        "route": route,
        "target": target,
        "summary": summary,
        "peer": peer,
        "forwarded_for": forwarded_for,
        "status": status,
    }
    if dropped:
        record["dropped"] = dropped
    return record


def purge_record(before: float) -> dict[str, Any]:
    """The ``audit.purge`` record of retention: entries older than ``before`` go."""
    return {"t": "audit.purge", "before": before}


@dataclasses.dataclass(slots=True)
class AuditEntry:
    """One entry; ``detached``: its organization was deleted (only the superuser sees it)."""

    id: int
    at: float
    action: str
    org: str | None = None
    actor: str | None = None
    actor_kind: str | None = None
    method: str | None = None
    route: str | None = None
    target: str | None = None
    summary: dict[str, Any] | None = None
    peer: str | None = None
    forwarded_for: str | None = None
    status: int | None = None
    dropped: int = 0
    detached: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class AuditPage:
    """A query's answer: entries newest first; ``more``: older ones match too (ask again
    with ``before`` the last entry's id)."""

    entries: list[AuditEntry]
    more: bool


def rfc3339(t: float) -> str:
    """``2024-05-01T12:00:00.123Z`` (UTC, milliseconds)."""
    moment = datetime.fromtimestamp(t, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def entry_document(e: AuditEntry) -> dict[str, Any]:
    """An entry as the API shows it (``at`` in RFC 3339; ``dropped`` only when not 0)."""
    doc: dict[str, Any] = {
        "id": e.id,
        "at": rfc3339(e.at),
        "action": e.action,
        "org": e.org,
        "actor": e.actor,
        "actor_kind": e.actor_kind,
        "method": e.method,
        "route": e.route,
        "target": e.target,
        "summary": e.summary,
        "peer": e.peer,
        "forwarded_for": e.forwarded_for,
        "status": e.status,
    }
    if e.dropped:
        doc["dropped"] = e.dropped
    return doc


class AuditModel:
    """Every audit entry, oldest first, and each organization's own, for the audit routes.

    Args:
        max_entries: most entries held (``audit.max_entries``); one more drops the oldest.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self.entries: deque[AuditEntry] = deque()
        self._by_org: dict[str, deque[AuditEntry]] = {}
        self.next_id = 1
        self.evicted = 0
        """Entries dropped because ``max_entries`` were held."""

    # --- records ----------------------------------------------------------------------------

    def apply(self, r: dict[str, Any]) -> None:
        t = r.get("t")
        if t == "audit":
            self._add({k: r[k] for k in _FIELDS if k in r})
        elif t == "node.seen":
            action = NODE_CONNECT if r["status"] == "online" else NODE_DISCONNECT
            incarnation = r.get("incarnation")
            self._add(
                {
                    "at": r["at"],
                    "action": action,
                    "org": r["org"],
                    "target": r["name"],
                    "summary": {"incarnation": incarnation} if incarnation else None,
                }
            )
        elif t == "audit.purge":
            self._purge(float(r["before"]))
        elif t == "org.del":
            gone = self._by_org.pop(r["name"], None)
            for e in gone or ():
                e.detached = True

    def _add(self, fields: dict[str, Any]) -> None:
        entry = AuditEntry(id=self.next_id, **fields)
        self.next_id += 1
        self._index(entry)
        while len(self.entries) > self.max_entries:
            self._drop_oldest()
            self.evicted += 1

    def _index(self, entry: AuditEntry) -> None:
        self.entries.append(entry)
        if entry.org is not None and not entry.detached:
            self._by_org.setdefault(entry.org, deque()).append(entry)

    def _drop_oldest(self) -> None:
        oldest = self.entries.popleft()
        if oldest.org is None or oldest.detached:
            return
        own = self._by_org.get(oldest.org)
        if own and own[0] is oldest:
            own.popleft()
            if not own:
                del self._by_org[oldest.org]

    def _purge(self, before: float) -> None:
        while self.entries and self.entries[0].at < before:
            self._drop_oldest()

    # --- reads ------------------------------------------------------------------------------

    def query(
        self,
        org: str | None,
        *,
        since: float | None = None,
        until: float | None = None,
        actor: str | None = None,
        action: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> AuditPage:
        """Entries newest first.

        Args:
            org: only this organization's (``None``: every entry, the superuser's view).
            since, until: only entries at or after ``since`` and at or before ``until``.
            actor: only entries of this user or client name.
            action: only this action (``job.create``), or this family (``job``: every
                ``job.…`` action).
            before: only entries whose id is smaller (the next page).
            limit: at most this many.
        """
        found: list[AuditEntry] = []
        family = None if action is None else action + "."
        for e in self._newest_first(org, before):
            if since is not None and e.at < since:
                continue
            if until is not None and e.at > until:
                continue
            if actor is not None and e.actor != actor:
                continue
            if action is not None and e.action != action and not e.action.startswith(family or ""):
                continue
            if len(found) == limit:
                return AuditPage(found, True)
            found.append(e)
        return AuditPage(found, False)

    def _newest_first(self, org: str | None, before: int | None) -> Iterator[AuditEntry]:
        entries = self.entries if org is None else self._by_org.get(org, deque())
        for e in reversed(entries):
            if before is None or e.id < before:
                yield e

    # --- snapshots --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        rows = [[e.id, e.detached, *(getattr(e, name) for name in _FIELDS)] for e in self.entries]
        return {"next_id": self.next_id, "evicted": self.evicted, "entries": rows}

    def load(self, snap: dict[str, Any]) -> None:
        self.entries = deque()
        self._by_org = {}
        self.next_id = int(snap["next_id"])
        self.evicted = int(snap["evicted"])
        for row in snap["entries"]:
            entry_id, detached, *values = row
            fields = dict(zip(_FIELDS, values, strict=True))
            self._index(AuditEntry(id=entry_id, detached=detached, **fields))
