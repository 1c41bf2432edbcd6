"""``fsutil.write_durably``: contents, mode, fsyncs, cleanup on failure; and that every file
the appliance rewrites whole goes through it."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from pushy_appliance import appliance, fsutil
from pushy_appliance.agent.state import AgentState, StateFile
from pushy_appliance.appliance import serve
from pushy_appliance.errors import AgentError, StoreError
from pushy_appliance.store import open_store

from helpers import test_config


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def hostile_umask() -> Iterator[None]:
    old = os.umask(0o777)
    try:
        yield
    finally:
        os.umask(old)


def test_new_file_gets_contents_and_exact_mode(tmp_path: Path, hostile_umask: None) -> None:
    target = tmp_path / "key.pem"
    fsutil.write_durably(target, b"secret\n", mode=0o600)
    assert target.read_bytes() == b"secret\n"
    assert mode_of(target) == 0o600
    fsutil.write_durably(tmp_path / "cert.pem", b"public\n", mode=0o644)
    assert mode_of(tmp_path / "cert.pem") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "key.pem"]


def test_replacing_narrows_a_wider_mode(tmp_path: Path) -> None:
    target = tmp_path / "credentials"
    target.write_bytes(b"old")
    target.chmod(0o666)
    fsutil.write_durably(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert mode_of(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["credentials"]


def test_a_crash_leftover_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    target = tmp_path / "state"
    fsutil.temp_path(target).symlink_to(victim)
    fsutil.write_durably(target, b"state", mode=0o600)
    assert target.read_bytes() == b"state"
    assert victim.read_bytes() == b"untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state", "victim"]


def test_temp_path_is_the_name_plus_tmp_in_the_same_directory(tmp_path: Path) -> None:
    assert fsutil.temp_path(tmp_path / "snapshot-1.msgpack") == tmp_path / "snapshot-1.msgpack.tmp"


@pytest.mark.parametrize("durable", [True, False])
def test_fsyncs_the_file_and_then_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append("dir" if stat.S_ISDIR(st.st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    fsutil.write_durably(tmp_path / "f", b"x", mode=0o600, fsync=durable)
    assert synced == (["file", "dir"] if durable else [])


@pytest.mark.parametrize("failing", ["write_all", "fsync", "replace"])
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "server.json"
    target.write_bytes(b"old")
    target.chmod(0o644)

    def fail(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "write_all":
        monkeypatch.setattr(fsutil, "write_all", fail)
    else:
        monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="No space left"):
        fsutil.write_durably(target, b"new contents", mode=0o644)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["server.json"]


def test_a_failed_first_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fsutil, "write_all", fail)
    with pytest.raises(OSError, match="Input/output"):
        fsutil.write_durably(tmp_path / "key.pem", b"secret", mode=0o600)
    assert list(tmp_path.iterdir()) == []


def test_write_all_writes_everything_across_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    fsutil.write_durably(tmp_path / "f", b"0123456789", mode=0o600)
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == b"0123456789"


# --- every caller goes through it -----------------------------------------------------------


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, int]]:
    """Records (path, mode) of every ``fsutil.write_durably`` call, and makes the call."""
    seen: list[tuple[Path, int]] = []
    real = fsutil.write_durably

    def spy(path: Path, data: bytes, *, mode: int, fsync: bool = True) -> None:
        seen.append((Path(path), mode))
        real(path, data, mode=mode, fsync=fsync)

    monkeypatch.setattr(fsutil, "write_durably", spy)
    return seen


async def test_the_server_writes_its_data_directory_files_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writes: list[tuple[Path, int]]
) -> None:
    """Keys, TLS material, ``bootstrap.done``, credentials, ``run/server.json`` and the
    store's snapshot (a graceful stop with a long log writes one)."""
    monkeypatch.setattr(appliance, "SHUTDOWN_SNAPSHOT_RECORDS", 1)
    stop = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve(test_config(tmp_path), stop=stop, task_status=task_status)
            )
            stop.set()
    relative = {str(path.relative_to(tmp_path)): mode for path, mode in writes}
    (snapshot,) = [name for name in relative if name.startswith("store/snapshot-")]
    assert relative == {
        "keys/pivotal.pem": 0o600,
        "keys/admin.pem": 0o600,
        "tls/ca.key": 0o600,
        "tls/ca.pem": 0o644,
        "tls/server.key": 0o600,
        "tls/server.pem": 0o644,
        "bootstrap.done": 0o644,
        "credentials": 0o600,
        "run/server.json": 0o644,
        snapshot: 0o600,
    }
    for name, mode in relative.items():
        if name != "run/server.json":  # removed at the stop
            assert mode_of(tmp_path / name) == mode, name
    assert not list(tmp_path.rglob(f"*{fsutil.TEMP_SUFFIX}"))  # noqa: ASYNC240


def test_the_agent_state_file_is_written_durably(
    tmp_path: Path, writes: list[tuple[Path, int]]
) -> None:
    state_file = StateFile(tmp_path / "state")
    state_file.save(AgentState("job-1", "committed", ()))
    assert writes == [(state_file.path, 0o600)]
    assert state_file.load() == AgentState("job-1", "committed", ())


def test_a_failed_agent_state_write_is_an_agent_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_file = StateFile(tmp_path / "state")
    state_file.save(AgentState("job-1", "committed", ()))

    def fail(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil, "write_all", fail)
    with pytest.raises(AgentError, match="No space left"):
        state_file.save(AgentState())
    monkeypatch.undo()
    assert state_file.load() == AgentState("job-1", "committed", ())
    assert sorted(p.name for p in state_file.directory.iterdir()) == [state_file.path.name]


async def test_a_failed_snapshot_write_is_a_store_error_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_store(tmp_path, fsync=False) as store:
        await store.append({"n": 1})

        def fail(*args: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(fsutil, "write_all", fail)
        with pytest.raises(StoreError, match="cannot write snapshot"):
            await store.write_snapshot({"n": 1}, 1)
        monkeypatch.undo()
    assert not list(tmp_path.glob("snapshot-*"))  # noqa: ASYNC240
