"""The follower's reads of a store in PostgreSQL and its doorbell (``LISTEN pushy_log``).

The doorbell has no replay: :meth:`~._postgres.PostgresStore.follow` reads ``seq >
position`` with :func:`fetch` whenever :func:`wait_doorbell` says it rang, every
``FOLLOW_POLL`` seconds anyway, and after every reconnect (:func:`listen`).
"""

from __future__ import annotations

from typing import Any

import psycopg
import trio

from ._pgopen import connect

__all__ = ["FOLLOW_BATCH", "FOLLOW_POLL", "fetch", "listen", "wait_doorbell"]

FOLLOW_BATCH = 10_000
"""Most records one read of the follower fetches."""
FOLLOW_POLL = 5.0
"""Seconds after which the follower reads the log even though its doorbell did not ring."""


def listen(url: str) -> psycopg.Connection[Any]:
    """A connection of the follower's own, listening on ``pushy_log`` (in a worker thread).

    Raises:
        psycopg.Error: the database cannot be reached.
    """
    conn = connect(url, autocommit=True)
    try:
        conn.execute("LISTEN pushy_log")
    except BaseException:
        conn.close()
        raise
    return conn


def fetch(conn: psycopg.Connection[Any], after: int) -> list[tuple[int, Any, bytes]]:
    """Up to ``FOLLOW_BATCH`` rows ``(seq, writer, framed record)`` after seq ``after``, in
    seq order (in a worker thread).

    Raises:
        psycopg.Error: the connection broke.
    """
    cur = conn.cursor(binary=True)
    rows = cur.execute(
        "SELECT seq, writer, record FROM pushy_log WHERE seq > %s ORDER BY seq LIMIT %s",
        (after, FOLLOW_BATCH),
    ).fetchall()
    return [(int(s), w, bytes(r)) for s, w, r in rows]


async def wait_doorbell(conn: psycopg.Connection[Any], poll: float = FOLLOW_POLL) -> bool:
    """Wait for a notification on the LISTENing ``conn`` (or ``poll`` seconds); ``False``
    when the connection broke. The follower's doorbell, and the cluster's mail's."""
    try:
        if list(conn.notifies(timeout=0)):
            return True  # rang during the last read
    except psycopg.Error:
        return False
    with trio.move_on_after(poll):
        await trio.lowlevel.wait_readable(conn.fileno())
    try:
        list(conn.notifies(timeout=0))
    except psycopg.Error:
        return False
    return True
