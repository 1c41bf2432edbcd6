"""One process at a time: an ``flock`` held on a lock file for the length of a block.

The server holds ``DATA_DIR/run/lock`` and the agent ``STATE_DIR/agent.lock``; each says in
its own error who holds what.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["exclusive_lock"]


@contextlib.contextmanager
def exclusive_lock(
    path: Path,
    busy: Callable[[], Exception],
    unusable: Callable[[OSError], Exception] | None = None,
) -> Iterator[None]:
    """Hold ``path`` (created 0600, its directory 0700) exclusively for the block.

    The lock goes with the process: a crash releases it, and the descriptor is not inherited
    by child processes.

    Args:
        path: the lock file.
        busy: makes the error raised when another process holds the lock.
        unusable: makes the error raised when the file cannot be created or opened (default:
            the ``OSError`` itself). Errors raised inside the block are never touched.

    Raises:
        OSError: the file cannot be created or opened (without ``unusable``).
        Exception: ``busy()``, when another process holds the lock (checked without waiting);
            ``unusable(error)``.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if unusable is None:
            raise
        raise unusable(e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy() from None
        yield
    finally:
        os.close(fd)
