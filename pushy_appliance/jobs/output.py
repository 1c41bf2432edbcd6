"""One node's captured output and result, as the stored job model keeps it (pure)."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["RESULT_FIELDS", "OutputBuffer"]


RESULT_FIELDS = ("status", "exit_code", "signal", "duration_s")
"""The result fields an :class:`OutputBuffer` keeps besides its byte counts and truncation."""


@dataclasses.dataclass(slots=True)
class OutputBuffer:
    """One node's captured output and the result that finished it (``finished``).

    Two counts per channel, kept apart: ``*_received``, the bytes of the channel received
    from the node, in order (the first ``cap`` of them kept in ``stdout``/``stderr``, the
    rest counted, never stored); and ``*_reported``, the byte count of the node's result
    (what its process wrote). A result that arrives before its output (the agent sends a
    result again after a reconnect, and the output follows) leaves ``*_received`` alone, so
    the output that follows is still taken.

    Chunks are appended only where they continue the channel (:meth:`add`): the part of a
    chunk the buffer has already is dropped (a re-send), and a chunk that starts past the end
    is dropped whole, never glued on (the node link refuses those as protocol errors; see
    :mod:`...nodes.link`).
    """

    stdout: bytearray = dataclasses.field(default_factory=bytearray)
    stderr: bytearray = dataclasses.field(default_factory=bytearray)
    stdout_received: int = 0
    stderr_received: int = 0
    stdout_reported: int = 0
    stderr_reported: int = 0
    truncated: bool = False
    finished: bool = False
    status: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    duration_s: float | None = None

    @property
    def stdout_total(self) -> int:
        """Bytes of stdout the node wrote: its result's count, or what was received if more."""
        return max(self.stdout_received, self.stdout_reported)

    @property
    def stderr_total(self) -> int:
        """Likewise for stderr."""
        return max(self.stderr_received, self.stderr_reported)

    def received(self, channel: str) -> int:
        """Bytes of ``channel`` received so far (kept or counted beyond the cap)."""
        return self.stdout_received if channel == "stdout" else self.stderr_received

    def finish(self, result: dict[str, Any]) -> None:
        """Take a node's result: the output is complete; keep the result's fields."""
        self.finished = True
        self.truncated = self.truncated or bool(result.get("truncated"))
        self.stdout_reported = int(result.get("stdout_bytes") or 0)
        self.stderr_reported = int(result.get("stderr_bytes") or 0)
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

    def add(
        self, channel: str, offset: int, data: bytes, cap: int, size: int | None = None
    ) -> bool:
        """Take the chunk found at ``offset`` of ``channel`` where it continues the channel.

        Args:
            channel: ``stdout`` or ``stderr``.
            offset: where the chunk starts in the channel.
            data: its bytes (only those within the cap when ``size`` says it was longer).
            cap: bytes kept per channel; the rest is counted (``truncated``), not kept.
            size: the bytes the chunk stood for, when ``data`` was cut at the cap.

        Returns:
            ``False`` when the chunk starts past what was received (a gap): it is dropped.
        """
        size = len(data) if size is None else size
        received = self.received(channel)
        if offset > received:
            return False
        end = offset + size
        if end <= received:
            return True  # already have it (a re-send after a reconnect)
        buf = self.channel(channel)
        kept = data[received - offset :][: max(cap - len(buf), 0)]
        buf += kept
        if end - received > len(kept):
            self.truncated = True
        if channel == "stdout":
            self.stdout_received = end
        else:
            self.stderr_received = end
        return True

    def to_plain(self) -> dict[str, Any]:
        return {
            "stdout": bytes(self.stdout),
            "stderr": bytes(self.stderr),
            "stdout_received": self.stdout_received,
            "stderr_received": self.stderr_received,
            "stdout_reported": self.stdout_reported,
            "stderr_reported": self.stderr_reported,
            "truncated": self.truncated,
            "finished": self.finished,
            **{key: getattr(self, key) for key in RESULT_FIELDS},
        }

    @classmethod
    def from_plain(cls, d: dict[str, Any]) -> OutputBuffer:
        """The buffer of :meth:`to_plain`'s map, or of an older one: without results (no
        ``status``…), or with one ``*_total`` per channel for both counts (received, unless a
        result had finished the buffer: then the result's, and what was kept is what was
        received)."""
        stdout, stderr = bytearray(d["stdout"]), bytearray(d["stderr"])
        if "stdout_received" in d:
            counts = (
                d["stdout_received"],
                d["stderr_received"],
                d["stdout_reported"],
                d["stderr_reported"],
            )
        elif d["finished"]:
            counts = (len(stdout), len(stderr), d["stdout_total"], d["stderr_total"])
        else:
            counts = (d["stdout_total"], d["stderr_total"], 0, 0)
        return cls(
            stdout,
            stderr,
            *counts,
            truncated=d["truncated"],
            finished=d["finished"],
            status=d.get("status"),
            exit_code=d.get("exit_code"),
            signal=d.get("signal"),
            duration_s=d.get("duration_s"),
        )
