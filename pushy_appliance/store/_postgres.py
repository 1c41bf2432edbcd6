"""PostgresStore: the append-only store as a log in PostgreSQL, which several stores (one per
appliance) may share. The design, and the cluster built on it, is ``docs/SCALE-OUT.md``.

The tables, created at the first open in the connection's ``search_path`` (PostgreSQL 13 or
later)::

    pushy_meta     (key text PRIMARY KEY, value text NOT NULL)     format = '1'
    pushy_head     (id int PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL)
    pushy_log      (seq bigint PRIMARY KEY, writer uuid NOT NULL, record bytea NOT NULL)
    pushy_snapshot (seq bigint PRIMARY KEY, state bytea NOT NULL)

``record`` is the record framed exactly as in a segment file (``_format``: length, CRC-32,
msgpack) and ``state`` is exactly a snapshot file's contents (header, CRC-32, msgpack), so the
same checks apply to both stores. ``writer`` is a UUID new at every open of a store.

Appending: one group is one transaction. ``UPDATE pushy_head SET seq = seq + n RETURNING
seq`` takes the head's row lock, held to ``COMMIT``, so groups (of every store on the
database) get their seqs in commit order, and a group that rolls back leaves no hole; the rows
are inserted with one ``INSERT … SELECT FROM unnest(…)``, and ``pg_notify('pushy_log', head)``
rings the other stores' doorbell at ``COMMIT``. Sessions run with ``synchronous_commit = on``:
a group's callers are answered once ``COMMIT`` returned, so an acknowledged record is in the
WAL on disk (and on a synchronous standby, if the operator has one).

A failure before ``COMMIT`` was sent refuses the group (nothing of it is stored) and makes the
store unavailable, as a failed write does in the file store (``_base``, ``_outage``). A
failure after it (the connection broke while ``COMMIT`` was on its way) leaves the group *in
doubt*: its callers are refused all the same, and each retry of the writer first asks the
database (``pg_xact_status`` of the transaction id read in the group's first statement). An
aborted group is forgotten (its seqs are given out again); a committed one is in the log, and
:meth:`PostgresStore.follow` yields it like another store's records. Each retry then proves
that the head can be updated (an ``UPDATE`` rolled back) and that the log did not lose
acknowledged records (a head below ``last_seq``: an asynchronous failover); once one succeeds
the store takes writes again.

Following: :meth:`PostgresStore.follow` yields, in seq order, every record after the head as
of the open that this store did not acknowledge to its own callers: the other stores'
records, and in-doubt groups that committed. ``LISTEN pushy_log`` on a connection of its own
is only a doorbell (it has no replay): the follower reads ``seq > position`` whenever it rings
(waited with ``trio.lowlevel.wait_readable`` on the connection's socket), every
``FOLLOW_POLL`` seconds anyway, and after every reconnect.

Recovery: in one ``REPEATABLE READ`` transaction, the newest snapshot that passes its checks
(a damaged one is logged and skipped), then every record after it. Every row was committed, so
there is no torn tail to cut: a record that fails its checks, or a missing seq, raises
:class:`~pushy_appliance.errors.StoreCorruptError` and changes nothing.

The open lock: a session advisory lock keyed on the schema, on the writer's connection. The
appliances of a cluster hold it shared (``exclusive=False``); an exclusive open (the default:
maintenance commands that must be alone, ``pushy store compact``) holds it alone, so it is
refused while an appliance runs, and an appliance is refused while it runs.

The code, by seam: connections, the tables and recovery in ``_pgopen``; the follower's reads
and its doorbell in ``_pgfollow``; the advisory locks in ``_pglocks``; ``pushy store verify``
in ``_pgverify``; here the store itself: the group commit, in-doubt groups, snapshots, the
head and the follower's loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import psycopg
import trio

from ..errors import StaleLeaseError, StoreCorruptError, StoreError, StoreUnavailableError
from ._base import Fence, GroupCommitStore
from ._format import BlobRef
from ._outage import RETRY_FIRST, RETRY_MAX
from ._pgfollow import FOLLOW_BATCH, FOLLOW_POLL, fetch, listen, wait_doorbell
from ._pglocks import AdvisoryLocks
from ._pgopen import FORMAT, Opened, connect, decode_frames, detail, reason, recover, take_open_lock
from ._pgurl import redact_url
from ._pgverify import verify
from ._shared import SharedQuery

# FORMAT, connect, decode_frames and verify are re-exported: their home is ``_pgopen`` and
# ``_pgverify``.
__all__ = [
    "FOLLOW_BATCH",
    "FOLLOW_POLL",
    "FORMAT",
    "PostgresStore",
    "connect",
    "decode_frames",
    "verify",
]

log = logging.getLogger(__name__)

_NEXT_SEQS = (
    "UPDATE pushy_head SET seq = seq + %s WHERE id = 1 RETURNING seq, pg_current_xact_id()::text"
)
_INSERT = """
WITH ins AS (
    INSERT INTO pushy_log (seq, writer, record)
    SELECT %(first)s + t.ord - 1, %(writer)s, t.rec
    FROM unnest(%(records)s::bytea[]) WITH ORDINALITY AS t(rec, ord)
)
SELECT pg_notify('pushy_log', %(head)s)
"""
_FENCE = "SELECT job_id, epoch FROM pushy_lease WHERE job_id = ANY(%s) ORDER BY job_id FOR SHARE"
"""The leases a group is fenced with, share-locked until COMMIT: a takeover's ``UPDATE``
waits for this group, so a write checked against the old epoch lands before the takeover
(and the new driver reads it) or not at all (``docs/SCALE-OUT.md`` §4)."""
_SAVE_SNAPSHOT = (
    "INSERT INTO pushy_snapshot (seq, state) VALUES (%s, %s) "
    "ON CONFLICT (seq) DO UPDATE SET state = EXCLUDED.state"
)


class _StaleConnectionError(Exception):
    """The writer's idle connection was found dead before anything was sent."""


class _InDoubtError(Exception):
    """``COMMIT`` was sent and its answer lost: the group may or may not be in the log."""

    def __init__(self, first: int, last: int, xid: str, error: StoreUnavailableError) -> None:
        super().__init__(error.reason)
        self.first = first
        self.last = last
        self.xid = xid
        self.error = error


@dataclasses.dataclass(slots=True)
class _Doubt:
    """An in-doubt group: seqs ``first..last`` of transaction ``xid``."""

    first: int
    last: int
    xid: str
    committed: bool | None = None  # None: not resolved yet


class PostgresStore(GroupCommitStore):
    """The store in a PostgreSQL database. Create it with :meth:`open` (or
    ``open_postgres_store``).

    Args:
        url: the database's ``postgresql://`` URL.
        opened: what recovery found, with the writer's connection.
        exclusive: whether this store holds the database's open lock.
        queue_size: capacity of the writer's request channel.
    """

    keeps_archive = False
    """Closed jobs' details are not moved to an archive here: they stay in the appliance's
    memory, packed (``docs/SCALE-OUT.md`` §13)."""

    def __init__(self, url: str, opened: Opened, *, exclusive: bool, queue_size: int) -> None:
        super().__init__(opened.recovered, opened.head, queue_size=queue_size)
        self._url = url
        self._where = redact_url(url)
        self._exclusive = exclusive
        self._conn: psycopg.Connection[Any] | None = opened.conn
        self._bytes = opened.bytes
        self._writer = uuid.uuid4()
        self._opened_head = opened.head
        self._acked_max = opened.head
        """Every own group up to this seq was acknowledged, or is in ``_doubts``."""
        self._doubts: list[_Doubt] = []
        self._verdict = trio.Event()
        """Set (and replaced) whenever a group's outcome is known."""
        self._following = False
        self._followed = opened.head
        self._head_conn: psycopg.Connection[Any] | None = None
        self._head = SharedQuery(self._query_head)
        self._locks = AdvisoryLocks(url, self._unavailable)

    @classmethod
    async def open(
        cls, url: str, *, exclusive: bool = True, queue_size: int = 4096
    ) -> PostgresStore:
        """Connect, create the tables if needed and recover (see the module doc).

        The caller owns the result: run :meth:`run` in a nursery, then :meth:`aclose` and
        :meth:`release`; ``open_postgres_store`` does all of that.

        Args:
            url: a ``postgresql://`` URL (libpq's: several hosts, ``sslmode``, ``options``).
            exclusive: hold the store's open lock: a second exclusive open fails.
            queue_size: capacity of the writer's request channel.

        Raises:
            ValueError: when ``queue_size`` is below 1.
            StoreCorruptError: a record fails its checks, or seqs are missing.
            StoreError: the database cannot be reached or used, or another exclusive store
                has it open.

        Cancellation: recovery runs to the end in a worker thread (shielded).
        """
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        with trio.CancelScope(shield=True):
            opened = await trio.to_thread.run_sync(recover, url, redact_url(url), exclusive)
        return cls(url, opened, exclusive=exclusive, queue_size=queue_size)

    @property
    def where(self) -> str:
        """The database's URL without its password."""
        return self._where

    @property
    def followed_seq(self) -> int:
        """The seq up to which :meth:`follow` has read the log (the head at open before)."""
        return self._followed

    @property
    def appliance_id(self) -> str:
        """The writer's UUID, new at every open: the appliance's id in the cluster."""
        return str(self._writer)

    def release(self) -> None:
        """Close the writer's connection (and with it the open lock), the head's and the
        locks' (and with it the compactor's lock and any key lock)."""
        for conn in (self._conn, self._head_conn):
            if conn is not None:
                conn.close()
        self._conn = self._head_conn = None
        self._locks.close()

    # --- advisory locks: keys across appliances, the compactor (``_pglocks``) ----------------

    @contextlib.asynccontextmanager
    async def key_lock(self, key: str) -> AsyncIterator[None]:
        """Hold ``key`` against every store on the database for the block (check-then-commit
        across appliances): :meth:`~._pglocks.AdvisoryLocks.key_lock`."""
        async with self._locks.key_lock(key):
            yield

    async def take_compactor(self) -> bool:
        """Whether this store holds the compactor's lock, trying to take it; see
        :meth:`~._pglocks.AdvisoryLocks.take_compactor`."""
        return await self._locks.take_compactor()

    # --- the head (the read barrier's target, docs/SCALE-OUT.md §6) ---------------------------

    @property
    def head_queries(self) -> int:
        """How many head queries :meth:`head` has sent to the database."""
        return self._head.sent

    async def head(self) -> int:
        """Seq of the newest record committed to the log by any store on the database.

        Every append acknowledged (by any store) before this call started is at or below it:
        the callers share head queries (:class:`~._shared.SharedQuery`), each answered by a
        query sent after it called, so the database sees at most one head query at a time
        per store, however many callers there are.

        Returns:
            ``pushy_head.seq``.

        Raises:
            StoreUnavailableError: the database cannot be reached (the next call reconnects).
            StoreError: the database holds no head (not a store any more).

        Cancellation: a caller waiting for a query another caller sent stops at once; the
        caller that sent one waits for its answer first (bounded by the session's
        ``connect_timeout``, 5 s, and ``statement_timeout``, 30 s).
        """
        answer = await self._head.ask()
        # each caller raises an exception of its own (one instance would gather tracebacks)
        if isinstance(answer, StoreUnavailableError):
            raise StoreUnavailableError(answer.reason, answer.path)
        if isinstance(answer, StoreError):
            raise StoreError(str(answer))
        return answer

    async def _query_head(self) -> int | StoreError:
        try:
            return await trio.to_thread.run_sync(self._head_sync)
        except psycopg.Error as e:
            if self._head_conn is not None:
                self._head_conn.close()
                self._head_conn = None
            return self._unavailable(e)
        except StoreError as e:
            return e

    def _head_sync(self) -> int:
        conn = self._head_conn
        fresh = conn is None or conn.closed or conn.broken
        if fresh:
            if conn is not None:
                conn.close()
            self._head_conn = None
            conn = self._head_conn = connect(self._url, autocommit=True)
        assert conn is not None
        try:
            row = conn.execute("SELECT seq FROM pushy_head WHERE id = 1").fetchone()
        except psycopg.OperationalError:
            if fresh:
                raise
            # an idle connection the database closed (a restart): once more on a new one
            conn.close()
            self._head_conn = None
            return self._head_sync()
        if row is None:
            raise StoreError(f"{self._where}: pushy_head has no row; not a pushy store any more")
        return int(row[0])

    # --- the writer's connection (used only from the writer task's worker threads) ----------

    def _writer_conn(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._drop_conn()
        try:
            conn = connect(self._url, autocommit=False)
        except psycopg.Error as e:
            raise self._unavailable(e) from e
        try:
            held = take_open_lock(conn, exclusive=self._exclusive)
        except psycopg.Error as e:
            conn.close()
            raise self._unavailable(e) from e
        if not held:
            conn.close()
            raise StoreUnavailableError("the database is held by another appliance", self._where)
        self._conn = conn
        return conn

    def _drop_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _abort(self, conn: psycopg.Connection[Any]) -> None:
        """End a failed transaction: roll back, or drop a connection that cannot."""
        if conn.closed or conn.broken:
            self._drop_conn()
            return
        try:
            conn.rollback()
        except psycopg.Error:
            self._drop_conn()

    def _unavailable(self, e: psycopg.Error) -> StoreUnavailableError:
        return StoreUnavailableError(reason(e), f"{self._where} ({detail(e)})")

    # --- writing ------------------------------------------------------------------------------

    async def _commit(self, frames: list[bytes], first_seq: int) -> int | None:
        first, _stale = await self._commit_requests([(frames, ())])
        return first

    async def _commit_fenced(
        self, requests: list[tuple[list[bytes], Fence]], first_seq: int
    ) -> tuple[int | None, dict[int, StaleLeaseError]]:
        return await self._commit_requests(requests)

    async def _commit_requests(
        self, requests: list[tuple[list[bytes], Fence]]
    ) -> tuple[int | None, dict[int, StaleLeaseError]]:
        """Commit the requests whose fences hold (all of them when none is fenced) as one
        group; the first seq given (``None`` when every request was refused) and the
        refused ones."""
        try:
            first, stale, frames = await trio.to_thread.run_sync(self._commit_sync, requests)
        except _InDoubtError as e:
            self._doubts.append(_Doubt(e.first, e.last, e.xid))
            self._settled()
            log.error(
                "store: the commit of seqs %d..%d was sent but its answer lost; refused, and "
                "resolved before the next write",
                e.first,
                e.last,
            )
            raise e.error from None
        if not frames:
            return None, stale
        self._acked_max = first + len(frames) - 1
        self._bytes += sum(map(len, frames))
        self._settled()
        return first, stale

    def _settled(self) -> None:
        self._verdict.set()
        self._verdict = trio.Event()

    def _commit_sync(
        self, requests: list[tuple[list[bytes], Fence]]
    ) -> tuple[int, dict[int, StaleLeaseError], list[bytes]]:
        try:
            return self._try_commit(requests)
        except _StaleConnectionError:
            # an idle connection that died (a database restart): nothing was sent, try anew
            self._drop_conn()
            return self._try_commit(requests)

    def _try_commit(
        self, requests: list[tuple[list[bytes], Fence]]
    ) -> tuple[int, dict[int, StaleLeaseError], list[bytes]]:
        """The group's transaction; returns its first seq, the requests refused by their
        fence, and the frames committed."""
        fresh = self._conn is None or self._conn.closed or self._conn.broken
        conn = self._writer_conn()
        stale: dict[int, StaleLeaseError] = {}
        try:
            jobs = sorted({job for _frames, fence in requests for job, _epoch in fence})
            if jobs:
                leased = {str(j): int(e) for j, e in conn.execute(_FENCE, (jobs,)).fetchall()}
                for index, (_frames, fence) in enumerate(requests):
                    for job, epoch in fence:
                        if leased.get(job) != epoch:
                            stale[index] = StaleLeaseError(job, epoch)
                            break
            frames = [f for i, (fs, _fence) in enumerate(requests) if i not in stale for f in fs]
            if not frames:
                conn.rollback()
                return 0, stale, []
            n = len(frames)
            row = conn.execute(_NEXT_SEQS, (n,)).fetchone()
            assert row is not None
            head, xid = int(row[0]), str(row[1])
            first = head - n + 1
            conn.execute(
                _INSERT,
                {"first": first, "writer": self._writer, "records": frames, "head": str(head)},
            )
        except psycopg.Error as e:
            self._abort(conn)
            if not fresh and (conn.closed or conn.broken):
                raise _StaleConnectionError from e
            raise self._unavailable(e) from e
        try:
            conn.commit()
        except psycopg.Error as e:
            self._drop_conn()
            raise _InDoubtError(first, head, xid, self._unavailable(e)) from e
        return first, stale, frames

    async def _repair(self, probe_bytes: int) -> None:
        doubts = [d for d in self._doubts if d.committed is None]
        resolved = await trio.to_thread.run_sync(self._repair_sync, doubts, self._last_seq)
        for doubt, committed in resolved:
            doubt.committed = committed
            if committed:
                log.warning(
                    "store: the in-doubt commit of seqs %d..%d was committed after all; its "
                    "callers were refused, the follower applies it",
                    doubt.first,
                    doubt.last,
                )
            else:
                log.warning(
                    "store: the in-doubt commit of seqs %d..%d was not committed",
                    doubt.first,
                    doubt.last,
                )
        self._doubts = [d for d in self._doubts if d.committed is not False]
        if resolved:
            self._settled()

    def _repair_sync(self, doubts: list[_Doubt], last_seq: int) -> list[tuple[_Doubt, bool]]:
        conn = self._writer_conn()
        resolved: list[tuple[_Doubt, bool]] = []
        try:
            for doubt in doubts:
                row = conn.execute("SELECT pg_xact_status(%s::xid8)", (doubt.xid,)).fetchone()
                status = row[0] if row else None
                if status == "in progress":
                    raise StoreUnavailableError(
                        "an earlier commit is still in progress", self._where
                    )
                if status is None:  # too old to say: the rows do
                    found = conn.execute(
                        "SELECT count(*) FROM pushy_log WHERE seq = %s AND writer = %s",
                        (doubt.first, self._writer),
                    ).fetchone()
                    status = "committed" if found and found[0] else "aborted"
                resolved.append((doubt, status == "committed"))
            row = conn.execute("SELECT seq FROM pushy_head WHERE id = 1 FOR UPDATE").fetchone()
            head = int(row[0]) if row else 0
            if head < last_seq:
                raise StoreUnavailableError(
                    f"the database lost acknowledged records: its log ends at {head}, this "
                    f"store wrote or read up to {last_seq} (an asynchronous failover?)",
                    self._where,
                )
            conn.execute("UPDATE pushy_head SET seq = seq WHERE id = 1")  # proves a write
            conn.rollback()
        except psycopg.Error as e:
            self._abort(conn)
            raise self._unavailable(e) from e
        except StoreUnavailableError:
            self._abort(conn)
            raise
        return resolved

    async def _save_snapshot(self, contents: bytes, seq: int) -> None:
        await trio.to_thread.run_sync(self._save_snapshot_sync, contents, seq)

    def _save_snapshot_sync(self, contents: bytes, seq: int) -> None:
        try:
            with connect(self._url, autocommit=True) as conn:
                conn.execute(_SAVE_SNAPSHOT, (seq, contents))
        except psycopg.Error as e:
            raise StoreError(f"cannot write snapshot {seq} to {self._where}: {detail(e)}") from e

    async def _after_snapshot(self, seq: int, archives: dict[int, int]) -> None:
        # ``archives`` is empty: this store keeps no archive (``keeps_archive``)
        self._bytes = await trio.to_thread.run_sync(self._after_snapshot_sync, seq)

    def archive_sizes(self) -> dict[int, int]:
        return {}

    async def _append_blobs(self, frames: list[bytes]) -> list[BlobRef]:
        raise StoreError(f"{self._where} keeps no archive: closed jobs stay in memory")

    def _read_blob(self, ref: BlobRef) -> bytes:
        raise StoreCorruptError(self._where, ref[1], f"no archive {ref[0]} in PostgreSQL")

    def _after_snapshot_sync(self, seq: int) -> int:
        try:
            conn = self._writer_conn()
        except StoreUnavailableError as e:
            raise StoreError(f"after snapshot {seq}: {e.reason}") from e
        try:
            kept = [
                int(s)
                for (s,) in conn.execute(
                    "SELECT seq FROM pushy_snapshot ORDER BY seq DESC LIMIT 2"
                ).fetchall()
            ]
            removed = 0
            if len(kept) == 2:
                older = kept[1]
                cur = conn.execute("DELETE FROM pushy_snapshot WHERE seq < %s", (older,))
                removed += max(cur.rowcount, 0)
                cur = conn.execute("DELETE FROM pushy_log WHERE seq <= %s", (older,))
                removed += max(cur.rowcount, 0)
            row = conn.execute(
                "SELECT coalesce(sum(octet_length(record)), 0) FROM pushy_log"
            ).fetchone()
            conn.commit()
        except psycopg.Error as e:
            self._abort(conn)
            raise StoreError(f"after snapshot {seq}: {detail(e)}") from e
        log.info("store: snapshot at seq %d; removed %d obsolete row(s)", seq, removed)
        return int(row[0]) if row else 0

    def _segment_figures(self) -> tuple[int, int]:
        return 0, self._bytes

    # --- following ----------------------------------------------------------------------------

    async def follow(self) -> AsyncGenerator[list[tuple[int, dict[str, Any]]], None]:
        """Yield, in seq order and in batches, every record appended after the open that this
        store did not acknowledge itself: other stores' records, and in-doubt groups of its
        own that committed (see the module doc).

        Use it with ``contextlib.aclosing``; one follower at a time. While the database is
        away it reconnects on its own (backoff ``RETRY_FIRST`` doubling to ``RETRY_MAX``) and
        catches up by seq, so nothing is missed.

        Yields:
            Non-empty lists of ``(seq, record)``.

        Raises:
            StoreError: another follower is running, or the records after :attr:`followed_seq`
                were deleted by a compaction before they could be read (reload from the
                newest snapshot).
            StoreCorruptError: a record fails its checks.

        Cancellation: safe between batches; a read in progress finishes in its thread first.
        """
        if self._following:
            raise StoreError("the store already has a follower")
        self._following = True
        conn: psycopg.Connection[Any] | None = None
        delay = RETRY_FIRST
        try:
            while True:
                if conn is None:
                    try:
                        conn = await trio.to_thread.run_sync(listen, self._url)
                    except psycopg.Error as e:
                        log.warning(
                            "store: follower cannot reach %s (%s); again in %.2f s",
                            self._where,
                            detail(e),
                            delay,
                        )
                        await trio.sleep(delay)
                        delay = min(delay * 2, RETRY_MAX)
                        continue
                    delay = RETRY_FIRST
                try:
                    rows = await trio.to_thread.run_sync(fetch, conn, self._followed)
                except psycopg.Error as e:
                    log.warning("store: follower lost %s (%s)", self._where, detail(e))
                    conn.close()
                    conn = None
                    continue
                batch, pending = self._take(rows)
                verdict = self._verdict  # before the yield: a verdict may come during it
                if batch:
                    self._last_seq = max(self._last_seq, batch[-1][0])
                    yield batch
                if pending:
                    with trio.move_on_after(FOLLOW_POLL):
                        await verdict.wait()
                elif len(rows) < FOLLOW_BATCH and not await wait_doorbell(conn):
                    conn.close()
                    conn = None
        finally:
            self._following = False
            if conn is not None:
                conn.close()

    def _take(
        self, rows: list[tuple[int, Any, bytes]]
    ) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
        """The rows to yield, advancing :attr:`followed_seq`; ``True`` when a row of this
        store's own group came before its outcome was known (wait for it, read again)."""
        out: list[tuple[int, dict[str, Any]]] = []
        for seq, writer, frame in rows:
            if seq != self._followed + 1:
                raise StoreError(
                    f"{self._where}: records {self._followed + 1}..{seq - 1} were compacted "
                    "away before the follower read them; reload from the newest snapshot"
                )
            if writer == self._writer:
                doubt = next((d for d in self._doubts if d.first <= seq <= d.last), None)
                if doubt is None and seq > self._acked_max:
                    return out, True  # its COMMIT's answer is on its way to the writer
                if doubt is None:
                    self._followed = seq  # acknowledged: its appender applies it
                    continue
            (record,) = decode_frames(seq, [frame], self._where)
            out.append((seq, record))
            self._bytes += len(frame)
            self._followed = seq
        self._doubts = [d for d in self._doubts if d.last > self._followed or d.committed is None]
        return out, False
