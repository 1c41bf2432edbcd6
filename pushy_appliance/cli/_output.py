"""``pushy job output``: a job's captured output, byte for byte, or live with ``--follow``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..client import PushyClient
from ..errors import ServerRefusedError
from ..sse import Event
from ._common import EXIT_FAILED, EXIT_OK, add_credentials, naming, run_client
from ._follow import JOB_ID_HELP, follow_job, get_job, job_path, poll_job, resolve_job_id
from ._progress import FINISHED_JOB_STATUSES, ProgressDisplay

__all__ = ["add_parser", "cmd_job_output"]


def add_parser(job: Any) -> None:
    """Register ``job output``.

    Args:
        job: the ``job`` command's subparsers.
    """
    p = job.add_parser(
        "output",
        help="print a job's captured output",
        description="Print the captured output of a job started with --capture, byte for "
        "byte. Without NODE, every node's output under a header line.",
    )
    p.add_argument("job_id", metavar="ID", help=JOB_ID_HELP)
    p.add_argument("node", metavar="NODE", nargs="?", help="only this node (exact bytes)")
    p.add_argument(
        "--channel",
        choices=("stdout", "stderr"),
        default="stdout",
        help="which stream to print (default stdout)",
    )
    p.add_argument(
        "--follow",
        action="store_true",
        help="stream output as the nodes produce it, until the job ends (the feed carries"
        " text: bytes that are not UTF-8 show as U+FFFD; without --follow bytes are exact)",
    )
    add_credentials(p)
    p.set_defaults(handler=cmd_job_output)


def cmd_job_output(args: argparse.Namespace) -> int:
    """``pushy job output ID [NODE]``: captured output, byte for byte (``--follow``: live)."""

    async def go(c: PushyClient) -> int:
        job_id = await resolve_job_id(c, args.job_id)
        doc = await get_job(c, job_id)
        if not doc.get("capture_output"):
            print(
                f"pushy: job {job_id} did not capture output (start jobs with --capture)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        members = [n for names in (doc.get("nodes") or {}).values() for n in names]
        if args.node is not None and args.node not in members:
            print(f"pushy: node {args.node} is not part of job {job_id}", file=sys.stderr)
            return EXIT_FAILED
        if args.follow:
            follower = _OutputFollower(args.node, args.channel, sys.stdout.buffer)
            if await follow_job(c, job_id, follower.event):
                return EXIT_OK
            # no feed on this server: wait for the end, then print what was captured
            await poll_job(c, job_id, ProgressDisplay(job_id, sys.stderr, quiet=True))
            doc = await get_job(c, job_id)
            members = [n for names in (doc.get("nodes") or {}).values() for n in names]
        elif doc.get("status") not in FINISHED_JOB_STATUSES:
            print(
                f"pushy: job {job_id} is {doc.get('status')}: nodes still running have"
                " no output yet (--follow streams it)",
                file=sys.stderr,
            )
        nodes = [args.node] if args.node is not None else sorted(members)
        for node in nodes:
            await _print_output(c, job_id, node, args.channel, header=args.node is None)
        return EXIT_OK

    return run_client(args, go)


async def _print_output(
    c: PushyClient, job_id: str, node: str, channel: str, *, header: bool
) -> None:
    out = sys.stdout.buffer
    path = job_path(c, job_id, f"/output/{node}/{channel}")
    try:
        response = await c.request("GET", path, accept="application/octet-stream", ok=(200,))
    except ServerRefusedError as e:
        if not header or e.status != 404:
            raise naming(e, "job", job_id) from None
        print(f"pushy: no {channel} for {node}: {e.message}", file=sys.stderr)
        return
    data = response.content
    if header:
        out.write(f"==> {node} ({channel}) <==\n".encode())
        if data and not data.endswith(b"\n"):
            data += b"\n"
    out.write(data)
    out.flush()
    if response.headers.get("X-Pushy-Output-Truncated") == "true":
        total = response.headers.get("X-Pushy-Output-Total-Bytes", "?")
        print(
            f"pushy: {channel} of {node} was truncated: {len(response.content)} of {total} bytes",
            file=sys.stderr,
        )


class _OutputFollower:
    """Writes the ``output`` events of one node (or every node, under headers) as they come."""

    def __init__(self, node: str | None, channel: str, out: Any) -> None:
        self._node = node
        self._channel = channel
        self._out = out
        self._current: str | None = None
        self._at_line_start = True

    def event(self, event: Event) -> None:
        if event.name != "output" or not isinstance(event.data, dict):
            return
        node = str(event.data.get("node"))
        if event.data.get("channel") != self._channel:
            return
        if self._node is not None and node != self._node:
            return
        data = str(event.data.get("data", "")).encode()
        if self._node is None and node != self._current:
            prefix = b"" if self._at_line_start else b"\n"
            self._out.write(prefix + f"==> {node} ({self._channel}) <==\n".encode())
            self._current = node
            self._at_line_start = True
        if data:
            self._out.write(data)
            self._at_line_start = data.endswith(b"\n")
        self._out.flush()
