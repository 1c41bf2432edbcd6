"""``serve()`` in-process: graceful stop removes the ready file and snapshots a long log."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from pushy_appliance import appliance
from pushy_appliance.appliance import serve
from pushy_appliance.store import open_store

from helpers import test_config


async def test_graceful_stop_snapshots_when_the_log_is_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(appliance, "SHUTDOWN_SNAPSHOT_RECORDS", 1)
    stop = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            info = await nursery.start(
                lambda task_status: serve(test_config(tmp_path), stop=stop, task_status=task_status)
            )
            assert (tmp_path / "run" / "server.json").exists()
            stop.set()
    assert info.data_dir == tmp_path
    assert not (tmp_path / "run" / "server.json").exists()
    assert list((tmp_path / "store").glob("snapshot-*.msgpack"))
    async with open_store(tmp_path / "store") as store:
        assert store.recovered.snapshot is not None
        assert "pivotal" in {u["name"] for u in store.recovered.snapshot["identity"]["users"]}
        assert store.recovered.records == []


async def test_graceful_stop_without_snapshot_for_a_short_log(tmp_path: Path) -> None:
    stop = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve(test_config(tmp_path), stop=stop, task_status=task_status)
            )
            stop.set()
    assert not list((tmp_path / "store").glob("snapshot-*.msgpack"))
