"""The cluster's tables in PostgreSQL and every statement on them (``docs/SCALE-OUT.md`` §2,
§4, §5, §8). Each function runs in a worker thread on a connection of the caller's (one
task's), made with ``store.connect_postgres``; the tables live beside the store's in the
connection's ``search_path``.

::

    pushy_appliance  (id uuid PRIMARY KEY, api_url text, node_url text, alive_at timestamptz)
    pushy_lease      (org text, job_id text PRIMARY KEY, holder uuid, epoch bigint,
                      expires_at timestamptz)                   -- indexes on holder, expires_at
    pushy_node_route (org text, node text, appliance uuid NULL, incarnation text,
                      rev bigint, gone text NULL, PRIMARY KEY (org, node))   -- index on rev
    pushy_mail       (id bigserial PRIMARY KEY, to_appliance uuid, payload bytea)
                                                                -- index on (to_appliance, id)

Times are the database's (``now()``), never an appliance's. A route is never deleted: a
connection that ended sets ``appliance`` to NULL (``gone = 'lost'``, or ``'dead'`` when its
appliance was declared dead) with a new ``rev``, so that every appliance's cache follows the
routes by ``rev > last`` (the route lock makes revs commit-ordered).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

__all__ = [
    "Route",
    "claim",
    "create_tables",
    "declare_dead",
    "fetch_routes",
    "heartbeat",
    "lease_orphans",
    "leave",
    "listen",
    "release",
    "renew",
    "retake",
    "take_mail",
    "take_orphan_mail",
    "take_over",
    "write_mail",
    "write_routes",
]

Route = tuple[str, str, str | None, str | None, int]
"""``(org, node, appliance or None, gone or None, rev)``."""

_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('pushy-cluster-schema:' || current_schema()))"
_ROUTE_LOCK = "SELECT pg_advisory_xact_lock(hashtext('pushy-route:' || current_schema()))"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pushy_appliance (id uuid PRIMARY KEY, api_url text NOT NULL, "
    "node_url text NOT NULL, alive_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pushy_lease (org text NOT NULL, job_id text PRIMARY KEY, "
    "holder uuid NOT NULL, epoch bigint NOT NULL, expires_at timestamptz NOT NULL)",
    "CREATE INDEX IF NOT EXISTS pushy_lease_holder ON pushy_lease (holder)",
    "CREATE INDEX IF NOT EXISTS pushy_lease_expires ON pushy_lease (expires_at)",
    "CREATE SEQUENCE IF NOT EXISTS pushy_route_rev",
    "CREATE TABLE IF NOT EXISTS pushy_node_route (org text NOT NULL, node text NOT NULL, "
    "appliance uuid, incarnation text NOT NULL, rev bigint NOT NULL, gone text, "
    "PRIMARY KEY (org, node))",
    "CREATE INDEX IF NOT EXISTS pushy_node_route_rev ON pushy_node_route (rev)",
    "CREATE TABLE IF NOT EXISTS pushy_mail (id bigserial PRIMARY KEY, "
    "to_appliance uuid NOT NULL, payload bytea NOT NULL)",
    "CREATE INDEX IF NOT EXISTS pushy_mail_to ON pushy_mail (to_appliance, id)",
)
ROUTE_CHANNEL = "pushy_route"


def mail_channel(appliance: str) -> str:
    """The doorbell of ``appliance``'s mail (``NOTIFY`` channel)."""
    return "pushy_mail_" + uuid.UUID(appliance).hex


def create_tables(conn: psycopg.Connection[Any]) -> None:
    """Create the cluster's tables if needed (one creator at a time: the schema lock)."""
    with conn.transaction():
        conn.execute(_SCHEMA_LOCK)
        for statement in _SCHEMA:
            conn.execute(statement)


def listen(conn: psycopg.Connection[Any], me: str) -> None:
    """``LISTEN`` on this appliance's mail and on the routes (an autocommit connection)."""
    conn.execute(f"LISTEN {mail_channel(me)}")
    conn.execute(f"LISTEN {ROUTE_CHANNEL}")


def heartbeat(
    conn: psycopg.Connection[Any], me: str, api_url: str, node_url: str, ttl: float
) -> list[str]:
    """Renew this appliance's row; the other appliances not renewed for ``ttl`` (dead)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO pushy_appliance (id, api_url, node_url, alive_at) "
            "VALUES (%s, %s, %s, now()) ON CONFLICT (id) DO UPDATE SET alive_at = now()",
            (me, api_url, node_url),
        )
        rows = conn.execute(
            "SELECT id FROM pushy_appliance WHERE id <> %s "
            "AND alive_at < now() - make_interval(secs => %s)",
            (me, ttl),
        ).fetchall()
    return [str(r[0]) for r in rows]


def claim(conn: psycopg.Connection[Any], me: str, org: str, job_id: str, ttl: float) -> None:
    """Insert a new job's lease, epoch 1."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO pushy_lease (org, job_id, holder, epoch, expires_at) "
            "VALUES (%s, %s, %s, 1, now() + make_interval(secs => %s))",
            (org, job_id, me, ttl),
        )


def lease_orphans(conn: psycopg.Connection[Any], me: str, jobs: Sequence[tuple[str, str]]) -> int:
    """Expired leases (epoch 0) for the jobs ``(org, job_id)`` that have none; how many."""
    with conn.transaction():
        cur = conn.execute(
            "INSERT INTO pushy_lease (org, job_id, holder, epoch, expires_at) "
            "SELECT o, j, %s, 0, now() - interval '1 second' "
            "FROM unnest(%s::text[], %s::text[]) AS t(o, j) ON CONFLICT (job_id) DO NOTHING",
            (me, [o for o, _j in jobs], [j for _o, j in jobs]),
        )
    return max(cur.rowcount, 0)


def renew(conn: psycopg.Connection[Any], me: str, ttl: float) -> dict[str, int]:
    """Renew every lease this appliance holds (one statement); job → epoch of each."""
    with conn.transaction():
        rows = conn.execute(
            "UPDATE pushy_lease SET expires_at = now() + make_interval(secs => %s) "
            "WHERE holder = %s RETURNING job_id, epoch",
            (ttl, me),
        ).fetchall()
    return {str(j): int(e) for j, e in rows}


def take_over(
    conn: psycopg.Connection[Any], me: str, ttl: float, limit: int
) -> list[tuple[str, str, int]]:
    """Take up to ``limit`` expired leases (``SKIP LOCKED``: none another appliance is
    taking); ``(org, job_id, epoch)`` of each, the epoch one more than before."""
    with conn.transaction():
        rows = conn.execute(
            "UPDATE pushy_lease l SET holder = %(me)s, epoch = l.epoch + 1, "
            "expires_at = now() + make_interval(secs => %(ttl)s) "
            "FROM (SELECT job_id FROM pushy_lease WHERE expires_at < now() "
            "ORDER BY expires_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS expired "
            "WHERE l.job_id = expired.job_id RETURNING l.org, l.job_id, l.epoch",
            {"me": me, "ttl": ttl, "limit": limit},
        ).fetchall()
    return [(str(o), str(j), int(e)) for o, j, e in rows]


def retake(
    conn: psycopg.Connection[Any], me: str, job_ids: Sequence[str]
) -> list[tuple[str, str, int]]:
    """Bump the epoch of leases this appliance holds but stopped driving (it could not renew
    them for a while, and nobody took them meanwhile); ``(org, job_id, epoch)`` of each."""
    with conn.transaction():
        rows = conn.execute(
            "UPDATE pushy_lease SET epoch = epoch + 1 WHERE holder = %s AND job_id = ANY(%s) "
            "RETURNING org, job_id, epoch",
            (me, list(job_ids)),
        ).fetchall()
    return [(str(o), str(j), int(e)) for o, j, e in rows]


def release(conn: psycopg.Connection[Any], me: str, job_ids: Sequence[str]) -> None:
    """Delete the leases of closed jobs (only those still this appliance's)."""
    with conn.transaction():
        conn.execute(
            "DELETE FROM pushy_lease WHERE holder = %s AND job_id = ANY(%s)", (me, list(job_ids))
        )


def holders(conn: psycopg.Connection[Any], job_ids: Sequence[str]) -> dict[str, str | None]:
    """Job → the appliance holding its lease, ``None`` while the lease is expired or its
    holder was declared dead (a takeover is due); jobs without one are left out."""
    rows = conn.execute(
        "SELECT l.job_id, l.holder, l.expires_at > now() AND a.id IS NOT NULL "
        "FROM pushy_lease l LEFT JOIN pushy_appliance a ON a.id = l.holder "
        "WHERE l.job_id = ANY(%s)",
        (list(job_ids),),
    ).fetchall()
    return {str(j): str(h) if live else None for j, h, live in rows}


def write_routes(
    conn: psycopg.Connection[Any],
    me: str,
    up: Sequence[tuple[str, str, str]],
    down: Sequence[tuple[str, str]],
) -> None:
    """Upsert the routes of nodes connected here (``(org, node, incarnation)``) and clear
    those of connections that ended here (only if still ours), then ring the routes'
    doorbell. In the caller's transaction."""
    conn.execute(_ROUTE_LOCK)
    if up:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pushy_node_route (org, node, appliance, incarnation, rev) "
                "VALUES (%s, %s, %s, %s, nextval('pushy_route_rev')) ON CONFLICT (org, node) "
                "DO UPDATE SET appliance = EXCLUDED.appliance, "
                "incarnation = EXCLUDED.incarnation, rev = EXCLUDED.rev, gone = NULL",
                [(org, node, me, inc) for org, node, inc in up],
            )
    if down:
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE pushy_node_route SET appliance = NULL, gone = 'lost', "
                "rev = nextval('pushy_route_rev') WHERE org = %s AND node = %s "
                "AND appliance = %s",
                [(org, node, me) for org, node in down],
            )
    conn.execute("SELECT pg_notify(%s, '')", (ROUTE_CHANNEL,))


def write_mail(conn: psycopg.Connection[Any], rows: Sequence[tuple[str, bytes]]) -> None:
    """Insert mail rows ``(to_appliance, payload)`` and ring each receiver's doorbell. In
    the caller's transaction."""
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pushy_mail (to_appliance, payload) VALUES (%s, %s)", list(rows)
        )
    for to in sorted({to for to, _payload in rows}):
        conn.execute("SELECT pg_notify(%s, '')", (mail_channel(to),))


def take_mail(conn: psycopg.Connection[Any], me: str) -> list[bytes]:
    """Take this appliance's mail (deleted as it is read), oldest first."""
    rows = conn.execute(
        "DELETE FROM pushy_mail WHERE to_appliance = %s RETURNING id, payload", (me,)
    ).fetchall()
    return [bytes(p) for _id, p in sorted(rows, key=lambda r: int(r[0]))]


def fetch_routes(conn: psycopg.Connection[Any], after: int) -> list[Route]:
    """Routes changed after rev ``after``, in rev order."""
    rows = conn.execute(
        "SELECT org, node, appliance, gone, rev FROM pushy_node_route WHERE rev > %s ORDER BY rev",
        (after,),
    ).fetchall()
    return [(str(o), str(n), None if a is None else str(a), g, int(r)) for o, n, a, g, r in rows]


def leave(conn: psycopg.Connection[Any], me: str) -> None:
    """An appliance stopping: its leases expire now (the others take its jobs over at their
    next scan), its routes are cleared as a dead appliance's, its row deleted (its mail is
    orphaned: :func:`take_orphan_mail`)."""
    with conn.transaction():
        conn.execute(
            "UPDATE pushy_lease SET expires_at = now() - interval '1 second' WHERE holder = %s",
            (me,),
        )
    declare_dead(conn, me)


def take_orphan_mail(conn: psycopg.Connection[Any]) -> list[bytes]:
    """Take the mail addressed to appliances that are no more (declared dead, or mailed as
    they were), oldest first: its node events go to the jobs' new drivers."""
    rows = conn.execute(
        "DELETE FROM pushy_mail m WHERE NOT EXISTS "
        "(SELECT 1 FROM pushy_appliance a WHERE a.id = m.to_appliance) RETURNING id, payload"
    ).fetchall()
    return [bytes(p) for _id, p in sorted(rows, key=lambda r: int(r[0]))]


def declare_dead(conn: psycopg.Connection[Any], dead: str) -> int:
    """Forget a dead appliance: clear its routes (``gone = 'dead'``: the drivers of their
    nodes' jobs post ``NodeDown``) and delete its row (its mail is orphaned then:
    :func:`take_orphan_mail`). The routes cleared."""
    with conn.transaction():
        conn.execute(_ROUTE_LOCK)
        cur = conn.execute(
            "UPDATE pushy_node_route SET appliance = NULL, gone = 'dead', "
            "rev = nextval('pushy_route_rev') WHERE appliance = %s",
            (dead,),
        )
        cleared = max(cur.rowcount, 0)
        conn.execute("DELETE FROM pushy_appliance WHERE id = %s", (dead,))
        if cleared:
            conn.execute("SELECT pg_notify(%s, '')", (ROUTE_CHANNEL,))
    return cleared
