"""The database: the store plus the in-memory models it rebuilds.

Every change is a record; :meth:`Database.commit` makes it durable in the store, then applies
it to the models, so nothing is visible (or acknowledged) before it is on disk. Readers read
the models directly (no I/O on reads). Several records committed together are stored as one
``batch`` record, so a torn write can never keep half of a change.

Models are plain objects with ``apply(record)``, ``snapshot()`` and ``load(snapshot)``; the
database owns one per family (``identity``, ``jobs``, ``nodes``) and snapshots them together.
A *watcher* (:meth:`Database.watch`) is told of each committed record once every model has
applied it: what lives only in memory and depends on stored facts (a node's session on its
client's key) follows the change before the commit returns.

When the store cannot write (disk full, I/O error, file size limit), :meth:`Database.commit`
raises :class:`~pushy_appliance.errors.StoreUnavailableError` and applies nothing: the models
stay exactly as they were, and so does the store (none of the records is in it). Reads go on.
Each caller decides what a refused change means for it: a request answers 503 and forgets it;
an engine whose change must happen (a job step, a node's status) waits with
:meth:`Database.wait_writable` and commits the same records again, or uses
:meth:`Database.commit_retrying`, which does exactly that. Nothing in this module ends the
process because a write was refused.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from .errors import StoreUnavailableError
from .store import Store

__all__ = ["Database", "Model"]

log = logging.getLogger(__name__)


class Model(Protocol):
    """What the database needs of a model."""

    def apply(self, record: dict[str, Any]) -> None: ...

    def snapshot(self) -> Any: ...

    def load(self, snapshot: Any) -> None: ...


class Database:
    """The store and the models, kept in step.

    Args:
        store: an open store.
        models: the models by family name; each sees every record.
    """

    def __init__(self, store: Store, models: Mapping[str, Model]) -> None:
        self.store = store
        self.models = dict(models)
        self.write_lock = trio.Lock()
        """Held around check-then-commit sequences that must not interleave (bootstrap)."""
        self._key_locks: dict[Hashable, tuple[trio.Lock, int]] = {}
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._gate: trio.Event | None = None
        self._watchers: list[Callable[[dict[str, Any]], None]] = []

    def watch(self, watcher: Callable[[dict[str, Any]], None]) -> None:
        """Call ``watcher(record)`` for every record committed from now on (a batch's records
        one by one), after every model applied it and before :meth:`commit` returns.

        A watcher runs inside the commit: it must neither block nor raise.
        """
        self._watchers.append(watcher)

    def recover(self) -> int:
        """Rebuild the models from what the store recovered. Returns the records replayed."""
        rec = self.store.recovered
        if rec.snapshot is not None:
            for name, model in self.models.items():
                if name in rec.snapshot:
                    model.load(rec.snapshot[name])
        for _seq, record in rec.records:
            self._apply(record)
        return len(rec.records)

    def _apply(self, record: dict[str, Any]) -> None:
        if record.get("t") == "batch":
            for inner in record["records"]:
                self._apply(inner)
            return
        for model in self.models.values():
            model.apply(record)
        for watcher in self._watchers:
            watcher(record)

    @asynccontextmanager
    async def exclusive(self, key: Hashable) -> AsyncIterator[None]:
        """Serialize check-then-commit sequences on one name (``("client", org, name)``…).

        Writes to different names proceed concurrently, so their fsyncs are batched by the
        store's group commit; two creations of the same name run one after the other, and
        the second sees the first.
        """
        lock, users = self._key_locks.get(key, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._key_locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock_, users = self._key_locks[key]
            if users == 1:
                del self._key_locks[key]
            else:
                self._key_locks[key] = (lock_, users - 1)

    @property
    def writable(self) -> bool:
        """Whether the store takes writes now (false while it retries a failed one)."""
        return self.store.writable

    async def wait_writable(self) -> None:
        """Wait until the store takes writes again (at once when it does).

        Cancellation: safe; nothing is changed.
        """
        await self.store.wait_writable()

    async def commit(self, *records: dict[str, Any]) -> int:
        """Make ``records`` durable, then apply them to the models.

        Returns:
            The sequence number of the last record.

        Raises:
            StoreUnavailableError: the store could not write them (its write or fsync failed,
                now or earlier and it is not writable again yet). None of ``records`` is
                stored and none was applied: the models are as before the call. The same
                records may be committed again once :meth:`wait_writable` returns.
            StoreError: the store is closed; nothing was applied.

        Cancellation: once the records were handed to the store they are applied even if the
        caller is cancelled while waiting, so the models never lag behind the store.
        """
        while self._gate is not None:
            await self._gate.wait()
        self._in_flight += 1
        self._idle = trio.Event() if self._in_flight == 1 else self._idle
        try:
            stored = (
                list(records) if len(records) == 1 else [{"t": "batch", "records": list(records)}]
            )
            with trio.CancelScope(shield=True):
                seq = await self.store.append_many(stored)
                for record in stored:
                    self._apply(record)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        return seq

    async def commit_retrying(self, *records: dict[str, Any]) -> int:
        """:meth:`commit`, waiting out store outages: the same ``records`` are committed again
        each time the store is writable again, until they are durable and applied.

        For changes that must happen and may wait (a job's step, a node's status), never for
        a request whose client should be told (503).

        Returns:
            The sequence number of the last record.

        Raises:
            StoreError: the store is closed; nothing was applied.

        Cancellation: while waiting for the store nothing is applied, and nothing will be;
        once the records were handed to the store, as for :meth:`commit`.
        """
        while True:
            try:
                return await self.commit(*records)
            except StoreUnavailableError:
                await self.wait_writable()

    async def snapshot(self) -> int:
        """Write a snapshot of every model at the store's newest record.

        New commits wait while the models are copied, so the snapshot matches its sequence
        number exactly. Returns that sequence number.

        Raises:
            StoreError: the snapshot could not be written (``StoreUnavailableError`` while
                the store is not writable). The log still holds every record: nothing is
                lost, a restart only replays more.
        """
        gate = trio.Event()
        while self._gate is not None:
            await self._gate.wait()
        self._gate = gate
        try:
            await self._idle.wait()
            seq = self.store.last_seq
            state = {name: model.snapshot() for name, model in self.models.items()}
        finally:
            self._gate = None
            gate.set()
        await self.store.write_snapshot(state, seq)
        log.info("snapshot written at record %d", seq)
        return seq
