"""A query whose answer the callers that wait for it share, none of them answered by one sent
before it called (the read barrier's head query, ``docs/SCALE-OUT.md`` §6).

A caller that arrives while no query is in flight sends one. A caller that arrives while one
is in flight does not take its answer (the query may have read the database before the
caller's own reason to ask, an acknowledged write, happened): it waits for the *next* query,
which every caller arriving meanwhile shares. So at most one query is in flight, whatever the
number of callers, and each caller's answer comes from a query sent after it called.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

__all__ = ["SharedQuery"]

T = TypeVar("T")


@dataclasses.dataclass(eq=False, slots=True)
class _Round(Generic[T]):
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    answered: bool = False
    answer: T | None = None


class SharedQuery(Generic[T]):
    """Callers of :meth:`ask` share the rounds of ``query``.

    Args:
        query: sends one query and returns its answer. It should not raise: return errors as
            values (each caller then raises its own exception), since an exception would
            reach only the caller that sent the query and leave the others to ask again.
    """

    def __init__(self, query: Callable[[], Awaitable[T]]) -> None:
        self._query = query
        self._next: _Round[T] | None = None
        self._running: _Round[T] | None = None
        self._sent = 0

    @property
    def sent(self) -> int:
        """How many queries were sent."""
        return self._sent

    async def ask(self) -> T:
        """The answer of a query sent after this call started.

        Cancellation: a caller waiting for a query another caller sent stops at once; the
        caller that sends a query waits for its answer (shielded: the others need it), so
        ``query`` must bound its own time.
        """
        round_ = self._next
        if round_ is None:
            round_ = self._next = _Round()
        while not round_.done.is_set():
            running = self._running
            if running is not None:
                await running.done.wait()
                continue
            self._next = None
            self._running = round_
            self._sent += 1
            try:
                with trio.CancelScope(shield=True):
                    round_.answer = await self._query()
                round_.answered = True
            finally:
                self._running = None
                round_.done.set()
        if not round_.answered:
            # the query raised in the caller that sent it: ask again, in a round of our own
            return await self.ask()
        return round_.answer  # type: ignore[return-value]  # answered: a T
