"""The agent's job runtime, state file and connection logic, against fakes that speak the real
protocol (every frame goes through ``encode``/``decode``), with real processes for jobs."""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
import trio
from trio_websocket import CloseReason, ConnectionClosed

from pushy_appliance import chef_auth, protocol
from pushy_appliance.agent import connection
from pushy_appliance.agent.connection import Backoff, SessionEnd, run_session
from pushy_appliance.agent.main import connect_settings, run_agent
from pushy_appliance.agent.runtime import COMMIT_GRACE, AgentRuntime
from pushy_appliance.agent.state import (
    STATE_FILE_NAME,
    AgentState,
    PendingResult,
    StateFile,
    decode_state,
    encode_state,
)
from pushy_appliance.agent.whitelist import Whitelist
from pushy_appliance.cli import _agent
from pushy_appliance.config import AllowEntry
from pushy_appliance.config_files import load_agent_config
from pushy_appliance.errors import AgentError, ConfigError
from pushy_appliance.protocol import Frame, ResultBody

LIMIT = 20.0
ALLOW = (AllowEntry(pattern=r"^sh -c .*$"), AllowEntry(command="true"))
FACTS = {"hostname": "test-host", "platform": "linux", "agent_version": "0"}


def _welcome(**fields: Any) -> protocol.Welcome:
    base: dict[str, Any] = {
        "server_incarnation_id": "server-1",
        "heartbeat_interval": 1.0,
        "offline_threshold": 3,
        "voting_timeout": 5.0,
        "max_output_bytes": 1_048_576,
    }
    base.update(fields)
    return protocol.Welcome(**base, seq=1, ts=time.time())


class FakeLink:
    """Collects what the runtime sends, after a round trip through the wire format."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._seq = protocol.Sequencer()
        self._changed = trio.Event()

    async def send(self, cls: type[Frame], **fields: Any) -> bool:
        frame = cls(seq=self._seq.next(), ts=time.time(), **fields)
        self.frames.append(protocol.decode(protocol.encode(frame)))
        self._changed.set()
        self._changed = trio.Event()
        return True

    def of(self, cls: type[Frame]) -> list[Any]:
        return [f for f in self.frames if isinstance(f, cls)]

    async def wait_for(self, cls: type[Frame], job_id: str | None = None) -> Any:
        """The first frame of ``cls`` (for ``job_id``) sent so far or from now on."""
        while True:
            for f in self.frames:
                if isinstance(f, cls) and (job_id is None or getattr(f, "job_id", None) == job_id):
                    return f
            await self._changed.wait()


def _commit(job_id: str, command: str = "true", **fields: Any) -> protocol.Commit:
    fields.setdefault("capture", True)
    fields.setdefault("run_timeout", 30.0)
    return protocol.Commit(job_id=job_id, command=command, seq=1, ts=0.0, **fields)


def _run(job_id: str) -> protocol.Run:
    return protocol.Run(job_id=job_id, seq=1, ts=0.0)


def _abort(job_id: str | None = None) -> protocol.Abort:
    return protocol.Abort(job_id=job_id, seq=1, ts=0.0)


def _ack(job_id: str) -> protocol.ResultAck:
    return protocol.ResultAck(job_id=job_id, seq=1, ts=0.0)


async def _inline(function: Callable[..., Any], *args: Any) -> Any:
    """Blocking I/O run in the task: the autojump clock would jump while a thread works."""
    return function(*args)


def _runtime(state_dir: Path, **kwargs: Any) -> AgentRuntime:
    kwargs.setdefault("whitelist", Whitelist.from_entries(ALLOW))
    kwargs.setdefault("run_blocking", _inline)
    kwargs.setdefault("kill_grace", 0.3)
    return AgentRuntime(node_name="node-1", state_file=StateFile(state_dir), facts=FACTS, **kwargs)


@asynccontextmanager
async def started(
    state_dir: Path, *, welcome: protocol.Welcome | None = None, **kwargs: Any
) -> AsyncIterator[tuple[AgentRuntime, FakeLink]]:
    runtime = _runtime(state_dir, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        link = FakeLink()
        await runtime.attach(link, welcome or _welcome())
        yield runtime, link
        nursery.cancel_scope.cancel()


def _stored(state_dir: Path) -> AgentState:
    return decode_state((state_dir / STATE_FILE_NAME).read_bytes())


def _dead(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return text.rsplit(")", 1)[1].split()[0] == "Z"


# --- the state file -------------------------------------------------------------------------


def _body(job_id: str = "j1", **fields: Any) -> ResultBody:
    base: dict[str, Any] = {
        "job_id": job_id,
        "status": "succeeded",
        "exit_code": 0,
        "stdout_bytes": 3,
        "stderr_bytes": 0,
        "truncated": False,
        "duration_s": 0.5,
    }
    base.update(fields)
    return ResultBody(**base)


def test_state_round_trip_and_empty_default(tmp_path: Path) -> None:
    state = AgentState(
        "j2", "running", (PendingResult(_body(signal=9, exit_code=None), b"\xff\x00", b"e"),)
    )
    assert decode_state(encode_state(state)) == state
    store = StateFile(tmp_path / "s")
    assert store.load() == AgentState()
    store.save(state)
    assert store.load() == state
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "s" / STATE_FILE_NAME).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "s").iterdir()] == [STATE_FILE_NAME]


def test_held_process_group_round_trip_and_checks() -> None:
    state = AgentState("j1", "running", (), (4242, 123456))
    assert decode_state(encode_state(state)) == state
    good = encode_state(state)
    for bad in ([4242], [4242, -1], [4242, "x"], "4242", [4242, 1.5]):
        doc = msgpack.unpackb(good)
        doc["held"]["group"] = bad
        with pytest.raises(AgentError, match="process group"):
            decode_state(msgpack.packb(doc))


def test_one_agent_per_state_directory(tmp_path: Path) -> None:
    first, second = StateFile(tmp_path / "s"), StateFile(tmp_path / "s")
    with first.lock():
        assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
        with pytest.raises(AgentError, match="in use by another agent"), second.lock():
            pass
        first.save(AgentState())  # the holder goes on
    with second.lock():  # released with the first
        pass


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1garbage",
        b"\x80",  # an empty map: no magic
        encode_state(AgentState()).replace(b"\x01", b"\x07", 1),  # another version
    ],
)
def test_damaged_state_file_moved_aside(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(AgentError):
        decode_state(data)
    (tmp_path / STATE_FILE_NAME).write_bytes(data)
    assert StateFile(tmp_path).load() == AgentState()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f"{STATE_FILE_NAME}.corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_bytes() == data


def test_bad_pending_result_is_refused() -> None:
    good = encode_state(AgentState(None, "idle", (PendingResult(_body()),)))
    bad = good.replace(b"succeeded", b"sucCeeded")
    with pytest.raises(AgentError, match="status"):
        decode_state(bad)


# --- commit, run, result --------------------------------------------------------------------


async def test_hello_and_heartbeat_fields_when_idle(tmp_path: Path) -> None:
    async with started(tmp_path) as (runtime, _):
        hello = runtime.hello_fields()
        frame = protocol.Hello(**hello, seq=1, ts=0.0)
        assert protocol.decode(protocol.encode(frame)) == frame
        assert hello["job_id"] is None
        assert hello["job_state"] == "idle"
        assert hello["pending_result"] is None
        assert hello["facts"] == FACTS
        assert runtime.heartbeat_fields() == {"job_id": None, "job_state": "idle"}
        assert runtime.incarnation_id != _runtime(tmp_path).incarnation_id


async def test_commit_run_output_result_and_ack(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    command = "sh -c 'head -c 200000 /dev/zero; printf err >&2; exit 3'"
    with trio.fail_after(LIMIT):
        async with started(state_dir) as (runtime, link):
            await runtime.handle(_commit("j1", command))
            assert link.frames[-1] == protocol.AckCommit(
                job_id="j1", seq=link.frames[-1].seq, ts=link.frames[-1].ts
            )
            assert runtime.phase == "committed"
            assert runtime.heartbeat_fields() == {"job_id": "j1", "job_state": "committed"}
            assert _stored(state_dir) == AgentState("j1", "committed", ())
            await runtime.handle(_run("j1"))
            assert isinstance(link.frames[-1], protocol.AckRun)
            result = await link.wait_for(protocol.Result, "j1")
            assert result.status == "failed"
            assert result.exit_code == 3
            assert result.stdout_bytes == 200_000
            assert result.stderr_bytes == 3
            assert not result.truncated
            # output frames: at most 64 KiB each, contiguous offsets, all before the result
            outputs = link.of(protocol.Output)
            assert link.frames.index(result) > max(link.frames.index(o) for o in outputs)
            stdout = [o for o in outputs if o.channel == "stdout"]
            offset = 0
            for o in stdout:
                assert o.job_id == "j1"
                assert o.offset == offset
                assert 0 < len(o.data) <= 65_536
                offset += len(o.data)
            assert offset == 200_000
            assert b"".join(o.data for o in stdout) == b"\0" * 200_000
            assert [(o.data, o.offset) for o in outputs if o.channel == "stderr"] == [(b"err", 0)]
            # idle at once, result kept until acknowledged
            assert runtime.phase == "idle"
            assert runtime.pending_job_ids == ["j1"]
            assert runtime.hello_fields()["pending_result"] == result.body
            stored = _stored(state_dir)
            assert stored.held_job_id is None
            assert stored.pending[0].body == result.body
            assert stored.pending[0].stderr == b"err"
            await runtime.handle(_ack("j1"))
            assert runtime.pending_job_ids == []
            assert _stored(state_dir) == AgentState()


async def test_output_cap_from_welcome_truncates(tmp_path: Path) -> None:
    command = "sh -c 'head -c 5000 /dev/zero'"
    with trio.fail_after(LIMIT):
        async with started(tmp_path, welcome=_welcome(max_output_bytes=1000)) as (runtime, link):
            await runtime.handle(_commit("j1", command))
            await runtime.handle(_run("j1"))
            result = await link.wait_for(protocol.Result, "j1")
            assert result.truncated
            assert result.stdout_bytes == 5000
            assert sum(len(o.data) for o in link.of(protocol.Output)) == 1000


async def test_busy_and_repeated_commit(tmp_path: Path) -> None:
    async with started(tmp_path) as (runtime, link):
        await runtime.handle(_commit("j1"))
        await runtime.handle(_commit("j2"))
        nack = link.frames[-1]
        assert isinstance(nack, protocol.NackCommit)
        assert (nack.job_id, nack.reason) == ("j2", "busy")
        await runtime.handle(_commit("j1"))
        assert isinstance(link.frames[-1], protocol.AckCommit)
        assert runtime.job_id == "j1"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"command": "rm -rf /"}, "not_whitelisted"),
        ({"command": "true; rm -rf /"}, "not_whitelisted"),
        ({"dir": "/nonexistent/dir"}, "no_such_dir"),
        ({"user": "no-such-user-pushy"}, "no_such_user"),
        ({"file": "base64:@@@"}, "bad_file"),
        ({"file": "hex:00"}, "bad_file"),
    ],
)
async def test_commit_refusals(tmp_path: Path, fields: dict[str, Any], reason: str) -> None:
    async with started(tmp_path) as (runtime, link):
        await runtime.handle(_commit("j1", **fields))
        nack = link.frames[-1]
        assert isinstance(nack, protocol.NackCommit)
        assert (nack.job_id, nack.reason) == ("j1", reason)
        assert runtime.phase == "idle"
        assert not (tmp_path / STATE_FILE_NAME).exists()


async def test_run_refusals(tmp_path: Path) -> None:
    async with started(tmp_path) as (runtime, link):
        await runtime.handle(_run("j1"))
        nack = link.frames[-1]
        assert isinstance(nack, protocol.NackRun)
        assert nack.job_id == "j1"
        await runtime.handle(_commit("j1"))
        await runtime.handle(_run("j2"))
        nack = link.frames[-1]
        assert isinstance(nack, protocol.NackRun)
        assert nack.job_id == "j2"
        assert "j1" in nack.reason
        assert runtime.phase == "committed"


# --- abort ----------------------------------------------------------------------------------


async def test_abort_while_idle(tmp_path: Path) -> None:
    async with started(tmp_path) as (runtime, link):
        await runtime.handle(_abort())
        assert isinstance(link.frames[-1], protocol.Aborted)
        assert link.frames[-1].job_id is None


async def test_abort_while_committed(tmp_path: Path) -> None:
    async with started(tmp_path) as (runtime, link):
        await runtime.handle(_commit("j1"))
        await runtime.handle(_abort("other"))
        assert link.frames[-1].job_id == "other"
        assert runtime.phase == "committed"
        await runtime.handle(_abort())
        aborted = link.frames[-1]
        assert isinstance(aborted, protocol.Aborted)
        assert aborted.job_id == "j1"
        assert runtime.phase == "idle"
        assert _stored(tmp_path) == AgentState()
        await runtime.handle(_run("j1"))
        assert isinstance(link.frames[-1], protocol.NackRun)


async def test_abort_while_running_kills_the_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    command = f"sh -c 'sleep 100 & echo $! > {pid_file}; wait'"
    with trio.fail_after(LIMIT):
        async with started(tmp_path / "state") as (runtime, link):
            await runtime.handle(_commit("j1", command))
            await runtime.handle(_run("j1"))
            while not pid_file.exists() or not pid_file.read_text().strip():  # noqa: ASYNC110
                await trio.sleep(0.02)
            grandchild = int(pid_file.read_text())
            assert not _dead(grandchild)
            assert runtime.heartbeat_fields() == {"job_id": "j1", "job_state": "running"}
            await runtime.handle(_abort("j1"))
            aborted = await link.wait_for(protocol.Aborted)
            result = link.of(protocol.Result)[0]
            assert link.frames.index(result) < link.frames.index(aborted)
            assert (result.job_id, result.status) == ("j1", "aborted")
            assert aborted.job_id == "j1"
            assert runtime.phase == "idle"
            while not _dead(grandchild):  # noqa: ASYNC110
                await trio.sleep(0.02)


async def test_committed_timeout(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with started(tmp_path, welcome=_welcome(voting_timeout=30.0)) as (runtime, link):
        await runtime.handle(_commit("j1"))
        await trio.sleep(30.0 + COMMIT_GRACE - 1)
        assert runtime.phase == "committed"
        await trio.sleep(2)
        assert runtime.phase == "idle"
        assert runtime.job_id is None
        assert _stored(tmp_path) == AgentState()
        # the timer of an aborted commit does not touch the next one
        await runtime.handle(_commit("j2"))
        await trio.sleep(1)
        await runtime.handle(_abort("j2"))
        await trio.sleep(19)
        await runtime.handle(_commit("j3"))
        assert isinstance(link.frames[-1], protocol.AckCommit)
        await trio.sleep(21)  # past j2's deadline
        assert (runtime.phase, runtime.job_id) == ("committed", "j3")


# --- results across connections and restarts -------------------------------------------------


async def test_result_resent_on_every_connection_until_acknowledged(tmp_path: Path) -> None:
    command = "sh -c 'printf out; printf err >&2'"
    with trio.fail_after(LIMIT):
        async with started(tmp_path) as (runtime, first):
            await runtime.handle(_commit("j1", command))
            await runtime.handle(_run("j1"))
            await first.wait_for(protocol.Result, "j1")
            runtime.detach(first)
            for _ in range(2):
                link = FakeLink()
                await runtime.attach(link, _welcome())
                types = [type(f) for f in link.frames]
                assert types == [protocol.Output, protocol.Output, protocol.Result]
                out, err, result = link.frames
                assert (out.channel, out.data, out.offset) == ("stdout", b"out", 0)
                assert (err.channel, err.data, err.offset) == ("stderr", b"err", 0)
                assert result.job_id == "j1"
                assert result.status == "succeeded"
                runtime.detach(link)
            await runtime.handle(_ack("j1"))
            link = FakeLink()
            await runtime.attach(link, _welcome())
            assert link.frames == []


async def test_result_of_a_job_ended_while_disconnected(tmp_path: Path) -> None:
    pid_file = tmp_path / "go"
    command = f"sh -c 'printf a; while [ ! -e {pid_file} ]; do sleep 0.02; done; printf b'"
    with trio.fail_after(LIMIT):
        async with started(tmp_path / "state") as (runtime, first):
            await runtime.handle(_commit("j1", command))
            await runtime.handle(_run("j1"))
            await first.wait_for(protocol.Output)
            runtime.detach(first)
            pid_file.touch()
            while runtime.phase != "idle":  # noqa: ASYNC110
                await trio.sleep(0.02)
            assert first.of(protocol.Result) == []
            second = FakeLink()
            await runtime.attach(second, _welcome())
            output = second.of(protocol.Output)
            assert [(o.data, o.offset) for o in output] == [(b"ab", 0)]
            assert second.of(protocol.Result)[0].status == "succeeded"


def _one_stream(link: FakeLink, channel: str = "stdout") -> bytes:
    """The channel's output as one connection carried it: chunks exactly contiguous (the
    server refuses a gap or an overlap within a connection), the first at offset 0."""
    chunks = [o for o in link.of(protocol.Output) if o.channel == channel]
    offset = 0
    for o in chunks:
        assert o.offset == offset, [(c.offset, c.data) for c in chunks]
        offset += len(o.data)
    return b"".join(o.data for o in chunks)


async def test_a_new_connection_gets_the_running_jobs_output_from_offset_0(
    tmp_path: Path,
) -> None:
    """Reconnected while the job runs: the first chunk on the new connection starts over at
    0 with everything captured (what the old connection lost included), then the chunks go
    on contiguous, and the result follows without sending anything twice."""
    go, stop = tmp_path / "go", tmp_path / "stop"
    command = (
        f"sh -c 'printf a; while [ ! -e {go} ]; do sleep 0.02; done; printf b;"
        f" while [ ! -e {stop} ]; do sleep 0.02; done; printf c'"
    )
    with trio.fail_after(LIMIT):
        async with started(tmp_path / "state") as (runtime, first):
            await runtime.handle(_commit("j1", command))
            await runtime.handle(_run("j1"))
            await first.wait_for(protocol.Output)
            runtime.detach(first)
            second = FakeLink()
            await runtime.attach(second, _welcome())
            go.touch()
            await second.wait_for(protocol.Output)
            stop.touch()
            await second.wait_for(protocol.Result, "j1")
    assert _one_stream(first) == b"a"
    assert _one_stream(second) == b"abc"
    assert [o.offset for o in second.of(protocol.Output)] == [0, 2]


async def test_a_job_ending_after_a_reconnect_sends_its_whole_output_before_the_result(
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    command = f"sh -c 'printf a; printf e >&2; while [ ! -e {go} ]; do sleep 0.02; done'"
    with trio.fail_after(LIMIT):
        async with started(tmp_path / "state") as (runtime, first):
            await runtime.handle(_commit("j1", command))
            await runtime.handle(_run("j1"))
            while len(first.of(protocol.Output)) < 2:  # noqa: ASYNC110
                await trio.sleep(0.02)
            runtime.detach(first)
            second = FakeLink()
            await runtime.attach(second, _welcome())
            go.touch()
            result = await second.wait_for(protocol.Result, "j1")
    assert (_one_stream(second), _one_stream(second, "stderr")) == (b"a", b"e")
    assert second.frames.index(result) == len(second.frames) - 1


async def test_pending_result_survives_an_agent_restart(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        async with started(tmp_path) as (runtime, link):
            await runtime.handle(_commit("j1", "sh -c 'printf kept'"))
            await runtime.handle(_run("j1"))
            result = await link.wait_for(protocol.Result, "j1")
        async with started(tmp_path) as (again, link):
            assert again.hello_fields()["pending_result"] == result.body
            assert again.hello_fields()["job_state"] == "idle"
            assert [type(f) for f in link.frames] == [protocol.Output, protocol.Result]
            assert link.frames[0].data == b"kept"
            assert link.frames[1].body == result.body


async def test_job_held_by_a_previous_run_is_reported_until_aborted(tmp_path: Path) -> None:
    StateFile(tmp_path).save(AgentState("ghost", "running", ()))
    async with started(tmp_path) as (runtime, link):
        hello = runtime.hello_fields()
        assert (hello["job_id"], hello["job_state"]) == ("ghost", "running")
        await runtime.handle(_commit("j1"))
        assert link.frames[-1].reason == "busy"
        await runtime.handle(_run("ghost"))
        assert isinstance(link.frames[-1], protocol.NackRun)
        await runtime.handle(_abort())
        assert isinstance(link.frames[-1], protocol.Aborted)
        assert link.frames[-1].job_id == "ghost"
        assert runtime.phase == "idle"
        assert _stored(tmp_path) == AgentState()


# --- whitelist reload -----------------------------------------------------------------------


async def test_reload_frame_rereads_the_whitelist(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[[allow]]\ncommand = "true"\n')
    async with started(tmp_path / "state", config_path=str(config)) as (runtime, link):
        await runtime.handle(_commit("j1", "false"))
        assert link.frames[-1].reason == "not_whitelisted"
        config.write_text('[[allow]]\ncommand = "false"\n')
        await runtime.handle(protocol.Reload(seq=1, ts=0.0))
        await runtime.handle(_commit("j2", "false"))
        assert isinstance(link.frames[-1], protocol.AckCommit)
        await runtime.handle(_abort())
        # a broken file keeps the whitelist in force
        config.write_text("[[allow]]\ncommand = \n")
        assert not await runtime.reload()
        await runtime.handle(_commit("j3", "false"))
        assert isinstance(link.frames[-1], protocol.AckCommit)


# --- the connection -------------------------------------------------------------------------


class FakeWebSocket:
    """The calls ``run_session`` makes, over memory channels: frames to the agent are
    queued by the test, frames from the agent recorded with the (mock) time they left."""

    def __init__(self) -> None:
        self._to_agent, self._inbox = trio.open_memory_channel[bytes | str](64)
        self.sent: list[tuple[float, Frame]] = []
        self.close_code = 1001
        self.closed_with: tuple[int, str] | None = None
        self._seq = protocol.Sequencer()

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed_with = (code, reason or "")

    async def send_message(self, data: bytes) -> None:
        self.sent.append((trio.current_time(), protocol.decode(data)))

    async def get_message(self) -> bytes | str:
        try:
            return await self._inbox.receive()
        except trio.EndOfChannel:
            raise ConnectionClosed(CloseReason(self.close_code, "bye")) from None

    def push(self, frame_cls: type[Frame], *, seq: int | None = None, **fields: Any) -> None:
        number = self._seq.next() if seq is None else seq
        self._to_agent.send_nowait(protocol.encode(frame_cls(seq=number, ts=0.0, **fields)))

    def push_raw(self, message: bytes | str) -> None:
        self._to_agent.send_nowait(message)

    def close(self) -> None:
        self._to_agent.close()

    def types(self) -> list[str]:
        return [f.TYPE for _, f in self.sent]


async def _session(
    tmp_path: Path, script: Callable[[FakeWebSocket], Any]
) -> tuple[SessionEnd, FakeWebSocket]:
    ws = FakeWebSocket()
    runtime = _runtime(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        ws.push(
            protocol.Welcome,
            server_incarnation_id="s",
            heartbeat_interval=1.0,
            offline_threshold=3,
            voting_timeout=5.0,
            max_output_bytes=1000,
        )
        nursery.start_soon(script, ws)
        end = await run_session(ws, runtime)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()
    return end, ws


async def test_session_hello_heartbeats_and_server_loss(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def one_heartbeat_then_silence(ws: FakeWebSocket) -> None:
        # half an interval off the agent's heartbeats, so that no heartbeat leaves at the
        # instant the watchdog gives up
        await trio.sleep(0.5)
        ws.push(protocol.Heartbeat, server_incarnation_id="s")

    start = trio.current_time()
    end, ws = await _session(tmp_path, one_heartbeat_then_silence)
    hello = ws.sent[0][1]
    assert isinstance(hello, protocol.Hello)
    assert hello.seq == 1
    assert hello.job_state == "idle"
    assert hello.facts == FACTS
    # one heartbeat per interval; the server is lost 3 intervals after its last frame (0.5)
    beats = [(round(t - start, 3), f) for t, f in ws.sent[1:]]
    assert [t for t, _ in beats] == [1.0, 2.0, 3.0]
    assert [f.seq for _, f in beats] == [2, 3, 4]
    assert all(isinstance(f, protocol.Heartbeat) and f.job_state == "idle" for _, f in beats)
    assert end.welcomed
    assert end.reason == "server lost"
    assert end.lived == pytest.approx(3.5)


async def test_session_skips_heartbeats_after_other_frames_and_drops_replays(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def server(ws: FakeWebSocket) -> None:
        await trio.sleep(0.4)
        ws.push(protocol.Commit, job_id="j1", command="true", capture=False, run_timeout=5.0)
        await trio.sleep(0.4)
        # a replay of the commit's seq with another job: dropped, no nack
        ws.push(protocol.Commit, seq=2, job_id="j2", command="true", capture=False, run_timeout=5)
        ws.push(protocol.Heartbeat, server_incarnation_id="s")
        await trio.sleep(1.0)
        ws.close()

    start = trio.current_time()
    end, ws = await _session(tmp_path, server)
    sent = [(round(t - start, 3), f.TYPE) for t, f in ws.sent]
    assert sent == [(0.0, "hello"), (0.4, "ack_commit"), (1.4, "heartbeat")]
    assert ws.sent[2][1].job_state == "committed"  # type: ignore[union-attr]
    assert end.close_code == 1001
    assert end.welcomed


async def test_session_closes_after_three_protocol_errors_from_the_server(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def server(ws: FakeWebSocket) -> None:
        await trio.sleep(0.2)
        ws.push_raw("text")
        ws.push(protocol.Heartbeat, server_incarnation_id="s")
        ws.push_raw(b"\xc1")
        ws.push(protocol.Commit, job_id="j1", command="true", capture=False, run_timeout=5.0)
        ws.push(protocol.AckRun, job_id="j1")  # the server never sends these

    end, ws = await _session(tmp_path, server)
    assert (end.close_code, end.reason) == (1008, "too many protocol errors from the server")
    assert ws.closed_with == (1008, "too many protocol errors")
    assert end.lived == pytest.approx(0.2)
    assert [f.TYPE for _, f in ws.sent] == ["hello", "ack_commit"]  # the good frame was served
    messages = [r.getMessage() for r in caplog.records]
    assert "node node-1: protocol error, frame dropped: unexpected ack_run frame" in messages
    assert "node node-1: 3 protocol errors within a minute, closing" in messages


async def test_session_refuses_a_first_frame_that_is_not_welcome(tmp_path: Path) -> None:
    ws = FakeWebSocket()
    ws.push(protocol.Heartbeat, server_incarnation_id="s")
    runtime = _runtime(tmp_path)
    with trio.fail_after(LIMIT):
        end = await run_session(ws, runtime)  # type: ignore[arg-type]
    assert not end.welcomed
    assert "expected welcome" in end.reason


def test_backoff_full_jitter_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(rng=random.Random(7))
    ceilings = []
    for _ in range(10):
        ceiling = backoff.ceiling()
        ceilings.append(ceiling)
        assert 0 <= backoff.next_delay() <= ceiling
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    backoff.reset()
    assert backoff.ceiling() == 1
    backoff.next_delay()
    splays = [backoff.splay(0.5) for _ in range(200)]
    assert all(0 <= s <= 0.5 for s in splays)
    assert max(splays) > 0.4 and min(splays) < 0.1  # spread over the interval
    assert backoff.ceiling() == 1


async def test_reconnect_schedule(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    script = [
        SessionEnd(False, 0.0, None, "refused"),
        SessionEnd(False, 0.0, None, "refused"),
        SessionEnd(False, 0.0, None, "refused"),
        SessionEnd(True, 5.0, 1001, "going away", 0.5),  # splay, then start over
        SessionEnd(False, 0.0, None, "refused"),
        SessionEnd(False, 0.0, None, "refused"),
        SessionEnd(True, 61.0, 1006, "dropped", 0.5),  # lived a minute: start over
        SessionEnd(False, 0.0, None, "refused"),
    ]
    times: list[float] = []
    done = trio.Event()

    async def attempt(runtime: Any, settings: Any) -> SessionEnd:
        times.append(trio.current_time())
        if len(times) > len(script):
            done.set()
            await trio.sleep_forever()
        return script[len(times) - 1]

    monkeypatch.setattr(connection, "_attempt", attempt)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: connection.maintain_connection(
                None,  # type: ignore[arg-type]
                SimpleNamespace(
                    node_name="n", urls=("https://x/organizations/o",), at=lambda url: url
                ),  # type: ignore[arg-type]
                rng=random.Random(3),
            )
        )
        await done.wait()
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 1, 2, 4 s caps; the splay within the interval; 1, 2 again; 1, 2 after the long connection
    caps = [1, 2, 4, 0.5, 1, 2, 1, 2]
    assert len(gaps) == len(caps)
    for gap, cap in zip(gaps, caps, strict=True):
        assert 0 <= gap <= cap


# --- the command line -----------------------------------------------------------------------


def _agent_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pushy")
    sub = parser.add_subparsers(dest="command")
    _agent.add_parsers(sub)
    return parser.parse_args(["agent", *argv])


def test_agent_flags_map_onto_the_config(tmp_path: Path) -> None:
    key = tmp_path / "node.pem"
    key.write_text(chef_auth.private_key_pem(chef_auth.generate_private_key()))
    args = _agent_args(
        "--server",
        "https://h:1/organizations/o",
        "--node",
        "web-1",
        "--key",
        str(key),
        "--fingerprint",
        "SHA256:" + "ab" * 32,
        "--state-dir",
        str(tmp_path / "st"),
        "--log-level",
        "warning",
    )
    assert args.handler is _agent.cmd_agent
    settings = connect_settings(
        load_agent_config(
            None,
            flags={
                "server_urls": tuple(args.server),
                "node_name": args.node,
                "client_key": args.key,
                "server_fingerprint": args.fingerprint,
            },
        )
    )
    assert (settings.node_name, settings.fingerprint) == ("web-1", "SHA256:" + "ab" * 32)
    assert settings.credentials.org == "o"


@pytest.mark.parametrize(
    ("argv", "key", "text"),
    [
        (["--key", "/nonexistent/key.pem"], "server_url", "required"),
        (["--server", "https://h:1/organizations/o"], "client_key", "required"),
        (["--server", "https://h:1/organizations/o", "--key", "/no/key.pem"], None, "cannot read"),
        (["--server", "https://h:1/organizations/o", "--node", "bad name!"], "node_name", "bad"),
    ],
)
def test_agent_refuses_an_incomplete_config(argv: list[str], key: str | None, text: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _agent.cmd_agent(_agent_args(*argv))
    assert refused.value.key == key
    assert text in str(refused.value)


def test_agent_trust_options_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _agent_args("--ca-cert", "ca.pem", "--fingerprint", "SHA256:00")
    assert "not allowed with" in capsys.readouterr().err


async def test_reload_without_a_config_file_keeps_the_whitelist(tmp_path: Path) -> None:
    async with started(tmp_path) as (runtime, link):
        assert not await runtime.reload()
        await runtime.handle(_commit("j1", "sh -c true"))
        assert isinstance(link.frames[-1], protocol.AckCommit)


async def test_run_agent_reloads_the_whitelist_on_sighup(tmp_path: Path) -> None:
    key = tmp_path / "node.pem"
    key.write_text(chef_auth.private_key_pem(chef_auth.generate_private_key()))
    config_file = tmp_path / "agent.toml"
    off = '[facts]\nohai = "off"\n'  # ohai's seconds add nothing here
    config_file.write_text(off + '[[allow]]\ncommand = "true"\n')
    config = load_agent_config(
        config_file,
        flags={
            "server_url": "https://127.0.0.1:1/organizations/o",  # nobody there: it backs off
            "node_name": "node-1",
            "client_key": str(key),
            "state_dir": str(tmp_path / "state"),
        },
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            runtime: AgentRuntime = await nursery.start(
                functools.partial(run_agent, config, config_path=str(config_file))
            )
            assert runtime.whitelist.resolve("false") is None
            before = runtime.whitelist
            config_file.write_text(off + '[[allow]]\ncommand = "false"\n')
            os.kill(os.getpid(), signal.SIGHUP)
            while runtime.whitelist is before:  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert runtime.whitelist.resolve("false") is not None
            assert runtime.whitelist.resolve("true") is None
            nursery.cancel_scope.cancel()
