"""The agent's job lifecycle (``NODES.md`` §4) and its glue to the executor.

States: ``idle → committed → running → idle``, one job at a time.

* ``commit`` while not idle → ``nack_commit busy`` (a repeated commit of the job already
  committed is acknowledged again). A command outside the whitelist → ``not_whitelisted``;
  an unknown ``user`` → ``no_such_user``; a ``dir`` that is not a directory →
  ``no_such_dir``; a ``file`` that does not decode → ``bad_file``. Otherwise ``ack_commit``
  and ``committed``. A committed job with no ``run`` within ``voting_timeout`` + 10 s
  returns to idle by itself.
* ``run`` for the committed job → ``ack_run`` and the process starts (``running``); a
  repeated ``run`` of the running job is acknowledged again; any other → ``nack_run``.
* The process ends → the result (with the captured output) is stored in the state file and
  sent; the agent is idle at once, but keeps the result until ``result_ack`` and sends it
  again on every new connection: the whole captured output first, then the result.
* Output is streamed in ``output`` frames while the job runs, each channel's chunks exactly
  contiguous on one connection (the server refuses a gap or an overlap within a connection).
  The first chunk of a channel on a *new* connection starts over at offset 0: everything
  captured so far is sent again, and the server trims what it already holds (``NODES.md``
  §4; the rules are in :mod:`..nodes.link`). When the job ends, whatever of each channel
  this connection has not had yet (all of it, if the connection changed since the last
  chunk) goes before the result. :mod:`.outstream` keeps that account.
* ``abort``: running → the process group is terminated, then ``result`` (``aborted``) and
  ``aborted {job_id}``; committed → ``aborted {job_id}``; idle → ``aborted {job_id: nil}``.
  An ``abort`` naming a job other than the one held stops nothing and is answered
  ``aborted`` with the job it named.
* A job held in the state file by a previous run of the agent (a *ghost*: its process is no
  longer ours) is reported in ``hello`` and heartbeats with its stored state until the server
  aborts it (answered ``aborted {job_id}``), or until the commit timeout clears it. A ghost
  refuses commits (``busy``) and runs (``nack_run``). When the previous run was killed while
  the job ran, its process group may still run: it is terminated (SIGTERM, then SIGKILL
  after the kill grace) if the state file names it and it is still the same group.

Frames reach the server through the current connection's :class:`Link`; without one they
are dropped (what matters is re-sent on the next connection).

The node's facts are the :class:`~.reporter.FactsReporter`'s: ``hello`` carries them, a
``facts`` frame follows when they change; ``reload`` (and SIGHUP, through :meth:`reload`)
re-reads the configuration file, whitelist and facts settings, and collects them again.

Why one module of about 600 lines: the agent's one state machine over its connection (job
state, frames, reload) with its I/O; the output re-sending and facts live in their own
modules (:mod:`.outstream`, :mod:`.reporter`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from .. import __version__
from ..config import AgentConfig
from ..config_files import load_agent_config
from ..errors import AgentError, CommitRefused, ConfigError
from ..facts import FactsConfig
from ..protocol import (
    PROTOCOL_VERSION,
    Abort,
    Aborted,
    AckCommit,
    AckRun,
    Commit,
    Facts,
    Frame,
    NackCommit,
    NackRun,
    Reload,
    Result,
    ResultAck,
    ResultBody,
    Run,
    Welcome,
)
from .executor import ExecResult, RunningJob, run_job
from .facts import collect_facts
from .jobspec import DEFAULT_PROTECTED_ENV, JobSpec, check_runnable, decode_file
from .outstream import Link, OutputStreams, send_whole
from .procgroup import end_leftover_group, process_start_time
from .reporter import Collector, FactsReporter
from .state import AgentState, PendingResult, StateFile
from .whitelist import Whitelist

__all__ = ["COMMIT_GRACE", "MAX_PENDING", "AgentRuntime", "Link", "load_whitelist"]

log = logging.getLogger(__name__)

COMMIT_GRACE = 10.0
"""Seconds added to ``voting_timeout`` before a committed job without ``run`` is dropped."""

MAX_PENDING = 16
"""Unacknowledged results kept; beyond that the oldest is dropped (and logged)."""


def load_whitelist(path: str | Path | None) -> Whitelist:
    """Read the whitelist from the agent's config file (on SIGHUP and on ``reload``).

    Blocking (reads the file).

    Args:
        path: the agent's TOML config file; ``None`` gives the default whitelist.

    Returns:
        The compiled whitelist. A caller that reloads keeps its old whitelist when this raises.

    Raises:
        ConfigError: when the file cannot be read or holds an invalid configuration.
    """
    config = load_agent_config(path, environ={})
    return Whitelist.from_entries(config.allow)


def _load_config(path: str) -> AgentConfig:
    """The agent's configuration, read again (blocking); ``PUSHY_*`` variables apply as at
    start."""
    return load_agent_config(path, environ=dict(os.environ))


def _body_fields(body: ResultBody) -> dict[str, Any]:
    return {f.name: getattr(body, f.name) for f in dataclasses.fields(body)}


class AgentRuntime:
    """One node's job state, the executor's jobs and the results kept for the server.

    Args:
        node_name: this node's name (for the job environment and the logs).
        whitelist: the commands jobs may run.
        state_file: where the held job and unacknowledged results are stored.
        config_path: the agent's config file, re-read for the whitelist on reload; ``None``:
            nothing to re-read, the whitelist given here stays.
        working_dir: the directory of jobs that give no ``dir``.
        protected_env: variables a job may not set.
        kill_grace: seconds between SIGTERM and SIGKILL when a job is stopped.
        facts: fixed node facts, never collected (tests, simulators); ``None``: collected
            as ``facts_config`` says (:class:`~.reporter.FactsReporter`).
        facts_config: the ``[facts]`` settings and the operator's facts.
        collect: how facts are collected (tests); default :func:`~.facts.collect_facts`.
        run_blocking: how blocking file I/O (state file, whitelist) is run: in a worker
            thread by default; tests under the autojump clock run it inline, since the mock
            clock jumps while a thread works.
    """

    def __init__(
        self,
        *,
        node_name: str,
        whitelist: Whitelist,
        state_file: StateFile,
        config_path: str | None = None,
        working_dir: str = "/",
        protected_env: Sequence[str] = DEFAULT_PROTECTED_ENV,
        kill_grace: float = 5.0,
        facts: dict[str, Any] | None = None,
        facts_config: FactsConfig | None = None,
        collect: Collector | None = None,
        run_blocking: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync,
    ) -> None:
        self.node_name = node_name
        self.incarnation_id = str(uuid.uuid4())
        self.reporter = FactsReporter(
            node_name,
            facts_config or FactsConfig(),
            self._send_facts,
            fixed=facts,
            collect=collect or collect_facts,
        )
        self._whitelist = whitelist
        self._run_blocking = run_blocking
        self._state_file = state_file
        self._config_path = config_path
        self._working_dir = working_dir
        self._protected_env = tuple(protected_env)
        self._kill_grace = kill_grace
        self._voting_timeout = 60.0
        self._max_output_bytes = 1_048_576
        self._phase = "idle"
        self._job_id: str | None = None
        self._ghost = False
        self._spec: JobSpec | None = None
        self._handle: RunningJob | None = None
        self._group: tuple[int, int] | None = None
        """The running job's process group, ``(pgid, start time)``, kept in the state file."""
        self._aborting = False
        self._timer: trio.CancelScope | None = None
        self._pending: dict[str, PendingResult] = {}
        self._link: Link | None = None
        self._output = OutputStreams()
        """The running job's output, and what each connection has had of it."""
        self._lock = trio.StrictFIFOLock()
        self._nursery: trio.Nursery | None = None

    # --- what the connection asks -----------------------------------------------------------

    @property
    def phase(self) -> str:
        """``idle``, ``committed`` or ``running``."""
        return self._phase

    @property
    def job_id(self) -> str | None:
        """The job held, or ``None``."""
        return self._job_id

    @property
    def pending_job_ids(self) -> list[str]:
        """Jobs whose result awaits ``result_ack``, oldest first."""
        return list(self._pending)

    @property
    def facts(self) -> dict[str, Any]:
        """The node's facts now."""
        return self.reporter.facts

    @property
    def whitelist(self) -> Whitelist:
        """The whitelist in force."""
        return self._whitelist

    def hello_fields(self) -> dict[str, Any]:
        """The fields of the ``hello`` frame (everything but ``seq`` and ``ts``)."""
        latest = next(reversed(self._pending.values()), None)
        return {
            "incarnation_id": self.incarnation_id,
            "protocol_version": PROTOCOL_VERSION,
            "agent_version": __version__,
            "job_id": self._job_id,
            "job_state": self._phase,
            "pending_result": latest.body if latest is not None else None,
            "facts": self.reporter.hello_facts(),
        }

    def heartbeat_fields(self) -> dict[str, Any]:
        """The fields of the agent's ``heartbeat``."""
        return {"job_id": self._job_id, "job_state": self._phase}

    async def attach(self, link: Link, welcome: Welcome) -> None:
        """Use ``link`` from now on and send it every unacknowledged result (output first).

        Args:
            link: the new connection (``welcome`` received).
            welcome: the server's ``welcome``, whose timings and output cap apply from now.
        """
        async with self._lock:
            self._link = link
            self._voting_timeout = welcome.voting_timeout
            self._max_output_bytes = welcome.max_output_bytes
            await self.reporter.attached()
            for pending in list(self._pending.values()):
                log.info(
                    "job %s on %s: sending the unacknowledged result again",
                    pending.body.job_id,
                    self.node_name,
                )
                job_id = pending.body.job_id
                for channel, data in (("stdout", pending.stdout), ("stderr", pending.stderr)):
                    await send_whole(link, job_id, channel, data)
                await self._send(Result, **_body_fields(pending.body))

    def detach(self, link: Link) -> None:
        """The connection ``link`` ended: frames are dropped until the next :meth:`attach`."""
        if self._link is link:
            self._link = None
            self.reporter.detached()

    async def handle(self, frame: Frame) -> None:
        """Act on a job frame from the server (``commit``, ``run``, ``abort``, ``result_ack``,
        ``reload``); the answers go out through the current link.

        Args:
            frame: the frame.
        """
        if isinstance(frame, Reload):
            await self.reload()
            return
        async with self._lock:
            if isinstance(frame, Commit):
                await self._on_commit(frame)
            elif isinstance(frame, Run):
                await self._on_run(frame)
            elif isinstance(frame, Abort):
                await self._on_abort(frame)
            elif isinstance(frame, ResultAck):
                await self._on_result_ack(frame)
            else:
                log.warning(
                    "node %s: ignoring a %s frame from the server", self.node_name, frame.TYPE
                )

    async def reload(self) -> bool:
        """Re-read the config file (the whitelist and the facts settings; on error keep the
        old ones), then ask for the facts to be collected again (in the background: the
        caller, the connection's reader, does not wait for ohai).

        Returns:
            Whether the file was read (``False`` without a config file: the settings given
            at start stay) and its whitelist and facts settings are in force.
        """
        try:
            if self._config_path is None:
                log.info("node %s: no config file to re-read; whitelist unchanged", self.node_name)
                return False
            try:
                config = await self._run_blocking(_load_config, self._config_path)
                fresh = Whitelist.from_entries(config.allow)
            except ConfigError as exc:
                log.error(
                    "node %s: configuration not reloaded, keeping the old one: %s",
                    self.node_name,
                    exc,
                )
                return False
            self._whitelist = fresh
            self.reporter.config = config.facts
            log.info("node %s: whitelist reloaded (%d entries)", self.node_name, len(fresh))
            return True
        finally:
            # after the settings changed: the collection uses the new ones
            self.reporter.request()

    # --- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the state file, then own the job tasks until cancelled.

        Start-up: ``task_status.started()`` once the state is loaded and the facts collected
        the first time.

        Cancellation: a running job's process group is killed (by the executor) and its
        private directory removed; the state file keeps what it had.

        Raises:
            AgentError: the state file cannot be read, or the facts cannot be collected
                (``facts.ohai = "on"`` without a working ohai).
        """
        state = await self._run_blocking(self._state_file.load)
        for pending in state.pending:
            self._pending[pending.body.job_id] = pending
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.reporter.run)
            if state.held_job_id is not None:
                log.warning(
                    "job %s on %s: held (%s) by the previous agent run; reporting it until the"
                    " server aborts it",
                    state.held_job_id,
                    self.node_name,
                    state.held_job_state,
                )
                self._phase = state.held_job_state
                self._job_id = state.held_job_id
                self._ghost = True
                self._group = state.held_group
                self._start_timer(state.held_job_id)
                if state.held_group is not None:
                    nursery.start_soon(self._end_leftover, state.held_job_id, *state.held_group)
            task_status.started()
            await trio.sleep_forever()

    async def _send_facts(self, facts: dict[str, Any]) -> bool:
        return await self._send(Facts, facts=facts)

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise AgentError("the agent runtime is not running")
        return self._nursery

    async def _send(self, cls: type[Frame], **fields: Any) -> bool:
        link = self._link
        if link is None:
            log.debug("node %s: not connected, %s dropped", self.node_name, cls.TYPE)
            return False
        return await link.send(cls, **fields)

    def _snapshot(self) -> AgentState:
        held = self._job_id if self._phase != "idle" else None
        return AgentState(
            held,
            self._phase if held else "idle",
            tuple(self._pending.values()),
            self._group if held else None,
        )

    async def _persist(self) -> None:
        try:
            await self._run_blocking(self._state_file.save, self._snapshot())
        except AgentError as exc:
            # The state stays in memory; only a crash of the agent would lose it now.
            log.error("node %s: %s", self.node_name, exc)

    def _clear_job(self) -> None:
        self._cancel_timer()
        self._phase = "idle"
        self._job_id = None
        self._ghost = False
        self._spec = None
        self._handle = None
        self._group = None
        self._aborting = False

    def _start_timer(self, job_id: str) -> None:
        self._cancel_timer()
        scope = trio.CancelScope()
        self._timer = scope
        delay = self._voting_timeout + COMMIT_GRACE
        self._require_nursery().start_soon(self._expire_commit, job_id, scope, delay)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _expire_commit(self, job_id: str, scope: trio.CancelScope, delay: float) -> None:
        with scope:
            await trio.sleep(delay)
            async with self._lock:
                if self._job_id != job_id or (self._phase == "running" and not self._ghost):
                    return
                log.warning(
                    "job %s on %s: no run within %.0f s of the commit, back to idle",
                    job_id,
                    self.node_name,
                    delay,
                )
                self._timer = None
                self._clear_job()
                await self._persist()

    # --- frames -----------------------------------------------------------------------------

    def _prepare(self, frame: Commit) -> JobSpec:
        resolved = self._whitelist.resolve(frame.command)
        if resolved is None:
            raise CommitRefused("not_whitelisted", repr(frame.command))
        file = decode_file(frame.file) if frame.file is not None else None
        spec = JobSpec(
            job_id=frame.job_id,
            argv=resolved.argv,
            user=frame.user,
            dir=frame.dir,
            env=dict(frame.env),
            file=file,
            capture=frame.capture,
            run_timeout=frame.run_timeout,
            node_name=self.node_name,
        )
        check_runnable(spec, working_dir=self._working_dir, protected_env=self._protected_env)
        return spec

    async def _on_commit(self, frame: Commit) -> None:
        if self._phase != "idle":
            if self._phase == "committed" and not self._ghost and frame.job_id == self._job_id:
                await self._send(AckCommit, job_id=frame.job_id)
                return
            log.info(
                "job %s on %s: nack_commit busy (%s %s)",
                frame.job_id,
                self.node_name,
                self._phase,
                self._job_id,
            )
            await self._send(NackCommit, job_id=frame.job_id, reason="busy")
            return
        try:
            spec = self._prepare(frame)
        except CommitRefused as exc:
            log.info("job %s on %s: nack_commit %s", frame.job_id, self.node_name, exc)
            await self._send(NackCommit, job_id=frame.job_id, reason=exc.reason)
            return
        self._phase = "committed"
        self._job_id = frame.job_id
        self._spec = spec
        self._start_timer(frame.job_id)
        await self._persist()
        log.info("job %s on %s: committed to %s", frame.job_id, self.node_name, spec.argv)
        await self._send(AckCommit, job_id=frame.job_id)

    async def _on_run(self, frame: Run) -> None:
        mine = frame.job_id == self._job_id and not self._ghost
        if mine and self._phase == "running":
            await self._send(AckRun, job_id=frame.job_id)
            return
        if not mine or self._phase != "committed" or self._spec is None:
            if self._ghost and frame.job_id == self._job_id:
                reason = "held from a previous agent run; nothing to run"
            elif self._phase == "idle":
                reason = "not committed to any job"
            else:
                reason = f"{self._phase} for job {self._job_id}"
            log.info("job %s on %s: nack_run: %s", frame.job_id, self.node_name, reason)
            await self._send(NackRun, job_id=frame.job_id, reason=reason)
            return
        spec = self._spec
        self._cancel_timer()
        self._phase = "running"
        self._aborting = False
        self._output = OutputStreams()
        await self._persist()
        await self._send(AckRun, job_id=frame.job_id)
        nursery = self._require_nursery()
        self._handle = handle = await nursery.start(self._job_task, spec)
        nursery.start_soon(self._record_group, handle)

    async def _on_abort(self, frame: Abort) -> None:
        if self._phase == "idle":
            await self._send(Aborted, job_id=None)
            return
        job_id = self._job_id
        if frame.job_id is not None and frame.job_id != job_id:
            log.info(
                "node %s: abort of job %s, which it does not hold (%s %s)",
                self.node_name,
                frame.job_id,
                self._phase,
                job_id,
            )
            await self._send(Aborted, job_id=frame.job_id)
            return
        if self._ghost or self._phase == "committed":
            log.info("job %s on %s: aborted while %s", job_id, self.node_name, self._phase)
            self._clear_job()
            await self._persist()
            await self._send(Aborted, job_id=job_id)
            return
        if not self._aborting and self._handle is not None:
            log.info("job %s on %s: aborting the running process", job_id, self.node_name)
            self._aborting = True
            self._handle.abort()

    async def _on_result_ack(self, frame: ResultAck) -> None:
        if self._pending.pop(frame.job_id, None) is not None:
            log.debug("job %s on %s: result acknowledged", frame.job_id, self.node_name)
            await self._persist()

    # --- jobs -------------------------------------------------------------------------------

    async def _job_task(self, spec: JobSpec, *, task_status: trio.TaskStatus[RunningJob]) -> None:
        result = await run_job(
            spec,
            working_dir=self._working_dir,
            protected_env=self._protected_env,
            max_output_bytes=self._max_output_bytes,
            on_output=functools.partial(self._on_output, spec.job_id),
            kill_grace=self._kill_grace,
            task_status=task_status,
        )
        async with self._lock:
            await self._job_ended(spec.job_id, result)

    async def _record_group(self, handle: RunningJob) -> None:
        """Keep the started job's process group in the state file (see :meth:`_end_leftover`)."""
        pid = await handle.wait_spawned()
        if pid is None:
            return  # never started
        started = await self._run_blocking(process_start_time, pid)
        if started is None:
            return  # already gone
        async with self._lock:
            if self._handle is handle:
                self._group = (pid, started)
                await self._persist()

    async def _end_leftover(self, job_id: str, pgid: int, started: int) -> None:
        if await end_leftover_group(pgid, started, self._kill_grace):
            log.warning(
                "job %s on %s: terminated its process group %d, left running by the previous"
                " agent run",
                job_id,
                self.node_name,
                pgid,
            )

    async def _on_output(self, job_id: str, channel: str, data: bytes, offset: int) -> None:
        output = self._output
        await output.send(self._link, job_id, channel, output.capture(channel, data, offset))

    async def _job_ended(self, job_id: str, result: ExecResult) -> None:
        pending = PendingResult(result.as_result_body(job_id), result.stdout, result.stderr)
        self._pending.pop(job_id, None)
        self._pending[job_id] = pending
        while len(self._pending) > MAX_PENDING:
            dropped = next(iter(self._pending))
            del self._pending[dropped]
            log.error(
                "job %s on %s: result dropped unacknowledged (more than %d kept)",
                dropped,
                self.node_name,
                MAX_PENDING,
            )
        aborting = self._aborting
        self._clear_job()
        await self._persist()
        output, self._output = self._output, OutputStreams()
        for channel, data in (("stdout", pending.stdout), ("stderr", pending.stderr)):
            await output.send(self._link, job_id, channel, data)
        await self._send(Result, **_body_fields(pending.body))
        if aborting:
            await self._send(Aborted, job_id=job_id)
