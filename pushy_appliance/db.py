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

A model may also keep the bulk of items that no longer change in the store's archive
(:class:`~.db_archive.ArchivingModel`: the jobs model, for closed jobs' details).
:meth:`Database.archive` moves what such a model offers there, and each
:meth:`Database.snapshot` first does the same and re-archives sparse archives; how, in
:mod:`.db_archive` (the database's :class:`~.db_archive.Archiver`).

Several appliances on one log (the PostgreSQL store, ``docs/SCALE-OUT.md`` §3, §6). Every
record is applied in seq order, own or another appliance's: :meth:`Database.follower` applies
the records the store's ``follow()`` yields, and a commit whose record got seq ``N`` applies
it only once everything below ``N`` is applied (:meth:`Database.wait_applied`), so at any
seq every appliance holds the same models. :attr:`Database.applied_seq` is the newest seq
applied; :meth:`Database.barrier` (read-your-writes: the log's head, then waiting for it to
be applied) runs before a request reads the models; :meth:`Database.exclusive` holds its key
on every appliance (the store's ``key_lock``), then passes the barrier. On the file and
memory stores, each its log's only appender, there is no follower and the barrier returns at
once; commits are applied in seq order there too (the commits of one group wake in any
order: one that wakes early waits for those below it), so that every appliance derives the
same things from a record at the same seq (the org feed's ids). Every record goes through
:meth:`Database.commit`: a record appended to the store beside it would leave a gap the
next commit waits on.

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

import heapq
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any, NoReturn, Protocol

import trio

from .db_archive import Archiver
from .errors import StoreError, StoreUnavailableError
from .store import Store

__all__ = ["BARRIER_WAIT", "Database", "Model"]

log = logging.getLogger(__name__)

REPLAY_COMPACT_RECORDS = 10_000
"""Records replayed between two packings of what the archiving models will archive."""
BARRIER_WAIT = 10.0
"""Seconds the read barrier waits for the follower to apply the head before the request
reads what was applied (the database went away meanwhile)."""


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
        self._followed_watchers: list[Callable[[dict[str, Any]], None]] = []
        self._ordered = store.appliance_id is not None
        """Others append to the log too: records are applied strictly in seq order."""
        self.applied_seq = store.last_seq
        """Seq of the newest record applied (own or followed); in order on a shared log,
        every record up to it is applied."""
        self.applying_seq = 0
        """Seq of the record being applied (for watchers: an org feed id's ``S``)."""
        self._ready: dict[int, tuple[dict[str, Any], bool]] = {}
        """Records stored and not applied yet (a record below them is not), by seq; with
        whether another appliance appended them."""
        self._waiters: list[tuple[int, int, trio.Event]] = []
        self._tick = itertools.count()
        self._barrier_failing = False
        self._follower_error: StoreError | None = None
        self._archiver = Archiver(store, self.models.values())

    def watch(self, watcher: Callable[[dict[str, Any]], None]) -> None:
        """Call ``watcher(record)`` for every record committed from now on (a batch's records
        one by one), after every model applied it and before :meth:`commit` returns.

        A watcher runs inside the commit: it must neither block nor raise.
        """
        self._watchers.append(watcher)

    def watch_followed(self, watcher: Callable[[dict[str, Any]], None]) -> None:
        """Call ``watcher(record)`` for every record another appliance appended (a batch's
        records one by one), once every model and every :meth:`watch` watcher applied the
        whole record. It must neither block nor raise."""
        self._followed_watchers.append(watcher)

    async def wait_applied(self, seq: int) -> None:
        """Wait until every record up to ``seq`` is applied (at once if it is).

        Cancellation: safe; nothing is changed.

        Raises:
            StoreError: the follower stopped (the log was compacted past it…) before.
        """
        if self.applied_seq >= seq:
            await trio.lowlevel.checkpoint()
            return
        await self._wait_applied(seq)

    async def _wait_applied(self, seq: int) -> None:
        while self.applied_seq < seq:
            if self._follower_error is not None:
                raise StoreError(f"the follower stopped: {self._follower_error}")
            event = trio.Event()
            # one event per waiter, set once its seq is applied: a group's commits woken
            # in any order each wake once, not at every record applied before theirs
            heapq.heappush(self._waiters, (seq, next(self._tick), event))
            await event.wait()

    def _offer(self, seq: int, record: dict[str, Any], *, followed: bool) -> None:
        """Apply the record stored at ``seq`` once every record below it is applied: now if
        they are, and then every record offered already that follows it, in seq order (the
        commits of one group wake in any order; whichever comes with the next seq applies
        the others' too, so none waits for a scheduler pass per record)."""
        ready = self._ready
        ready[seq] = (record, followed)
        while (nxt := self.applied_seq + 1) in ready:
            record, followed = ready.pop(nxt)
            self.applying_seq = nxt
            self._apply(record)
            self._applied(nxt)
            if followed:
                for watcher in self._followed_watchers:
                    for inner in _records_of(record):
                        watcher(inner)

    def _applied(self, seq: int) -> None:
        if seq > self.applied_seq:
            self.applied_seq = seq
            waiters = self._waiters
            while waiters and waiters[0][0] <= seq:
                heapq.heappop(waiters)[2].set()

    async def barrier(self) -> None:
        """Read-your-writes across appliances (``docs/SCALE-OUT.md`` §6): wait until every
        record acknowledged anywhere before this call is applied here. On a store that is
        its log's only appender, at once.

        While the database cannot be reached (or the follower does not get to the head
        within ``BARRIER_WAIT`` seconds) it returns all the same: the caller reads what was
        applied, and the log says so once per outage. A head query that cannot connect
        fails within the session's ``connect_timeout`` (5 s by default).

        Cancellation: safe; nothing is changed.
        """
        if not self._ordered:
            await trio.lowlevel.checkpoint()
            return
        try:
            # (asked again by every barrier, the database away too: one that skipped the
            # question could miss a write acknowledged the moment the database was back;
            # the callers share the queries, so the database sees at most one at a time)
            head = await self.store.head()
        except StoreUnavailableError as e:
            self._barrier_failed(e.reason)
            return
        with trio.move_on_after(BARRIER_WAIT):
            await self.wait_applied(head)
            if self._barrier_failing:
                self._barrier_failing = False
                log.warning("read barrier: passed again; reads see every acknowledged write")
            return
        self._barrier_failed(f"records up to {head} not applied within {BARRIER_WAIT:.0f} s")

    def _barrier_failed(self, reason: str) -> None:
        if not self._barrier_failing:
            self._barrier_failing = True
            log.warning(
                "read barrier: not passed (%s); reads are served from what was applied (up to "
                "%d) and may miss writes other appliances acknowledged just before",
                reason,
                self.applied_seq,
            )

    async def follower(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Apply the records other appliances append, in seq order, as the store's
        ``follow()`` yields them (no-op on a store that is its log's only appender: it
        returns once started).

        Start-up: started at once (it catches up from the seq the models were recovered at).

        Raises:
            StoreError: the log was compacted past the records not yet read (the appliance
                must be restarted, to load the newest snapshot), or a record is damaged.

        Cancellation: between records; a record is applied whole or not at all.
        """
        task_status.started()
        if not self._ordered:
            return
        try:
            async with aclosing(self.store.follow()) as batches:
                async for batch in batches:
                    for seq, record in batch:
                        self._offer(seq, record, followed=True)
                    # (the own commits between them apply them, if they come later)
                    await self.wait_applied(batch[-1][0])
        except StoreError as e:
            log.critical(
                "follower: %s; this appliance stops (restart it: it loads the newest snapshot)",
                e,
            )
            # commits waiting for records the follower will never apply are told
            self._follower_error = e
            for _seq, _tick, event in self._waiters:
                event.set()
            self._waiters.clear()
            raise

    def recover(self) -> int:
        """Rebuild the models from what the store recovered. Returns the records replayed.

        The store lets go of what it recovered; its records are read one at a time (the file
        store reads a segment at a time), and every ``REPLAY_COMPACT_RECORDS`` the archiving
        models pack what they will archive: nothing of a long log outlives its replay but
        what the models keep, compactly.

        Raises:
            StoreCorruptError: a record of an older segment is not a record (the store does
                not open then either).
        """
        rec = self.store.recovered
        self.store.release_recovered()
        if rec.snapshot is not None:
            for name, model in self.models.items():
                if name in rec.snapshot:
                    model.load(rec.snapshot[name])
        count = 0
        for seq, record in rec.records:
            self.applying_seq = seq
            self._apply(record)
            count += 1
            if count % REPLAY_COMPACT_RECORDS == 0:
                self._archiver.compact()
        self._archiver.compact()
        self.applied_seq = self.store.last_seq
        return count

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
        the second sees the first. On a shared log the name is held on every appliance (the
        store's ``key_lock``) and the barrier is passed inside, so two creations on two
        appliances at once give one creation and one conflict too.

        Raises:
            StoreUnavailableError: the name cannot be held across appliances (the database
                is away): the change could not be committed anyway.
        """
        lock, users = self._key_locks.get(key, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._key_locks[key] = (lock, users + 1)
        try:
            async with lock:
                if not self._ordered:
                    yield
                else:
                    async with self.store.key_lock(repr(key)):
                        await self.barrier()
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

    async def commit(self, *records: dict[str, Any], fence: Sequence[tuple[str, int]] = ()) -> int:
        """Make ``records`` durable, then apply them to the models.

        Args:
            fence: ``(job_id, epoch)`` leases the records are fenced with (a job's driver in
                a cluster, ``docs/SCALE-OUT.md`` §4); see ``Store.append_many``.

        Returns:
            The sequence number of the last record.

        Raises:
            StoreUnavailableError: the store could not write them (its write or fsync failed,
                now or earlier and it is not writable again yet). None of ``records`` is
                stored and none was applied: the models are as before the call. The same
                records may be committed again once :meth:`wait_writable` returns.
            StaleLeaseError: a lease of ``fence`` has another epoch now; nothing was stored
                or applied.
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
                if fence:
                    seq = await self.store.append_many(stored, fence=fence)
                else:
                    seq = await self.store.append_many(stored)
                self._offer(seq, stored[0], followed=False)
                if self.applied_seq < seq:
                    await self._wait_applied(seq)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        return seq

    async def purge_every(
        self, purge: Callable[[], Awaitable[int]], *, seconds: float, what: str
    ) -> NoReturn:
        """Run ``purge`` now and every ``seconds`` (a retention task's loop): a purge the
        store refuses is put off, logged as ``what``, and tried again as soon as the store
        writes again."""
        while True:
            try:
                await purge()
            except StoreUnavailableError as e:
                log.warning("%s: purge put off until the store can write (%s)", what, e.reason)
                await self.wait_writable()
                continue
            await trio.sleep(seconds)

    async def commit_retrying(
        self, *records: dict[str, Any], fence: Sequence[tuple[str, int]] = ()
    ) -> int:
        """:meth:`commit`, waiting out store outages: the same ``records`` are committed again
        each time the store is writable again, until they are durable and applied.

        For changes that must happen and may wait (a job's step, a node's status), never for
        a request whose client should be told (503).

        Returns:
            The sequence number of the last record.

        Raises:
            StaleLeaseError: a lease of ``fence`` has another epoch now (see :meth:`commit`).
            StoreError: the store is closed; nothing was applied.

        Cancellation: while waiting for the store nothing is applied, and nothing will be;
        once the records were handed to the store, as for :meth:`commit`.
        """
        while True:
            try:
                return await self.commit(*records, fence=fence)
            except StoreUnavailableError:
                await self.wait_writable()

    async def archive(self) -> int:
        """Move what the archiving models offer to the store's archive; returns how many
        items were archived. Raises and cancels as :meth:`~.db_archive.Archiver.archive`."""
        return await self._archiver.archive()

    async def snapshot(self) -> int:
        """Write a snapshot of every model at the store's newest record (on a shared log, at
        the newest applied: every record up to it is applied, in order).

        First the archiving models' items are archived (and sparse archives re-archived),
        so that the snapshot refers to them instead of holding them. New commits wait while
        the models are copied, so the snapshot matches its sequence number exactly.

        Returns:
            The sequence number of the snapshot.

        Raises:
            StoreError: the snapshot could not be written (``StoreUnavailableError`` while
                the store is not writable). The log still holds every record: nothing is
                lost, a restart only replays more.
        """
        async with self._archiver.lock:
            await self._archiver.before_snapshot()
            if self._ordered:
                # applied in order: the models are exactly the records up to applied_seq
                # (commits in flight wait for the follower, which a gate would not stop)
                seq = self.applied_seq
                state, archives = self._copy_models()
            else:
                gate = trio.Event()
                while self._gate is not None:
                    await self._gate.wait()
                self._gate = gate
                try:
                    await self._idle.wait()
                    seq = self.store.last_seq
                    state, archives = self._copy_models()
                finally:
                    self._gate = None
                    gate.set()
            await self.store.write_snapshot(state, seq, archives)
        log.info("snapshot written at record %d", seq)
        return seq

    def _copy_models(self) -> tuple[dict[str, Any], dict[int, int]]:
        state = {name: model.snapshot() for name, model in self.models.items()}
        return state, self._archiver.archive_use()


def _records_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A record's records: a batch's, one by one, else itself."""
    if record.get("t") == "batch":
        return [r for inner in record["records"] for r in _records_of(inner)]
    return [record]
