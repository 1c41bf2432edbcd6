"""What a job runs, and as whom, where and with what (``NODES.md`` §5).

* **user** — switched (uid, gid and supplementary groups; ``HOME``, ``USER``, ``LOGNAME``
  from the password database) only when the agent runs as root; a non-root agent refuses any
  user but its own;
* **dir** — the job's ``dir``, else the agent's working dir;
* **env** — the agent's environment, then the job's ``env`` minus the protected names, then
  ``CHEF_PUSH_NODE_NAME``, ``CHEF_PUSH_JOB_ID``, ``PUSHY_NODE_NAME``, ``PUSHY_JOB_ID`` and,
  when a file was sent, ``CHEF_PUSH_JOB_FILE`` and ``PUSHY_JOB_FILE``, none of which a job
  can set. The protected names are the agent config's ``protected_env`` (default
  :data:`DEFAULT_PROTECTED_ENV`: the loader's, the shells' and the interpreters' variables
  that run code); an entry ending in ``*`` is a prefix (:func:`protected_names`);
* **file** — written (mode 0600) into a fresh private directory (0700, owned by the run-as
  user) that is removed whatever the outcome.

:func:`check_runnable` checks a job at commit time; the executor prepares the rest when the
job runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from ..config import DEFAULT_PROTECTED_ENV
from ..errors import CommitRefused, ValidationError
from ..jobfile import decode_job_file

__all__ = [
    "DEFAULT_PROTECTED_ENV",
    "JOB_FILE_NAME",
    "JobSpec",
    "ProtectedNames",
    "check_runnable",
    "decode_file",
    "environment",
    "protected_names",
    "remove_dir",
    "resolve_user",
    "write_job_file",
]

logger = logging.getLogger(__name__)

JOB_FILE_NAME = "job_file"
"""Name of the job's file inside its private directory."""

_FIXED_NAMES = ("CHEF_PUSH_NODE_NAME", "CHEF_PUSH_JOB_ID", "PUSHY_NODE_NAME", "PUSHY_JOB_ID")
_FILE_NAMES = ("CHEF_PUSH_JOB_FILE", "PUSHY_JOB_FILE")


@dataclasses.dataclass(frozen=True, slots=True)
class ProtectedNames:
    """Names a job may not set: exact ones and prefixes."""

    names: frozenset[str]
    prefixes: tuple[str, ...]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.names or name.startswith(self.prefixes))


def protected_names(protected_env: Sequence[str]) -> ProtectedNames:
    """The names a job's ``env`` may not set: ``protected_env`` (an entry ending in ``*`` is
    a prefix) and the variables the agent sets itself.

    Args:
        protected_env: the agent config's ``protected_env``.

    Returns:
        A container: ``name in protected_names(...)``.
    """
    exact = {n for n in protected_env if not n.endswith("*")}
    prefixes = tuple(n[:-1] for n in protected_env if n.endswith("*"))
    return ProtectedNames(frozenset({*exact, *_FIXED_NAMES, *_FILE_NAMES}), prefixes)


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


def decode_file(text: str) -> bytes:
    """Decode a job's ``file`` as the API gives it, by the server's own rule
    (:func:`pushy_appliance.jobfile.decode_job_file`: wrapped base64 too).

    Args:
        text: ``raw:TEXT`` (the text, UTF-8 encoded) or ``base64:DATA``.

    Returns:
        The file's bytes.

    Raises:
        CommitRefused: ``bad_file`` (with the server's message as its detail) for any other
            prefix, invalid base64, or raw text that cannot be UTF-8 encoded.
    """
    try:
        return decode_job_file(text)
    except ValidationError as exc:
        raise CommitRefused("bad_file", exc.message) from None


def _effective_uid() -> int:
    """The agent's effective uid (a function so tests can play a non-root agent)."""
    return os.geteuid()


def resolve_user(user: str | None) -> tuple[pwd.struct_passwd | None, bool]:
    """The password entry for ``user`` (``None``: the agent's own) and whether the process
    must switch to it.

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
    resolve_user(spec.user)
    directory = spec.dir if spec.dir is not None else working_dir
    if not os.path.isdir(directory):
        raise CommitRefused("no_such_dir", f"{directory!r} is not a directory")
    protected = protected_names(protected_env)
    refused = sorted(name for name in spec.env if name in protected)
    if refused:
        logger.warning(
            "job %s on %s: the job's env sets %s, which jobs may not set; ignored",
            spec.job_id,
            spec.node_name,
            ", ".join(refused),
        )


def environment(
    spec: JobSpec,
    protected_env: Sequence[str],
    account: pwd.struct_passwd | None,
    file_path: str | None,
) -> dict[str, str]:
    """The job's environment, as the module docstring says.

    Args:
        spec: the job.
        protected_env: variables the job's ``env`` may not set (``NAME*``: a prefix).
        account: the run-as user's password entry (``HOME``, ``USER``, ``LOGNAME``), if any.
        file_path: where the job's file is, if it has one.
    """
    env = dict(os.environ)
    for name in _FILE_NAMES:
        env.pop(name, None)
    if account is not None:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    reserved = protected_names(protected_env)
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


def write_job_file(data: bytes, owner: pwd.struct_passwd | None) -> tuple[str, str]:
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


def remove_dir(directory: str) -> None:
    """Remove a job's private directory; what cannot be removed is logged, not raised."""
    if sys.version_info >= (3, 12):
        shutil.rmtree(directory, onexc=_report_unremovable)
    else:
        shutil.rmtree(
            directory, onerror=lambda func, path, info: _report_unremovable(func, path, info[1])
        )
