"""Run one job's process on the node (``NODES.md`` §5).

The process runs from an argument vector (a shell only when the whitelist says so), in a new
session so that abort and timeout reach its whole process group, grandchildren included
(``procgroup``), with the user, directory, environment and file of its
:class:`~pushy_appliance.agent.jobspec.JobSpec` (``jobspec``):

* **output** — stdout and stderr read concurrently as bytes; with capture, kept up to a cap
  per channel and streamed through ``on_output`` in chunks of at most 64 KiB at most every
  250 ms; beyond the cap the pipes are still drained (the child never blocks) and counted;
* **timeout and abort** — SIGTERM to the group, SIGKILL after a grace period.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from ..errors import AgentError, CommitRefused
from ..protocol import ResultBody
from .jobspec import (
    DEFAULT_PROTECTED_ENV,
    JobSpec,
    environment,
    remove_dir,
    resolve_user,
    write_job_file,
)
from .procgroup import signal_group, terminate_group

__all__ = ["OUTPUT_CHUNK", "ExecResult", "OnOutput", "RunningJob", "run_job"]

logger = logging.getLogger(__name__)

OUTPUT_INTERVAL = 0.25
"""Seconds captured output may wait before it is handed to ``on_output``."""

OUTPUT_CHUNK = 65_536
"""Most bytes handed to ``on_output`` at once, and the pipe read size."""

_DRAIN_AFTER_EXIT = 1.0
"""Seconds the pipes are still read after the process exits (a daemonized grandchild may
hold them open forever)."""

_REAP_WAIT = 5.0
"""Seconds to wait for a SIGKILLed process to be reaped when the caller is cancelled."""

_DEBUG_LOG_LIMIT = 65_536
"""Bytes per channel of uncaptured output copied to the debug log."""

OnOutput = Callable[[str, bytes, int], Awaitable[None]]
"""``on_output(channel, data, offset)``: captured output as it comes."""


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
        account, switch = resolve_user(spec.user)
    except CommitRefused as exc:
        return _not_started(spec, "failed", str(exc), 0.0)
    private_dir: str | None = None
    try:
        file_path: str | None = None
        if spec.file is not None:
            try:
                private_dir, file_path = await trio.to_thread.run_sync(
                    write_job_file, spec.file, account if switch else None
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
        env = environment(spec, protected_env, account, file_path)
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
                await trio.to_thread.run_sync(remove_dir, private_dir)


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
        await terminate_group(process.pid, kill_grace, process)

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
                signal_group(process.pid, signal.SIGKILL)
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
