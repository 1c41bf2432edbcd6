"""The coordinator of an appliance sharing a PostgreSQL store with others
(``docs/SCALE-OUT.md`` §4, §5, §8): leases with fencing epochs, node routes, mail, dead
appliances. The statements are in ``_pgsql``.

Three tasks, each on a connection of its own, every statement in a worker thread:

* **the lease task**, every ``lease_ttl / 3``: renews this appliance's row, renews all its
  leases in one statement (a job missing from the answer was taken over: the engine drops
  it), stops driving every job once ``lease_ttl`` passed without a renewal (self-fencing, on
  trio's clock), forgets the appliances not renewed for ``lease_ttl`` (their routes and
  mail), and takes over expired leases (``FOR UPDATE SKIP LOCKED``).
* **the sender**, every ``BATCH_SECONDS`` (or at once past ``BATCH_BYTES``): writes the
  routes of nodes that connected or left here, deletes closed jobs' leases, and mails the
  frames and node events queued for other appliances (one row per receiver, then
  ``NOTIFY``).
* **the receiver**: ``LISTEN`` on its mail's and the routes' doorbells (waited with
  ``trio.lowlevel.wait_readable``, and every ``MAIL_POLL`` seconds anyway: a doorbell may be
  lost): follows the routes by ``rev`` into its cache, takes its mail (``DELETE …
  RETURNING``) and hands each item to the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import trio

from ..errors import ProtocolError, StoreError, StoreUnavailableError
from ..jobs.events import NodeEvent, Output
from ..store import connect_postgres, redact_url, wait_postgres_doorbell
from . import _pgsql as sql
from ._base import ClusterEngine, LeaseGrant
from ._wire import AbortItem, EventItem, FrameItem, MailItem, decode_mail, encode_mail

__all__ = [
    "BATCH_BYTES",
    "BATCH_SECONDS",
    "MAIL_POLL",
    "OUTBOX_BYTES",
    "TAKEOVER_BATCH",
    "PostgresCoordinator",
]

log = logging.getLogger(__name__)

BATCH_SECONDS = 0.05
"""Most seconds a queued frame, event or route waits before the sender writes it."""
BATCH_BYTES = 64 * 1024
"""Queued mail bytes past which the sender writes at once."""
OUTBOX_BYTES = 4 * 1024 * 1024
"""Queued mail bytes past which :meth:`PostgresCoordinator.send_frame` and
:meth:`~PostgresCoordinator.forward` wait (back-pressure on the job's task or the node)."""
MAIL_POLL = 1.0
"""Seconds after which the receiver looks for mail though its doorbell did not ring."""
HOLD_SECONDS = 0.5
"""Seconds between two tries to send events held for a job whose lease is expired."""
LEAVE_SECONDS = 2.0
"""Seconds a stopping appliance gives its leases and routes back before it stops anyway."""
TAKEOVER_BATCH = 100
"""Most expired leases one takeover scan takes."""
_ITEM_BYTES = 64
"""What an item is counted for in the outbox besides its output's bytes."""

Connect = Callable[[str], psycopg.Connection[Any]]


def _ignore(org: str, node: str) -> None:
    """The route watcher of a coordinator nobody watches."""


def _connect(url: str) -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] = connect_postgres(url, autocommit=True)
    return conn


def _item_bytes(event: NodeEvent) -> int:
    return _ITEM_BYTES + (len(event.data) if isinstance(event, Output) else 0)


class PostgresCoordinator:
    """The cluster as one appliance takes part in it. Create it with :meth:`open`, run
    :meth:`run` under the root nursery.

    Args:
        url: the store's database URL.
        appliance_id: this appliance's id (the store's writer UUID).
        lease_ttl: seconds a lease (and this appliance's row) lasts without renewal.
    """

    clustered = True

    def __init__(self, url: str, appliance_id: str, *, lease_ttl: float) -> None:
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be positive")
        self._url = url
        self._where = redact_url(url)
        self._me = appliance_id
        self.lease_ttl = lease_ttl
        self._epochs: dict[str, int] = {}
        """Job → the epoch of its lease this appliance holds."""
        self._since: dict[str, int] = {}
        """Job → the renewal round during which its lease was taken."""
        self._round = 0
        self._claiming: set[str] = set()
        """Jobs whose lease is being claimed (not in ``_epochs`` yet)."""
        self._renewed_at = trio.current_time()
        self._claim_lock = trio.Lock()
        self._claim_conn: psycopg.Connection[Any] | None = None
        self._routes: dict[tuple[str, str], str] = {}
        """``(org, node)`` → the other appliance holding its connection."""
        self._route_rev = 0
        self._route_changed: Callable[[str, str], None] = _ignore
        self._route_changes: dict[tuple[str, str], str | None] = {}
        """``(org, node)`` → the incarnation connected here, ``None``: the connection ended."""
        self._releases: list[str] = []
        self._frames: dict[str, list[MailItem]] = {}
        self._events: list[EventItem | AbortItem] = []
        """Items for the drivers of their jobs (found by their leases when sent)."""
        self._held: list[tuple[float, EventItem | AbortItem]] = []
        """Items for jobs whose lease is expired, kept (for up to ``2 * lease_ttl``) until
        another appliance takes the job over, with when they were first held."""
        self._held_until = 0.0
        self._out_bytes = 0
        self._wake = trio.Event()
        self._room = trio.Event()
        self._room.set()
        self._opened: list[psycopg.Connection[Any]] = []
        """The tasks' connections made after a reconnect (closed when :meth:`run` ends)."""
        self.statistics_mail_sent = 0
        self.statistics_mail_received = 0

    @classmethod
    async def open(cls, url: str, appliance_id: str, *, lease_ttl: float) -> PostgresCoordinator:
        """Create the cluster's tables if needed.

        Raises:
            StoreError: the database cannot be reached or used.
        """

        def create() -> None:
            with _connect(url) as conn:
                sql.create_tables(conn)

        try:
            await trio.to_thread.run_sync(create)
        except psycopg.Error as e:
            where = redact_url(url)
            raise StoreError(f"cannot create the cluster's tables in {where}: {e}") from e
        return cls(url, appliance_id, lease_ttl=lease_ttl)

    # --- the engines' side (Coordinator) ---------------------------------------------------

    @property
    def appliance_id(self) -> str:
        return self._me

    def fence(self, job_id: str) -> Sequence[tuple[str, int]]:
        """``((job_id, epoch),)``; epoch 0 (never a lease's) for a job not held here."""
        return ((job_id, self._epochs.get(job_id, 0)),)

    def holds(self, job_id: str) -> bool:
        """Whether this appliance holds the job's lease."""
        return job_id in self._epochs

    async def claim(self, org: str, job_id: str) -> None:
        async with self._claim_lock:
            self._claiming.add(job_id)
            try:
                await trio.to_thread.run_sync(self._claim_sync, org, job_id)
            except psycopg.Error as e:
                if self._claim_conn is not None:
                    self._claim_conn.close()
                    self._claim_conn = None
                raise StoreUnavailableError("PostgreSQL unreachable", self._where) from e
            finally:
                self._claiming.discard(job_id)
            self._epochs[job_id] = 1
            self._since[job_id] = self._round

    def _claim_sync(self, org: str, job_id: str) -> None:
        if self._claim_conn is None or self._claim_conn.closed or self._claim_conn.broken:
            self._claim_conn = _connect(self._url)
        sql.claim(self._claim_conn, self._me, org, job_id, self.lease_ttl)

    def release(self, job_id: str) -> None:
        if self._epochs.pop(job_id, None) is not None:
            self._since.pop(job_id, None)
            self._releases.append(job_id)
            self._wake.set()

    async def lease_orphans(self, jobs: Sequence[tuple[str, str]]) -> None:
        if not jobs:
            await trio.lowlevel.checkpoint()
            return
        async with self._claim_lock:
            try:
                added = await trio.to_thread.run_sync(self._orphans_sync, jobs)
            except psycopg.Error as e:
                if self._claim_conn is not None:
                    self._claim_conn.close()
                    self._claim_conn = None
                raise StoreUnavailableError("PostgreSQL unreachable", self._where) from e
        if added:
            log.info("cluster: %d unclosed job(s) without a lease, to be taken over", added)

    def _orphans_sync(self, jobs: Sequence[tuple[str, str]]) -> int:
        if self._claim_conn is None or self._claim_conn.closed or self._claim_conn.broken:
            self._claim_conn = _connect(self._url)
        return sql.lease_orphans(self._claim_conn, self._me, jobs)

    def routed(self, org: str, node: str) -> str | None:
        return self._routes.get((org, node))

    def node_up(self, org: str, node: str, incarnation: str) -> None:
        self._route_changes[(org, node)] = incarnation
        self._routes.pop((org, node), None)
        self._wake.set()

    def watch_routes(self, changed: Callable[[str, str], None]) -> None:
        self._route_changed = changed

    def node_down(self, org: str, node: str) -> None:
        self._route_changes[(org, node)] = None
        self._wake.set()

    async def send_frame(
        self, appliance: str, org: str, node: str, frame_type: str, fields: dict[str, Any]
    ) -> None:
        await self._wait_room()
        self._frames.setdefault(appliance, []).append(FrameItem(org, node, frame_type, fields))
        self._queued(_ITEM_BYTES)

    async def forward(self, org: str, job_id: str, event: NodeEvent) -> None:
        await self._wait_room()
        self._events.append(EventItem(org, job_id, event))
        self._queued(_item_bytes(event))

    async def forward_abort(self, org: str, job_id: str) -> None:
        await self._wait_room()
        self._events.append(AbortItem(org, job_id))
        self._queued(_ITEM_BYTES)

    async def _wait_room(self) -> None:
        while not self._room.is_set():
            await self._room.wait()
        await trio.lowlevel.checkpoint()

    def _queued(self, size: int) -> None:
        self._out_bytes += size
        self._wake.set()
        if self._out_bytes >= OUTBOX_BYTES and self._room.is_set():
            self._room = trio.Event()

    # --- the tasks --------------------------------------------------------------------------

    async def run(
        self,
        engine: ClusterEngine,
        *,
        api_url: str = "",
        node_url: str = "",
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Take part in the cluster until cancelled.

        Start-up: ready once this appliance's row is written and the routes are loaded.

        Raises:
            StoreError: the database cannot be reached at start.

        Cancellation: a statement in progress finishes in its thread; the connections are
        closed.
        """
        conns: list[psycopg.Connection[Any]] = []
        try:
            try:
                lease_conn = await trio.to_thread.run_sync(_connect, self._url)
                conns.append(lease_conn)
                listen_conn = await trio.to_thread.run_sync(self._listen_sync)
                conns.append(listen_conn)
                send_conn = await trio.to_thread.run_sync(_connect, self._url)
                conns.append(send_conn)
                await trio.to_thread.run_sync(
                    sql.heartbeat, lease_conn, self._me, api_url, node_url, self.lease_ttl
                )
                self._renewed_at = trio.current_time()
                await self._follow_routes(listen_conn, engine)
            except psycopg.Error as e:
                raise StoreError(f"cluster: cannot reach {self._where}: {e}") from e
            log.info("cluster: appliance %s joined %s", self._me, self._where)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._lease_task, lease_conn, engine, api_url, node_url)
                nursery.start_soon(self._watchdog, engine)
                nursery.start_soon(self._sender, send_conn, engine)
                nursery.start_soon(self._receiver, listen_conn, engine)
                task_status.started()
        finally:
            for conn in [*conns, *self._opened]:
                conn.close()
            self._opened.clear()
            if self._claim_conn is not None:
                self._claim_conn.close()
                self._claim_conn = None

    async def leave(self) -> None:
        """A graceful stop: give the leases and routes back, so that the other appliances
        take the jobs over at their next scan instead of after ``lease_ttl``; this
        appliance drives nothing from then on (call it once its jobs may stop). Bounded by
        ``LEAVE_SECONDS`` (the database away: the leases expire on their own).

        Cancellation: shielded up to ``LEAVE_SECONDS``; a statement still running then is
        left to finish in its thread.
        """

        def leave() -> None:
            with _connect(self._url) as conn:
                sql.leave(conn, self._me)

        with trio.move_on_after(LEAVE_SECONDS, shield=True) as scope:
            try:
                await trio.to_thread.run_sync(leave, abandon_on_cancel=True)
            except psycopg.Error as e:
                log.warning("cluster: leases not given back at stop (%s)", e)
                return
        if scope.cancelled_caught:
            log.warning("cluster: leases not given back within %.0f s", LEAVE_SECONDS)
            return
        self._epochs.clear()
        log.info("cluster: appliance %s left (its leases given back)", self._me)

    def _listen_sync(self) -> psycopg.Connection[Any]:
        conn = _connect(self._url)
        try:
            sql.listen(conn, self._me)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _reconnect(self, conn: psycopg.Connection[Any], what: str) -> psycopg.Connection[Any]:
        """A working connection instead of ``conn`` (which broke), retried with a backoff."""
        conn.close()
        delay = 0.25
        while True:
            try:
                if what == "listen":
                    new = await trio.to_thread.run_sync(self._listen_sync)
                else:
                    new = await trio.to_thread.run_sync(_connect, self._url)
                self._opened = [c for c in self._opened if not c.closed]
                self._opened.append(new)
                log.info("cluster: %s connection to %s back", what, self._where)
                return new
            except psycopg.Error as e:
                log.warning("cluster: %s connection to %s failed (%s)", what, self._where, e)
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- leases and appliances ---------------------------------------------------------------

    async def _lease_task(
        self,
        conn: psycopg.Connection[Any],
        engine: ClusterEngine,
        api_url: str,
        node_url: str,
    ) -> None:
        period = self.lease_ttl / 3
        try:
            while True:
                try:
                    await self._lease_round(conn, engine, api_url, node_url)
                except psycopg.Error as e:
                    log.warning("cluster: lease round failed (%s)", e)
                    if conn.closed or conn.broken:
                        conn = await self._reconnect(conn, "lease")
                await trio.sleep(period)
        finally:
            conn.close()

    async def _watchdog(self, engine: ClusterEngine) -> None:
        """Self-fencing on this appliance's clock, whatever the lease task is waiting for (a
        statement stuck behind a lock, a database that does not answer)."""
        while True:
            await trio.sleep_until(self._renewed_at + self.lease_ttl)
            self._self_fence(engine)
            await trio.sleep(self.lease_ttl / 30)

    async def _lease_round(
        self,
        conn: psycopg.Connection[Any],
        engine: ClusterEngine,
        api_url: str,
        node_url: str,
    ) -> None:
        ttl = self.lease_ttl
        dead = await trio.to_thread.run_sync(sql.heartbeat, conn, self._me, api_url, node_url, ttl)
        self._round += 1
        round_ = self._round
        sent = trio.current_time()
        held = await trio.to_thread.run_sync(sql.renew, conn, self._me, ttl)
        self._renewed_at = sent
        lost = [
            job
            for job, epoch in self._epochs.items()
            if held.get(job) != epoch and self._since.get(job, 0) < round_
        ]
        if lost:
            for job in lost:
                del self._epochs[job]
                self._since.pop(job, None)
            log.warning("cluster: lease of %d job(s) taken over: %s", len(lost), ", ".join(lost))
            engine.leases_lost(lost)
        for appliance in dead:
            cleared = await trio.to_thread.run_sync(sql.declare_dead, conn, appliance)
            log.warning(
                "cluster: appliance %s not renewed for %.1f s: dead (%d node route(s) cleared)",
                appliance,
                ttl,
                cleared,
            )
        await self._rescue_mail(conn)
        # leases still this appliance's that it stopped driving (self-fenced, nobody took
        # them): driven again, with a new epoch that fences any step of the old drive
        stopped = [j for j in held if j not in self._epochs and j not in self._claiming]
        taken = []
        if stopped:
            taken = await trio.to_thread.run_sync(sql.retake, conn, self._me, stopped)
        taken += await trio.to_thread.run_sync(sql.take_over, conn, self._me, ttl, TAKEOVER_BATCH)
        if taken:
            grants = [LeaseGrant(org, job, epoch) for org, job, epoch in taken]
            for grant in grants:
                self._epochs[grant.job_id] = grant.epoch
                self._since[grant.job_id] = self._round
            log.info("cluster: took over %d job(s)", len(grants))
            await engine.take_over(grants)

    async def _rescue_mail(self, conn: psycopg.Connection[Any]) -> None:
        """The node events and aborts mailed to appliances that are no more go to their
        jobs' drivers now (held until a takeover names one); frames for their nodes are
        dropped (those nodes reconnect elsewhere)."""
        payloads = await trio.to_thread.run_sync(sql.take_orphan_mail, conn)
        rescued = 0
        for payload in payloads:
            try:
                items = decode_mail(payload)
            except ProtocolError as e:
                log.error("cluster: orphaned mail dropped: %s", e)
                continue
            for item in items:
                if not isinstance(item, FrameItem):
                    self._events.append(item)
                    self._out_bytes += _ITEM_BYTES
                    rescued += 1
        if rescued:
            log.info("cluster: %d node event(s) mailed to a dead appliance sent on", rescued)
            self._wake.set()

    def _self_fence(self, engine: ClusterEngine) -> None:
        """No renewal for ``lease_ttl``: another appliance may hold the leases now."""
        if self._epochs and trio.current_time() - self._renewed_at >= self.lease_ttl:
            lost = list(self._epochs)
            self._epochs.clear()
            self._since.clear()
            log.error(
                "cluster: leases not renewed for %.1f s: stopped driving %d job(s)",
                self.lease_ttl,
                len(lost),
            )
            engine.leases_lost(lost)

    # --- the sender --------------------------------------------------------------------------

    async def _sender(self, conn: psycopg.Connection[Any], engine: ClusterEngine) -> None:
        try:
            while True:
                await self._wake.wait()
                if self._out_bytes < BATCH_BYTES:
                    await trio.sleep(BATCH_SECONDS)
                self._wake = trio.Event()
                if self._held and not (
                    self._route_changes or self._releases or self._frames or self._events
                ):
                    with trio.move_on_at(self._held_until):  # or new items come
                        await self._wake.wait()
                    self._wake = trio.Event()
                try:
                    await self._flush(conn, engine)
                except psycopg.Error as e:
                    log.warning("cluster: sending to %s failed (%s)", self._where, e)
                    if conn.closed or conn.broken:
                        conn = await self._reconnect(conn, "send")
        finally:
            conn.close()

    async def _flush(self, conn: psycopg.Connection[Any], engine: ClusterEngine) -> None:
        changes, self._route_changes = self._route_changes, {}
        releases, self._releases = self._releases, []
        frames, self._frames = self._frames, {}
        events, self._events = self._events, []
        held, self._held = self._held, []
        now = trio.current_time()
        since = {id(item): at for at, item in held}
        events = [item for _at, item in held] + events
        self._out_bytes = 0
        self._room.set()
        up = [(org, node, inc) for (org, node), inc in changes.items() if inc is not None]
        down = [key for key, inc in changes.items() if inc is None]
        try:
            drivers: dict[str, str | None] = {}
            if events:
                jobs = sorted({e.job_id for e in events})
                drivers = await trio.to_thread.run_sync(sql.holders, conn, jobs)
            mine: list[EventItem | AbortItem] = []
            for item in events:
                if item.job_id not in drivers:
                    continue  # the job is closed: nobody drives it
                driver = drivers[item.job_id]
                if driver is None:
                    at = since.get(id(item), now)
                    if now - at < 2 * self.lease_ttl:
                        self._held.append((at, item))  # wait for the takeover
                elif driver == self._me:
                    mine.append(item)  # taken over by this appliance meanwhile
                else:
                    frames.setdefault(driver, []).append(item)
            rows = [(to, encode_mail(items)) for to, items in frames.items()]
            await trio.to_thread.run_sync(self._write_sync, conn, up, down, releases, rows)
        except BaseException:
            self._held = [(since.get(id(i), now), i) for i in events]  # tried again
            for key, inc in changes.items():  # the routes are written again next time
                self._route_changes.setdefault(key, inc)
            self._releases.extend(releases)
            if changes or releases:
                self._wake.set()
            raise
        self.statistics_mail_sent += len(rows)
        if self._held:
            self._held_until = trio.current_time() + HOLD_SECONDS
            self._wake.set()
        for item in mine:
            await _hand(engine, item)

    def _write_sync(
        self,
        conn: psycopg.Connection[Any],
        up: list[tuple[str, str, str]],
        down: list[tuple[str, str]],
        releases: list[str],
        rows: list[tuple[str, bytes]],
    ) -> None:
        with conn.transaction():
            if up or down:
                sql.write_routes(conn, self._me, up, down)
            sql.write_mail(conn, rows)
        if releases:
            sql.release(conn, self._me, releases)

    # --- the receiver ------------------------------------------------------------------------

    async def _receiver(self, conn: psycopg.Connection[Any], engine: ClusterEngine) -> None:
        while True:
            try:
                await self._follow_routes(conn, engine)
                payloads = await trio.to_thread.run_sync(sql.take_mail, conn, self._me)
            except psycopg.Error as e:
                log.warning("cluster: receiving from %s failed (%s)", self._where, e)
                conn = await self._reconnect(conn, "listen")
                continue
            for payload in payloads:
                self.statistics_mail_received += 1
                try:
                    items = decode_mail(payload)
                except ProtocolError as e:
                    log.error("cluster: mail dropped: %s", e)
                    continue
                for item in items:
                    await _hand(engine, item)
            if not await wait_postgres_doorbell(conn, MAIL_POLL):
                conn = await self._reconnect(conn, "listen")

    async def _follow_routes(self, conn: psycopg.Connection[Any], engine: ClusterEngine) -> None:
        rows = await trio.to_thread.run_sync(sql.fetch_routes, conn, self._route_rev)
        gone: list[tuple[str, str]] = []
        for org, node, appliance, why, rev in rows:
            key = (org, node)
            self._route_rev = max(self._route_rev, rev)
            if appliance is None or appliance == self._me:
                before = self._routes.pop(key, None)
                if appliance is None and why == "dead" and before is not None:
                    gone.append(key)
            else:
                before = self._routes.get(key)
                self._routes[key] = appliance
            if before != self._routes.get(key) and appliance != self._me:
                self._route_changed(org, node)
        if gone:
            engine.nodes_gone(gone)


async def _hand(engine: ClusterEngine, item: MailItem) -> None:
    """Hand a mail item to the engine it is for."""
    if isinstance(item, FrameItem):
        await engine.deliver(item.org, item.node, item.type, item.fields)
    elif isinstance(item, AbortItem):
        engine.abort_remote(item.org, item.job_id)
        await trio.lowlevel.checkpoint()
    else:
        await engine.post_remote(item.org, item.job_id, item.event)
