"""Run one job's process on the node (``NODES.md`` §5).

The process runs from an argument vector (a shell only when the whitelist says so), in a new
session so that abort and timeout reach its whole process group, grandchildren included:

* **user** — switched (uid, gid and supplementary groups; ``HOME``, ``USER``, ``LOGNAME``
  from the password database) only when the agent runs as root; a non-root agent refuses any
  user but its own;
* **dir** — the job's ``dir``, else the agent's working dir;
* **env** — the agent's environment, then the job's ``env`` minus the protected names, then
  ``CHEF_PUSH_NODE_NAME``, ``CHEF_PUSH_JOB_ID``, ``PUSHY_NODE_NAME``, ``PUSHY_JOB_ID`` and,
  when a file was sent, ``CHEF_PUSH_JOB_FILE`` and ``PUSHY_JOB_FILE``, none of which a job
  can set;
* **file** — written (mode 0600) into a fresh private directory (0700, owned by the run-as
  user) that is removed whatever the outcome;
* **output** — stdout and stderr read concurrently as bytes; with capture, kept up to a cap
  per channel and streamed through ``on_output`` in chunks of at most 64 KiB at most every
  250 ms; beyond the cap the pipes are still drained (the child never blocks) and counted;
* **timeout and abort** — SIGTERM to the group, SIGKILL after a grace period.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import trio

from ..errors import AgentError, CommitRefused
from ..protocol import ResultBody

__all__ = [
    "DEFAULT_PROTECTED_ENV",
    "ExecResult",
    "JobSpec",
    "OnOutput",
    "RunningJob",
    "check_runnable",
    "decode_file",
    "end_leftover_group",
    "process_start_time",
    "run_job",
]

logger = logging.getLogger(__name__)

DEFAULT_PROTECTED_ENV: tuple[str, ...] = ("PATH", "LD_PRELOAD", "LD_LIBRARY_PATH")
"""Variables a job's ``env`` may not set unless the agent's config says otherwise."""

OUTPUT_INTERVAL = 0.25
"""Seconds captured output may wait before it is handed to ``on_output``."""

OUTPUT_CHUNK = 65_536
"""Most bytes handed to ``on_output`` at once, and the pipe read size."""

JOB_FILE_NAME = "job_file"
"""Name of the job's file inside its private directory."""

_DRAIN_AFTER_EXIT = 1.0
"""Seconds the pipes are still read after the process exits (a daemonized grandchild may
hold them open forever)."""

_REAP_WAIT = 5.0
"""Seconds to wait for a SIGKILLed process to be reaped when the caller is cancelled."""

_GROUP_POLL = 0.05
"""Seconds between checks whether a terminated process group is gone."""

_DEBUG_LOG_LIMIT = 65_536
"""Bytes per channel of uncaptured output copied to the debug log."""

_FIXED_NAMES = ("CHEF_PUSH_NODE_NAME", "CHEF_PUSH_JOB_ID", "PUSHY_NODE_NAME", "PUSHY_JOB_ID")
_FILE_NAMES = ("CHEF_PUSH_JOB_FILE", "PUSHY_JOB_FILE")

OnOutput = Callable[[str, bytes, int], Awaitable[None]]
"""``on_output(channel, data, offset)``: captured output as it comes."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """What to run for a committed job.

    Attributes:
        job_id: the job.
        argv: the argument vector the whitelist resolved the command to.
        user: the user to run as; ``None`` for the agent's own.
        dir: the working directory; ``None`` for the agent's configured one.
        env: variables the job asks for.
        file: the job's file, already decoded (:func:`decode_file`), or ``None``.
        capture: whether to keep and stream output.
        run_timeout: seconds from the start of the process until it is killed.
        node_name: this node's name (for the environment and the logs).
    """

    job_id: str
    argv: tuple[str, ...]
    user: str | None = None
    dir: str | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    file: bytes | None = None
    capture: bool = False
    run_timeout: float
    node_name: str


@dataclasses.dataclass(frozen=True, slots=True)
class ExecResult:
    """How a job's process ended.

    Attributes:
        status: ``succeeded``, ``failed``, ``aborted`` or ``timed_out``.
        exit_code: the exit code; ``None`` when killed by a signal or never started.
        signal: the signal that killed it, if one did.
        stdout: captured stdout (at most the cap; empty without capture).
        stderr: captured stderr, likewise. When the process could not be started at all,
            the reason, so that it reaches the operator.
        stdout_bytes: every byte seen on stdout, kept or not.
        stderr_bytes: every byte seen on stderr, kept or not.
        truncated: whether a channel went over the cap.
        duration_s: seconds from start to exit.
    """

    status: str
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_bytes: int
    stderr_bytes: int
    truncated: bool
    duration_s: float

    def as_result_body(self, job_id: str) -> ResultBody:
        """The protocol's view of this result.

        Args:
            job_id: the job it belongs to.

        Returns:
            The ``result`` frame's fields.
        """
        return ResultBody(
            job_id=job_id,
            status=self.status,
            exit_code=self.exit_code,
            signal=self.signal,
            stdout_bytes=self.stdout_bytes,
            stderr_bytes=self.stderr_bytes,
            truncated=self.truncated,
            duration_s=self.duration_s,
        )


class RunningJob:
    """The handle :func:`run_job` passes to ``task_status.started()``."""

    __slots__ = ("_abort", "_done", "_result", "_spawned", "job_id", "pid")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.pid: int | None = None
        """The process id once started (also its process group id)."""
        self._abort = trio.Event()
        self._done = trio.Event()
        self._spawned = trio.Event()
        self._result: ExecResult | None = None

    async def wait_spawned(self) -> int | None:
        """Wait until the process started (its pid) or the job ended without one (``None``)."""
        await self._spawned.wait()
        return self.pid

    def _spawn(self, pid: int) -> None:
        self.pid = pid
        self._spawned.set()

    def abort(self) -> None:
        """Ask the job to stop: SIGTERM to its process group, SIGKILL after the grace period.

        Never blocks; calling it again, or after the job ended, does nothing. :func:`run_job`
        then returns a result with status ``aborted`` (unless the process had already ended).
        """
        self._abort.set()

    @property
    def abort_requested(self) -> bool:
        """Whether :meth:`abort` was called."""
        return self._abort.is_set()

    @property
    def result(self) -> ExecResult | None:
        """The result once the job ended, else ``None``."""
        return self._result

    async def wait(self) -> ExecResult:
        """Wait for the job to end.

        Returns:
            The same result :func:`run_job` returns.

        Raises:
            AgentError: when :func:`run_job` was cancelled or failed instead of finishing.
        """
        await self._done.wait()
        if self._result is None:
            raise AgentError(f"job {self.job_id} did not finish: its runner was cancelled")
        return self._result

    def _finish(self, result: ExecResult | None) -> None:
        self._result = result
        self._done.set()
        self._spawned.set()


def decode_file(text: str) -> bytes:
    """Decode a job's ``file`` as the API gives it.

    Args:
        text: ``raw:TEXT`` (the text, UTF-8 encoded) or ``base64:DATA``.

    Returns:
        The file's bytes.

    Raises:
        CommitRefused: ``bad_file`` for any other prefix or invalid base64.
    """
    if text.startswith("raw:"):
        try:
            return text[4:].encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CommitRefused("bad_file", f"raw file is not encodable text: {exc}") from None
    if text.startswith("base64:"):
        try:
            return base64.b64decode(text[7:], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CommitRefused("bad_file", f"invalid base64: {exc}") from None
    raise CommitRefused("bad_file", "expected 'raw:...' or 'base64:...'")


def _effective_uid() -> int:
    """The agent's effective uid (a function so tests can play a non-root agent)."""
    return os.geteuid()


def _resolve_user(user: str | None) -> tuple[pwd.struct_passwd | None, bool]:
    """The password entry for ``user`` and whether the process must switch to it.

    Raises:
        CommitRefused: ``no_such_user`` for an unknown user, or another user than the
            agent's own when the agent is not root.
    """
    if user is None:
        return None, False
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise CommitRefused("no_such_user", f"no user {user!r}") from None
    euid = _effective_uid()
    if euid == 0:
        return entry, True
    if entry.pw_uid == euid:
        return entry, False
    raise CommitRefused("no_such_user", f"cannot run as {user!r}: agent is not root")


def check_runnable(
    spec: JobSpec,
    *,
    working_dir: str = "/",
    protected_env: Sequence[str] = DEFAULT_PROTECTED_ENV,
) -> None:
    """Check at commit time that the job can run here.

    Protected variables in the job's ``env`` are not an error: they are logged here and
    dropped when the job runs.

    Args:
        spec: the job.
        working_dir: the agent's working dir, used when the job gives no ``dir``.
        protected_env: variables a job may not set.

    Raises:
        CommitRefused: ``no_such_user`` (unknown, or another user while the agent is not
            root) or ``no_such_dir`` (the directory does not exist).
    """
    _resolve_user(spec.user)
    directory = spec.dir if spec.dir is not None else working_dir
    if not os.path.isdir(directory):
        raise CommitRefused("no_such_dir", f"{directory!r} is not a directory")
    refused = sorted(set(spec.env) & {*protected_env, *_FIXED_NAMES, *_FILE_NAMES})
    if refused:
        logger.warning(
            "job %s on %s: the job's env sets %s, which jobs may not set; ignored",
            spec.job_id,
            spec.node_name,
            ", ".join(refused),
        )


def _environment(
    spec: JobSpec,
    protected_env: Sequence[str],
    account: pwd.struct_passwd | None,
    file_path: str | None,
) -> dict[str, str]:
    env = dict(os.environ)
    for name in _FILE_NAMES:
        env.pop(name, None)
    if account is not None:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    reserved = {*protected_env, *_FIXED_NAMES, *_FILE_NAMES}
    dropped = sorted(name for name in spec.env if name in reserved)
    if dropped:
        logger.debug("job %s on %s: not setting %s", spec.job_id, spec.node_name, dropped)
    env.update((k, v) for k, v in spec.env.items() if k not in reserved)
    env.update(
        CHEF_PUSH_NODE_NAME=spec.node_name,
        CHEF_PUSH_JOB_ID=spec.job_id,
        PUSHY_NODE_NAME=spec.node_name,
        PUSHY_JOB_ID=spec.job_id,
    )
    if file_path is not None:
        env.update(CHEF_PUSH_JOB_FILE=file_path, PUSHY_JOB_FILE=file_path)
    return env


def _write_job_file(data: bytes, owner: pwd.struct_passwd | None) -> tuple[str, str]:
    """Create the private directory and the job's file in it; returns (directory, file)."""
    directory = tempfile.mkdtemp(prefix="pushy-job-")  # mode 0700
    try:
        path = os.path.join(directory, JOB_FILE_NAME)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        with open(fd, "wb") as f:
            os.fchmod(fd, 0o600)  # whatever the umask
            if owner is not None:
                os.fchown(fd, owner.pw_uid, owner.pw_gid)
            f.write(data)
        os.chmod(directory, 0o700)
        if owner is not None:
            os.chown(directory, owner.pw_uid, owner.pw_gid)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory, path


def _report_unremovable(_function: Any, path: str, exc: BaseException) -> None:
    logger.warning("cannot remove %s: %s", path, exc)


def _remove_dir(directory: str) -> None:
    if sys.version_info >= (3, 12):
        shutil.rmtree(directory, onexc=_report_unremovable)
    else:
        shutil.rmtree(
            directory, onerror=lambda func, path, info: _report_unremovable(func, path, info[1])
        )


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count).

    ``killpg(pgid, 0)`` also succeeds for zombies: a grandchild orphaned by the abort is
    re-parented to PID 1, and where PID 1 does not reap (containers without an init) it stays
    a zombie, so the group would look alive for the whole kill grace. When ``killpg`` finds
    the group, ``/proc`` tells whether any member is more than a zombie.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _group_has_live_member(pgid)


def _proc_stat(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` from the third (the state) on, or ``None`` (gone).

    "PID (COMM) STATE PPID PGRP …": COMM may hold spaces and parentheses, so the fields are
    those after the last ``)``. Index 0 is the state, 2 the process group, 19 the start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields if len(fields) > 19 else None


def _group_has_live_member(pgid: int) -> bool:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # no /proc: trust killpg
    for entry in entries:
        if entry.isdigit():
            fields = _proc_stat(entry)
            if fields is not None and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False


class _Channel:
    """One output channel: counts, keeps up to the cap, and hands chunks to ``on_output``."""

    def __init__(self, name: str, spec: JobSpec, cap: int, on_output: OnOutput | None) -> None:
        self.name = name
        self.spec = spec
        self.cap = cap
        self.on_output = on_output if spec.capture else None
        self.kept = bytearray()
        self.total = 0
        self.truncated = False
        self._logged = 0
        self._pending = bytearray()
        self._pending_offset = 0
        self._ready = trio.Event()
        self._lock = trio.Lock()

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        while True:
            chunk = await stream.receive_some(OUTPUT_CHUNK)
            if not chunk:
                return
            self.total += len(chunk)
            if not self.spec.capture:
                self._log(chunk)
                continue
            room = self.cap - len(self.kept)
            if len(chunk) > room:
                self.truncated = True
                chunk = chunk[: max(room, 0)]
            if not chunk:
                continue
            self.kept += chunk
            if self.on_output is None:
                continue
            self._pending += chunk
            self._ready.set()
            if len(self._pending) >= OUTPUT_CHUNK:
                await self.flush()

    def _log(self, chunk: bytes | bytearray) -> None:
        if self._logged >= _DEBUG_LOG_LIMIT or not logger.isEnabledFor(logging.DEBUG):
            return
        part = chunk[: _DEBUG_LOG_LIMIT - self._logged]
        self._logged += len(part)
        logger.debug("job %s on %s %s: %r", self.spec.job_id, self.spec.node_name, self.name, part)

    async def run_flusher(self) -> None:
        """Hand pending output over at most every :data:`OUTPUT_INTERVAL` seconds."""
        while True:
            await self._ready.wait()
            await trio.sleep(OUTPUT_INTERVAL)
            await self.flush()

    async def flush(self) -> None:
        """Hand everything pending to ``on_output``, in chunks of at most 64 KiB.

        Cancellation: a chunk stays pending until ``on_output`` returned, so a later flush
        sends it again (with the same offset).
        """
        if self.on_output is None:
            return
        async with self._lock:
            while self._pending:
                data = bytes(self._pending[:OUTPUT_CHUNK])
                await self.on_output(self.name, data, self._pending_offset)
                del self._pending[: len(data)]
                self._pending_offset += len(data)
            self._ready = trio.Event()


def _not_started(spec: JobSpec, status: str, reason: str, duration: float) -> ExecResult:
    message = f"pushy agent: job {spec.job_id} not started: {reason}\n".encode()
    if status == "failed":
        logger.warning("job %s on %s: not started: %s", spec.job_id, spec.node_name, reason)
    return ExecResult(
        status=status,
        exit_code=None,
        signal=None,
        stdout=b"",
        stderr=message if status == "failed" and spec.capture else b"",
        stdout_bytes=0,
        stderr_bytes=len(message) if status == "failed" else 0,
        truncated=False,
        duration_s=duration,
    )


async def run_job(
    spec: JobSpec,
    *,
    working_dir: str = "/",
    protected_env: Sequence[str] = DEFAULT_PROTECTED_ENV,
    max_output_bytes: int = 1_048_576,
    on_output: OnOutput | None = None,
    kill_grace: float = 5.0,
    task_status: trio.TaskStatus[RunningJob] = trio.TASK_STATUS_IGNORED,
) -> ExecResult:
    """Run the job's process until it exits, times out or is aborted.

    Start-up: ``task_status.started(handle)`` is called at once with a :class:`RunningJob`,
    whose ``abort()`` stops the job and whose ``wait()`` gives the result (use it when the
    job is started with ``nursery.start``, which drops the return value).

    Cancellation: the process group is killed with SIGKILL and reaped, and the job's private
    directory removed, under a shield before the cancellation propagates.

    Args:
        spec: the job.
        working_dir: the directory used when the job gives no ``dir``.
        protected_env: variables the job's ``env`` may not set.
        max_output_bytes: bytes kept per channel with capture; the rest is only counted.
        on_output: with capture, called as ``on_output(channel, data, offset)`` with chunks of
            at most 64 KiB, at most every 250 ms, in order per channel. While it blocks, the
            child's pipe fills and the child may block too. It sees only the kept bytes.
        kill_grace: seconds between SIGTERM and SIGKILL on timeout or abort.
        task_status: for ``nursery.start``.

    Returns:
        How the process ended. A job that cannot start (user gone, directory gone, no such
        executable, unwritable file) ends ``failed`` with no exit code and the reason as
        its stderr; it does not raise.

    Raises:
        ExceptionGroup: wrapping whatever ``on_output`` raised (the process group is killed
            and the private directory removed first).
    """
    handle = RunningJob(spec.job_id)
    task_status.started(handle)
    try:
        result = await _run(
            spec, handle, working_dir, protected_env, max_output_bytes, on_output, kill_grace
        )
        if handle.pid is None and result.stderr and on_output is not None:
            # Never started: the reason is the job's stderr, streamed like any output.
            await on_output("stderr", result.stderr, 0)
    except BaseException:
        handle._finish(None)
        raise
    handle._finish(result)
    logger.info(
        "job %s on %s: %s (exit code %s, signal %s) after %.3f s",
        spec.job_id,
        spec.node_name,
        result.status,
        result.exit_code,
        result.signal,
        result.duration_s,
    )
    return result


async def _run(
    spec: JobSpec,
    handle: RunningJob,
    working_dir: str,
    protected_env: Sequence[str],
    max_output_bytes: int,
    on_output: OnOutput | None,
    kill_grace: float,
) -> ExecResult:
    begin = trio.current_time()
    try:
        account, switch = _resolve_user(spec.user)
    except CommitRefused as exc:
        return _not_started(spec, "failed", str(exc), 0.0)
    private_dir: str | None = None
    try:
        file_path: str | None = None
        if spec.file is not None:
            try:
                private_dir, file_path = await trio.to_thread.run_sync(
                    _write_job_file, spec.file, account if switch else None
                )
            except OSError as exc:
                reason = f"cannot write the job's file: {exc}"
                return _not_started(spec, "failed", reason, trio.current_time() - begin)
        if handle.abort_requested:
            return _not_started(spec, "aborted", "aborted", trio.current_time() - begin)
        options: dict[str, Any] = {}
        if switch and account is not None:
            options.update(
                user=account.pw_uid,
                group=account.pw_gid,
                extra_groups=os.getgrouplist(account.pw_name, account.pw_gid),
            )
        env = _environment(spec, protected_env, account, file_path)
        cwd = spec.dir if spec.dir is not None else working_dir
        try:
            process = await trio.lowlevel.open_process(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,
                **options,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            reason = f"cannot start {spec.argv[0]!r}: {exc}"
            return _not_started(spec, "failed", reason, trio.current_time() - begin)
        handle._spawn(process.pid)
        logger.info(
            "job %s on %s: started pid %d: %s",
            spec.job_id,
            spec.node_name,
            process.pid,
            spec.argv,
        )
        return await _supervise(spec, handle, process, max_output_bytes, on_output, kill_grace)
    finally:
        if private_dir is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove_dir, private_dir)


async def _terminate_group(
    pgid: int, kill_grace: float, process: trio.Process | None = None
) -> None:
    """SIGTERM the group, give it ``kill_grace`` seconds to go, then SIGKILL what is left.

    ``process``: the group's leader when it is our child (reaped here).
    """
    _signal_group(pgid, signal.SIGTERM)
    with trio.move_on_after(kill_grace):
        if process is not None:
            await process.wait()
        # No event tells when the last member of a process group is gone: poll.
        while _group_alive(pgid):  # noqa: ASYNC110
            await trio.sleep(_GROUP_POLL)
    _signal_group(pgid, signal.SIGKILL)


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or ``None`` when there is none.

    With the pid it names one process for good: a pid reused later has another start time.
    Blocking (reads ``/proc``).
    """
    fields = _proc_stat(pid)
    return None if fields is None else int(fields[19])


async def end_leftover_group(pgid: int, started: int, kill_grace: float) -> bool:
    """Terminate a job's process group that an earlier run of the agent left running.

    An agent killed with SIGKILL cannot stop its job: the job's group (the leader ``pgid``,
    started at ``started`` by :func:`process_start_time`) runs on. A restarted agent ends it
    (SIGTERM, then SIGKILL after ``kill_grace``) so that it does not run beside the next job.
    Nothing is signalled unless the group is that one: a live leader must have the same
    start time (a pid reused since is left alone); with the leader gone, the group can only
    be the same one (Linux does not hand out a pid that still names a process group).

    Returns:
        Whether a live group was found and terminated.
    """
    leader = await trio.to_thread.run_sync(process_start_time, pgid)
    if leader is not None and leader != started:
        return False
    if not await trio.to_thread.run_sync(_group_alive, pgid):
        return False
    await _terminate_group(pgid, kill_grace)
    return True


async def _supervise(
    spec: JobSpec,
    handle: RunningJob,
    process: trio.Process,
    max_output_bytes: int,
    on_output: OnOutput | None,
    kill_grace: float,
) -> ExecResult:
    begin = trio.current_time()
    assert process.stdout is not None
    assert process.stderr is not None
    stdout = _Channel("stdout", spec, max_output_bytes, on_output)
    stderr = _Channel("stderr", spec, max_output_bytes, on_output)
    outcome: str | None = None
    exited = False
    trigger = trio.CancelScope(deadline=begin + spec.run_timeout)
    flushers = trio.CancelScope()
    finished = False
    ended = begin

    async def watchdog() -> None:
        nonlocal outcome
        with trigger:
            await handle._abort.wait()
            outcome = "aborted"
        if trigger.cancelled_caught:
            if exited:
                return
            outcome = "timed_out"
        logger.info("job %s on %s: %s, terminating", spec.job_id, spec.node_name, outcome)
        await _terminate_group(process.pid, kill_grace, process)

    async def run_flushers() -> None:
        with flushers:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stdout.run_flusher)
                nursery.start_soon(stderr.run_flusher)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watchdog)
            if spec.capture and on_output is not None:
                nursery.start_soon(run_flushers)
            async with trio.open_nursery() as io:
                io.start_soon(stdout.pump, process.stdout)
                io.start_soon(stderr.pump, process.stderr)
                await process.wait()
                ended = trio.current_time()
                exited = True
                trigger.cancel()
                io.cancel_scope.deadline = trio.current_time() + _DRAIN_AFTER_EXIT
            flushers.cancel()
            await stdout.flush()
            await stderr.flush()
        finished = True
    finally:
        with trio.CancelScope(shield=True):
            if not finished:
                # Cancelled, or on_output raised: nothing of the job may outlive us.
                _signal_group(process.pid, signal.SIGKILL)
                with trio.move_on_after(_REAP_WAIT):
                    await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()
    code = process.returncode
    assert code is not None
    status = outcome if outcome is not None else ("succeeded" if code == 0 else "failed")
    return ExecResult(
        status=status,
        exit_code=code if code >= 0 else None,
        signal=-code if code < 0 else None,
        stdout=bytes(stdout.kept),
        stderr=bytes(stderr.kept),
        stdout_bytes=stdout.total,
        stderr_bytes=stderr.total,
        truncated=stdout.truncated or stderr.truncated,
        duration_s=ended - begin,
    )
