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
(``docs/SEARCH.md``). Each node's facts are held twice, both built once per change: packed
(msgpack, what the API shows, about 0.5 KiB) and flattened for search
(:func:`~pushy_appliance.search.flatten_facts`, about 1.6 KiB for the default set). A
``hello`` with the same facts as before changes neither.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

import msgpack

from ..facts import VOLATILE_FACTS
from ..search import EMPTY, FlatFacts, flatten_facts

__all__ = ["NodeModel", "pack_facts"]


def pack_facts(facts: Mapping[str, Any]) -> bytes:
    """The stored form of a node's facts: msgpack, volatile facts left out.

    Two reports of the same facts pack to the same bytes (an agent sends its keys in one
    order), which is how a change is told from a repeat.
    """
    kept = {k: v for k, v in facts.items() if k not in VOLATILE_FACTS}
    packed: bytes = msgpack.packb(kept, use_bin_type=True)
    return packed


_NO_FACTS = pack_facts({})


class NodeModel:
    """Stored node facts: last status change and facts per ``(org, node)``.

    Attributes:
        nodes: ``(org, node)`` → ``{"status", "at", "incarnation"?, "facts"?, "flat"}``:
            ``facts`` packed (:func:`pack_facts`), ``flat`` the flattened facts for search
            (never stored: rebuilt from ``facts``).
    """

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], dict[str, Any]] = {}
        self._names: dict[str, list[str]] = {}
        """org → its node names, sorted (search answers in name order without sorting)."""

    # --- records ----------------------------------------------------------------------------

    def apply(self, r: dict[str, Any]) -> None:
        t = r.get("t")
        if t == "node.seen":
            entry = self._entry(r["org"], r["name"])
            entry["status"] = r["status"]
            entry["at"] = r["at"]
            if r.get("facts") is not None:
                _set_facts(entry, pack_facts(r["facts"]))
            if r.get("incarnation") is not None:
                entry["incarnation"] = r["incarnation"]
        elif t == "node.facts":
            found = self.nodes.get((r["org"], r["name"]))
            if found is not None:
                _set_facts(found, pack_facts(r["facts"]))
        elif t == "client.del":
            self._forget(r["org"], r["name"])
        elif t == "org.del":
            for org, name in [k for k in self.nodes if k[0] == r["name"]]:
                self._forget(org, name)

    def _entry(self, org: str, name: str) -> dict[str, Any]:
        entry = self.nodes.get((org, name))
        if entry is None:
            entry = self.nodes[(org, name)] = {"flat": EMPTY}
            bisect.insort(self._names.setdefault(org, []), name)
        return entry

    def _forget(self, org: str, name: str) -> None:
        if self.nodes.pop((org, name), None) is None:
            return
        names = self._names[org]
        del names[bisect.bisect_left(names, name)]
        if not names:
            del self._names[org]

    # --- reads ------------------------------------------------------------------------------

    def names(self, org: str) -> list[str]:
        """The nodes of ``org`` ever seen, sorted by name (a new list)."""
        return list(self._names.get(org, ()))

    def facts(self, org: str, name: str) -> dict[str, Any] | None:
        """The node's last-known facts (a new dict), ``None`` when it reported none."""
        entry = self.nodes.get((org, name))
        packed = None if entry is None else entry.get("facts")
        if packed is None:
            return None
        facts: dict[str, Any] = msgpack.unpackb(packed, raw=False)
        return facts

    def flat(self, org: str, name: str) -> FlatFacts:
        """The node's facts flattened for search (:data:`~pushy_appliance.search.EMPTY` for
        none)."""
        entry = self.nodes.get((org, name))
        return EMPTY if entry is None else entry["flat"]

    def same_facts(self, org: str, name: str, facts: Mapping[str, Any]) -> bool:
        """Whether ``facts`` are what is stored for the node (volatile facts aside)."""
        entry = self.nodes.get((org, name))
        return entry is not None and entry.get("facts", _NO_FACTS) == pack_facts(facts)

    # --- snapshots --------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"org": o, "name": n, **{k: v for k, v in e.items() if k != "flat"}}
            for (o, n), e in self.nodes.items()
        ]

    def load(self, snap: list[dict[str, Any]]) -> None:
        self.nodes = {}
        self._names = {}
        for stored in snap:
            e = dict(stored)
            entry = self._entry(e.pop("org"), e.pop("name"))
            facts = e.pop("facts", None)
            entry.update(e)
            if facts is not None:
                # snapshots before the inventory held the facts as a map
                _set_facts(entry, facts if isinstance(facts, bytes) else pack_facts(facts))


def _set_facts(entry: dict[str, Any], packed: bytes) -> None:
    """Keep ``packed`` facts and flatten them, unless they are what the entry holds."""
    if entry.get("facts") == packed:
        return
    entry["facts"] = packed
    entry["flat"] = flatten_facts(msgpack.unpackb(packed, raw=False))
