"""Shared fixtures. Tests run under trio (``trio_mode = true`` in pyproject.toml)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_pushy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``PUSHY_*`` variable of the developer's shell leaks into a test."""
    for var in list(os.environ):
        if var.startswith("PUSHY_"):
            monkeypatch.delenv(var, raising=False)
