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

A query walks the org's names in order beside their flattened facts (the node model's
:class:`~.model.OrgNodes`: no look-up per node), in chunks of :data:`CHUNK` nodes with a
checkpoint between them, so a search over a large fleet never holds the event loop for long.
The query is specialised once per facts shape (:class:`~pushy_appliance.search.Query`), and
the live state is looked up only for the nodes whose answer can depend on it (a ``status``
or ``availability`` field, a term without a field or a wildcard field that could match their
values), after the facts' part of the query has passed.
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
from ..search import Live, Query
from .link import NodeLink
from .model import NodeModel
from .registry import NodeRegistry, NodeSession

__all__ = ["CHUNK", "Inventory", "NodeRow"]

log = logging.getLogger(__name__)

CHUNK = 2048
"""Nodes a search visits between two checkpoints."""


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
        table = self.model.table(org)
        if table is None:
            await trio.lowlevel.checkpoint()
            return []
        names = list(table.names)
        if query is None:
            await trio.lowlevel.checkpoint()
            return names
        flats = list(table.flats)
        changes = table.changes
        test = query.test
        live = self._live(org) if query.reads_live else _no_live
        hits: list[str] = []
        for start in range(0, len(names), CHUNK):
            end = start + CHUNK
            hits += [
                name
                for name, flat in zip(names[start:end], flats[start:end], strict=True)
                if test(name, live, flat)
            ]
            await trio.lowlevel.checkpoint()
        if table.changes != changes:
            hits = [n for n in hits if n in table.rows]  # forgotten while this search waited
        return hits

    def _live(self, org: str) -> Live:
        """``live(name) -> (status, availability)`` for one search: the node link's answer,
        remembered for the last node (a query may read both)."""
        status = self.link.status
        last: list[Any] = [None, None]

        def live(name: str) -> tuple[str, str]:
            if last[0] is not name:
                last[0] = name
                last[1] = status(org, name)
            answer: tuple[str, str] = last[1]
            return answer

        return live


def _no_live(name: str) -> tuple[str, str]:
    raise AssertionError("a query that cannot read the live state asked for it")
