"""A cap on the connections of a listener that are still in their handshake.

A client that opens a TCP connection and never finishes its TLS handshake or its request holds
a file descriptor and a task until the listener's handshake timeout. A thousand of them are
cheap; a flood of them would take every descriptor the process has, and with them the node
connections, the store's files and the API. :class:`HandshakeLimit` bounds how many there
may be: each accepted connection runs in its own cancel scope and counts as *pending* until
its handler says the handshake is done (:meth:`HandshakeLimit.done`, from the task serving
it). When a new connection would make more than ``limit`` pending, the oldest pending one is
cancelled (and its stream closed): a flood pushes out its own oldest members, not a real
client, whose handshake takes milliseconds.

It stands in for the *handler nursery* of ``trio.serve_listeners`` (``trio_websocket``'s
``serve_websocket`` hands its ``handler_nursery`` on to it), which calls nothing of it but
``start_soon(fn, stream, handler)`` once per accepted connection::

    limit = HandshakeLimit(nursery, 1024, name="node listener")
    await nursery.start(partial(serve_websocket, handler, ..., handler_nursery=limit.nursery))
    ...
    async def handler(request):
        limit.done()  # the upgrade request is in: no longer pending
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio

__all__ = ["HandshakeLimit", "HandshakeStatistics"]

log = logging.getLogger(__name__)

_LOG_INTERVAL = 60.0
_current: contextvars.ContextVar[trio.CancelScope | None] = contextvars.ContextVar(
    "pushy_handshake", default=None
)


@dataclasses.dataclass(frozen=True, slots=True)
class HandshakeStatistics:
    """Attributes:
    pending: connections in their handshake now.
    dropped: connections dropped (cancelled) to make room since the start.
    """

    pending: int
    dropped: int


class HandshakeLimit:
    """At most ``limit`` connections in their handshake; the oldest goes when one more comes.

    Args:
        nursery: where the connections' tasks run.
        limit: the most pending connections (at least 1).
        name: the listener's name, for the log.
    """

    def __init__(self, nursery: trio.Nursery, limit: int, *, name: str) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._nursery = nursery
        self._limit = limit
        self._name = name
        self._pending: dict[trio.CancelScope, None] = {}  # oldest first
        self._dropped = 0
        self._logged_at = -_LOG_INTERVAL

    @property
    def nursery(self) -> trio.Nursery:
        """This object, typed as what ``serve_listeners`` asks for (it uses ``start_soon``)."""
        return cast(trio.Nursery, self)

    def start_soon(
        self, async_fn: Callable[..., Awaitable[Any]], *args: Any, name: object = None
    ) -> None:
        """Run ``async_fn(*args)`` (one accepted connection) as a pending connection."""
        scope = trio.CancelScope()
        self._pending[scope] = None
        if len(self._pending) > self._limit:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            oldest.cancel()
            self._dropped += 1
            now = trio.current_time()
            if now - self._logged_at >= _LOG_INTERVAL:
                self._logged_at = now
                log.warning(
                    "%s: %d connections in their handshake; dropping the oldest "
                    "(%d dropped so far)",
                    self._name,
                    self._limit,
                    self._dropped,
                )

        async def run() -> None:
            _current.set(scope)
            try:
                with scope:
                    await async_fn(*args)
            finally:
                self._pending.pop(scope, None)

        self._nursery.start_soon(run, name=name or async_fn)

    def done(self) -> None:
        """The connection served by the calling task finished its handshake: it no longer
        counts, and is never dropped to make room. Does nothing outside such a task."""
        scope = _current.get()
        if scope is not None:
            self._pending.pop(scope, None)

    def statistics(self) -> HandshakeStatistics:
        """Counters, without I/O."""
        return HandshakeStatistics(len(self._pending), self._dropped)
