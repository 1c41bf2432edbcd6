"""``pushy store verify`` on a store in PostgreSQL: every snapshot and every record checked
in one read-only transaction, changing nothing."""

from __future__ import annotations

from typing import Any

import psycopg

from ..errors import StoreCorruptError
from ._format import decode_snapshot
from ._pgopen import FORMAT, connect, decode_frames, detail
from ._pgurl import redact_url
from ._verify import VerifyReport

__all__ = ["verify"]


def verify(url: str) -> VerifyReport:
    """Check every snapshot and every record of the store in ``url``'s database, in one
    read-only ``REPEATABLE READ`` transaction (a consistent view beside live appliances).

    Returns:
        The report; ``ok`` is false when a record or snapshot is damaged, seqs are missing
        that no valid snapshot covers, or the head does not meet the log's end.
    """
    where = redact_url(url)
    problems: list[str] = []
    notes: list[str] = []
    try:
        conn = connect(url, autocommit=False)
    except psycopg.Error as e:
        return VerifyReport(False, 0, 0, 0, 0, [f"cannot connect: {detail(e)}"], where)
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            return _verify_in(conn, where, problems, notes)
    except psycopg.Error as e:
        problems.append(f"cannot read the store: {detail(e)}")
        return VerifyReport(False, 0, 0, 0, 0, problems, where, notes)
    finally:
        conn.close()


def _verify_in(
    conn: psycopg.Connection[Any], where: str, problems: list[str], notes: list[str]
) -> VerifyReport:
    found = conn.execute("SELECT to_regclass('pushy_meta') IS NOT NULL").fetchone()
    if not found or not found[0]:
        problems.append("no pushy store here (no pushy_meta table in the search_path)")
        return VerifyReport(False, 0, 0, 0, 0, problems, where, notes)
    row = conn.execute("SELECT value FROM pushy_meta WHERE key = 'format'").fetchone()
    if row is None or row[0] != FORMAT:
        problems.append(f"unknown store format {row[0] if row else None!r}")
        return VerifyReport(False, 0, 0, 0, 0, problems, where, notes)
    head_row = conn.execute("SELECT seq FROM pushy_head WHERE id = 1").fetchone()
    head = int(head_row[0]) if head_row else 0
    valid: list[int] = []
    seqs = [int(s) for (s,) in conn.execute("SELECT seq FROM pushy_snapshot ORDER BY seq")]
    for seq in seqs:
        state_row = conn.execute(
            "SELECT state FROM pushy_snapshot WHERE seq = %s", (seq,)
        ).fetchone()
        try:
            decode_snapshot(bytes(state_row[0]) if state_row else b"", path=where, seq=seq)
        except StoreCorruptError as e:
            problems.append(f"snapshot {seq}: {e.reason}; the next open skips it")
            continue
        valid.append(seq)
    base = max(valid, default=0)
    records = 0
    size = 0
    expected: int | None = None
    with conn.cursor(name="pushy_verify", binary=True) as cur:
        cur.itersize = 2000
        cur.execute("SELECT seq, record FROM pushy_log ORDER BY seq")
        for seq, record in cur:
            seq = int(seq)
            frame = bytes(record)
            size += len(frame)
            records += 1
            if expected is None:
                if seq > base + 1:
                    problems.append(
                        f"records {base + 1}..{seq - 1} are missing and no valid snapshot "
                        "covers them"
                    )
            elif seq != expected:
                problems.append(f"records {expected}..{seq - 1} are missing")
            expected = seq + 1
            try:
                decode_frames(seq, [frame], where)
            except StoreCorruptError as e:
                problems.append(f"{e.reason}; the store will not open")
    end = expected - 1 if expected is not None else base
    if expected is None and head > base:
        problems.append(f"records {base + 1}..{head} are missing and no valid snapshot covers them")
    elif end != head and not (expected is None and head <= base):
        problems.append(f"the head says {head}, the log ends at {end}")
    notes.append(f"head at seq {head}; newest valid snapshot at seq {base}")
    return VerifyReport(
        ok=not problems,
        segments=0,
        records=records,
        bytes=size,
        snapshots=len(seqs),
        problems=problems,
        directory=where,
        notes=notes,
    )
