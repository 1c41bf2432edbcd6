"""Opening a store in PostgreSQL: connections with the store's session settings, the
tables, the open lock, and recovery. The tables and the rules they follow are specified in
``_postgres``'s docstring; :class:`~._postgres.PostgresStore` is built on what :func:`recover`
returns.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import conninfo

from ..errors import StoreCorruptError, StoreError
from ._base import Recovered
from ._format import decode_snapshot, encode_segment_header, scan_segment

__all__ = [
    "FORMAT",
    "Opened",
    "connect",
    "decode_frames",
    "detail",
    "reason",
    "recover",
    "take_open_lock",
]

log = logging.getLogger(__name__)

FORMAT = "1"
"""``pushy_meta.format`` of the tables this module writes."""
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pushy_meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pushy_head "
    "(id int PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pushy_log "
    "(seq bigint PRIMARY KEY, writer uuid NOT NULL, record bytea NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pushy_snapshot (seq bigint PRIMARY KEY, state bytea NOT NULL)",
)
_SESSION = (
    # acknowledged = durable, whatever postgresql.conf says
    "SET synchronous_commit = on",
    # a stalled or vanished appliance cannot hold the head's lock for long
    "SET idle_in_transaction_session_timeout = '10s'",
    "SET lock_timeout = '10s'",
    "SET statement_timeout = '30s'",
)
_CONNECT_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "application_name": "pushy",
}
_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('pushy-store-schema:' || current_schema()))"
_OPEN_LOCK = "SELECT pg_try_advisory_lock(hashtext('pushy-store-open:' || current_schema()))"
_SHARED_OPEN_LOCK = (
    "SELECT pg_try_advisory_lock_shared(hashtext('pushy-store-open:' || current_schema()))"
)
_UNREACHABLE_STATES = ("08", "57P")  # connection exceptions; admin shutdown, crash, starting


def connect(url: str, *, autocommit: bool) -> psycopg.Connection[Any]:
    """A connection with the store's session settings (URL parameters win over the
    defaults: keepalives, a 5 s connect timeout).

    Raises:
        psycopg.Error: the database cannot be reached or refuses the settings.
    """
    params: dict[str, Any] = conninfo.conninfo_to_dict(url)
    for key, value in _CONNECT_DEFAULTS.items():
        params.setdefault(key, value)
    conn = psycopg.connect(**params, autocommit=autocommit)
    try:
        for statement in _SESSION:
            conn.execute(statement)
        if not autocommit:
            conn.commit()
    except BaseException:
        conn.close()
        raise
    return conn


def reason(e: psycopg.Error) -> str:
    """What a client is told (no host names or paths): the condition, not the message."""
    state = e.sqlstate
    if state is None or state.startswith(_UNREACHABLE_STATES):
        return "PostgreSQL unreachable"
    return f"PostgreSQL error {state}"


def detail(e: BaseException) -> str:
    """The first line of an error's message, for logs and the operator's reports."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def decode_frames(first_seq: int, frames: Sequence[bytes], where: str) -> list[dict[str, Any]]:
    """The records of consecutive framed rows (seqs ``first_seq``…), checked as a segment.

    Raises:
        StoreCorruptError: a frame fails its length, CRC or msgpack check; the error names
            the seq.
    """
    if not frames:
        return []
    data = encode_segment_header(first_seq) + b"".join(frames)
    scan = scan_segment(data, path=where, first_seq=first_seq)
    if scan.damage is not None:
        seq = first_seq + len(scan.records)
        raise StoreCorruptError(f"{where} pushy_log", seq, f"record {seq}: {scan.damage.reason}")
    return scan.records


@dataclasses.dataclass(slots=True)
class Opened:
    """What recovery found, with the connection it read it on (the writer's from then on)."""

    conn: psycopg.Connection[Any]
    recovered: Recovered
    head: int
    bytes: int


def take_open_lock(conn: psycopg.Connection[Any], *, exclusive: bool = True) -> bool:
    """Take the open's session lock: exclusive (a maintenance command alone on the store) or
    shared (an appliance of a cluster); ``False`` when a session holds it in the other mode
    (or, exclusive, in any)."""
    row = conn.execute(_OPEN_LOCK if exclusive else _SHARED_OPEN_LOCK).fetchone()
    conn.commit()
    return bool(row and row[0])


def recover(url: str, where: str, exclusive: bool) -> Opened:
    """Create the tables if needed, lock, and read the snapshot and the records after it.
    Runs in a worker thread."""
    try:
        conn = connect(url, autocommit=False)
    except psycopg.Error as e:
        raise StoreError(f"cannot connect to {where}: {detail(e)}") from e
    try:
        try:
            with conn.transaction():
                conn.execute(_SCHEMA_LOCK)
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO pushy_meta VALUES ('format', %s) ON CONFLICT DO NOTHING",
                    (FORMAT,),
                )
                conn.execute("INSERT INTO pushy_head VALUES (1, 0) ON CONFLICT DO NOTHING")
                row = conn.execute("SELECT value FROM pushy_meta WHERE key = 'format'").fetchone()
            if row is None or row[0] != FORMAT:
                raise StoreError(f"{where}: unknown store format {row[0] if row else None!r}")
            if not take_open_lock(conn, exclusive=exclusive):
                raise StoreError(
                    f"{where} is already open (another pushy appliance?)"
                    if exclusive
                    else f"{where} is held alone by a maintenance command (pushy store compact?)"
                )
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                opened = _read(conn, where)
            conn.isolation_level = None
        except psycopg.Error as e:
            raise StoreError(f"cannot open the store in {where}: {detail(e)}") from e
    except BaseException:
        conn.close()
        raise
    return opened


def _read(conn: psycopg.Connection[Any], where: str) -> Opened:
    head_row = conn.execute("SELECT seq FROM pushy_head WHERE id = 1").fetchone()
    head = int(head_row[0]) if head_row else 0
    state: Any = None
    base = 0
    seqs = [int(s) for (s,) in conn.execute("SELECT seq FROM pushy_snapshot ORDER BY seq DESC")]
    for seq in seqs:
        row = conn.execute("SELECT state FROM pushy_snapshot WHERE seq = %s", (seq,)).fetchone()
        try:
            state = decode_snapshot(bytes(row[0]) if row else b"", path=where, seq=seq).state
        except StoreCorruptError as e:
            log.warning(
                "store: snapshot %d in %s is damaged (%s); trying an older one", seq, where, e
            )
            continue
        base = seq
        break
    cur = conn.cursor(binary=True)
    rows = cur.execute(
        "SELECT seq, record FROM pushy_log WHERE seq > %s ORDER BY seq", (base,)
    ).fetchall()
    size_row = conn.execute(
        "SELECT coalesce(sum(octet_length(record)), 0) FROM pushy_log"
    ).fetchone()
    if head > base and (not rows or int(rows[0][0]) != base + 1):
        found = int(rows[0][0]) if rows else head + 1
        raise StoreCorruptError(where, base + 1, f"records {base + 1}..{found - 1} are missing")
    for index, (seq, _record) in enumerate(rows):
        if int(seq) != base + 1 + index:
            raise StoreCorruptError(
                where, base + 1 + index, f"record {base + 1 + index} is missing"
            )
    if rows and int(rows[-1][0]) != head:
        raise StoreCorruptError(where, head, f"the head says {head}, the log ends at {rows[-1][0]}")
    records = decode_frames(base + 1, [bytes(r) for _s, r in rows], where)
    log.info(
        "store: opened %s: snapshot at seq %d, %d record(s) replayed, last seq %d",
        where,
        base,
        len(records),
        head,
    )
    return Opened(
        conn=conn,
        recovered=Recovered(state, base, list(enumerate(records, start=base + 1))),
        head=head,
        bytes=int(size_row[0]) if size_row else 0,
    )
