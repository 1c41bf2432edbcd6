"""Operator commands: ``pushy job start|list|status|output|watch|abort`` and ``pushy node status``.

Option names follow knife-push (``APPLIANCE.md`` §1). Exit codes: 0 success (for ``job start``
and ``job watch``: the job ended ``complete`` with every node ``succeeded``); 1 the job ended
otherwise, or the command could not do what was asked; 2 usage errors; 3 the server could not
be reached or refused the request (``_main.main`` maps the client errors).

Progress comes from the job feed (``GET job_status_feed/ID``). A feed cut off for lagging is
resumed with ``Last-Event-ID``; a server without feeds (404 on the feed of a job that exists)
is polled with ``GET jobs/ID`` instead.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import trio

from ..client import PushyClient
from ..errors import ConfigError, ServerRefusedError, ServerUnreachableError
from ..sse import Event, SSEParser
from . import _admin
from ._progress import FINISHED_JOB_STATUSES, ProgressDisplay, job_succeeded

__all__ = ["add_parsers", "follow_job"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1

_JOB_STATUSES: Final = ("new", "voting", "running", *sorted(FINISHED_JOB_STATUSES))
_POLL_INTERVAL: Final = 1.0
_MAX_RECONNECTS: Final = 5
_DRAIN_SECONDS: Final = 5.0

AddCredentials = Callable[..., None]
EventHandler = Callable[[Event], None]


# --- argument types -------------------------------------------------------------------------


def _quorum(text: str) -> int | str:
    """``N`` (a node count) or ``N%`` (a percentage), as knife-push takes it."""
    raw = text.strip()
    if raw.endswith("%"):
        number = raw[:-1]
        if number.isdigit() and 0 <= int(number) <= 100:
            return f"{int(number)}%"
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage 0% .. 100%")
    if raw.isdigit():
        return int(raw)
    raise argparse.ArgumentTypeError(f"{text!r} is not a node count N or a percentage N%")


def _positive(text: str) -> int:
    if text.strip().isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")


def _non_negative(text: str) -> int:
    if text.strip().isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")


def _env_pair(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not K=V")
    return name, value


def _env_json(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise argparse.ArgumentTypeError('expected a JSON object of strings: {"NAME": "value"}')
    return value


# --- parsers --------------------------------------------------------------------------------


def add_parsers(sub: Any, add_credentials: AddCredentials) -> None:
    """Register ``job`` (start, list, status, output, watch, abort) and ``node`` (status).

    Args:
        sub: the top-level ``argparse`` subparsers object of ``pushy``.
        add_credentials: adds the shared credential and TLS flags to a parser.
    """
    job = sub.add_parser("job", help="start, follow and inspect push jobs").add_subparsers(
        dest="sub", metavar="ACTION"
    )
    job.required = True

    p = job.add_parser(
        "start",
        help="start a job on nodes and show its progress",
        description="Start COMMAND on the NODEs and follow it live. Exits 0 only when the job "
        "ended complete with every node succeeded, 1 when it ended otherwise, 2 on usage "
        "errors, 3 when the server could not be reached or refused the request.",
    )
    p.add_argument("command_line", metavar="COMMAND", help="the command (must be whitelisted)")
    p.add_argument("nodes", metavar="NODE", nargs="+", help="nodes to run it on")
    p.add_argument(
        "-q",
        "--quorum",
        type=_quorum,
        metavar="N|N%",
        help="nodes (or percentage of nodes) that must agree to run (default: all)",
    )
    p.add_argument(
        "--timeout",
        type=_positive,
        metavar="S",
        help="seconds the command may run before it is killed (server default 3600)",
    )
    p.add_argument(
        "--capture", action="store_true", help="capture stdout and stderr (see `job output`)"
    )
    p.add_argument(
        "--env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="K=V",
        help="environment variable for the command (repeatable)",
    )
    p.add_argument(
        "--with-env",
        type=_env_json,
        metavar="JSON",
        help='environment as a JSON object, as knife-push: \'{"K": "V"}\' (merged with --env)',
    )
    p.add_argument("--in-dir", metavar="DIR", help="absolute directory to run the command in")
    p.add_argument("--as-user", metavar="USER", help="user to run the command as")
    p.add_argument(
        "--file",
        metavar="PATH",
        help="send this file with the job (any bytes; sent base64-encoded)",
    )
    p.add_argument(
        "--max-concurrency",
        type=_positive,
        metavar="N",
        help="run on at most N nodes at a time (rolling execution)",
    )
    p.add_argument(
        "--max-failures",
        type=_non_negative,
        metavar="N",
        help="start no further node once more than N nodes failed",
    )
    p.add_argument(
        "-b",
        "--nowait",
        action="store_true",
        help="print the job id and exit without waiting for the job",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the final job document (with --nowait: the 201 body) as JSON",
    )
    add_credentials(p)
    p.set_defaults(handler=cmd_job_start)

    p = job.add_parser("list", help="list jobs, newest first")
    p.add_argument("--status", choices=_JOB_STATUSES, help="only jobs with this status")
    p.add_argument("--limit", type=_positive, metavar="N", help="at most N jobs")
    p.add_argument("--json", action="store_true", help="print the API document (a JSON array)")
    add_credentials(p)
    p.set_defaults(handler=cmd_job_list)

    p = job.add_parser("status", help="show a job's status and its nodes")
    p.add_argument("job_id", metavar="ID", help="the job id")
    p.add_argument("--json", action="store_true", help="print the job document as JSON")
    add_credentials(p)
    p.set_defaults(handler=cmd_job_status)

    p = job.add_parser(
        "output",
        help="print a job's captured output",
        description="Print the captured output of a job started with --capture, byte for "
        "byte. Without NODE, every node's output under a header line.",
    )
    p.add_argument("job_id", metavar="ID", help="the job id")
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

    p = job.add_parser(
        "watch",
        help="follow a job's progress live until it ends",
        description="Follow a job live from its event feed. Exit codes as for `job start`.",
    )
    p.add_argument("job_id", metavar="ID", help="the job id")
    add_credentials(p)
    p.set_defaults(handler=cmd_job_watch)

    p = job.add_parser("abort", help="abort a voting or running job")
    p.add_argument("job_id", metavar="ID", help="the job id")
    p.add_argument("--json", action="store_true", help="print the job document as JSON")
    add_credentials(p)
    p.set_defaults(handler=cmd_job_abort)

    node = sub.add_parser("node", help="node states").add_subparsers(dest="sub", metavar="ACTION")
    node.required = True
    p = node.add_parser(
        "status",
        help="list nodes online and offline",
        description="Without NODE: every node that ever connected. With NODEs: those nodes "
        "(a client that never connected reads offline).",
    )
    p.add_argument("nodes", metavar="NODE", nargs="*", help="only these nodes")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the API document(s) as a JSON array",
    )
    add_credentials(p)
    p.set_defaults(handler=cmd_node_status)


# --- helpers --------------------------------------------------------------------------------


def _run(args: argparse.Namespace, fn: Callable[[PushyClient], Awaitable[int]]) -> int:
    return _admin.run_client(args, fn)


def _job_path(c: PushyClient, job_id: str, rest: str = "") -> str:
    return c.org_path(f"pushy/jobs/{job_id}{rest}")


def _naming(e: ServerRefusedError, kind: str, name: str) -> ServerRefusedError:
    """``e`` with a message that names the job or node when the server's does not.

    Args:
        e: the refusal.
        kind: ``job`` or ``node``.
        name: the job id or node name.

    Returns:
        ``e`` itself when its message names ``name``, else a copy whose message does.
    """
    if name in e.message:
        return e
    return ServerRefusedError(e.status, f"{kind} {name}: {e.message}")


async def _get_job(c: PushyClient, job_id: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = await c.json("GET", _job_path(c, job_id))
    except ServerRefusedError as e:
        raise _naming(e, "job", job_id) from None
    return doc


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


def _job_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST jobs`` body of ``job start``.

    Raises:
        ConfigError: the ``--file`` cannot be read.
    """
    body: dict[str, Any] = {"command": args.command_line, "nodes": list(args.nodes)}
    if args.quorum is not None:
        body["quorum"] = args.quorum
    if args.timeout is not None:
        body["run_timeout"] = args.timeout
    if args.capture:
        body["capture_output"] = True
    env: dict[str, str] = dict(args.with_env or {})
    env.update(dict(args.env))
    if env:
        body["env"] = env
    if args.in_dir is not None:
        body["dir"] = args.in_dir
    if args.as_user is not None:
        body["user"] = args.as_user
    if args.file is not None:
        try:
            data = Path(args.file).read_bytes()
        except OSError as e:
            raise ConfigError(args.file, None, f"cannot read --file: {e.strerror}") from None
        body["file"] = "base64:" + base64.b64encode(data).decode("ascii")
    if args.max_concurrency is not None:
        body["max_concurrency"] = args.max_concurrency
    if args.max_failures is not None:
        body["max_failures"] = args.max_failures
    return body


# --- following a job ------------------------------------------------------------------------


async def follow_job(c: PushyClient, job_id: str, handle: EventHandler) -> bool:
    """Feed every event of a job's feed to ``handle`` until the job completes.

    A feed cut off for lagging (``lagged`` event), closed early or broken by the network is
    resumed with ``Last-Event-ID``, so ``handle`` sees each event once. A stream that keeps
    ending with nothing new is retried with a growing pause (at most 2 s).

    Args:
        c: the client.
        job_id: the job.
        handle: called with each event, in order (``lagged`` events are not passed on).

    Returns:
        ``True`` once the job finished (``job_complete`` seen, or the job document says so);
        ``False`` when the server has no job feed (the caller polls instead).

    Raises:
        ServerRefusedError: the job does not exist (404 naming it), or another refusal.
        ServerUnreachableError: the server cannot be reached, or went away and did not come
            back after a few tries.

    Cancellation: safe at any point; the stream is closed.
    """
    path = c.org_path(f"pushy/job_status_feed/{job_id}")
    last_id: str | None = None
    connected = False
    failures = 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id is not None else {}
        progressed = lagged = summary = False
        try:
            async with c.stream(path, accept="text/event-stream", headers=headers) as response:
                connected = True
                parser = SSEParser()
                done = False
                # Read to the end even after job_complete or lagged (the server closes the
                # stream then): leaving httpx's nested byte generators half-consumed leaks
                # them. A server that does not close is given a few seconds.
                drain = trio.CancelScope()
                with drain:
                    async for chunk in response.aiter_bytes():
                        if done or lagged:
                            continue
                        for event in parser.feed(chunk):
                            if event.name == "lagged":
                                lagged = True
                                drain.deadline = trio.current_time() + _DRAIN_SECONDS
                                break
                            if event.id is not None:
                                last_id = event.id
                            progressed = True
                            summary = summary or event.name == "summary"
                            handle(event)
                            if event.name == "job_complete":
                                done = True
                                drain.deadline = trio.current_time() + _DRAIN_SECONDS
                                break
                if done:
                    return True
        except ServerRefusedError as e:
            if e.status == 404 and not connected:
                await _get_job(c, job_id)  # raises the 404 naming the job when it is unknown
                return False
            raise _naming(e, "job", job_id) from None
        except ServerUnreachableError:
            if not connected or failures >= _MAX_RECONNECTS:
                raise
        else:
            if not lagged:
                doc = await _get_job(c, job_id)
                if doc.get("status") in FINISHED_JOB_STATUSES and (summary or not progressed):
                    return True
        failures = 0 if progressed else failures + 1
        if not lagged:
            await trio.sleep(min(0.2 * failures, 2.0))


async def _poll_job(c: PushyClient, job_id: str, display: ProgressDisplay) -> dict[str, Any]:
    while True:
        doc = await _get_job(c, job_id)
        display.document(doc)
        if doc.get("status") in FINISHED_JOB_STATUSES:
            return doc
        await trio.sleep(_POLL_INTERVAL)


async def _watch(c: PushyClient, job_id: str, display: ProgressDisplay) -> dict[str, Any]:
    """Show the job's progress until it ends; return its final document."""
    with display:
        if not await follow_job(c, job_id, display.event):
            await _poll_job(c, job_id, display)
        doc = await _get_job(c, job_id)
        display.finish(doc)
    return doc


# --- commands -------------------------------------------------------------------------------


def cmd_job_start(args: argparse.Namespace) -> int:
    """``pushy job start``: start a job, then (unless ``--nowait``) follow it to its end."""
    body = _job_body(args)
    started: list[str] = []

    async def go(c: PushyClient) -> int:
        created: dict[str, Any] = await c.json("POST", c.org_path("pushy/jobs"), body)
        job_id = str(created["id"])
        started.append(job_id)
        if args.nowait:
            if args.json:
                _print_json(created)
            else:
                sys.stdout.write(job_id + "\n")
            return EXIT_OK
        out: TextIO = sys.stderr if args.json else sys.stdout
        display = ProgressDisplay(job_id, out, quiet=args.json and not sys.stderr.isatty())
        doc = await _watch(c, job_id, display)
        if args.json:
            _print_json(doc)
        return EXIT_OK if job_succeeded(doc) else EXIT_FAILED

    try:
        return _run(args, go)
    except KeyboardInterrupt:
        if started:
            print(
                f"pushy: stopped watching; job {started[0]} goes on"
                f" (pushy job watch {started[0]}, pushy job abort {started[0]})",
                file=sys.stderr,
            )
        raise


def cmd_job_watch(args: argparse.Namespace) -> int:
    """``pushy job watch ID``: follow a job to its end; exit codes as ``job start``."""

    async def go(c: PushyClient) -> int:
        doc = await _watch(c, args.job_id, ProgressDisplay(args.job_id, sys.stdout))
        return EXIT_OK if job_succeeded(doc) else EXIT_FAILED

    return _run(args, go)


def cmd_job_list(args: argparse.Namespace) -> int:
    """``pushy job list``: the jobs, newest first."""
    params: dict[str, str] = {}
    if args.status is not None:
        params["status"] = args.status
    if args.limit is not None:
        params["limit"] = str(args.limit)

    async def go(c: PushyClient) -> int:
        jobs: list[dict[str, Any]] = await c.json(
            "GET", c.org_path("pushy/jobs"), params=params or None
        )
        if args.json:
            _print_json(jobs)
            return EXIT_OK
        rows = [
            (str(j["id"]), str(j["status"]), str(j["created_at"]), str(j["command"])) for j in jobs
        ]
        _table(("ID", "STATUS", "CREATED", "COMMAND"), rows)
        return EXIT_OK

    return _run(args, go)


def cmd_job_status(args: argparse.Namespace) -> int:
    """``pushy job status ID``: the job document, as JSON or readable."""

    async def go(c: PushyClient) -> int:
        doc = await _get_job(c, args.job_id)
        if args.json:
            _print_json(doc)
        else:
            sys.stdout.write(_describe_job(doc))
        return EXIT_OK

    return _run(args, go)


def _describe_job(doc: dict[str, Any]) -> str:
    lines = [f"job {doc['id']}: {doc['status']}", f"  command:     {doc['command']}"]
    nodes: dict[str, list[str]] = doc.get("nodes") or {}
    total = sum(len(v) for v in nodes.values())
    if "quorum" in doc:
        lines.append(f"  quorum:      {doc['quorum']} of {total}")
    lines.append(f"  run_timeout: {doc['run_timeout']} s")
    for key in ("user", "dir"):
        if key in doc:
            lines.append(f"  {key + ':':<12} {doc[key]}")
    if doc.get("env"):
        env = " ".join(f"{k}={v}" for k, v in sorted(doc["env"].items()))
        lines.append(f"  env:         {env}")
    if doc.get("capture_output"):
        lines.append("  capture:     yes")
    if doc.get("file_specified"):
        lines.append("  file:        yes")
    lines.append(f"  created:     {doc['created_at']}")
    lines.append(f"  updated:     {doc['updated_at']}")
    for bucket, names in nodes.items():
        lines.append(f"  {bucket} ({len(names)}): {', '.join(names)}")
    for node, why in sorted((doc.get("nack_reasons") or {}).items()):
        lines.append(f"  nack reason of {node}: {why}")
    return "\n".join(lines) + "\n"


def cmd_job_abort(args: argparse.Namespace) -> int:
    """``pushy job abort ID``: abort a voting or running job."""

    async def go(c: PushyClient) -> int:
        try:
            doc: dict[str, Any] = await c.json("POST", _job_path(c, args.job_id, "/abort"))
        except ServerRefusedError as e:
            raise _naming(e, "job", args.job_id) from None
        if args.json:
            _print_json(doc)
        else:
            counts = ", ".join(f"{len(v)} {k}" for k, v in (doc.get("nodes") or {}).items())
            sys.stdout.write(f"job {doc['id']} {doc['status']}: {counts}\n")
        return EXIT_OK

    return _run(args, go)


def cmd_job_output(args: argparse.Namespace) -> int:
    """``pushy job output ID [NODE]``: captured output, byte for byte (``--follow``: live)."""

    async def go(c: PushyClient) -> int:
        doc = await _get_job(c, args.job_id)
        if not doc.get("capture_output"):
            print(
                f"pushy: job {args.job_id} did not capture output (start jobs with --capture)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        members = [n for names in (doc.get("nodes") or {}).values() for n in names]
        if args.node is not None and args.node not in members:
            print(f"pushy: node {args.node} is not part of job {args.job_id}", file=sys.stderr)
            return EXIT_FAILED
        if args.follow:
            follower = _OutputFollower(args.node, args.channel, sys.stdout.buffer)
            if await follow_job(c, args.job_id, follower.event):
                return EXIT_OK
            # no feed on this server: wait for the end, then print what was captured
            await _poll_job(c, args.job_id, ProgressDisplay(args.job_id, sys.stderr, quiet=True))
            doc = await _get_job(c, args.job_id)
            members = [n for names in (doc.get("nodes") or {}).values() for n in names]
        elif doc.get("status") not in FINISHED_JOB_STATUSES:
            print(
                f"pushy: job {args.job_id} is {doc.get('status')}: nodes still running have"
                " no output yet (--follow streams it)",
                file=sys.stderr,
            )
        nodes = [args.node] if args.node is not None else sorted(members)
        for node in nodes:
            await _print_output(c, args.job_id, node, args.channel, header=args.node is None)
        return EXIT_OK

    return _run(args, go)


async def _print_output(
    c: PushyClient, job_id: str, node: str, channel: str, *, header: bool
) -> None:
    out = sys.stdout.buffer
    path = _job_path(c, job_id, f"/output/{node}/{channel}")
    try:
        response = await c.request("GET", path, accept="application/octet-stream", ok=(200,))
    except ServerRefusedError as e:
        if not header or e.status != 404:
            raise _naming(e, "job", job_id) from None
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


def cmd_node_status(args: argparse.Namespace) -> int:
    """``pushy node status [NODE...]``: nodes online and offline."""

    async def go(c: PushyClient) -> int:
        docs: list[dict[str, Any]]
        if args.nodes:
            docs = []
            for node in args.nodes:
                try:
                    docs.append(await c.json("GET", c.org_path(f"pushy/node_states/{node}")))
                except ServerRefusedError as e:
                    raise _naming(e, "node", node) from None
        else:
            docs = await c.json("GET", c.org_path("pushy/node_states"))
        if args.json:
            _print_json(docs)
            return EXIT_OK
        rows = [
            (
                str(d["node_name"]),
                str(d["status"]),
                str(d["availability"]),
                str(d.get("updated_at", "never connected")),
            )
            for d in sorted(docs, key=lambda d: str(d["node_name"]))
        ]
        _table(("NODE", "STATUS", "AVAILABILITY", "UPDATED"), rows)
        online = sum(1 for d in docs if d["status"] == "online")
        sys.stdout.write(f"{len(docs)} nodes: {online} online, {len(docs) - online} offline\n")
        return EXIT_OK

    return _run(args, go)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths[:-1], strict=True)]
        sys.stdout.write("  ".join([*cells, row[-1]]) + "\n")
    sys.stdout.flush()
