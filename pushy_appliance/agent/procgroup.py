"""Job process groups: signalling them, telling whether one still runs, ending one.

A job runs in a session of its own, so its process group (id: the leader's pid) holds the
job's whole process tree, grandchildren included. Abort and timeout signal the group; a
restarted agent ends the group a crash of its predecessor left running
(:func:`end_leftover_group`). Linux-specific where it reads ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import signal

import trio

__all__ = [
    "end_leftover_group",
    "group_alive",
    "process_start_time",
    "signal_group",
    "terminate_group",
]

_GROUP_POLL = 0.05
"""Seconds between checks whether a terminated process group is gone."""


def signal_group(pgid: int, signum: int) -> None:
    """Send ``signum`` to the process group ``pgid``; a group already gone is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count).

    ``killpg(pgid, 0)`` also succeeds for zombies: a grandchild orphaned by the abort is
    re-parented to PID 1, and where PID 1 does not reap (containers without an init) it stays
    a zombie, so the group would look alive for the whole kill grace. When ``killpg`` finds
    the group, ``/proc`` tells whether any member is more than a zombie.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _group_has_live_member(pgid)


def _proc_stat(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` from the third (the state) on, or ``None`` (gone).

    "PID (COMM) STATE PPID PGRP …": COMM may hold spaces and parentheses, so the fields are
    those after the last ``)``. Index 0 is the state, 2 the process group, 19 the start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields if len(fields) > 19 else None


def _group_has_live_member(pgid: int) -> bool:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # no /proc: trust killpg
    for entry in entries:
        if entry.isdigit():
            fields = _proc_stat(entry)
            if fields is not None and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False


async def terminate_group(
    pgid: int, kill_grace: float, process: trio.Process | None = None
) -> None:
    """SIGTERM the group, give it ``kill_grace`` seconds to go, then SIGKILL what is left.

    ``process``: the group's leader when it is our child (reaped here).
    """
    signal_group(pgid, signal.SIGTERM)
    with trio.move_on_after(kill_grace):
        if process is not None:
            await process.wait()
        # No event tells when the last member of a process group is gone: poll.
        while group_alive(pgid):  # noqa: ASYNC110
            await trio.sleep(_GROUP_POLL)
    signal_group(pgid, signal.SIGKILL)


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or ``None`` when there is none.

    With the pid it names one process for good: a pid reused later has another start time.
    Blocking (reads ``/proc``).
    """
    fields = _proc_stat(pid)
    return None if fields is None else int(fields[19])


async def end_leftover_group(pgid: int, started: int, kill_grace: float) -> bool:
    """Terminate a job's process group that an earlier run of the agent left running.

    An agent killed with SIGKILL cannot stop its job: the job's group (the leader ``pgid``,
    started at ``started`` by :func:`process_start_time`) runs on. A restarted agent ends it
    (SIGTERM, then SIGKILL after ``kill_grace``) so that it does not run beside the next job.
    Nothing is signalled unless the group is that one: a live leader must have the same
    start time (a pid reused since is left alone); with the leader gone, the group can only
    be the same one (Linux does not hand out a pid that still names a process group).

    Returns:
        Whether a live group was found and terminated.
    """
    leader = await trio.to_thread.run_sync(process_start_time, pgid)
    if leader is not None and leader != started:
        return False
    if not await trio.to_thread.run_sync(group_alive, pgid):
        return False
    await terminate_group(pgid, kill_grace)
    return True
