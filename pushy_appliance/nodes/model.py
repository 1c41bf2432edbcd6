"""Stored node facts, pure: the last status change and the facts of every node.

Records: ``node.seen {org, name, status, at, facts, incarnation}`` where ``status`` is
``online`` or ``offline`` and ``at`` is seconds since the epoch; a ``client.del`` or
``org.del`` forgets the node(s). Written by the registry when a node connects or goes
offline (not on every heartbeat).
"""

from __future__ import annotations

from typing import Any

__all__ = ["NodeModel"]


class NodeModel:
    """Stored node facts: last status change and facts per ``(org, node)``.

    Records: ``node.seen {org, name, status, at, facts}`` where ``status`` is ``online`` or
    ``offline`` and ``at`` is seconds since the epoch.
    """

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], dict[str, Any]] = {}

    def apply(self, r: dict[str, Any]) -> None:
        t = r.get("t")
        if t == "node.seen":
            entry = self.nodes.setdefault((r["org"], r["name"]), {})
            entry["status"] = r["status"]
            entry["at"] = r["at"]
            if r.get("facts") is not None:
                entry["facts"] = r["facts"]
            if r.get("incarnation") is not None:
                entry["incarnation"] = r["incarnation"]
        elif t == "client.del":
            self.nodes.pop((r["org"], r["name"]), None)
        elif t == "org.del":
            for key in [k for k in self.nodes if k[0] == r["name"]]:
                del self.nodes[key]

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"org": o, "name": n, **v} for (o, n), v in self.nodes.items()]

    def load(self, snap: list[dict[str, Any]]) -> None:
        self.nodes = {}
        for entry in snap:
            e = dict(entry)
            self.nodes[(e.pop("org"), e.pop("name"))] = e
