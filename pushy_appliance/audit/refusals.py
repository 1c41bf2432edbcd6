"""How many refused requests (401, 403) of one peer the audit log records (pure).

A token bucket per peer address: up to ``per_minute`` refusals at once, refilled at
``per_minute`` a minute. A refusal beyond is not recorded but counted: the peer's next
recorded refusal carries ``dropped``, the count since its previous recorded one. So a flood
from one address costs the store at most ``per_minute`` entries a minute, and the log still
says how big it was.

The table of peers is bounded (``max_peers``, least recently refused first out): a peer
pushed out starts afresh, and the drops it had not reported yet are added to
:attr:`RefusalLimiter.unreported` (every drop is in :attr:`RefusalLimiter.dropped`).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["RefusalLimiter"]


class RefusalLimiter:
    """Decides which refusals are recorded.

    Args:
        per_minute: refusals of one peer recorded per minute (and at once, in a burst).
        max_peers: peers remembered.
    """

    def __init__(self, per_minute: int, max_peers: int) -> None:
        self.per_minute = per_minute
        self.max_peers = max_peers
        self._peers: OrderedDict[str, list[float]] = OrderedDict()
        """peer → ``[tokens, time of the last refill, drops not reported yet]``."""
        self.recorded = 0
        self.dropped = 0
        self.unreported = 0
        """Drops of peers forgotten before their next recorded refusal."""

    def admit(self, peer: str, now: float) -> int | None:
        """One refusal of ``peer`` at ``now`` (seconds, any monotonic clock).

        Returns:
            ``None`` when it is not to be recorded (counted as dropped); otherwise how many
            of the peer's refusals were dropped since its last recorded one.
        """
        state = self._peers.get(peer)
        if state is None:
            state = [float(self.per_minute), now, 0.0]
            self._peers[peer] = state
            if len(self._peers) > self.max_peers:
                _forgotten, (_t, _at, owed) = self._peers.popitem(last=False)
                self.unreported += int(owed)
        else:
            self._peers.move_to_end(peer)
            elapsed = max(0.0, now - state[1])
            state[0] = min(float(self.per_minute), state[0] + elapsed * self.per_minute / 60.0)
            state[1] = now
        if state[0] < 1.0:
            state[2] += 1
            self.dropped += 1
            return None
        state[0] -= 1.0
        owed = int(state[2])
        state[2] = 0.0
        self.recorded += 1
        return owed

    def __len__(self) -> int:
        return len(self._peers)
