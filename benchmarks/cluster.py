"""The cluster bits of the benchmarks (issue 17): a private PostgreSQL for one run, a fresh
store (a schema) for each setup measured, the secrets shared between appliances' data
directories (``pushy cluster join``), and the database's own load over a window.

The private server is the tests' (``tests/pgserver.py``: ``initdb`` and ``pg_ctl`` from
Debian's ``postgresql``, a Unix socket in a temporary directory, run as ``postgres`` when
this runs as root), loaded from its file, plus ``pg_stat_statements`` so that the statements
the appliances send can be counted exactly (``pg_stat_database``'s counters reach the view
only when a backend reports them, up to 10 s later when it is idle).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import secrets
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import trio
from harness import REPO

__all__ = [
    "DbCounters",
    "db_counters",
    "join_cluster",
    "new_schema_url",
    "private_postgres",
]


def _pgserver() -> ModuleType:
    """``tests/pgserver.py``, loaded from its file (it is a plain module, not a fixture)."""
    name = "pushy_tests_pgserver"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "pgserver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """Start a private PostgreSQL server with ``pg_stat_statements`` loaded and an empty
    database; yield that database's URL; stop and remove the server at the end."""
    import psycopg

    server = _pgserver().PgServer()
    try:
        server.start()
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        server.stop()
        server.start()
        server.create_database()
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        yield server.url()
    finally:
        server.close()


def new_schema_url(url: str) -> str:
    """Create an empty schema in the database of ``url``; return ``url`` with its
    ``search_path`` set to it (``docs/SCALE-OUT.md`` §2: a store per schema)."""
    import psycopg

    name = f"bench_{secrets.token_hex(5)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    options = [v for k, v in query if k == "options"]
    query = [(k, v) for k, v in query if k != "options"]
    query.append(("options", " ".join([*options, f"-csearch_path={name}"])))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@dataclasses.dataclass(frozen=True, slots=True)
class DbCounters:
    """What the database has done so far (cumulative counters, for deltas).

    Attributes:
        transactions: committed and rolled-back transactions in the database
            (``pg_stat_database``: every backend's, autovacuum's and this sampler's
            included, two per reading).
        rows_written: rows inserted, updated and deleted in the database.
        store_rows_written: of those, rows of the store's tables (``pushy_*``, every schema).
        statements: statements executed in the database other than this sampler's
            (``pg_stat_statements``), or ``None`` where that extension is not installed.
        by_query: those statements' calls by normalized text.
    """

    transactions: int
    rows_written: int
    store_rows_written: int
    statements: int | None
    by_query: dict[str, int] = dataclasses.field(default_factory=dict)

    def minus(self, earlier: DbCounters) -> dict[str, Any]:
        """The deltas since ``earlier``, as a JSON-able dict (``by_query``: the statements
        run meanwhile, by their normalized text, most first)."""
        by_query = {
            q: n - earlier.by_query.get(q, 0)
            for q, n in self.by_query.items()
            if n > earlier.by_query.get(q, 0)
        }
        return {
            "by_query": dict(sorted(by_query.items(), key=lambda kv: -kv[1])),
            "transactions": self.transactions - earlier.transactions,
            "rows_written": self.rows_written - earlier.rows_written,
            "store_rows_written": self.store_rows_written - earlier.store_rows_written,
            "statements": (
                None
                if self.statements is None or earlier.statements is None
                else self.statements - earlier.statements
            ),
        }


_SAMPLER = "/* pushy-bench sampler */"
PUSHY = [sys.executable, "-m", "pushy_appliance.cli"]


def _read_counters(url: str) -> DbCounters:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        xacts, rows, store_rows, view = conn.execute(
            f"{_SAMPLER} SELECT d.xact_commit + d.xact_rollback, "
            "d.tup_inserted + d.tup_updated + d.tup_deleted, "
            "(SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) "
            "FROM pg_stat_user_tables WHERE relname LIKE 'pushy\\_%'), "
            "(SELECT quote_ident(extnamespace::regnamespace::text) || '.pg_stat_statements' "
            "FROM pg_extension WHERE extname = 'pg_stat_statements') "
            "FROM pg_stat_database d WHERE d.datname = current_database()"
        ).fetchone() or (0, 0, 0, None)
        statements = None
        by_query: dict[str, int] = {}
        if view is not None:
            for query, calls in conn.execute(
                f"{_SAMPLER} SELECT s.query, sum(s.calls) FROM {view} s "
                "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database() "
                "AND s.query NOT LIKE '%pushy-bench sampler%' GROUP BY s.query"
            ).fetchall():
                by_query[" ".join(query.split())] = int(calls)
            statements = sum(by_query.values())
    return DbCounters(int(xacts), int(rows), int(store_rows), statements, by_query)


async def db_counters(url: str) -> DbCounters:
    """The database's counters now (read in a worker thread)."""
    return await trio.to_thread.run_sync(_read_counters, url)


async def join_cluster(source: Path, data_dir: Path) -> None:
    """``pushy cluster join SOURCE --data-dir DIR``: the new appliance's data directory
    gets the cluster's keys and CA before its first start.

    Raises:
        RuntimeError: the command refused (its output says why).
    """
    done = await trio.run_process(
        [*PUSHY, "cluster", "join", str(source), "--data-dir", str(data_dir)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=str(REPO),
    )
    if done.returncode != 0:
        raise RuntimeError(f"pushy cluster join: {done.stderr.decode() or done.stdout.decode()}")
