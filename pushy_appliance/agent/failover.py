"""Which server the agent tries next, and how long it waits first (pure).

The agent takes a list of org URLs (``server_urls``: appliances of one cluster, one org). The
rule, documented for operators in ``docs/SCALE-OUT.md`` ("Agents and several servers"):

* **Start** at the first URL.
* **After every attempt that ends** — a refused or failed connect, or a connection that was
  lost, whatever its length — the next attempt goes to the **next URL** in the list, wrapping
  around: a server that just failed is never retried before the others were.
* **One round of the list is one backoff step.** A round is one attempt on each URL. Between
  two attempts of a round the wait is a *switch*: uniform in ``[0, base]`` (1 s), so a fleet
  leaving a dead appliance spreads over a second instead of stampeding the next one. After
  the round's last attempt the wait is the backoff's next delay: full jitter under a cap that
  starts at ``base`` and doubles per round up to ``cap`` (60 s).
* A connection that lived :data:`~pushy_appliance.agent.connection.STABLE_AFTER` seconds
  resets the backoff and starts a new round; so does a server's going-away close (1001, a
  planned restart), after which the wait is a splay within one heartbeat interval.

With one URL every attempt ends a round, which is exactly the single-server backoff. With
``n`` URLs of which the next one is up, an agent that lost its server is connected again
after at most 1 s plus one connect; with every server down, a round of the list costs at
most ``(n - 1) × base`` plus one backoff delay, so an agent makes no more attempts per server
than with one URL.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "Backoff", "ServerRotation"]

BACKOFF_BASE = 1.0
"""Seconds: the cap of the first backoff delay, and of a switch within a round."""

BACKOFF_CAP = 60.0
"""Seconds: the largest backoff delay."""


class Backoff:
    """Reconnect delays: full jitter over an exponentially growing cap.

    Args:
        base: the cap of the first delay, in seconds.
        cap: the largest cap.
        rng: the random source (tests pass a seeded one).
    """

    def __init__(
        self,
        *,
        base: float = BACKOFF_BASE,
        cap: float = BACKOFF_CAP,
        rng: random.Random | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng if rng is not None else random.Random()

    def ceiling(self) -> float:
        """The cap of the next :meth:`next_delay`: ``min(cap, base × 2^attempt)``."""
        return min(self.cap, self.base * 2.0 ** min(self.attempt, 62))

    def next_delay(self) -> float:
        """The wait before the next attempt, uniform in ``[0, ceiling()]``; grows the cap.

        Returns:
            Seconds.
        """
        delay = self._rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def switch_delay(self) -> float:
        """The wait before trying the next server of a round: uniform in ``[0, base]``.

        The cap does not grow.

        Returns:
            Seconds.
        """
        return self._rng.uniform(0.0, self.base)

    def splay(self, interval: float) -> float:
        """The wait after a server's going-away close: uniform in ``[0, interval]``.

        The backoff starts over after it.

        Args:
            interval: the heartbeat interval.

        Returns:
            Seconds.
        """
        self.reset()
        return self._rng.uniform(0.0, interval)

    def reset(self) -> None:
        """Start over from the first cap."""
        self.attempt = 0


class ServerRotation:
    """The agent's walk over its server URLs (the rule in the module docstring).

    Args:
        urls: the org URLs, in the order to try them (at least one).
        backoff: the delays' source.

    Raises:
        ValueError: ``urls`` is empty.
    """

    def __init__(self, urls: Sequence[str], backoff: Backoff) -> None:
        if not urls:
            raise ValueError("at least one server URL is needed")
        self.urls = tuple(urls)
        self.backoff = backoff
        self._index = 0
        self._tried = 0  # attempts made in the current round

    @property
    def current(self) -> str:
        """The URL of the next attempt."""
        return self.urls[self._index]

    def after_attempt(
        self, *, stable: bool = False, going_away: bool = False, interval: float = 10.0
    ) -> float:
        """Move to the next URL after an attempt on :attr:`current` ended.

        Args:
            stable: the connection lived long enough to reset the backoff.
            going_away: the server closed with 1001 (a planned restart).
            interval: the heartbeat interval the server gave (for the going-away splay).

        Returns:
            Seconds to wait before the attempt on the new :attr:`current`.
        """
        if stable:
            self.backoff.reset()
            self._tried = 0
        self._index = (self._index + 1) % len(self.urls)
        if going_away:
            self._tried = 0
            return self.backoff.splay(interval)
        self._tried += 1
        if self._tried >= len(self.urls):
            self._tried = 0
            return self.backoff.next_delay()
        return self.backoff.switch_delay()
