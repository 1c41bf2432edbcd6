"""What the CLI says about a job beyond its events: names in it that are no node of the org.

(Why a node refused the job, and which job holds a busy node, the job feed's ``quorum_vote``
events say themselves: ``reason`` and ``held_by``.) Anything the server refuses to tell (a
principal without the right to list clients) leaves the warning out: an explanation is a
courtesy, never a reason to fail.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..client import PushyClient
from ..errors import ServerRefusedError

__all__ = ["unknown_nodes"]


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
