"""One node's captured output and result, as the stored job model keeps it (pure)."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["RESULT_FIELDS", "OutputBuffer"]


RESULT_FIELDS = ("status", "exit_code", "signal", "duration_s")
"""The result fields an :class:`OutputBuffer` keeps besides its byte counts and truncation."""


@dataclasses.dataclass(slots=True)
class OutputBuffer:
    """One node's captured output (bytes kept up to the cap, totals counted beyond it) and
    the result that finished it (``finished``: the output is complete)."""

    stdout: bytearray = dataclasses.field(default_factory=bytearray)
    stderr: bytearray = dataclasses.field(default_factory=bytearray)
    stdout_total: int = 0
    stderr_total: int = 0
    truncated: bool = False
    finished: bool = False
    status: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    duration_s: float | None = None

    def finish(self, result: dict[str, Any]) -> None:
        """Take a node's result: the output is complete; keep the result's fields."""
        self.finished = True
        self.truncated = self.truncated or bool(result.get("truncated"))
        self.stdout_total = max(self.stdout_total, int(result.get("stdout_bytes") or 0))
        self.stderr_total = max(self.stderr_total, int(result.get("stderr_bytes") or 0))
        self.status = result.get("status")
        self.exit_code = result.get("exit_code")
        self.signal = result.get("signal")
        self.duration_s = result.get("duration_s")

    def result(self) -> dict[str, Any]:
        """The stored result: the agent's status, exit code, signal, byte counts, truncation
        and duration (of a finished node)."""
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "stdout_bytes": self.stdout_total,
            "stderr_bytes": self.stderr_total,
            "truncated": self.truncated,
            "duration_s": self.duration_s,
        }

    def channel(self, name: str) -> bytearray:
        return self.stdout if name == "stdout" else self.stderr

    def add(self, channel: str, offset: int, data: bytes, cap: int) -> None:
        """Append ``data`` found at ``offset`` of ``channel``; overlap is dropped, the part
        beyond ``cap`` is counted but not kept."""
        total = self.stdout_total if channel == "stdout" else self.stderr_total
        if offset + len(data) <= total:
            return  # already have it (a re-send after a reconnect)
        if offset < total:
            data = data[total - offset :]
            offset = total
        new_total = offset + len(data)
        buf = self.channel(channel)
        room = cap - len(buf)
        if room > 0:
            buf += data[:room]
        if len(data) > max(room, 0):
            self.truncated = True
        if channel == "stdout":
            self.stdout_total = new_total
        else:
            self.stderr_total = new_total

    def to_plain(self) -> dict[str, Any]:
        return {
            "stdout": bytes(self.stdout),
            "stderr": bytes(self.stderr),
            "stdout_total": self.stdout_total,
            "stderr_total": self.stderr_total,
            "truncated": self.truncated,
            "finished": self.finished,
            **{key: getattr(self, key) for key in RESULT_FIELDS},
        }

    @classmethod
    def from_plain(cls, d: dict[str, Any]) -> OutputBuffer:
        """The buffer of :meth:`to_plain`'s map (one from before results were kept too)."""
        return cls(
            bytearray(d["stdout"]),
            bytearray(d["stderr"]),
            d["stdout_total"],
            d["stderr_total"],
            d["truncated"],
            d["finished"],
            *(d.get(key) for key in RESULT_FIELDS),
        )
