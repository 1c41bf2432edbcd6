"""What the CLI says about a job beyond its events: names in it that are no node of the org,
why a node refused the job, and which job holds a busy node.

The job feed's ``quorum_vote`` says only ``failure`` (a nack) or ``down``; the reason of a nack
is in the job document's ``nack_reasons``, and the job holding a busy node is the live job
whose document lists it among its live nodes. :class:`Explainer` asks for those once they
are needed (a few requests per job, cached) and adds them to the event's data as ``reason``
and ``held_by``, so the progress display says what is wrong in one line. Anything the server
refuses to tell (a principal without the right to list clients or jobs) leaves the event as
it was: an explanation is a courtesy, never a reason to fail.
"""

from __future__ import annotations

import dataclasses
import email.utils
from collections.abc import Iterable, Sequence
from typing import Any, Final

from ..client import PushyClient
from ..errors import ServerRefusedError
from ..sse import Event
from ._progress import parse_timestamp

__all__ = ["Explainer", "unknown_nodes"]

_LIVE_JOB_STATUSES: Final = ("voting", "running")
_LIVE_NODE_BUCKETS: Final = ("new", "ready", "running")
_MAX_LIVE_JOBS: Final = 50
"""Live jobs read to find who holds a busy node; beyond this the holder is not named."""


async def unknown_nodes(c: PushyClient, nodes: Iterable[str]) -> list[str]:
    """The names among ``nodes`` that are no client of the credentials' org.

    Args:
        c: the client.
        nodes: the node names of a job.

    Returns:
        Those names, in the order given (empty when the org's clients cannot be listed).
    """
    try:
        clients = await c.json("GET", c.api_path(f"organizations/{c.creds.org}/clients"))
    except ServerRefusedError:
        return []
    if not isinstance(clients, dict):
        return []
    return [n for n in dict.fromkeys(nodes) if n not in clients]


class Explainer:
    """Adds ``reason`` (a nack's) and ``held_by`` (the job holding a busy node) to the
    ``quorum_vote`` events of one job.

    Args:
        c: the client.
        job_id: the job followed.
    """

    def __init__(self, c: PushyClient, job_id: str) -> None:
        self._c = c
        self._job_id = job_id
        self._reasons: dict[str, str] = {}
        self._holders: dict[str, tuple[str, float]] | None = None

    async def annotate(self, event: Event) -> Event:
        """``event`` with what the server knows beyond it (other events as they are).

        Args:
            event: an event of the job's feed.

        Returns:
            For a ``quorum_vote`` ``failure``: its data with ``reason`` (and ``held_by`` for
            ``busy``); for ``down``: with ``held_by`` when another live job holds the node.
        """
        data = event.data
        if event.name != "quorum_vote" or not isinstance(data, dict):
            return event
        node, vote = data.get("node"), data.get("status")
        if not isinstance(node, str):
            return event
        extra: dict[str, Any] = {}
        if vote == "failure":
            reason = await self._nack_reason(node)
            if reason is not None:
                extra["reason"] = reason
            if reason == "busy":
                extra["held_by"] = await self._holder(node, data.get("timestamp"))
        elif vote == "down":
            extra["held_by"] = await self._holder(node, data.get("timestamp"))
        extra = {k: v for k, v in extra.items() if v is not None}
        if not extra:
            return event
        return dataclasses.replace(event, data={**data, **extra})

    async def _nack_reason(self, node: str) -> str | None:
        if node not in self._reasons:
            try:
                doc = await self._c.json("GET", self._c.org_path(f"pushy/jobs/{self._job_id}"))
            except ServerRefusedError:
                return None
            reasons = doc.get("nack_reasons") if isinstance(doc, dict) else None
            if isinstance(reasons, dict):
                self._reasons.update({str(k): str(v) for k, v in reasons.items()})
        return self._reasons.get(node)

    async def _holder(self, node: str, at: Any) -> str | None:
        """The live job that held ``node`` at the vote's time ``at``, if any.

        A job that is live now and was created before the vote held its live nodes since
        its creation (a node never goes back to a live state), so it held ``node`` then; a
        job created after the vote is not named (``job watch`` of an older job).
        """
        if self._holders is None:
            self._holders = await self._live_holders()
        held = self._holders.get(node)
        if held is None:
            return None
        job_id, created = held
        when = parse_timestamp(at) if isinstance(at, str) else None
        if when is not None and created > when:
            return None
        return job_id

    async def _live_holders(self) -> dict[str, tuple[str, float]]:
        """Node → the other live job holding it and its creation time, from the documents
        of the live jobs."""
        c = self._c
        live: list[tuple[str, float]] = []
        try:
            for status in _LIVE_JOB_STATUSES:
                jobs = await c.json("GET", c.org_path("pushy/jobs"), params={"status": status})
                live.extend(
                    (str(j["id"]), _created(j))
                    for j in jobs
                    if isinstance(j, dict) and "id" in j and j["id"] != self._job_id
                )
        except ServerRefusedError:
            return {}
        holders: dict[str, tuple[str, float]] = {}
        for job_id, created in live[:_MAX_LIVE_JOBS]:
            try:
                doc = await c.json("GET", c.org_path(f"pushy/jobs/{job_id}"))
            except ServerRefusedError:
                continue  # it ended (and was purged) meanwhile, or is not ours to read
            buckets = doc.get("nodes") if isinstance(doc, dict) else None
            if isinstance(buckets, dict):
                for node in _live_nodes(buckets):
                    holders.setdefault(node, (job_id, created))
        return holders


def _created(summary: dict[str, Any]) -> float:
    """A job summary's ``created_at`` (RFC 1123) in seconds since the epoch; +inf when it
    cannot be read (such a job is never named as a holder)."""
    try:
        return email.utils.parsedate_to_datetime(str(summary.get("created_at"))).timestamp()
    except (TypeError, ValueError):
        return float("inf")


def _live_nodes(buckets: dict[str, Any]) -> Sequence[str]:
    return [
        str(n)
        for bucket in _LIVE_NODE_BUCKETS
        for n in (buckets.get(bucket) or [])
        if isinstance(buckets.get(bucket), list)
    ]
