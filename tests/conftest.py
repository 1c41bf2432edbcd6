"""Shared fixtures. Tests run under trio (``trio_mode = true`` in pyproject.toml)."""

from __future__ import annotations

import os

import pytest


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
