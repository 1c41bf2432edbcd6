"""Jobs across appliances: the coordination beside the shared log (``docs/SCALE-OUT.md`` §4,
§5, §8).

The engines (``jobs.runner``, ``nodes.link``) ask a :class:`Coordinator`:

* **leases**: :meth:`~Coordinator.claim` when a job is created (epoch 1),
  :meth:`~Coordinator.fence` for each step's records (``Database.commit(..., fence=)``: a
  stale driver's step is refused with ``StaleLeaseError``), :meth:`~Coordinator.release`
  once the job is closed; the coordinator calls back (the runner's ``jobs.cluster_port``)
  :meth:`ClusterEngine.leases_lost` and
  :meth:`ClusterEngine.take_over`;
* **routes**: :meth:`~Coordinator.node_up` / :meth:`~Coordinator.node_down` as nodes connect
  and leave, :meth:`~Coordinator.routed` for a node connected to another appliance;
* **mail**: :meth:`~Coordinator.send_frame` (driver → node elsewhere) and
  :meth:`~Coordinator.forward` (node → driver elsewhere); the receiver calls
  :meth:`ClusterEngine.deliver` and :meth:`ClusterEngine.post_remote`, and
  :meth:`ClusterEngine.nodes_gone` for the nodes of an appliance declared dead.

Two coordinators: :class:`Solo` (the file and memory stores: every job this appliance's,
every node local, no mail, nothing to run) and the PostgreSQL one
(:func:`open_coordinator` with a URL; its driver is imported only then). :class:`LogHolds`
is the cluster's view of which unclosed job holds which node, derived from the log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import StoreError
from ._base import ClusterEngine, Coordinator, LeaseGrant, Solo
from ._holds import LogHolds

if TYPE_CHECKING:
    from ._postgres import PostgresCoordinator

__all__ = [
    "DEFAULT_LEASE_TTL",
    "ClusterEngine",
    "Coordinator",
    "LeaseGrant",
    "LogHolds",
    "Solo",
    "open_coordinator",
]

DEFAULT_LEASE_TTL = 15.0
"""Seconds a job's lease lasts without renewal (``cluster.lease_ttl``)."""


async def open_coordinator(
    url: str, appliance_id: str, *, lease_ttl: float = DEFAULT_LEASE_TTL
) -> PostgresCoordinator:
    """The coordinator of an appliance on the PostgreSQL store at ``url``, its tables created
    if needed; run its ``run(engine, api_url=, node_url=)`` under the root nursery.

    Raises:
        StoreError: the driver is not installed, or the database cannot be used.
    """
    try:
        from ._postgres import PostgresCoordinator
    except ImportError as e:
        raise StoreError("the cluster needs the PostgreSQL driver (psycopg 3)") from e
    return await PostgresCoordinator.open(url, appliance_id, lease_ttl=lease_ttl)
