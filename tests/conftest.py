"""Shared fixtures. Tests run under trio (``trio_mode = true`` in pyproject.toml)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pgserver import PgServer


@pytest.fixture(autouse=True)
def _clean_pushy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``PUSHY_*`` variable of the developer's shell leaks into a test.

    One is set: ``PUSHY_FACTS_OHAI=off``. Every agent a test starts (subprocesses inherit it)
    computes its facts without ohai, which takes seconds per run; the tests of ohai itself
    (``test_agent_facts.py``, ``test_inventory_e2e.py``) ask for it explicitly.
    """
    for var in list(os.environ):
        if var.startswith("PUSHY_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PUSHY_FACTS_OHAI", "off")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One private PostgreSQL server for the session (``tests/pgserver.py``), started on
    first use and removed at the end; tests that stop it start it again before they end."""
    server = PgServer()
    try:
        server.start()
        server.create_database()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a fresh, empty store: a new schema in the session server's database."""
    return pg_server.new_schema()
