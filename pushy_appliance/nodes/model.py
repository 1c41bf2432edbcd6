"""Stored node facts, pure: each node's last status change and its last-known facts.

Records:

* ``node.seen {org, name, status, at, facts, incarnation}``: ``status`` is ``online`` or
  ``offline``, ``at`` seconds since the epoch; ``facts`` (the ``hello``'s) and
  ``incarnation`` are left ``None`` when unchanged. Written by the registry when a node
  connects or goes offline (not on every heartbeat).
* ``node.facts {org, name, facts, at}``: the node reported different facts (a ``facts``
  frame); written by the inventory (:mod:`.inventory`) only when they changed.
* ``client.del`` and ``org.del`` forget the node(s).

Facts are kept as the node reported them except :data:`~pushy_appliance.facts.VOLATILE_FACTS`
(``uptime_seconds``): it changes every second, the agent sends facts only when something else
changes, so any figure kept here would be stale; it is dropped rather than served wrong
(``docs/SEARCH.md``). Each node's facts are held in two forms, both built once per change:
packed (msgpack, what the API shows and the store keeps, about 0.5 KiB) and flattened for
search (:func:`~pushy_appliance.search.flatten_facts`: a values tuple beside keys shared by the
fleet, about 0.4 KiB for the default set). A ``hello`` with the same facts as before changes
neither.

The nodes are kept per organization (:class:`OrgNodes`): name → :class:`NodeEntry`, and the
names sorted with each node's flattened facts beside them, which is what a search walks (no
look-up per node). :attr:`NodeModel.nodes` is a read-only view keyed by ``(org, name)``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from typing import Any

import msgpack

from ..facts import UNIQUE_FACTS, VOLATILE_FACTS
from ..search import EMPTY, FlatFacts, flatten_facts

__all__ = ["NodeEntry", "NodeModel", "OrgNodes", "pack_facts"]


def pack_facts(facts: Mapping[str, Any]) -> bytes:
    """The stored form of a node's facts: msgpack, volatile facts left out.

    Two reports of the same facts pack to the same bytes (an agent sends its keys in one
    order), which is how a change is told from a repeat.
    """
    kept = {k: v for k, v in facts.items() if k not in VOLATILE_FACTS}
    packed: bytes = msgpack.packb(kept, use_bin_type=True)
    return packed


_NO_FACTS = pack_facts({})


class NodeEntry:
    """One node's stored state, read like the record it came from (``entry["at"]``,
    ``entry.get("incarnation")``).

    Attributes:
        status: ``online`` or ``offline``, the last stored change.
        at: when it was stored (seconds since the epoch).
        incarnation: the agent's incarnation (``None`` until one is stored).
        facts: the packed facts (:func:`pack_facts`), ``None`` when it reported none.
    """

    __slots__ = ("at", "facts", "incarnation", "status")

    _FIELDS = frozenset({"status", "at", "incarnation", "facts"})

    def __init__(self) -> None:
        self.status = ""
        self.at = 0.0
        self.incarnation: str | None = None
        self.facts: bytes | None = None

    def get(self, key: str, default: Any = None) -> Any:
        """The field ``key`` (``status``, ``at``, ``incarnation``, ``facts``), or ``default``
        when it is not set."""
        value = getattr(self, key, None) if key in self._FIELDS else None
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def record(self) -> dict[str, Any]:
        """The fields that are set, as a map (a snapshot's form)."""
        return {
            k: v for k in ("status", "at", "incarnation", "facts") if (v := self.get(k)) is not None
        }


class OrgNodes:
    """The nodes of one organization.

    Attributes:
        rows: name → entry.
        names: the names, sorted.
        flats: each name's flattened facts, in the order of ``names``.
        changes: counts insertions and removals (a search that waited can tell).
    """

    __slots__ = ("changes", "flats", "names", "rows")

    def __init__(self) -> None:
        self.rows: dict[str, NodeEntry] = {}
        self.names: list[str] = []
        self.flats: list[FlatFacts] = []
        self.changes = 0

    def add(self, name: str) -> NodeEntry:
        entry = self.rows[name] = NodeEntry()
        at = bisect.bisect_left(self.names, name)
        self.names.insert(at, name)
        self.flats.insert(at, EMPTY)
        self.changes += 1
        return entry

    def remove(self, name: str) -> bool:
        if self.rows.pop(name, None) is None:
            return False
        at = bisect.bisect_left(self.names, name)
        del self.names[at]
        del self.flats[at]
        self.changes += 1
        return True

    def flat(self, name: str) -> FlatFacts:
        if name not in self.rows:
            return EMPTY
        return self.flats[bisect.bisect_left(self.names, name)]

    def set_facts(self, name: str, entry: NodeEntry, packed: bytes) -> None:
        """Keep ``packed`` facts and flatten them, unless they are what the entry holds."""
        if entry.facts == packed:
            return
        entry.facts = packed
        flat = flatten_facts(msgpack.unpackb(packed, raw=False), UNIQUE_FACTS)
        self.flats[bisect.bisect_left(self.names, name)] = flat


class _NodesView(Mapping[tuple[str, str], NodeEntry]):
    """``(org, name)`` → entry, over the per-organization tables."""

    __slots__ = ("_orgs",)

    def __init__(self, orgs: dict[str, OrgNodes]) -> None:
        self._orgs = orgs

    def __getitem__(self, key: tuple[str, str]) -> NodeEntry:
        table = self._orgs.get(key[0])
        if table is None:
            raise KeyError(key)
        return table.rows[key[1]]

    def get(self, key: tuple[str, str], default: Any = None) -> Any:
        table = self._orgs.get(key[0])
        if table is None:
            return default
        return table.rows.get(key[1], default)

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for org, table in list(self._orgs.items()):
            for name in list(table.rows):
                yield org, name

    def __len__(self) -> int:
        return sum(len(t.rows) for t in self._orgs.values())


class NodeModel:
    """Stored node facts: last status change and facts per ``(org, node)``.

    Attributes:
        nodes: ``(org, node)`` → :class:`NodeEntry` (a read-only view).
    """

    def __init__(self) -> None:
        self._orgs: dict[str, OrgNodes] = {}
        self.nodes: Mapping[tuple[str, str], NodeEntry] = _NodesView(self._orgs)

    # --- records ----------------------------------------------------------------------------

    def apply(self, r: dict[str, Any]) -> None:
        t = r.get("t")
        if t == "node.seen":
            org, name = r["org"], r["name"]
            table = self._orgs.get(org)
            if table is None:
                table = self._orgs[org] = OrgNodes()
            entry = table.rows.get(name) or table.add(name)
            entry.status = r["status"]
            entry.at = r["at"]
            if r.get("facts") is not None:
                table.set_facts(name, entry, pack_facts(r["facts"]))
            if r.get("incarnation") is not None:
                entry.incarnation = r["incarnation"]
        elif t == "node.facts":
            table = self._orgs.get(r["org"])
            found = None if table is None else table.rows.get(r["name"])
            if table is not None and found is not None:
                table.set_facts(r["name"], found, pack_facts(r["facts"]))
        elif t == "client.del":
            self._forget(r["org"], r["name"])
        elif t == "org.del":
            self._orgs.pop(r["name"], None)

    def _forget(self, org: str, name: str) -> None:
        table = self._orgs.get(org)
        if table is not None and table.remove(name) and not table.rows:
            del self._orgs[org]

    # --- reads ------------------------------------------------------------------------------

    def table(self, org: str) -> OrgNodes | None:
        """The nodes of ``org`` (``None`` when none was ever seen). Read only."""
        return self._orgs.get(org)

    def names(self, org: str) -> list[str]:
        """The nodes of ``org`` ever seen, sorted by name (a new list)."""
        table = self._orgs.get(org)
        return [] if table is None else list(table.names)

    def facts(self, org: str, name: str) -> dict[str, Any] | None:
        """The node's last-known facts (a new dict), ``None`` when it reported none."""
        entry = self.nodes.get((org, name))
        packed = None if entry is None else entry.facts
        if packed is None:
            return None
        facts: dict[str, Any] = msgpack.unpackb(packed, raw=False)
        return facts

    def flat(self, org: str, name: str) -> FlatFacts:
        """The node's facts flattened for search (:data:`~pushy_appliance.search.EMPTY` for
        none)."""
        table = self._orgs.get(org)
        return EMPTY if table is None else table.flat(name)

    def same_facts(self, org: str, name: str, facts: Mapping[str, Any]) -> bool:
        """Whether ``facts`` are what is stored for the node (volatile facts aside)."""
        entry = self.nodes.get((org, name))
        return entry is not None and (entry.facts or _NO_FACTS) == pack_facts(facts)

    # --- snapshots --------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"org": org, "name": name, **entry.record()}
            for org, table in self._orgs.items()
            for name, entry in table.rows.items()
        ]

    def load(self, snap: list[dict[str, Any]]) -> None:
        self._orgs.clear()
        flats: dict[str, dict[str, FlatFacts]] = {}
        for stored in snap:
            org, name = stored["org"], stored["name"]
            table = self._orgs.get(org)
            if table is None:
                table = self._orgs[org] = OrgNodes()
            entry = table.rows[name] = NodeEntry()
            for key in ("status", "at", "incarnation"):
                if stored.get(key) is not None:
                    setattr(entry, key, stored[key])
            facts = stored.get("facts")
            if facts is not None:
                # snapshots before the inventory held the facts as a map
                entry.facts = facts if isinstance(facts, bytes) else pack_facts(facts)
                unpacked = msgpack.unpackb(entry.facts, raw=False)
                flats.setdefault(org, {})[name] = flatten_facts(unpacked, UNIQUE_FACTS)
        # sorted once, not one insertion at a time
        for org, table in self._orgs.items():
            table.names = sorted(table.rows)
            own = flats.get(org, {})
            table.flats = [own.get(name, EMPTY) for name in table.names]
