"""Live job progress for ``pushy job start`` and ``pushy job watch``.

:class:`JobTracker` folds the job feed's events (``API.md`` §3, "Event feeds") and job
documents into per-node states; it does no I/O. :class:`ProgressDisplay` shows a tracker
either as a rich progress display (a bar over the nodes that finished, per-node state counts
and the job's elapsed time), when the output is a terminal, or as plain lines, one per change,
when it is not (pipes, log files, tests).

The feed's events do not name every node change (nodes that end ``was_ready``, or
``unavailable`` without a vote, have no event of their own), so the final job document is
applied at the end and wins over what the events said.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from typing import Any, Final, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.text import Text

from ..jobs.status import BUCKETS, FINISHED_JOB_STATUSES, LIVE_NODE_STATUSES
from ..sse import Event
from ._common import plural

__all__ = [
    "FINISHED_JOB_STATUSES",
    "NODE_STATES",
    "JobTracker",
    "ProgressDisplay",
    "explain_nack",
    "job_succeeded",
    "parse_timestamp",
]

NODE_STATES: Final = BUCKETS
"""Node states inside a job, in the order counts are shown."""

_VOTE_STATES: Final = {"success": "ready", "failure": "nacked"}
# Every other vote status (down, voting_timeout, client_died_while_voting, …) leaves the
# node unavailable.

_RUN_STATES: Final = {
    "success": "succeeded",
    "failure": "failed",
    "crashed": "crashed",
    "run_nacked": "failed",
    "run_nacked_while_running": "failed",
    "client_died_while_running": "crashed",
    "aborted": "aborted",
    "timed_out": "timed_out",
}

_MAX_PENDING_LINE: Final = 64 * 1024

_NACK_HELP: Final = {
    "not_whitelisted": "the command is not in the node's whitelist: add it to the [[allow]]"
    " list of the agent's config, then send the agent SIGHUP",
    "no_such_user": "the node has no such user, or its agent cannot run as it (--as-user)",
    "no_such_dir": "the directory does not exist on the node (--in-dir)",
    "bad_file": "the node could not decode the job's file (--file)",
    "busy": "busy with another job",
}


def explain_nack(reason: str, held_by: str | None = None) -> str:
    """A nack's reason in words, with what to do about it.

    Args:
        reason: the agent's reason (``nack_reasons`` of the job document).
        held_by: for ``busy``, the job holding the node, when known.

    Returns:
        ``REASON: what it means`` (just ``REASON`` when it has no known meaning).
    """
    if reason == "busy" and held_by:
        return f"busy: the node is running job {held_by}"
    help_text = _NACK_HELP.get(reason)
    return f"{reason}: {help_text}" if help_text else reason


def parse_timestamp(text: str) -> float | None:
    """Parse a feed timestamp (``YYYY-MM-DD HH:MM:SS.ffffffZ``).

    Args:
        text: the ``timestamp`` field of an event.

    Returns:
        Seconds since the epoch, or ``None`` when ``text`` is not such a timestamp.
    """
    try:
        moment = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%fZ")
    except (TypeError, ValueError):
        return None
    return moment.replace(tzinfo=datetime.UTC).timestamp()


def job_succeeded(doc: Mapping[str, Any]) -> bool:
    """Whether a job document is a full success: ``complete`` and every node ``succeeded``.

    Args:
        doc: a ``GET jobs/ID`` document.

    Returns:
        ``True`` only when the status is ``complete`` and ``succeeded`` is the only
        non-empty node bucket.
    """
    nodes = doc.get("nodes") or {}
    return (
        doc.get("status") == "complete"
        and bool(nodes.get("succeeded"))
        and all(bucket == "succeeded" or not names for bucket, names in nodes.items())
    )


class JobTracker:
    """The state of one job as far as its feed and documents tell. Pure: no I/O.

    Attributes:
        job_id: the job.
        command: the job's command, once known.
        status: the job status (``voting`` until the feed or a document says otherwise).
        nodes: node name → node state.
        node_count: how many nodes the job has, once known.
        started_at: the job's start time (seconds since the epoch), once known.
        finished_at: the time of ``job_complete``, once known.
    """

    def __init__(self, job_id: str) -> None:
        """Create a tracker for ``job_id`` that knows nothing yet."""
        self.job_id = job_id
        self.command: str | None = None
        self.status = "voting"
        self.nodes: dict[str, str] = {}
        self.node_count: int | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.explained: set[str] = set()
        """Nodes whose nack reason was already shown."""

    @property
    def total(self) -> int:
        """The number of nodes: from the ``start`` event or a document, else those seen."""
        return max(self.node_count or 0, len(self.nodes))

    @property
    def done(self) -> int:
        """How many nodes reached a final state."""
        return sum(1 for s in self.nodes.values() if s not in LIVE_NODE_STATUSES)

    @property
    def finished(self) -> bool:
        """Whether the job reached a final status."""
        return self.status in FINISHED_JOB_STATUSES

    def counts(self) -> dict[str, int]:
        """Node state → number of nodes in it, non-zero states only, in :data:`NODE_STATES`
        order."""
        out: dict[str, int] = {}
        for state in NODE_STATES:
            n = sum(1 for s in self.nodes.values() if s == state)
            if n:
                out[state] = n
        return out

    def counts_text(self) -> str:
        """The counts as ``2 succeeded, 1 failed`` (``no nodes yet`` when empty)."""
        parts = [f"{n} {state}" for state, n in self.counts().items()]
        return ", ".join(parts) if parts else "no nodes yet"

    def elapsed(self, now: float) -> float | None:
        """Seconds since the job started, up to its end when it finished.

        Args:
            now: the current time, seconds since the epoch.

        Returns:
            The elapsed seconds (never negative), or ``None`` before the start is known.
        """
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else now
        return max(0.0, end - self.started_at)

    def apply(self, event: Event) -> list[str]:
        """Fold one feed event into the state.

        Args:
            event: an event of the job feed. ``output`` events change nothing here (the
                display prints them); unknown events are ignored.

        Returns:
            Human-readable lines describing what changed (possibly none).
        """
        data = event.data if isinstance(event.data, dict) else {}
        name = event.name
        node = data.get("node")
        if name == "start":
            self.started_at = parse_timestamp(str(data.get("timestamp", "")))
            self.command = data.get("command")
            count = data.get("node_count")
            if isinstance(count, int):
                self.node_count = count
            quorum = data.get("quorum")
            on = plural(count, "node") if isinstance(count, int) else f"{count} nodes"
            return [f"job {self.job_id} started: {self.command!r} on {on}, quorum {quorum}"]
        if name == "quorum_vote" and isinstance(node, str):
            return self._vote(node, str(data.get("status")), data)
        if name == "quorum_succeeded":
            self.status = "running"
            return ["quorum reached: running"]
        if name == "run_start" and isinstance(node, str):
            return self._set(node, "running", None)
        if name == "run_complete" and isinstance(node, str):
            outcome = str(data.get("status"))
            return self._set(node, _RUN_STATES.get(outcome, "failed"), outcome)
        if name == "rehab" and isinstance(node, str):
            return [f"{node}: sent to rehab (unexpected message)"]
        if name == "job_complete":
            self.status = str(data.get("status"))
            self.finished_at = parse_timestamp(str(data.get("timestamp", "")))
            return []
        if name == "summary":
            return self.apply_document(data)
        return []

    def _vote(self, node: str, vote: str, data: Mapping[str, Any]) -> list[str]:
        held_by = data.get("held_by") if isinstance(data.get("held_by"), str) else None
        reason = data.get("reason")
        why: str | None
        if vote == "success":
            why = None
        elif vote == "failure" and isinstance(reason, str):
            why = explain_nack(reason, held_by)
            self.explained.add(node)
        elif vote == "failure":
            why = None  # the reason follows from the final document
        elif held_by:
            why = f"vote {vote}: the node is running job {held_by}"
        else:
            why = f"vote {vote}"
        return self._set(node, _VOTE_STATES.get(vote, "unavailable"), why)

    def nack_lines(self, reasons: Mapping[str, Any]) -> list[str]:
        """Lines for the nack reasons not shown yet (``NODE: nacked (REASON: …)``).

        Args:
            reasons: the job document's ``nack_reasons``.

        Returns:
            One line per nacked node whose reason no event showed, sorted by node.
        """
        lines = []
        for node, why in sorted(reasons.items()):
            if node not in self.explained:
                self.explained.add(node)
                lines.append(f"{node}: nacked ({explain_nack(str(why))})")
        return lines

    def apply_document(self, doc: Mapping[str, Any]) -> list[str]:
        """Take the node buckets and status of a ``GET jobs/ID`` document as the truth.

        Args:
            doc: the job document.

        Returns:
            Human-readable lines describing what changed.
        """
        lines: list[str] = []
        if isinstance(doc.get("command"), str):
            self.command = doc["command"]
        buckets = doc.get("nodes")
        if isinstance(buckets, dict):
            total = 0
            for state, names in buckets.items():
                if not isinstance(names, list):
                    continue
                total += len(names)
                for node in names:
                    lines.extend(self._set(str(node), str(state), None))
            self.node_count = total
        status = doc.get("status")
        if isinstance(status, str) and status != self.status:
            self.status = status
            if status == "running":
                lines.append("quorum reached: running")
        return lines

    def summary(self) -> str:
        """One line: the job, its status, the node counts and the elapsed time."""
        elapsed = self.elapsed(time.time()) if self.finished_at is not None else None
        took = f" in {elapsed:.1f} s" if elapsed is not None else ""
        return f"job {self.job_id} {self.status}{took}: {self.counts_text()}"

    def _set(self, node: str, state: str, why: str | None) -> list[str]:
        if self.nodes.get(node) == state:
            return []
        self.nodes[node] = state
        return [f"{node}: {state}" + (f" ({why})" if why and why != "success" else "")]


class _ElapsedColumn(ProgressColumn):
    """The job's elapsed time from the feed's timestamps (not from when we started looking)."""

    def __init__(self, tracker: JobTracker) -> None:
        super().__init__()
        self._tracker = tracker

    def render(self, task: Task) -> Text:
        elapsed = self._tracker.elapsed(time.time())
        if elapsed is None:
            return Text("-:--:--", style="progress.elapsed")
        delta = datetime.timedelta(seconds=int(elapsed))
        return Text(str(delta), style="progress.elapsed")


class ProgressDisplay:
    """Shows a job's progress: rich live display on a terminal, plain lines otherwise.

    Use as a context manager around the feed loop; feed it events with :meth:`event`,
    documents with :meth:`document`, and end with :meth:`finish`.

    Args:
        job_id: the job shown.
        out: where to write (normally ``sys.stdout``, ``sys.stderr`` when stdout carries JSON).
        live: use the rich display; default: whether ``out`` is a terminal.
        show_output: print the ``output`` events (captured lines) as they arrive.
        quiet: show nothing at all (the tracker still follows the job).
    """

    def __init__(
        self,
        job_id: str,
        out: TextIO,
        *,
        live: bool | None = None,
        show_output: bool = True,
        quiet: bool = False,
    ) -> None:
        self.tracker = JobTracker(job_id)
        self._out = out
        self._quiet = quiet
        self._live = (not quiet) and (out.isatty() if live is None else live)
        self._show_output = show_output and not quiet
        self._pending: dict[tuple[str, str], str] = {}
        self._console = Console(file=out, force_terminal=self._live, highlight=False)
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressDisplay:
        if self._live:
            self._progress = Progress(
                SpinnerColumn(finished_text="[bold]✓[/]"),
                TextColumn("[bold]job[/] {task.fields[short]} {task.fields[status]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                _ElapsedColumn(self.tracker),
                console=self._console,
                transient=False,
            )
            self._task = self._progress.add_task(
                "job",
                total=None,
                short=self.tracker.job_id[:8],
                status=self.tracker.status,
                counts=self.tracker.counts_text(),
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.stop()
            self._progress = None

    def event(self, event: Event) -> None:
        """Fold in and show one feed event.

        Args:
            event: an event of the job feed.
        """
        if event.name == "output":
            self._output(event)
        elif event.name == "run_complete":
            # the node's last partial line belongs before its completion
            node = event.data.get("node") if isinstance(event.data, dict) else None
            self._flush_output(str(node))
            self._lines(self.tracker.apply(event))
        elif event.name == "job_complete":
            self._flush_output()
            self.tracker.apply(event)
        else:
            self._lines(self.tracker.apply(event))
        self._refresh()

    def document(self, doc: Mapping[str, Any]) -> None:
        """Fold in and show a job document (the polling fallback, and the final document).

        Args:
            doc: a ``GET jobs/ID`` document.
        """
        self._lines(self.tracker.apply_document(doc))
        self._refresh()

    def finish(self, doc: Mapping[str, Any]) -> None:
        """Apply the final job document and print the summary line.

        Args:
            doc: the final ``GET jobs/ID`` document.
        """
        self._flush_output()
        self.document(doc)
        reasons = doc.get("nack_reasons")
        if isinstance(reasons, dict):
            self._lines(self.tracker.nack_lines(reasons))
        self._lines([self.tracker.summary()])

    def _output(self, event: Event) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if not self._show_output:
            return
        key = (str(data.get("node", "?")), str(data.get("channel", "stdout")))
        text = self._pending.pop(key, "") + str(data.get("data", ""))
        *complete, rest = text.split("\n")
        if len(rest) > _MAX_PENDING_LINE:
            complete.append(rest)
            rest = ""
        if rest:
            self._pending[key] = rest
        node, channel = key
        tag = f"{node}" if channel == "stdout" else f"{node} {channel}"
        self._lines([f"[{tag}] {line}" for line in complete])

    def _flush_output(self, only: str | None = None) -> None:
        for key in [k for k in self._pending if only is None or k[0] == only]:
            node, channel = key
            tag = f"{node}" if channel == "stdout" else f"{node} {channel}"
            self._lines([f"[{tag}] {self._pending.pop(key)}"])

    def _lines(self, lines: list[str]) -> None:
        if self._quiet or not lines:
            return
        if self._live:
            for line in lines:
                self._console.print(Text(line))
        else:
            self._out.write("".join(f"{line}\n" for line in lines))
            self._out.flush()

    def _refresh(self) -> None:
        if self._progress is None or self._task is None:
            return
        t = self.tracker
        self._progress.update(
            self._task,
            total=t.total or None,
            completed=t.done,
            status=t.status,
            counts=t.counts_text(),
        )
