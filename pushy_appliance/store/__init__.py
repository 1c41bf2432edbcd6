"""The append-only store: records made durable before they are acknowledged.

``open_store(directory)`` recovers the store in ``directory`` (``None``: a MemoryStore),
starts its single writer task and yields a :class:`Store`::

    async with open_store(data_dir / "store") as store:
        state = rebuild(store.recovered.snapshot, store.recovered.records)
        seq = await store.append({"type": "job_created", "id": job_id})  # durable now
        ...
        await store.write_snapshot(state_as_msgpack(), seq)

The on-disk format is specified in ``_format``'s docstring; recovery and its rules on damage
in ``_file``'s; the group commit and the archive in ``_base``'s. ``verify_store`` checks a
store without changing it (``pushy store verify``).

Beside the log, the store keeps an *archive*: blobs (finished jobs' details) appended once
and read back by reference, which a snapshot refers to instead of holding them::

    refs = await store.archive([blob1, blob2])        # durable now
    data = store.read_archived(refs[0])               # one pread
    await store.write_snapshot(state_with_refs, seq, archives={refs[0][0]: end})

``open_postgres_store(url)`` opens the same store in a PostgreSQL database instead
(``store.url``; the tables and their rules are in ``_postgres``'s docstring, the cluster built
on them in ``docs/SCALE-OUT.md``), and ``verify_postgres_store(url)`` checks it. Both import
the optional driver (``psycopg``, the ``postgresql`` extra) only when called: the file store
never loads it.

A write that fails (disk full, I/O error, file size limit) is never acknowledged: its callers
get :class:`~pushy_appliance.errors.StoreUnavailableError`, the log is cut back to its last
durable group, and the store refuses writes (reads of what it recovered go on) until its
writer's retries, with a backoff of up to ``RETRY_MAX`` seconds, can write again::

    try:
        await store.append(record)
    except StoreUnavailableError:
        await store.wait_writable()  # then append again, or give up
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from ..errors import StoreError
from ._base import GroupCommitStore, Recovered, Store, StoreStatistics
from ._file import FileStore
from ._format import MAX_RECORD_BYTES, BlobRef
from ._memory import MemoryStore
from ._outage import RETRY_MAX
from ._pgurl import redact_url
from ._verify import VerifyReport, verify_store

if TYPE_CHECKING:
    from ._postgres import PostgresStore

__all__ = [
    "MAX_RECORD_BYTES",
    "RETRY_MAX",
    "BlobRef",
    "FileStore",
    "MemoryStore",
    "Recovered",
    "Store",
    "StoreStatistics",
    "VerifyReport",
    "connect_postgres",
    "open_postgres_store",
    "open_store",
    "redact_url",
    "verify_postgres_store",
    "verify_store",
    "wait_postgres_doorbell",
]

_NO_DRIVER = (
    "store.url needs the PostgreSQL driver: pip install 'pushy-appliance[postgresql]' (psycopg 3)"
)

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_store(
    directory: str | os.PathLike[str] | None,
    *,
    fsync: bool = True,
    segment_bytes: int = 64 * 1024 * 1024,
    queue_size: int = 4096,
    close_timeout: float = 30.0,
    archive_bytes: int = 64 * 1024 * 1024,
) -> AsyncIterator[Store]:
    """Open (creating it if needed) and recover a store, and run its writer.

    Args:
        directory: the store's directory (``DATA/store``), created with ``quarantine/`` if
            missing; ``None`` for a :class:`MemoryStore`.
        fsync: fsync every group, snapshot and directory change. ``False`` is for fast unit
            tests only: nothing is durable then.
        segment_bytes: size after which the writer starts a new segment.
        queue_size: capacity of the writer's request channel; appends wait when it is full.
        close_timeout: seconds the exit may spend committing what is still queued.
        archive_bytes: size after which the archive goes on in a new file.

    Yields:
        The store, recovered, with its writer running.

    Raises:
        ValueError: when ``segment_bytes``, ``queue_size`` or ``archive_bytes`` is below 1.
        StoreCorruptError: damage that recovery must not cut: in a segment other than the
            newest, or missing seqs.
        StoreError: the directory cannot be created, locked, read or written.

    Start-up: recovery runs in a worker thread before the block is entered.

    Cancellation: on exit, by exception or cancellation too, the writer commits everything
    already queued under a shielded cancel scope bounded by ``close_timeout``, then the files
    are closed and the lock released. Appends still waiting after that get StoreError.
    """
    if segment_bytes < 1 or archive_bytes < 1:
        raise ValueError("segment_bytes and archive_bytes must be at least 1")
    store: GroupCommitStore
    if directory is None:
        store = MemoryStore(queue_size=queue_size, archive_bytes=archive_bytes)
    else:
        store = await FileStore.open(
            directory,
            fsync=fsync,
            segment_bytes=segment_bytes,
            queue_size=queue_size,
            archive_bytes=archive_bytes,
        )
    async with _running(store, close_timeout):
        yield store


@asynccontextmanager
async def open_postgres_store(
    url: str,
    *,
    exclusive: bool = True,
    queue_size: int = 4096,
    close_timeout: float = 30.0,
) -> AsyncIterator[PostgresStore]:
    """Open (creating its tables if needed) and recover a store in a PostgreSQL database, and
    run its writer. The same contract as :func:`open_store` (whose ``head()`` here asks the
    database), plus ``follow()``.

    Args:
        url: a ``postgresql://`` URL (libpq's form: several hosts, ``sslmode``, ``options``).
        exclusive: hold the store alone: a second exclusive open of the same database (and
            schema) fails, as a second open of a directory does. ``False`` lets several
            stores share the log (they see each other's records through ``follow()``).
        queue_size: capacity of the writer's request channel.
        close_timeout: seconds the exit may spend committing what is still queued.

    Yields:
        The :class:`~._postgres.PostgresStore`, recovered, with its writer running.

    Raises:
        ValueError: when ``queue_size`` is below 1.
        StoreCorruptError: a record fails its checks, or seqs are missing.
        StoreError: the driver is not installed, the database cannot be reached or used, or
            another exclusive store has it open.

    Start-up and cancellation: as for :func:`open_store`.
    """
    try:
        from ._postgres import PostgresStore
    except ImportError as e:
        raise StoreError(_NO_DRIVER) from e
    store = await PostgresStore.open(url, exclusive=exclusive, queue_size=queue_size)
    async with _running(store, close_timeout):
        yield store


def connect_postgres(url: str, *, autocommit: bool) -> Any:
    """A ``psycopg`` connection to the store's database with the store's session settings
    (keepalives, timeouts, ``synchronous_commit = on``), for what lives beside the log (the
    cluster's tables, ``pushy_appliance.cluster``). Blocking: call it in a worker thread.

    Raises:
        StoreError: the driver is not installed.
        psycopg.Error: the database cannot be reached.
    """
    try:
        from ._pgopen import connect
    except ImportError as e:
        raise StoreError(_NO_DRIVER) from e
    return connect(url, autocommit=autocommit)


async def wait_postgres_doorbell(conn: Any, poll: float) -> bool:
    """Wait for a notification on the LISTENing connection ``conn`` (one of
    :func:`connect_postgres`'s), or ``poll`` seconds; ``False`` when the connection broke
    (the follower's doorbell, for the cluster's)."""
    from ._pgfollow import wait_doorbell

    return await wait_doorbell(conn, poll)


def verify_postgres_store(url: str) -> VerifyReport:
    """Check every snapshot and every record's CRC of the store in a PostgreSQL database,
    changing nothing (it may run beside live appliances: it reads one consistent snapshot).

    Raises:
        StoreError: the driver is not installed.
    """
    try:
        from ._pgverify import verify
    except ImportError as e:
        raise StoreError(_NO_DRIVER) from e
    return verify(url)


@asynccontextmanager
async def _running(store: GroupCommitStore, close_timeout: float) -> AsyncIterator[None]:
    """Run ``store``'s writer for the block; flush and release it on the way out."""
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            try:
                yield
            except BaseException as e:
                # Re-raised below, outside the nursery, so that it is not wrapped in an
                # ExceptionGroup on its way out.
                body_error = e
            finally:
                with trio.move_on_after(close_timeout, shield=True) as scope:
                    await store.aclose()
                if scope.cancelled_caught:
                    log.error(
                        "store: pending records not flushed within %.1f s; they are lost",
                        close_timeout,
                    )
                nursery.cancel_scope.cancel()
    finally:
        store.release()
    if body_error is not None:
        raise body_error
