"""Re-running a job on some of its nodes (``POST jobs/ID/rerun``), pure.

A re-run is a new job with the stored job's command, file, env, user, dir, capture,
``run_timeout`` and rolling limits (``max_concurrency``, ``max_failures``), on the nodes the
request chooses among the job's own:

=================  ==========================================================================
``"failed"``       nodes that ended ``failed``, ``timed_out``, ``crashed`` or ``aborted``
                   (the default when the body gives no ``nodes``)
``"unsuccessful"`` those, and nodes that ended ``nacked`` or ``unavailable``
``"all"``          every node of the job
``[NAME, …]``      these nodes, each one of the job's (any other: 400 naming them)
=================  ==========================================================================

A selection that finds no node is :class:`~pushy_appliance.errors.NothingToRerunError`
(409 ``{"error": "no nodes to re-run"}``). ``quorum`` is the body's (a count or ``"N%"``,
checked against the new node count as ``POST jobs`` checks it) or, by default, the original
job's quorum as the same share of the new node count, rounded up (:func:`scaled_quorum`):
a job that needed every node needs every node of its re-run, a 50 % quorum stays 50 %.

:func:`rerun_body` builds the ``POST jobs`` body of the new job, which then goes through the
same validation (:func:`~.validation.validate_job_request`) and the same
``JobRunner.create`` as any ``POST jobs``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Final

from ..errors import NothingToRerunError, ValidationError
from ..jsonbody import MSG_JSON
from .status import NodeStatus

__all__ = [
    "DEFAULT_SELECTION",
    "SELECTIONS",
    "RerunRequest",
    "parse_rerun_request",
    "rerun_body",
    "rerun_nodes",
    "scaled_quorum",
]

_FAILED: Final = frozenset(
    {NodeStatus.FAILED, NodeStatus.TIMED_OUT, NodeStatus.CRASHED, NodeStatus.ABORTED}
)
SELECTIONS: Final[Mapping[str, frozenset[str] | None]] = {
    "failed": _FAILED,
    "unsuccessful": _FAILED | {NodeStatus.NACKED, NodeStatus.UNAVAILABLE},
    "all": None,
}
"""Selection name → the final node statuses it picks (``None``: every node)."""

DEFAULT_SELECTION: Final = "failed"
MAX_NAMED: Final = 10
"""Unknown node names an error message shows (the rest are counted)."""

_KEYS: Final = frozenset({"nodes", "quorum"})


@dataclasses.dataclass(frozen=True, slots=True)
class RerunRequest:
    """A checked ``rerun`` body.

    Attributes:
        nodes: a selection name (a key of :data:`SELECTIONS`) or explicit node names.
        quorum: the quorum as given (a count or ``"N%"``), or ``None`` for the scaled one.
    """

    nodes: str | tuple[str, ...]
    quorum: int | str | None


def parse_rerun_request(body: object) -> RerunRequest:
    """Check a decoded ``rerun`` body (an empty body is ``{}``).

    Raises:
        ValidationError: not an object, a key other than ``nodes`` and ``quorum``, a
            ``nodes`` that is neither a selection name nor a non-empty list of distinct
            names, a ``quorum`` that is neither a whole number nor a string.
    """
    if not isinstance(body, dict):
        raise ValidationError(MSG_JSON)
    if not _KEYS.issuperset(body):
        raise ValidationError("invalid key supplied")
    nodes = body.get("nodes", DEFAULT_SELECTION)
    chosen: str | tuple[str, ...]
    if isinstance(nodes, str):
        if nodes not in SELECTIONS:
            raise ValidationError(
                "invalid nodes (expected failed, unsuccessful, all or a list of node names)"
            )
        chosen = nodes
    elif isinstance(nodes, list) and nodes and all(isinstance(n, str) for n in nodes):
        if len(set(nodes)) != len(nodes):
            raise ValidationError("invalid nodes (a node is named twice)")
        chosen = tuple(nodes)
    else:
        raise ValidationError(
            "invalid nodes (expected failed, unsuccessful, all or a list of node names)"
        )
    quorum = body.get("quorum")
    if quorum is not None or "quorum" in body:
        if isinstance(quorum, bool) or not isinstance(quorum, int | float | str):
            raise ValidationError("invalid type supplied for quorum (expected a number)")
        if isinstance(quorum, float):
            if not quorum.is_integer():
                raise ValidationError("invalid quorum (must be a whole number)")
            quorum = int(quorum)
    return RerunRequest(chosen, quorum)


def rerun_nodes(
    job_id: str, buckets: Mapping[str, list[str]], chosen: str | tuple[str, ...]
) -> list[str]:
    """The nodes of a re-run of job ``job_id``.

    Args:
        job_id: the job (for messages).
        buckets: the job document's ``nodes`` (``JobEntry.buckets()``: status → names).
        chosen: a selection name or explicit names (:attr:`RerunRequest.nodes`).

    Returns:
        The chosen nodes: a selection's sorted by name, explicit names in their order.

    Raises:
        ValidationError: explicit names that are not nodes of the job (named).
        NothingToRerunError: a selection that finds no node.
    """
    if isinstance(chosen, tuple):
        known = {name for names in buckets.values() for name in names}
        strangers = [name for name in chosen if name not in known]
        if strangers:
            shown = ", ".join(strangers[:MAX_NAMED])
            more = len(strangers) - MAX_NAMED
            tail = f" and {more} more" if more > 0 else ""
            raise ValidationError(f"nodes not in job {job_id}: {shown}{tail}")
        return list(chosen)
    statuses = SELECTIONS[chosen]
    picked = sorted(
        name
        for status, names in buckets.items()
        if statuses is None or status in statuses
        for name in names
    )
    if not picked:
        raise NothingToRerunError(job_id, chosen)
    return picked


def scaled_quorum(quorum: int, node_count: int, new_count: int) -> int:
    """The original quorum as the same share of ``new_count`` nodes, rounded up.

    Args:
        quorum: the original job's quorum (a node count, 0 … ``node_count``).
        node_count: the original job's node count.
        new_count: the re-run's node count.
    """
    if node_count <= 0:
        return new_count
    return min(new_count, math.ceil(quorum * new_count / node_count))


def rerun_body(
    spec: Mapping[str, Any],
    nodes: list[str],
    quorum: int | str,
) -> dict[str, Any]:
    """The ``POST jobs`` body of a re-run.

    Args:
        spec: the stored job's spec (``JobEntry.spec``, its ``file`` included).
        nodes: the re-run's nodes (:func:`rerun_nodes`).
        quorum: the re-run's quorum, as given or scaled.
    """
    body: dict[str, Any] = {
        "command": spec["command"],
        "nodes": list(nodes),
        "quorum": quorum,
        "run_timeout": spec["run_timeout"],
        "capture_output": bool(spec["capture"]),
    }
    for key in ("user", "dir", "env", "file", "max_concurrency", "max_failures"):
        if spec.get(key) is not None:
            body[key] = spec[key]
    return body
