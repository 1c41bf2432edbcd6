"""Sequence numbers: each side numbers its frames 1, 2, 3, … per connection (pure)."""

from __future__ import annotations

__all__ = ["SeqTracker", "Sequencer"]


class Sequencer:
    """Hands out one sender's ``seq`` numbers on one connection: 1, 2, 3, …"""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        """The next sequence number.

        Returns:
            1 on the first call, then one more each call.
        """
        self._last += 1
        return self._last

    @property
    def last(self) -> int:
        """The number handed out last; 0 before the first."""
        return self._last


class SeqTracker:
    """Checks the ``seq`` of frames received on one connection."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def check(self, seq: int) -> bool:
        """Accept ``seq`` if it is higher than every one accepted before.

        Args:
            seq: the received frame's ``seq`` (the first frame's must be at least 1).

        Returns:
            ``True`` when the frame is new; ``False`` for a replayed or out-of-order frame,
            which the caller drops and logs.
        """
        if seq <= self._last:
            return False
        self._last = seq
        return True

    @property
    def last(self) -> int:
        """The highest ``seq`` accepted so far; 0 before the first."""
        return self._last
