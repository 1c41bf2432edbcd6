"""Durable file replacement: a file holds either all of its new contents or its old ones.

One helper for every file the appliance rewrites whole: the keys, the TLS material, the
credentials, ``bootstrap.done`` and ``run/server.json`` of the data directory, the agent's
state file and the store's snapshots.

:func:`write_durably` stages the contents in a temporary file next to the target
(:func:`temp_path`: the target's name plus :data:`TEMP_SUFFIX`), writes all of them, fsyncs
the file, renames it over the target and fsyncs the directory, so that after it returns the
new contents survive a crash, and a crash before that leaves the old contents (or no file).
A crash may leave the temporary file behind: the next write to the same target replaces it,
and the store removes its snapshots' at open. The temporary name is fixed rather than random
so that such a leftover is recognisable and never accumulates; the price is one writer per
target at a time, which every caller has (each holds the lock of its directory).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "fsync_dir", "temp_path", "write_all", "write_durably"]

TEMP_SUFFIX = ".tmp"
"""What :func:`temp_path` appends to the target's name."""


def temp_path(path: Path) -> Path:
    """Where :func:`write_durably` stages the new contents of ``path``.

    Args:
        path: the target.

    Returns:
        ``<name>.tmp`` in the target's directory.
    """
    return path.with_name(path.name + TEMP_SUFFIX)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the descriptor ``fd`` (``os.write`` may write less).

    Raises:
        OSError: the write failed.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename, a new or removed file) durable.

    Raises:
        OSError: the directory cannot be opened or synced.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, *, mode: int, fsync: bool = True) -> None:
    """Replace ``path`` with ``data``, atomically and durably.

    The file gets exactly ``mode`` (the umask does not apply), and never holds a byte of
    ``data`` under a wider one: the temporary file is created with at most ``mode`` and set to
    it before anything is written. The directory must exist.

    Args:
        path: the target; created or replaced.
        data: its new contents.
        mode: its permission bits, e.g. ``0o600`` for anything secret.
        fsync: ``False`` skips both fsyncs (atomic, not durable: for fast unit tests only).

    Raises:
        OSError: anything failed. The temporary file is gone and ``path`` is as it was,
            unless only the directory fsync after the rename failed (then ``path`` has the
            new contents, which may not survive a crash).
    """
    tmp = temp_path(path)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a crash
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)
            write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)
