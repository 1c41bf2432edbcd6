"""The advisory locks of a store in PostgreSQL, on a connection of their own (the *locks'*
connection): a key's (check-then-commit on one name across appliances,
``Database.exclusive``) and the compactor's (the one appliance that writes snapshots). Both
are session locks keyed on the schema (stores in several schemas of one database do not
share them), and die with the session: an appliance that dies lets go of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import trio

from ..errors import StoreUnavailableError
from ._pgopen import connect

__all__ = ["KEY_LOCK_POLL", "AdvisoryLocks"]

_TRY_KEY_LOCK = (
    "SELECT pg_try_advisory_lock(hashtext('pushy-key:' || current_schema() || ':' || %s))"
)
_KEY_UNLOCK = "SELECT pg_advisory_unlock(hashtext('pushy-key:' || current_schema() || ':' || %s))"
_TRY_COMPACTOR_LOCK = (
    "SELECT pg_try_advisory_lock(hashtext('pushy compactor:' || current_schema()))"
)
KEY_LOCK_POLL = 0.2
"""Longest wait between two tries of a key lock another store holds."""


class AdvisoryLocks:
    """The locks' connection of one store and the locks it holds.

    Args:
        url: the database's URL.
        unavailable: maps a driver error to the store's ``StoreUnavailableError``.
    """

    def __init__(
        self, url: str, unavailable: Callable[[psycopg.Error], StoreUnavailableError]
    ) -> None:
        self._url = url
        self._unavailable = unavailable
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = trio.Lock()
        self._compactor_on: psycopg.Connection[Any] | None = None
        """The connection holding the compactor's lock (None: not held)."""

    def close(self) -> None:
        """Close the connection, and let go of every lock with it."""
        if self._conn is not None:
            self._conn.close()
        self._conn = self._compactor_on = None

    @contextlib.asynccontextmanager
    async def key_lock(self, key: str) -> AsyncIterator[None]:
        """Hold ``key`` against every store on the database (of this schema) for the block:
        a session advisory lock on a hash of it, on the locks' connection (``Database
        .exclusive``: check-then-commit across appliances). A key held elsewhere is tried
        again every ``KEY_LOCK_POLL`` seconds at most (a hash collision only serializes two
        keys).

        Raises:
            StoreUnavailableError: the database cannot be reached (nothing is held).

        Cancellation: waiting, nothing is held; the unlock at the end is shielded. Were the
        locks' connection lost meanwhile, its session's locks went with it.
        """
        delay = KEY_LOCK_POLL / 16
        while not await self._call(_TRY_KEY_LOCK, key):
            await trio.sleep(delay)
            delay = min(delay * 2, KEY_LOCK_POLL)
        try:
            yield
        finally:
            # a lost connection took its locks with it
            with trio.CancelScope(shield=True), contextlib.suppress(StoreUnavailableError):
                await self._call(_KEY_UNLOCK, key)

    async def take_compactor(self) -> bool:
        """Whether this store holds the compactor's lock, trying to take it (a session lock
        on the locks' connection; whoever holds it snapshots the shared log; when its
        appliance dies the next try of another takes it).

        Returns:
            ``True`` while held; ``False`` when another store holds it, or the database
            cannot be reached.
        """
        try:
            return await self._call(None, "")
        except StoreUnavailableError:
            return False

    async def _call(self, statement: str | None, key: str) -> bool:
        async with self._lock:
            try:
                return await trio.to_thread.run_sync(self._sync, statement, key)
            except psycopg.Error as e:
                if self._conn is not None:
                    self._conn.close()
                self._conn = self._compactor_on = None
                raise self._unavailable(e) from e

    def _sync(self, statement: str | None, key: str) -> bool:
        conn = self._conn
        fresh = conn is None or conn.closed or conn.broken
        if fresh:
            if conn is not None:
                conn.close()
            self._conn = self._compactor_on = None
            conn = self._conn = connect(self._url, autocommit=True)
        assert conn is not None
        try:
            return self._query(conn, statement, key)
        except psycopg.OperationalError:
            if fresh:
                raise
            # an idle connection the database closed (a restart), and its locks with it:
            # once more on a new one
            conn.close()
            self._conn = self._compactor_on = None
            return self._sync(statement, key)

    def _query(self, conn: psycopg.Connection[Any], statement: str | None, key: str) -> bool:
        if statement is None:  # the compactor's lock: taken once per session
            if self._compactor_on is not conn:
                row = conn.execute(_TRY_COMPACTOR_LOCK).fetchone()
                if row and row[0]:
                    self._compactor_on = conn
            return self._compactor_on is conn
        row = conn.execute(statement, (key,)).fetchone()
        return bool(row and row[0])
