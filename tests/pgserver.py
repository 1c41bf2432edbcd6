"""A private PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` from Debian's
``postgresql`` package (``scripts/test`` installs it), run as the unprivileged ``postgres``
user when the tests run as root (the server refuses to run as root), listening on a Unix
socket in its own temporary directory only (no TCP port to collide with), torn down after.

``PgServer.start()`` / ``stop()`` are the outage tests' tools (``stop("immediate")`` is a
crash: the server recovers from its WAL at the next start); ``new_schema()``
gives each test a store of its own in one database (the store's tables live in the
connection's ``search_path``, see ``docs/SCALE-OUT.md`` §2).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import psycopg

SERVER_USER = "postgres"
DATABASE = "pushy"


def pg_bindir() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: Debian keeps them off the PATH, in
    ``/usr/lib/postgresql/<version>/bin`` (the newest version wins)."""
    found = shutil.which("pg_config")
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if candidates:
        return Path(candidates[-1]).parent
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())
    raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (scripts/test)")


class PgServer:
    """One private PostgreSQL server in a temporary directory.

    Attributes:
        root: the temporary directory (``data/`` and the socket directory ``sock/``).
        port: the number in the socket's name (``.s.PGSQL.<port>``); nothing listens on TCP.
    """

    def __init__(self) -> None:
        self.bindir = pg_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="pushy-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.port = 20000 + secrets.randbelow(40000)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]
            entry = pwd.getpwnam(SERVER_USER)
            os.chmod(self.root, 0o755)
            self.sock.mkdir()
            os.chown(self.sock, entry.pw_uid, entry.pw_gid)
            self.data.mkdir(mode=0o700)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        else:
            self.sock.mkdir()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        argv = [*self._as_user, str(self.bindir / tool), *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.sock}' "
            f"-c port={self.port} -c max_connections=200 -c shared_buffers=32MB"
        )
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-o", options,
            "-l", str(self.data / "server.log"),
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back and disconnect every session)."""
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-D", str(self.data), "-m", mode)

    def url(self, database: str = DATABASE, *, schema: str | None = None) -> str:
        """A ``postgresql://`` URL of ``database`` over the socket (``search_path`` set to
        ``schema`` when given)."""
        query = {"host": str(self.sock), "port": str(self.port)}
        if schema is not None:
            query["options"] = f"-csearch_path={schema}"
        return f"postgresql://postgres@/{database}?{urllib.parse.urlencode(query)}"

    def create_database(self, name: str = DATABASE) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def new_schema(self, database: str = DATABASE) -> str:
        """A fresh empty schema in ``database``; returns a URL whose ``search_path`` is it."""
        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return self.url(database, schema=name)

    def close(self) -> None:
        """Stop the server (if it runs) and remove its directory."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
