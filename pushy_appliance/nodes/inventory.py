"""The fleet inventory: each node's last-known facts, and searching them.

The one owner of "which nodes a query means" for every caller (the nodes API, Chef's search
routes, ``POST jobs`` with ``search``). It reads:

* the stored facts and last status change of every node that ever connected
  (:class:`~.model.NodeModel`; ``hello``'s facts arrive with the ``node.seen`` record the
  registry writes, a ``facts`` frame's through :meth:`Inventory.node_facts`);
* ``status`` from the registry (a live session: ``online``) and ``availability`` from the
  node link (:meth:`~.link.NodeLink.status`), at query time.

So an offline node still matches on its last-known facts (and a job it is picked for ends it
``unavailable``, as knife-push's do).

A query visits every node of the org in name order, in chunks of :data:`CHUNK` nodes with a
checkpoint between them, so a search over a large fleet never holds the event loop for long;
the live state is looked up only when the query can read it (a ``status`` or
``availability`` field, a bare term, a wildcard field).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from ..db import Database
from ..errors import StoreUnavailableError
from ..search import And, MatchAll, Node, Not, Or, Query
from .link import NodeLink
from .model import NodeModel
from .registry import NodeRegistry, NodeSession

__all__ = ["CHUNK", "Inventory", "NodeRow"]

log = logging.getLogger(__name__)

CHUNK = 2048
"""Nodes a search visits between two checkpoints."""

_LIVE_FIELDS = frozenset({"status", "availability"})


@dataclasses.dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as the inventory shows it.

    Attributes:
        name: the node name.
        status: ``online`` or ``offline``.
        availability: ``available`` or ``unavailable``.
        last_seen: seconds since the epoch: the last frame of an online node, else when it
            went offline (when the server stopped with it online: when it connected).
        facts: its last-known facts (``{}`` when it reported none).
    """

    name: str
    status: str
    availability: str
    last_seen: float
    facts: dict[str, Any]


class Inventory:
    """Node facts and search over them.

    Args:
        db: the database (its ``nodes`` model is a :class:`~.model.NodeModel`).
        registry: the live sessions.
        link: availability.
        now: the wall clock (seconds since the epoch).
    """

    def __init__(
        self,
        db: Database,
        registry: NodeRegistry,
        link: NodeLink,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.registry = registry
        self.link = link
        self._now = now

    @property
    def model(self) -> NodeModel:
        model = self.db.models["nodes"]
        assert isinstance(model, NodeModel)
        return model

    # --- facts from nodes -------------------------------------------------------------------

    async def node_facts(self, session: NodeSession, facts: dict[str, Any]) -> bool:
        """A node's ``facts`` frame: store them, when they differ from what is stored.

        A store outage drops them with a warning (the node is not held up: its reader is the
        caller); they are stored again with the node's next ``hello`` or change.

        Returns:
            Whether a record was written.
        """
        org, name = session.org, session.name
        if self.model.same_facts(org, name, facts):
            return False
        record = {"t": "node.facts", "org": org, "name": name, "facts": facts, "at": self._now()}
        try:
            await self.db.commit(record)
        except StoreUnavailableError as e:
            log.warning("node %s/%s: facts not stored (%s)", org, name, e)
            return False
        log.info("node %s/%s: facts changed", org, name)
        return True

    # --- reads ------------------------------------------------------------------------------

    def row(self, org: str, name: str) -> NodeRow | None:
        """The node ``name`` of ``org``, or ``None`` when it never connected."""
        entry = self.model.nodes.get((org, name))
        if entry is None:
            return None
        session = self.registry.get(org, name)
        if session is not None:
            # trio's clock to the wall clock: the last frame was that long ago
            last_seen = self._now() - (trio.current_time() - session.last_received)
        else:
            last_seen = entry["at"]
        status, availability = self.link.status(org, name)
        return NodeRow(
            name=name,
            status=status,
            availability=availability,
            last_seen=last_seen,
            facts=self.model.facts(org, name) or {},
        )

    async def search(self, org: str, query: Query | None) -> list[str]:
        """The names of the nodes of ``org`` that ``query`` matches, sorted.

        Args:
            org: the organization.
            query: a compiled query; ``None`` matches every node.

        Cancellation: safe (nothing is changed); a checkpoint every :data:`CHUNK` nodes.
        """
        model = self.model
        names = model.names(org)
        if query is None:
            await trio.lowlevel.checkpoint()
            return names
        predicate = query.predicate
        nodes = model.nodes
        live = _reads_live_state(query.tree)
        live_status = self.link.status
        hits: list[str] = []
        for start in range(0, len(names), CHUNK):
            for name in names[start : start + CHUNK]:
                entry = nodes.get((org, name))
                if entry is None:
                    continue  # forgotten while this search waited at a checkpoint
                status = availability = ""
                if live:
                    status, availability = live_status(org, name)
                if predicate(name, status, availability, entry["flat"]):
                    hits.append(name)
            await trio.lowlevel.checkpoint()
        return hits


def _reads_live_state(node: Node) -> bool:
    """Whether a query can read ``status`` or ``availability`` (a field naming them, no field,
    or a wildcard field)."""
    if isinstance(node, MatchAll):
        return False
    if isinstance(node, Not):
        return _reads_live_state(node.child)
    if isinstance(node, And | Or):
        return any(_reads_live_state(c) for c in node.children)
    field = node.field
    return field is None or field in _LIVE_FIELDS or "*" in field or "?" in field
