"""A job the runner is driving: its bounded inbox of events, the timers armed for it, the
frames waiting to be written after its step is stored, and the events that say it ended.

Owned by :class:`~.runner.JobRunner`, which creates one per live job (``JobRunner.live``)
and runs its task; everyone else posts events to it.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Any

import trio

from ..nodes.registry import NodeSession
from ..sse import MonotonicStamper
from .events import Event
from .model import JobEntry
from .state import JobState

__all__ = ["LiveJob"]


class LiveJob:
    """A job the runner is driving.

    Args:
        entry: the job as stored.
        state: its machine's state.
        high_water: queued events beyond which :meth:`post_from_node` waits.
    """

    def __init__(self, entry: JobEntry, state: JobState, *, high_water: int) -> None:
        self.high_water = high_water
        self.entry = entry
        self.state = state
        self.inbox: deque[Event] = deque()
        self.wakeup = trio.Event()
        self.room = trio.Event()
        self.room.set()
        self.timers: dict[str, trio.CancelScope] = {}
        self.stamper = MonotonicStamper()
        self.ended = trio.Event()
        """Set once the job's end (a finished status) is durable."""
        self.done = trio.Event()
        """Set once the job is closed (no late result owed) and no longer driven."""
        self.nursery: trio.Nursery | None = None
        self.outgoing: list[tuple[NodeSession, type[Any], dict[str, Any]]] = []
        """Frames the machine asked for, written by the job's task after the step is stored
        (directly to each node's connection when that cannot block)."""
        self.riders: list[dict[str, Any]] = []
        """Records to store in the job's next step (an abort's audit record)."""
        self.remote: list[tuple[str, str, str, dict[str, Any]]] = []
        """Frames for nodes connected to other appliances of the cluster, written with
        :attr:`outgoing`: ``(appliance, node, frame type, fields)``."""
        self.dropped = False
        """Another appliance drives the job now: its task stops without closing it."""

    @property
    def id(self) -> str:
        return self.entry.id

    def post(self, event: Event) -> None:
        """Queue an event (never blocks: timers, operator requests, connection changes)."""
        self.inbox.append(event)
        self.wakeup.set()
        if len(self.inbox) >= self.high_water and self.room.is_set():
            self.room = trio.Event()

    async def post_from_node(self, event: Event, session: NodeSession | None) -> None:
        """Queue a node's event, first waiting while the inbox is over its high-water mark:
        a node that floods frames is slowed down at its own socket, and the inbox stays
        bounded. While it waits the node's frames (its heartbeats too) stay unread, so its
        ``session`` is not timed out for that silence (:meth:`NodeSession.held_back`)."""
        if not self.room.is_set():
            with session.held_back() if session is not None else contextlib.nullcontext():
                while not self.room.is_set():
                    await self.room.wait()
        self.post(event)
