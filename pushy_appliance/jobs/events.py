"""What goes into the job machine and what comes out of it, pure: events and effects.

Events (node messages, timers, operator requests) are fed to :func:`.machine.transition`;
it returns effects, which the runner performs in order after storing the new state. Every
``now`` and ``deadline`` is wall-clock seconds since the epoch (see :mod:`.machine`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

__all__ = [
    "Abort",
    "AckCommit",
    "AckRun",
    "CancelTimer",
    "Crash",
    "Effect",
    "Event",
    "GraceExpired",
    "KeepOutput",
    "LateTimeout",
    "NackCommit",
    "NackRun",
    "NodeAborted",
    "NodeAway",
    "NodeBack",
    "NodeDown",
    "NodeEvent",
    "Output",
    "Publish",
    "ReleaseNodes",
    "Result",
    "Resume",
    "RunTimeout",
    "SendAbort",
    "SendCommit",
    "SendRehab",
    "SendResultAck",
    "SendRun",
    "Start",
    "StartTimer",
    "VotingTimeout",
    "grace_timer",
]

_GRACE_PREFIX: Final = "grace:"


def grace_timer(node: str) -> str:
    """The timer kind of ``node``'s reconnect grace (``grace:NODE``).

    Args:
        node: the node name.

    Returns:
        The kind used in :class:`StartTimer` / :class:`CancelTimer`.
    """
    return _GRACE_PREFIX + node


# --- events ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Start:
    """Begin voting. ``online_nodes``: the job's nodes that can take a commit now (online,
    not in rehab: ``NodeLink.reachable``; a busy node gets the commit and nacks it
    ``busy``); the others vote ``down`` at once, with ``held_by`` (their ``quorum_vote``'s)
    the live job that holds such a node, if one does (``NodeLink.holders``)."""

    now: float
    online_nodes: frozenset[str]
    held_by: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class AckCommit:
    """The node's ``ack_commit`` for this job."""

    node: str
    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class NackCommit:
    """The node's ``nack_commit``; ``reason`` is the agent's (``busy``, ``not_whitelisted``…);
    ``held_by``, for ``busy``, the other live job that holds the node (``NodeLink``)."""

    node: str
    reason: str
    now: float
    held_by: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class NodeDown:
    """The node went offline (socket lost, heartbeats missed) or became unavailable.

    While voting, a live node votes ``down`` and ends ``unavailable`` at once. While running,
    a live node is *away*: it has the reconnect grace (from ``now``) to come back.
    """

    node: str
    now: float


NodeAway = NodeDown
"""Alias: "socket lost while running" is :class:`NodeDown` during the running phase."""


@dataclasses.dataclass(frozen=True, slots=True)
class VotingTimeout:
    """The ``voting`` timer fired."""

    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class AckRun:
    """The node's ``ack_run``: it started the command."""

    node: str
    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class NackRun:
    """The node's ``nack_run``."""

    node: str
    reason: str
    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """The node's ``result`` (or a ``hello``'s ``pending_result``).

    ``status`` is the agent's (``succeeded|failed|aborted|timed_out``): ``timed_out`` and
    ``aborted`` end the node so; otherwise exit code 0 is ``succeeded``, anything else
    (including ``None``, killed by a signal) ``failed``.
    """

    node: str
    status: str
    exit_code: int | None
    now: float
    fields: dict[str, Any] | None = dataclasses.field(default=None, compare=False)
    """The agent's whole result (``protocol.Result`` without ``type``, ``seq``, ``ts``):
    stored with the step that takes it."""


@dataclasses.dataclass(frozen=True, slots=True)
class NodeBack:
    """The node reconnected (its ``hello``), as seen by this job.

    Attributes:
        node: the node.
        now: when.
        same_incarnation: whether the agent is the same process as before (same
            ``incarnation_id``). A new incarnation lost whatever it ran: ``node restarted``.
        job_state: what the agent holds *of this job*: ``idle`` (nothing, or another job),
            ``committed`` or ``running`` (its ``hello.job_state`` when ``hello.job_id`` is this
            job). Unknown values count as ``idle``.
        result: the agent's unacknowledged result for this job, applied first.
    """

    node: str
    now: float
    same_incarnation: bool
    job_state: str = "idle"
    result: Result | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class GraceExpired:
    """The ``grace:NODE`` timer fired."""

    node: str
    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class RunTimeout:
    """The ``run`` timer fired."""

    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class Abort:
    """The operator aborts the job (``POST jobs/ID/abort``)."""

    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class Crash:
    """The engine gives up on the job (for example, its record cannot be acted on)."""

    now: float
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Resume:
    """The server restarted and loaded this job.

    ``stopped_at``, when known, is when the server stopped (its last durable write): a voting
    job gets back the voting time it had left then. The run deadline is not moved (agents
    enforce ``run_timeout`` themselves).
    """

    now: float
    stopped_at: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class NodeAborted:
    """The node's ``aborted {job_id}`` for this job: it holds nothing of the job any more
    (a result it had came before, on the same connection)."""

    node: str
    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class LateTimeout:
    """The ``late`` timer fired: the finished job stops waiting for the results it is owed."""

    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class Output:
    """An ``output`` frame, as the node link took it: ``data`` found at ``offset`` of the
    node's ``channel``, continuing what the job has of it (see :mod:`..nodes.link`).

    ``size``: the bytes the chunk stood for when ``data`` is only its part within the
    per-channel cap (the rest is counted, not stored); ``None``: ``len(data)``.
    """

    node: str
    channel: str
    offset: int
    data: bytes
    size: int | None = None


Event: TypeAlias = (
    Start
    | AckCommit
    | NackCommit
    | NodeDown
    | VotingTimeout
    | AckRun
    | NackRun
    | Result
    | NodeBack
    | GraceExpired
    | RunTimeout
    | Abort
    | Crash
    | Resume
    | Output
    | NodeAborted
    | LateTimeout
)

# --- effects --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SendCommit:
    """Send ``commit`` for the job to each node."""

    nodes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SendRun:
    """Send ``run`` for the job to each node."""

    nodes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SendAbort:
    """Send ``abort {job_id}`` to each node: stop (or drop) what it holds of this job."""

    nodes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseNodes:
    """These nodes hold a commit that will never run: send each ``abort {job_id}`` so the agent
    drops it and is available again."""

    nodes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SendRehab:
    """Send the node ``abort {job_id: nil}`` (rehab: unavailable until it answers
    ``aborted``)."""

    node: str


@dataclasses.dataclass(frozen=True, slots=True)
class SendResultAck:
    """Send ``result_ack`` for the job: the agent may forget its result."""

    node: str


@dataclasses.dataclass(frozen=True, slots=True)
class Publish:
    """Append an event to the job feed. ``data`` is the event's fields without ``timestamp``
    (the hub stamps it), exactly as ``API.md`` §3 "Event feeds"."""

    event: str
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class StartTimer:
    """Arm (or re-arm) the timer ``kind`` to fire at ``deadline`` (wall-clock seconds)."""

    kind: str
    deadline: float


@dataclasses.dataclass(frozen=True, slots=True)
class CancelTimer:
    """Disarm the timer ``kind`` (a no-op if it is not armed)."""

    kind: str


@dataclasses.dataclass(frozen=True, slots=True)
class KeepOutput:
    """Store the chunk (and publish its ``data``, if any, as an ``output`` event) when the job
    captures output; ``size`` as :class:`Output`'s."""

    node: str
    channel: str
    offset: int
    data: bytes
    size: int | None = None


Effect: TypeAlias = (
    SendCommit
    | SendRun
    | SendAbort
    | ReleaseNodes
    | SendRehab
    | SendResultAck
    | Publish
    | StartTimer
    | CancelTimer
    | KeepOutput
)

NodeEvent: TypeAlias = (
    AckCommit | NackCommit | AckRun | NackRun | Result | Output | NodeAborted | NodeBack | NodeDown
)
"""The events that come from one node (what the node link hands to a job)."""
