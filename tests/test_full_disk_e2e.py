"""A full disk seen through the API (issue 12 §3, issue 13 #8): while the store cannot write,
every write request is ``503 {"error": "store unavailable: …"}`` with nothing changed, reads
are served, and once the disk takes writes again so does the API, on its own; after a
restart every acknowledged write is there and no refused one is.

The first test injects the failure at the OS boundary; the second fills a real tmpfs (skipped
where this machine lets no test mount one). The whole contract with node connections and a
running job, on a server whose segment file hits its size limit, is in
``test_full_disk_with_agents``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from test_jobs_e2e import JOBS, ORG, start_job, wait_job

from pushy_appliance import appliance, fsutil
from pushy_appliance.appliance import ServerInfo, new_database
from pushy_appliance.errors import StoreError
from pushy_appliance.store import FileStore, open_store

from helpers import Signed, admin_client, running_server, small_tmpfs, test_config

LIMIT = 30.0


async def create_client(admin: Signed, name: str) -> int:
    r = await admin.post(f"{ORG}/clients", {"name": name, "create_key": True})
    return r.status_code


def refused(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.json() == {"error": "store unavailable: No space left on device"}


async def check_reads(admin: Signed, job_id: str, clients: list[str]) -> None:
    """Every read route answers while the store refuses writes."""
    r = await admin.get(JOBS)
    assert r.status_code == 200
    assert job_id in {j["id"] for j in r.json()}
    r = await admin.get(f"{JOBS}/{job_id}")
    assert r.status_code == 200
    assert r.json()["status"] == "quorum_failed"
    for name in clients:
        assert (await admin.get(f"{ORG}/clients/{name}")).status_code == 200
    assert (await admin.get(f"{ORG}/pushy/node_states")).status_code == 200
    r = await admin.get("/pushy/_status")  # no signature needed; harmless with one
    assert r.status_code == 200
    assert r.json()["status"] == "it's alive"


async def check_after_restart(
    data: Path, job_id: str, present: list[str], absent: list[str]
) -> None:
    async with running_server(test_config(data)) as info, admin_client(info) as admin:
        for name in present:
            assert (await admin.get(f"{ORG}/clients/{name}")).status_code == 200, name
        for name in absent:
            assert (await admin.get(f"{ORG}/clients/{name}")).status_code == 404, name
        r = await admin.get(f"{JOBS}/{job_id}")
        assert r.status_code == 200
        assert r.json()["status"] == "quorum_failed"
        r = await admin.get(JOBS)
        assert [j["id"] for j in r.json()] == [job_id]  # the refused job was never stored


async def a_finished_job(admin: Signed) -> str:
    """A job on a node that never connected: it ends ``quorum_failed`` at once, so no engine
    writes anything during the outage."""
    job_id = await start_job(admin, {"command": "greet", "nodes": ["ghost"]})
    await wait_job(admin, job_id)
    return job_id


def store_of(info: ServerInfo) -> FileStore:
    store = info.services.db.store
    assert isinstance(store, FileStore)
    return store


async def test_writes_are_503_and_reads_served_until_the_disk_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    real_write_all = fsutil.write_all
    full = False

    with trio.fail_after(LIMIT):
        async with running_server(test_config(data)) as info, admin_client(info) as admin:
            store = store_of(info)

            def write_all(fd: int, payload: bytes) -> None:
                if full and fd == store._fd:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                real_write_all(fd, payload)

            monkeypatch.setattr(fsutil, "write_all", write_all)
            assert await create_client(admin, "before") == 201
            job_id = await a_finished_job(admin)

            full = True
            r = await admin.post(JOBS, {"command": "greet", "nodes": ["ghost"]})
            refused(r)  # the write that found the disk full
            refused(await admin.post(f"{ORG}/clients", {"name": "during", "create_key": True}))
            refused(await admin.delete(f"{ORG}/clients/before"))
            refused(await admin.post(JOBS, {"command": "greet", "nodes": ["ghost"]}))
            await check_reads(admin, job_id, ["before"])
            assert (await admin.get(f"{ORG}/clients/during")).status_code == 404
            assert not store.writable

            full = False
            await info.services.db.wait_writable()
            assert await create_client(admin, "after") == 201
            assert store.statistics().refused == 4
        await check_after_restart(data, job_id, ["before", "after"], ["during"])


async def test_a_real_full_disk_under_the_data_directory(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "mnt", "16m") as mnt, trio.fail_after(LIMIT):
        data = mnt / "data"
        acknowledged: list[str] = []
        refused_names: list[str] = []
        async with running_server(test_config(data)) as info, admin_client(info) as admin:
            assert await create_client(admin, "first") == 201
            acknowledged.append("first")
            job_id = await a_finished_job(admin)

            ballast = mnt / "ballast"
            with ballast.open("wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError as e:
                    assert e.errno == errno.ENOSPC

            # the segment's last page may still hold a record or two
            n = 0
            while True:
                name = f"c{n}"
                n += 1
                r = await admin.post(f"{ORG}/clients", {"name": name, "create_key": True})
                if r.status_code == 201:
                    acknowledged.append(name)
                    continue
                refused(r)
                refused_names.append(name)
                break
            refused(await admin.post(f"{ORG}/clients", {"name": "more", "create_key": True}))
            refused_names.append("more")
            await check_reads(admin, job_id, acknowledged)

            ballast.unlink()
            await info.services.db.wait_writable()
            assert await create_client(admin, "last") == 201
            acknowledged.append("last")
        await check_after_restart(data, job_id, acknowledged, refused_names)


async def test_a_snapshot_that_cannot_be_written_is_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The compactor's (and a graceful stop's) snapshot on a full disk: logged, the log keeps
    every record, the server goes on."""
    async with open_store(None) as store:
        db = new_database(store)
        await db.commit({"t": "org.put", "name": "o", "full_name": "O", "created_at": 0.0})

        async def no_space(contents: bytes, seq: int) -> None:
            await trio.lowlevel.checkpoint()
            raise StoreError("cannot write snapshot: No space left on device")

        store._save_snapshot = no_space  # type: ignore[attr-defined]
        await appliance._snapshot(db)
        assert store.statistics().snapshot_seq == 0
        assert store.statistics().writable
    assert [r.getMessage() for r in caplog.records if r.name == "pushy_appliance.appliance"] == [
        "snapshot not written (a restart replays more of the log): cannot write snapshot: "
        "No space left on device"
    ]
