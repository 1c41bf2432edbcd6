"""The agent's facts: collected at start, every ``facts.refresh_interval``, on SIGHUP and on
the server's ``reload``; sent in ``hello``, and in a ``facts`` frame only when they changed.

:class:`FactsReporter` owns them. The first collection happens before the agent connects, so
its first ``hello`` carries them. A collection asked for while one runs is done once more
after it (requests coalesce). What counts as a change is
:func:`pushy_appliance.facts.facts_changed`: ``uptime_seconds`` alone is not one. The facts
last sent are those of the current connection: its ``hello``, then each ``facts`` frame it
took; a new connection starts over from its own ``hello``.

Cancellation: a collection in progress is abandoned (ohai killed, see :mod:`.facts`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from .. import __version__
from ..errors import AgentError
from ..facts import FactsConfig, facts_changed
from .facts import CollectedFacts, collect_facts

__all__ = ["Collector", "FactsReporter"]

log = logging.getLogger(__name__)


class Collector(Protocol):
    """How facts are collected (:func:`~.facts.collect_facts`; tests pass their own)."""

    def __call__(
        self, config: FactsConfig, *, agent_version: str, node_name: str
    ) -> Awaitable[CollectedFacts]: ...


class FactsReporter:
    """This node's facts, kept current and reported when they change.

    Args:
        node_name: for the log lines.
        config: the ``[facts]`` settings and the operator's additions.
        send: sends a ``facts`` frame with the given facts on the current connection;
            ``False`` when there is none.
        fixed: facts to report as they are, never collected (tests, simulators).
        collect: the collector.
    """

    def __init__(
        self,
        node_name: str,
        config: FactsConfig,
        send: Callable[[dict[str, Any]], Awaitable[bool]],
        *,
        fixed: dict[str, Any] | None = None,
        collect: Collector = collect_facts,
    ) -> None:
        self.node_name = node_name
        self.config = config
        self._send = send
        self._collect = collect
        self._fixed = fixed is not None
        self._current: dict[str, Any] = dict(fixed) if fixed is not None else {}
        self._hello: dict[str, Any] = self._current
        self._sent: dict[str, Any] | None = None
        self._wanted = trio.Event()

    @property
    def facts(self) -> dict[str, Any]:
        """The facts now (a copy)."""
        return dict(self._current)

    def hello_facts(self) -> dict[str, Any]:
        """The facts for a ``hello`` about to be sent: what the next connection starts with."""
        self._hello = self._current
        return dict(self._current)

    async def attached(self) -> None:
        """The connection whose ``hello`` took :meth:`hello_facts` is welcomed: send the facts
        again if they changed since."""
        self._sent = self._hello
        await self._report()

    def detached(self) -> None:
        """The connection ended: nothing is sent until the next :meth:`attached`."""
        self._sent = None

    def request(self) -> None:
        """Ask for a collection soon (never blocks)."""
        self._wanted.set()

    async def collect(self) -> bool:
        """Collect once and report the facts if they changed.

        Returns:
            Whether a ``facts`` frame was sent.

        Raises:
            AgentError: ``facts.ohai`` is ``on`` and ohai is missing or failed.
        """
        if self._fixed:
            return False
        collected = await self._collect(
            self.config, agent_version=__version__, node_name=self.node_name
        )
        self._current = collected.facts
        log.debug(
            "node %s: facts collected (%s, %d bytes)",
            self.node_name,
            collected.source,
            collected.size,
        )
        return await self._report()

    async def _report(self) -> bool:
        sent = self._sent
        facts = self._current
        if sent is None or not facts_changed(sent, facts):
            return False
        if not await self._send(facts):
            return False
        self._sent = facts
        log.info("node %s: facts changed, sent", self.node_name)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Collect now, then every ``refresh_interval`` and whenever :meth:`request` asks.

        Start-up: ``task_status.started()`` after the first collection.

        Raises:
            AgentError: the first collection failed (``facts.ohai = "on"`` without a working
                ohai); later failures are logged and the facts kept.
        """
        await self.collect()
        task_status.started()
        if self._fixed:
            await trio.sleep_forever()
        while True:
            with trio.move_on_after(self.config.refresh_interval):
                await self._wanted.wait()
            self._wanted = trio.Event()
            try:
                await self.collect()
            except AgentError as e:
                log.error("node %s: facts not collected, keeping the last: %s", self.node_name, e)
