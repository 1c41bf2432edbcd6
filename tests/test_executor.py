"""The agent's executor, with real subprocesses, real files and real signals."""

from __future__ import annotations

import functools
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from pushy_appliance.agent import jobspec, procgroup
from pushy_appliance.agent.executor import ExecResult, RunningJob, run_job
from pushy_appliance.agent.jobspec import JobSpec, check_runnable, decode_file
from pushy_appliance.errors import AgentError, CommitRefused
from pushy_appliance.protocol import ResultBody

LIMIT = 20.0  # absolute cap on anything that could hang
GRACE = 0.3

is_root = os.geteuid() == 0


def _spec(*argv: str, **options: Any) -> JobSpec:
    options.setdefault("capture", True)
    options.setdefault("run_timeout", 30.0)
    return JobSpec(job_id="job-1", argv=argv, node_name="node-1", **options)


def _py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


async def _run(spec: JobSpec, **kwargs: Any) -> ExecResult:
    kwargs.setdefault("kill_grace", GRACE)
    with trio.fail_after(LIMIT):
        return await run_job(spec, **kwargs)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Job directories are created here, so a test can see that none is left behind."""
    root = tmp_path / "jobs"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _entries(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _gone(pid: int) -> bool:
    """Whether the process is dead (gone, or a zombie nobody reaped yet)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # no entry, or it went during the read
        return True
    return text.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class PidWatcher:
    """An ``on_output`` that records output and notices the first line (a pid)."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes, int]] = []
        self.first_line = trio.Event()
        self.pid = 0

    async def __call__(self, channel: str, data: bytes, offset: int) -> None:
        self.chunks.append((channel, data, offset))
        out = b"".join(d for c, d, _ in self.chunks if c == "stdout")
        if b"\n" in out and not self.first_line.is_set():
            self.pid = int(out.split(b"\n")[0])
            self.first_line.set()


# --- exit status ----------------------------------------------------------------------------


async def test_exit_zero_succeeds() -> None:
    result = await _run(_spec("true"))
    assert result.status == "succeeded"
    assert result.exit_code == 0
    assert result.signal is None
    assert result.duration_s >= 0


async def test_exit_three_fails() -> None:
    result = await _run(_spec("sh", "-c", "echo out; echo err >&2; exit 3"))
    assert (result.status, result.exit_code) == ("failed", 3)
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert (result.stdout_bytes, result.stderr_bytes, result.truncated) == (4, 4, False)


async def test_killed_by_signal_fails_with_signal() -> None:
    result = await _run(_spec("sh", "-c", "kill -KILL $$"))
    assert result.status == "failed"
    assert result.exit_code is None
    assert result.signal == signal.SIGKILL


async def test_result_body() -> None:
    result = await _run(_spec("sh", "-c", "exit 3"))
    body = result.as_result_body("job-1")
    assert body == ResultBody(
        job_id="job-1",
        status="failed",
        exit_code=3,
        signal=None,
        stdout_bytes=0,
        stderr_bytes=0,
        truncated=False,
        duration_s=result.duration_s,
    )


async def test_missing_executable_fails_without_raising(private_tmp: Path) -> None:
    chunks: list[tuple[str, bytes, int]] = []

    async def sink(channel: str, data: bytes, offset: int) -> None:
        chunks.append((channel, data, offset))

    result = await _run(_spec("/nonexistent/program", file=b"data"), on_output=sink)
    assert chunks == [("stderr", result.stderr, 0)]
    assert result.stderr_bytes == len(result.stderr)
    assert result.status == "failed"
    assert result.exit_code is None
    assert b"not started" in result.stderr
    assert b"/nonexistent/program" in result.stderr
    assert _entries(private_tmp) == []


# --- environment ----------------------------------------------------------------------------

ENV_DUMP = _py("import json, os; print(json.dumps(dict(os.environ)))")


async def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_VAR", "from-agent")
    monkeypatch.setenv("OVERRIDDEN", "agent")
    monkeypatch.setenv("CHEF_PUSH_JOB_FILE", "/stale/from/agent")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    job_env = {
        "MY_VAR": "mine",
        "OVERRIDDEN": "job",
        "PATH": "/evil",
        "LD_PRELOAD": "/evil.so",
        "LD_LIBRARY_PATH": "/evil",
        "CHEF_PUSH_NODE_NAME": "fake",
        "CHEF_PUSH_JOB_ID": "fake",
        "PUSHY_NODE_NAME": "fake",
        "PUSHY_JOB_ID": "fake",
        "CHEF_PUSH_JOB_FILE": "/fake",
        "PUSHY_JOB_FILE": "/fake",
    }
    result = await _run(_spec(*ENV_DUMP, env=job_env))
    assert result.status == "succeeded", result.stderr
    env = json.loads(result.stdout)
    assert env["AGENT_VAR"] == "from-agent"
    assert env["MY_VAR"] == "mine"
    assert env["OVERRIDDEN"] == "job"
    assert env["PATH"] == os.environ["PATH"]
    assert "LD_PRELOAD" not in env
    assert env.get("LD_LIBRARY_PATH") == os.environ.get("LD_LIBRARY_PATH")
    assert env["CHEF_PUSH_NODE_NAME"] == env["PUSHY_NODE_NAME"] == "node-1"
    assert env["CHEF_PUSH_JOB_ID"] == env["PUSHY_JOB_ID"] == "job-1"
    assert "CHEF_PUSH_JOB_FILE" not in env  # no file sent
    assert "PUSHY_JOB_FILE" not in env


async def test_configured_protected_names() -> None:
    result = await _run(
        _spec(*ENV_DUMP, env={"SECRET_KNOB": "1", "PATH": "/job/bin"}),
        protected_env=("SECRET_KNOB",),
    )
    env = json.loads(result.stdout)
    assert "SECRET_KNOB" not in env
    assert env["PATH"] == "/job/bin"  # not protected in this configuration


# The loader, shell and interpreter variables a job's env may not set by default (issue 13
# #10): each would let a job run code of its choosing through a whitelisted command.
CODE_LOADING = [
    "LD_AUDIT",
    "LD_DEBUG_OUTPUT",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "BASH_ENV",
    "ENV",
    "BASH_FUNC_ls%%",
    "SHELLOPTS",
    "PS4",
    "IFS",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONWARNINGS",
    "RUBYOPT",
    "RUBYLIB",
    "PERL5OPT",
    "PERL5LIB",
    "NODE_OPTIONS",
    "JAVA_TOOL_OPTIONS",
]


async def test_loader_shell_and_interpreter_variables_are_protected_by_default() -> None:
    job_env = dict.fromkeys(CODE_LOADING, "/evil")
    job_env.update(PYTHONUNBUFFERED="1", LDFLAGS="-L/x", NODE_ENV="production", MY_PATH="/m")
    result = await _run(_spec(*ENV_DUMP, env=job_env))
    assert result.status == "succeeded", result.stderr
    env = json.loads(result.stdout)
    for name in CODE_LOADING:
        assert env.get(name) != "/evil", name
    # the same families' harmless settings, and names that merely look alike, are the job's
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["LDFLAGS"] == "-L/x"
    assert env["NODE_ENV"] == "production"
    assert env["MY_PATH"] == "/m"


async def test_bash_env_and_pythonpath_from_a_job_run_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "evil.sh").write_text(f"echo bash >> {marker}\n")
    (tmp_path / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'a').write('python\\n')\n")
    env = {"BASH_ENV": str(tmp_path / "evil.sh"), "PYTHONPATH": str(tmp_path)}
    for argv in (("bash", "-c", "true"), _py("pass")):
        result = await _run(_spec(*argv, env=env))
        assert result.status == "succeeded", result.stderr
    assert not marker.exists()


def test_protected_names_and_prefixes() -> None:
    protected = jobspec.protected_names(("PATH", "LD_*", "BASH_FUNC_*"))
    assert "PATH" in protected
    assert "LD_AUDIT" in protected and "LD_" in protected
    assert "BASH_FUNC_f%%" in protected
    assert "PATHX" not in protected and "MYPATH" not in protected
    assert "LDFLAGS" not in protected and "ld_preload" not in protected
    everything = jobspec.protected_names(("*",))
    assert "ANYTHING" in everything


async def test_bad_env_name_fails_to_start() -> None:
    result = await _run(_spec("true", env={"A=B": "x"}))
    assert result.status == "failed"
    assert b"not started" in result.stderr


# --- the job's file -------------------------------------------------------------------------

FILE_REPORT = _py(
    "import json, os, stat\n"
    "path = os.environ['CHEF_PUSH_JOB_FILE']\n"
    "print(json.dumps({'path': path, 'same': os.environ['PUSHY_JOB_FILE'] == path,\n"
    "  'mode': stat.S_IMODE(os.stat(path).st_mode),\n"
    "  'dir_mode': stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),\n"
    "  'content': open(path, 'rb').read().hex()}))"
)


async def test_file_written_private_and_removed(private_tmp: Path) -> None:
    content = b"\x00\xff\xfebinary\nfile"
    result = await _run(_spec(*FILE_REPORT, file=content, env={"CHEF_PUSH_JOB_FILE": "/x"}))
    assert result.status == "succeeded", result.stderr
    report = json.loads(result.stdout)
    assert report["same"] is True
    assert bytes.fromhex(report["content"]) == content
    assert report["mode"] == 0o600
    assert report["dir_mode"] == 0o700
    job_dir = Path(report["path"]).parent
    assert job_dir.parent == private_tmp
    assert _entries(private_tmp) == []


async def test_file_removed_after_failure(private_tmp: Path) -> None:
    result = await _run(_spec("sh", "-c", 'test -f "$PUSHY_JOB_FILE" && exit 7', file=b"x"))
    assert result.exit_code == 7
    assert _entries(private_tmp) == []


async def test_file_removed_after_abort_and_grandchild_killed(private_tmp: Path) -> None:
    watcher = PidWatcher()
    spec = _spec("sh", "-c", "sleep 100 & echo $!; wait", file=b"x")
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            handle: RunningJob = await nursery.start(
                functools.partial(run_job, spec, on_output=watcher, kill_grace=GRACE)
            )
            await watcher.first_line.wait()
            assert len(_entries(private_tmp)) == 1
            handle.abort()
            result = await handle.wait()
    assert result.status == "aborted"
    assert result.signal == signal.SIGTERM
    assert handle.result == result
    assert _gone(watcher.pid)
    assert handle.pid is not None and _gone(handle.pid)
    assert _entries(private_tmp) == []


async def test_abort_does_not_wait_the_grace_for_a_zombie_grandchild() -> None:
    # SIGTERM ends the shell and its background sleep; the sleep, orphaned, goes to PID 1.
    # Where PID 1 does not reap at once (containers without an init: this machine's reaps
    # every second or two) it stays a zombie in the job's process group for a while: the
    # abort must not wait for it (before: 1.5 s here, up to the whole grace elsewhere).
    watcher = PidWatcher()
    spec = _spec("sh", "-c", "sleep 100 & echo $!; wait")
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            handle: RunningJob = await nursery.start(
                functools.partial(run_job, spec, on_output=watcher, kill_grace=10.0)
            )
            await watcher.first_line.wait()
            started = trio.current_time()
            handle.abort()
            result = await handle.wait()
            took = trio.current_time() - started
    assert result.status == "aborted"
    assert result.signal == signal.SIGTERM
    assert took < 1.0, took
    assert _gone(watcher.pid)


def test_a_group_of_zombies_is_not_alive() -> None:
    # our own child, never reaped until the end: a zombie that killpg(pgid, 0) still finds
    process = subprocess.Popen(["true"], start_new_session=True)
    try:
        # wait for the exit but leave the child unreaped (WNOWAIT): a zombie now
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        assert _gone(process.pid)
        os.killpg(process.pid, 0)  # the kernel still counts the zombie in its group
        assert not procgroup.group_alive(process.pid)
    finally:
        process.wait()
    assert not procgroup.group_alive(process.pid)


async def test_a_leftover_group_is_ended_only_when_it_is_the_same_one() -> None:
    process = await trio.lowlevel.open_process(["sleep", "30"], start_new_session=True)
    try:
        started = procgroup.process_start_time(process.pid)
        assert started is not None
        # another start time: a pid reused since, left alone
        assert not await procgroup.end_leftover_group(process.pid, started + 1, GRACE)
        assert procgroup.group_alive(process.pid)
        with trio.fail_after(LIMIT):
            assert await procgroup.end_leftover_group(process.pid, started, 10.0)
            assert await process.wait() == -signal.SIGTERM
        # gone now: nothing to end
        assert not await procgroup.end_leftover_group(process.pid, started, GRACE)
    finally:
        process.kill()
        await process.wait()


def test_a_group_with_a_running_member_is_alive() -> None:
    process = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert procgroup.group_alive(process.pid)
    finally:
        process.kill()
        process.wait()


async def test_timeout_kills_grandchild_and_removes_file(private_tmp: Path) -> None:
    watcher = PidWatcher()
    spec = _spec("sh", "-c", "sleep 100 & echo $!; wait", file=b"x", run_timeout=0.5)
    result = await _run(spec, on_output=watcher)
    assert result.status == "timed_out"
    assert result.signal == signal.SIGTERM
    assert 0.5 <= result.duration_s < 5
    assert watcher.first_line.is_set()
    assert _gone(watcher.pid)
    assert _entries(private_tmp) == []


async def test_sigterm_ignored_escalates_to_sigkill() -> None:
    watcher = PidWatcher()
    # An ignored signal stays ignored across exec, so the sleep ignores SIGTERM too.
    spec = _spec("sh", "-c", "trap '' TERM; sleep 100 & echo $!; wait", run_timeout=0.2)
    result = await _run(spec, on_output=watcher, kill_grace=0.3)
    assert result.status == "timed_out"
    assert result.signal == signal.SIGKILL
    assert result.duration_s >= 0.5
    assert _gone(watcher.pid)


async def test_abort_right_away() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            handle: RunningJob = await nursery.start(
                functools.partial(run_job, _spec("sleep", "100"), kill_grace=GRACE)
            )
            handle.abort()
            handle.abort()  # idempotent
            result = await handle.wait()
    assert result.status == "aborted"
    assert handle.abort_requested


async def test_abort_after_exit_keeps_the_exit_status() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            handle: RunningJob = await nursery.start(run_job, _spec("true"))
            result = await handle.wait()
            handle.abort()
    assert result.status == "succeeded"


async def test_cancellation_kills_the_group_and_cleans_up(private_tmp: Path) -> None:
    watcher = PidWatcher()
    spec = _spec("sh", "-c", "trap '' TERM; sleep 100 & echo $!; wait", file=b"x")
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            handle: RunningJob = await nursery.start(
                functools.partial(run_job, spec, on_output=watcher, kill_grace=30.0)
            )
            await watcher.first_line.wait()
            nursery.cancel_scope.cancel()
    assert handle.pid is not None and _gone(handle.pid)
    assert _gone(watcher.pid)
    assert _entries(private_tmp) == []
    assert handle.result is None
    with pytest.raises(AgentError, match="cancelled"):
        await handle.wait()


async def test_on_output_error_kills_the_job(private_tmp: Path) -> None:
    async def explode(channel: str, data: bytes, offset: int) -> None:
        raise RuntimeError("sink broken")

    spec = _spec("sh", "-c", "echo hi; exec sleep 100", file=b"x")
    with trio.fail_after(LIMIT), pytest.RaisesGroup(RuntimeError, flatten_subgroups=True):
        await run_job(spec, on_output=explode)
    assert _entries(private_tmp) == []


# --- directory, bytes, output limits --------------------------------------------------------


async def test_dir_applied(tmp_path: Path) -> None:
    result = await _run(_spec("pwd", dir=str(tmp_path)))
    assert result.stdout.decode().strip() == _real(tmp_path)


async def test_working_dir_is_the_default(tmp_path: Path) -> None:
    result = await _run(_spec("pwd"), working_dir=str(tmp_path))
    assert result.stdout.decode().strip() == _real(tmp_path)
    result = await _run(_spec("pwd"))
    assert result.stdout == b"/\n"


async def test_non_utf8_output_round_trips() -> None:
    raw = b"\xff\xfe\x00\x80abc\xc3\x28\n"
    code = f"import sys; sys.stdout.buffer.write({raw!r}); sys.stderr.buffer.write({raw!r})"
    result = await _run(_spec(*_py(code)))
    assert result.stdout == raw
    assert result.stderr == raw


async def test_big_output_truncated_while_the_child_runs_to_completion() -> None:
    total_out = 10 * 1024 * 1024
    total_err = 3_000_000
    chunks: list[tuple[str, bytes, int]] = []

    async def sink(channel: str, data: bytes, offset: int) -> None:
        chunks.append((channel, data, offset))

    script = f"head -c {total_out} /dev/urandom; head -c {total_err} /dev/zero >&2; exit 0"
    result = await _run(_spec("sh", "-c", script), on_output=sink, max_output_bytes=1_048_576)
    assert result.status == "succeeded"
    assert result.exit_code == 0
    assert result.stdout_bytes == total_out
    assert result.stderr_bytes == total_err
    assert len(result.stdout) == len(result.stderr) == 1_048_576
    assert result.truncated is True
    for channel, kept in (("stdout", result.stdout), ("stderr", result.stderr)):
        mine = [(data, offset) for c, data, offset in chunks if c == channel]
        assert all(len(data) <= 65_536 for data, _ in mine)
        expected_offset = 0
        for data, offset in mine:
            assert offset == expected_offset  # in order, contiguous
            expected_offset += len(data)
        assert b"".join(data for data, _ in mine) == kept


async def test_without_capture_output_is_counted_not_kept() -> None:
    calls: list[str] = []

    async def sink(channel: str, data: bytes, offset: int) -> None:
        calls.append(channel)

    spec = _spec("sh", "-c", "head -c 200000 /dev/zero; echo oops >&2", capture=False)
    result = await _run(spec, on_output=sink, max_output_bytes=1000)
    assert result.status == "succeeded"
    assert (result.stdout, result.stderr) == (b"", b"")
    assert (result.stdout_bytes, result.stderr_bytes) == (200_000, 5)
    assert result.truncated is False
    assert calls == []


async def test_output_is_streamed_while_running() -> None:
    """The first line arrives through on_output while the process still runs."""
    watcher = PidWatcher()
    spec = _spec("sh", "-c", "echo 1; exec sleep 100")
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            handle: RunningJob = await nursery.start(
                functools.partial(run_job, spec, on_output=watcher, kill_grace=GRACE)
            )
            await watcher.first_line.wait()
            assert handle.result is None
            handle.abort()
    assert watcher.chunks == [("stdout", b"1\n", 0)]


# --- users ----------------------------------------------------------------------------------

ID_REPORT = (
    "sh",
    "-c",
    'id -u; id -g; id -G; echo "$HOME $USER $LOGNAME"; cat "$PUSHY_JOB_FILE"; echo; '
    'stat -c "%U %a" "$(dirname "$PUSHY_JOB_FILE")"',
)


@pytest.mark.skipif(not is_root, reason="user switching needs root")
async def test_user_switch_as_root() -> None:
    nobody = pwd.getpwnam("nobody")
    result = await _run(_spec(*ID_REPORT, user="nobody", file=b"for nobody"))
    assert result.status == "succeeded", result.stderr
    uid, gid, groups, names, content, dir_info = result.stdout.decode().splitlines()
    assert int(uid) == nobody.pw_uid
    assert int(gid) == nobody.pw_gid
    assert {int(g) for g in groups.split()} == set(os.getgrouplist("nobody", nobody.pw_gid))
    assert "0" not in groups.split()  # root's supplementary groups were dropped
    assert names == f"{nobody.pw_dir} nobody nobody"
    assert content == "for nobody"
    assert dir_info == "nobody 700"


async def test_own_user_is_accepted_without_switching(monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setattr(jobspec, "_effective_uid", lambda: nobody.pw_uid)  # a non-root agent
    result = await _run(_spec("sh", "-c", 'id -u; echo "$USER $HOME"', user="nobody"))
    uid, names = result.stdout.decode().splitlines()
    assert int(uid) == os.geteuid()  # no switch was attempted
    assert names == f"nobody {nobody.pw_dir}"


def test_non_root_agent_refuses_other_users(monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setattr(jobspec, "_effective_uid", lambda: nobody.pw_uid)
    check_runnable(_spec("true", user="nobody"))  # its own user is fine
    with pytest.raises(CommitRefused, match="not root") as info:
        check_runnable(_spec("true", user="root"))
    assert info.value.reason == "no_such_user"


async def test_non_root_agent_run_fails_for_other_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobspec, "_effective_uid", lambda: 4242)
    result = await _run(_spec("true", user="nobody"))
    assert result.status == "failed"
    assert result.exit_code is None
    assert b"not root" in result.stderr


# --- commit-time checks and file decoding ---------------------------------------------------


def test_check_runnable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    check_runnable(_spec("true", dir=str(tmp_path)))
    check_runnable(_spec("true"), working_dir=str(tmp_path))
    with pytest.raises(CommitRefused) as info:
        check_runnable(_spec("true", user="no-such-user-here"))
    assert info.value.reason == "no_such_user"
    with pytest.raises(CommitRefused) as info:
        check_runnable(_spec("true", dir=str(tmp_path / "missing")))
    assert info.value.reason == "no_such_dir"
    (tmp_path / "plain").write_text("x")
    with pytest.raises(CommitRefused) as info:
        check_runnable(_spec("true", dir=str(tmp_path / "plain")))
    assert info.value.reason == "no_such_dir"
    with pytest.raises(CommitRefused) as info:
        check_runnable(_spec("true"), working_dir=str(tmp_path / "missing"))
    assert info.value.reason == "no_such_dir"
    check_runnable(_spec("true", env={"PATH": "/x", "PUSHY_JOB_ID": "y", "OK": "1"}))
    assert "PATH, PUSHY_JOB_ID" in caplog.text
    assert "job-1 on node-1" in caplog.text


def test_decode_file() -> None:
    assert decode_file("raw:héllo\n") == "héllo\n".encode()
    assert decode_file("raw:") == b""
    assert decode_file("base64:AP/+") == b"\x00\xff\xfe"
    for bad in ("base64:not base64!", "base64:AAA", "text", "RAW:x", "raw:\udc80"):
        with pytest.raises(CommitRefused) as info:
            decode_file(bad)
        assert info.value.reason == "bad_file"


def test_job_file_permissions_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old_umask = os.umask(0o777)  # even a hostile umask gives 0600 / 0700
    try:
        directory, path = jobspec.write_job_file(b"data", None)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    jobspec.remove_dir(directory)
    assert not os.path.exists(directory)
