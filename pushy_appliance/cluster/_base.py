"""What the engines ask of the cluster (:class:`Coordinator`), what the cluster asks of the
engines (:class:`ClusterEngine`), and :class:`Solo`, the coordinator of an appliance alone on
its store (the file and memory stores): every job is its own, every node local, no mail.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from ..jobs.events import NodeEvent

__all__ = ["ClusterEngine", "Coordinator", "LeaseGrant", "Solo"]


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A job's lease this appliance took over: drive ``job_id`` of ``org`` with ``epoch``."""

    org: str
    job_id: str
    epoch: int


class ClusterEngine(Protocol):
    """What the coordinator calls (the job runner's ``jobs.cluster_port.ClusterPort``
    implements it)."""

    def leases_lost(self, job_ids: Sequence[str]) -> None:
        """Stop driving these jobs at once, without closing them (another appliance took
        them, or this one could not renew its leases for ``lease_ttl``). Never blocks."""
        ...

    async def take_over(self, grants: Sequence[LeaseGrant]) -> None:
        """Drive these jobs from now on (their leases are this appliance's, with the
        grants' epochs): catch up with the log, then resume them."""
        ...

    async def deliver(self, org: str, node: str, frame_type: str, fields: dict[str, Any]) -> None:
        """Write a frame another appliance's job sends to a node connected here."""
        ...

    async def post_remote(self, org: str, job_id: str, event: NodeEvent) -> None:
        """Hand a node's event, sent by the appliance the node is connected to, to the job
        ``job_id`` this appliance drives."""
        ...

    def nodes_gone(self, nodes: Sequence[tuple[str, str]]) -> None:
        """These nodes were connected to an appliance declared dead: ``NodeDown`` for the
        jobs this appliance drives that hold them. Never blocks."""
        ...

    def abort_remote(self, org: str, job_id: str) -> None:
        """An operator asked another appliance to abort the job ``job_id`` driven here.
        Never blocks."""
        ...


class Coordinator(Protocol):
    """The cluster as the engines see it (``docs/SCALE-OUT.md`` §4, §5, §8)."""

    @property
    def appliance_id(self) -> str | None:
        """This appliance's id in the cluster (``None`` alone)."""
        ...

    @property
    def clustered(self) -> bool:
        """Whether other appliances may share the store (``False``: :class:`Solo`)."""
        ...

    def fence(self, job_id: str) -> Sequence[tuple[str, int]]:
        """What the job's records are fenced with: ``((job_id, epoch),)`` while this
        appliance holds its lease, ``()`` alone."""
        ...

    async def claim(self, org: str, job_id: str) -> None:
        """Take the lease of a job being created (epoch 1), before its record is stored.

        Raises:
            StoreUnavailableError: the database cannot be reached (create nothing).
        """
        ...

    def release(self, job_id: str) -> None:
        """The job is closed: give its lease back (soon; never blocks)."""
        ...

    async def lease_orphans(self, jobs: Sequence[tuple[str, str]]) -> None:
        """Give the unclosed jobs ``(org, job_id)`` that have no lease an expired one, so
        that a takeover hands them out (jobs stored before the store was shared).

        Raises:
            StoreUnavailableError: the database cannot be reached.
        """
        ...

    def routed(self, org: str, node: str) -> str | None:
        """The appliance holding the node's connection, when it is another live one."""
        ...

    def node_up(self, org: str, node: str, incarnation: str) -> None:
        """The node connected here (its route is written soon; never blocks)."""
        ...

    def node_down(self, org: str, node: str) -> None:
        """The node's connection here ended (its route is cleared soon, if still ours)."""
        ...

    def watch_routes(self, changed: Callable[[str, str], None]) -> None:
        """Call ``changed(org, node)`` whenever another appliance's route of a node is
        learnt or cleared. It must not block or raise."""
        ...

    async def send_frame(
        self, appliance: str, org: str, node: str, frame_type: str, fields: dict[str, Any]
    ) -> None:
        """Mail a frame to a node connected to ``appliance`` (waits while the outbox is
        full)."""
        ...

    async def forward(self, org: str, job_id: str, event: NodeEvent) -> None:
        """Mail a node's event to the appliance driving ``job_id`` (waits while the outbox
        is full)."""
        ...

    async def forward_abort(self, org: str, job_id: str) -> None:
        """Mail an operator's abort of ``job_id`` to the appliance driving it."""
        ...

    async def leave(self) -> None:
        """A graceful stop: give this appliance's leases and routes back at once (a crash
        leaves them to expire)."""
        ...

    async def run(
        self,
        engine: ClusterEngine,
        *,
        api_url: str = "",
        node_url: str = "",
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Take part in the cluster until cancelled, calling ``engine`` back; ``api_url``
        and ``node_url``: this appliance's, for the other appliances' operators.

        Start-up: ready once this appliance is known to the others (``Solo``: at once).
        """
        ...


class Solo:
    """The coordinator of an appliance alone on its store: the engines behave as if there
    were no cluster (and pay nothing for it)."""

    appliance_id: str | None = None
    clustered = False

    def fence(self, job_id: str) -> Sequence[tuple[str, int]]:
        return ()

    async def claim(self, org: str, job_id: str) -> None:
        await trio.lowlevel.checkpoint()

    def release(self, job_id: str) -> None:
        pass

    async def lease_orphans(self, jobs: Sequence[tuple[str, str]]) -> None:
        await trio.lowlevel.checkpoint()

    def routed(self, org: str, node: str) -> str | None:
        return None

    def node_up(self, org: str, node: str, incarnation: str) -> None:
        pass

    def node_down(self, org: str, node: str) -> None:
        pass

    def watch_routes(self, changed: Callable[[str, str], None]) -> None:
        pass

    async def send_frame(
        self, appliance: str, org: str, node: str, frame_type: str, fields: dict[str, Any]
    ) -> None:
        await trio.lowlevel.checkpoint()

    async def forward(self, org: str, job_id: str, event: NodeEvent) -> None:
        await trio.lowlevel.checkpoint()

    async def forward_abort(self, org: str, job_id: str) -> None:
        await trio.lowlevel.checkpoint()

    async def leave(self) -> None:
        await trio.lowlevel.checkpoint()

    async def run(
        self,
        engine: ClusterEngine,
        *,
        api_url: str = "",
        node_url: str = "",
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Nothing to run alone: ready at once, returns."""
        task_status.started()
