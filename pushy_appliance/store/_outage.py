"""An outage of the store: from a failed commit until a retry of the writer succeeds.

:class:`Outage` holds what the writer needs while it refuses writes (the error callers get,
when to retry, how large a write a retry must prove) and says what happened in the log: the
first refusal as an error, the failed retries as warnings (each while the backoff grows, then
once a minute), the recovery with the outage's length and the records refused meanwhile. It
does no I/O of its own; the writer (``_base``) runs the retries.
"""

from __future__ import annotations

import logging

from ..errors import StoreError, StoreUnavailableError

__all__ = ["PROBE_MAX_BYTES", "PROBE_MIN_BYTES", "RETRY_FIRST", "RETRY_MAX", "Outage"]

log = logging.getLogger(__name__)

RETRY_FIRST = 0.25
"""Seconds from a failed commit to the writer's first retry; each failed retry doubles it."""
RETRY_MAX = 5.0
"""The longest wait between two retries: a store that can write again takes writes within
this many seconds."""
PROBE_MIN_BYTES = 4096
PROBE_MAX_BYTES = 1024 * 1024
"""A retry proves that a write as large as the failed group (within these bounds) succeeds."""
_LOG_EVERY_RETRY = 5
_LOG_INTERVAL = 60.0


def unavailable(e: StoreError) -> StoreUnavailableError:
    """``e`` as the error callers get during an outage."""
    return e if isinstance(e, StoreUnavailableError) else StoreUnavailableError(str(e))


class Outage:
    """The store refuses writes since ``started``; logs the first refusal.

    Args:
        error: what failed.
        group_bytes: the size of the group whose commit failed.
        now: the trio clock.

    Attributes:
        error: the error callers get (the latest failure).
        retry_at: when the writer retries next (trio clock).
        probe_bytes: how large a write a retry must prove.
        refused: records refused since the outage began.
    """

    def __init__(self, error: StoreUnavailableError, group_bytes: int, now: float) -> None:
        self.error = error
        self.started = self._logged_at = now
        self.retries = 0
        self.refused = 0
        self.retry_at = now + RETRY_FIRST
        self.probe_bytes = min(max(group_bytes, PROBE_MIN_BYTES), PROBE_MAX_BYTES)
        log.error(
            "store: cannot write%s: %s; refusing writes until a retry succeeds "
            "(the first in %.2f s); nothing of the failed group counts as written",
            _where(error),
            error.reason,
            RETRY_FIRST,
        )

    def retry_failed(self, error: StoreUnavailableError, now: float) -> None:
        """A retry failed with ``error``: schedule the next one, doubling the wait."""
        self.error = error
        self.retries += 1
        delay = min(RETRY_FIRST * 2**self.retries, RETRY_MAX)
        self.retry_at = now + delay
        if self.retries <= _LOG_EVERY_RETRY or now - self._logged_at >= _LOG_INTERVAL:
            self._logged_at = now
            log.warning(
                "store: still cannot write%s after %.1f s (retry %d): %s; "
                "%d record(s) refused so far; next retry in %.2f s",
                _where(error),
                now - self.started,
                self.retries,
                error.reason,
                self.refused,
                delay,
            )

    def ended(self, now: float) -> None:
        """A retry succeeded: the store takes writes again."""
        retries = self.retries + 1
        log.warning(
            "store: writable again after %.1f s and %d retr%s; %d record(s) refused meanwhile",
            now - self.started,
            retries,
            "y" if retries == 1 else "ies",
            self.refused,
        )


def _where(error: StoreUnavailableError) -> str:
    return f" {error.path}" if error.path else ""
