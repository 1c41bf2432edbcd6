"""The agent's state file: the job it holds and the results the server has not acknowledged.

The file is ``STATE_DIR/agent-state.msgpack``, one msgpack map, rewritten whole at every
change with :func:`~pushy_appliance.fsutil.write_durably` (a temporary file fsynced and
renamed over the old one, the directory fsynced), so a crash leaves either the old or the new
state, never a mix::

    {
      "format":  "pushy-agent-state",       # magic
      "version": 1,
      "held":    {"job_id": str, "job_state": "committed" | "running",
                  "group": [int, int]} | nil,   # running: pgid and its start time (optional)
      "pending": [                           # oldest first
        {"result": {<the fields of a result frame, without type/seq/ts>},
         "stdout": bin, "stderr": bin},      # the captured output kept with it
        ...
      ]
    }

``held`` is the job the agent had committed to or was running when it last wrote the file;
``group`` names the running job's process group (its leader's pid and start time, see
:func:`~pushy_appliance.agent.procgroup.process_start_time`), so that an agent restarted after
a crash can end a job process the crash left behind.
The incarnation is *not* stored: it is new at every agent start. A file that cannot be read
is moved aside (``agent-state.msgpack.corrupt-<unix time>``, bytes kept for inspection) and
the agent starts with an empty state.

One agent at a time: :meth:`StateFile.lock` holds ``STATE_DIR/agent.lock`` (``flock``) for
the agent's life, so a second agent started on the same directory fails at once instead of
both overwriting each other's results.

:func:`encode_state` and :func:`decode_state` are pure; :class:`StateFile` does the I/O
(blocking; call it through ``trio.to_thread.run_sync`` from async code).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from .. import fsutil
from ..errors import AgentError, ProtocolError
from ..lockfile import exclusive_lock
from ..protocol import Result, ResultBody, decode

__all__ = [
    "LOCK_FILE_NAME",
    "STATE_FILE_NAME",
    "AgentState",
    "PendingResult",
    "StateFile",
    "decode_state",
    "default_state_dir",
    "encode_state",
]

log = logging.getLogger(__name__)

STATE_FILE_NAME = "agent-state.msgpack"
LOCK_FILE_NAME = "agent.lock"
_MAGIC = "pushy-agent-state"
_VERSION = 1
_HELD_STATES = frozenset({"committed", "running"})


@dataclasses.dataclass(frozen=True, slots=True)
class PendingResult:
    """A job's result kept until the server's ``result_ack``.

    Attributes:
        body: the ``result`` frame's fields.
        stdout: the captured stdout (at most the cap).
        stderr: the captured stderr (at most the cap).
    """

    body: ResultBody
    stdout: bytes = b""
    stderr: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class AgentState:
    """What the state file holds.

    Attributes:
        held_job_id: the job committed to or running, or ``None``.
        held_job_state: ``committed`` or ``running`` with a held job, else ``idle``.
        pending: unacknowledged results, oldest first.
        held_group: a running job's process group: ``(pgid, start time)``.
    """

    held_job_id: str | None = None
    held_job_state: str = "idle"
    pending: tuple[PendingResult, ...] = ()
    held_group: tuple[int, int] | None = None


def encode_state(state: AgentState) -> bytes:
    """Pack ``state`` in the file format of this module.

    Args:
        state: the state.

    Returns:
        The file's bytes.
    """
    held: dict[str, Any] | None = None
    if state.held_job_id is not None:
        held = {"job_id": state.held_job_id, "job_state": state.held_job_state}
        if state.held_group is not None:
            held["group"] = list(state.held_group)
    doc = {
        "format": _MAGIC,
        "version": _VERSION,
        "held": held,
        "pending": [
            {
                "result": {f.name: getattr(p.body, f.name) for f in dataclasses.fields(ResultBody)},
                "stdout": p.stdout,
                "stderr": p.stderr,
            }
            for p in state.pending
        ],
    }
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


def _fail(reason: str) -> AgentError:
    return AgentError(f"unreadable agent state: {reason}")


def decode_state(data: bytes) -> AgentState:
    """Unpack a state file.

    Args:
        data: the file's bytes.

    Returns:
        The state.

    Raises:
        AgentError: the bytes are not a state file of a version this agent reads.
    """
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack's many exception types all mean "not a state file"
        raise _fail(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != _MAGIC:
        raise _fail("not a pushy agent state file")
    if doc.get("version") != _VERSION:
        raise _fail(f"version {doc.get('version')!r}, this agent reads {_VERSION}")
    held_id: str | None = None
    held_state = "idle"
    held_group: tuple[int, int] | None = None
    held = doc.get("held")
    if held is not None:
        if not isinstance(held, dict):
            raise _fail("'held' is not a map")
        job_id, job_state = held.get("job_id"), held.get("job_state")
        if not isinstance(job_id, str) or job_state not in _HELD_STATES:
            raise _fail(f"bad held job {held!r:.80}")
        held_id, held_state = job_id, str(job_state)
        group = held.get("group")
        if group is not None:
            if not (
                isinstance(group, list)
                and len(group) == 2
                and all(type(v) is int and v > 0 for v in group)
            ):
                raise _fail(f"bad held process group {group!r:.80}")
            held_group = (group[0], group[1])
    pending_docs = doc.get("pending")
    if not isinstance(pending_docs, list):
        raise _fail("'pending' is not a list")
    pending = []
    for entry in pending_docs:
        if not isinstance(entry, dict):
            raise _fail("a pending entry is not a map")
        stdout, stderr = entry.get("stdout", b""), entry.get("stderr", b"")
        if not isinstance(stdout, bytes) or not isinstance(stderr, bytes):
            raise _fail("pending output is not bytes")
        body = _result_body(entry.get("result"))
        pending.append(PendingResult(body, stdout, stderr))
    return AgentState(held_id, held_state, tuple(pending), held_group)


def _result_body(fields: Any) -> ResultBody:
    """Check stored result fields by decoding them as the ``result`` frame they came from."""
    if not isinstance(fields, dict):
        raise _fail("a pending result is not a map")
    try:
        frame = decode(msgpack.packb({**fields, "type": Result.TYPE, "seq": 1, "ts": 0.0}))
    except (ProtocolError, TypeError, ValueError) as exc:
        raise _fail(f"pending result: {exc}") from None
    assert isinstance(frame, Result)
    return frame.body


def default_state_dir(environ: dict[str, str] | None = None) -> Path:
    """Where the agent keeps its state when ``state_dir`` is not configured.

    Args:
        environ: the environment (for ``XDG_STATE_HOME``); default ``os.environ``.

    Returns:
        ``/var/lib/pushy-agent`` as root, else ``$XDG_STATE_HOME/pushy-agent``
        (``~/.local/state/pushy-agent``).
    """
    env = dict(os.environ) if environ is None else environ
    if os.geteuid() == 0:
        return Path("/var/lib/pushy-agent")
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pushy-agent"


class StateFile:
    """The state file in one directory. Blocking I/O.

    Args:
        directory: the agent's state directory (created 0700 when missing).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE_NAME

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the state directory for this agent alone (created 0700 when missing).

        Raises:
            AgentError: another agent holds it, or it cannot be created or locked.
        """
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(
                    exclusive_lock(
                        self.directory / LOCK_FILE_NAME,
                        lambda: AgentError(
                            f"state directory {self.directory} is in use by another agent"
                        ),
                    )
                )
            except OSError as exc:
                raise AgentError(f"cannot lock {self.directory}: {exc.strerror or exc}") from None
            yield

    def load(self) -> AgentState:
        """Read the state; an absent file is the empty state.

        Returns:
            The stored state. A damaged file is renamed aside (logged) and the empty state
            returned.

        Raises:
            AgentError: the directory or file cannot be read or created.
        """
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            data = self.path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        except OSError as exc:
            raise AgentError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            return decode_state(data)
        except AgentError as exc:
            aside = self.path.with_name(f"{STATE_FILE_NAME}.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError as move_exc:
                raise AgentError(f"{exc}; cannot move {self.path} aside: {move_exc}") from None
            log.warning("%s: %s; moved to %s, starting with an empty state", self.path, exc, aside)
            return AgentState()

    def save(self, state: AgentState) -> None:
        """Replace the file with ``state``, atomically and durably.

        Args:
            state: the state to store.

        Raises:
            AgentError: the file cannot be written.
        """
        data = encode_state(state)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fsutil.write_durably(self.path, data, mode=0o600)
        except OSError as exc:
            raise AgentError(f"cannot write {self.path}: {exc.strerror or exc}") from None
