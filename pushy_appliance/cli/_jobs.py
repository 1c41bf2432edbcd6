"""Job commands: ``pushy job start|rerun|list|status|watch|abort`` (``job output`` is
``_output``).

Option names follow knife-push (``APPLIANCE.md`` §1). Exit codes: 0 success (for ``job start``,
``job rerun`` and ``job watch``: the job ended ``complete`` with every node ``succeeded``); 1
the job ended otherwise, or the command could not do what was asked; 2 usage errors; 3 the
server could not be reached or refused the request (``_main.main`` maps the client errors).
Progress is followed by ``_follow``; ``job start`` and ``job rerun`` share it
(:func:`_start_and_follow`).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from ..client import PushyClient
from ..errors import ConfigError, ServerRefusedError
from . import _output
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    add_credentials,
    naming,
    plural,
    print_json,
    print_table,
    run_client,
)
from ._explain import unknown_nodes
from ._follow import JOB_ID_HELP, get_job, job_path, resolve_job_id, watch_job
from ._nodes import node_rows
from ._progress import FINISHED_JOB_STATUSES, ProgressDisplay, job_succeeded

__all__ = ["add_parsers"]

_JOB_STATUSES: Final = ("new", "voting", "running", *sorted(FINISHED_JOB_STATUSES))


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


def add_parsers(sub: Any) -> None:
    """Register ``job`` (start, rerun, list, status, output, watch, abort).

    Args:
        sub: the top-level ``argparse`` subparsers object of ``pushy``.
    """
    job = sub.add_parser(
        "job",
        help="start, follow and inspect push jobs",
        description="Start, follow and inspect push jobs. Wherever a job ID is asked for, "
        "the start of it is enough when no other job's id starts the same.",
    ).add_subparsers(dest="sub", metavar="ACTION")
    job.required = True

    p = job.add_parser(
        "start",
        help="start a job on nodes and show its progress",
        description="Start COMMAND on the NODEs, or on the nodes a --search QUERY finds (Chef's "
        "search syntax over the nodes' facts, docs/SEARCH.md), and follow it live. Exits 0 "
        "only when the job ended complete with every node succeeded, 1 when it ended "
        "otherwise (or a --dry-run found no node), 2 on usage errors, 3 when the server could "
        "not be reached or refused the request. A NODE that is no client of the org is warned "
        "about first; a node that refuses the job is shown with its reason; a server restart "
        "on the way is waited for (up to 120 s).",
        epilog="examples:\n"
        "  pushy job start chef-client --search 'platform:ubuntu AND tags:web'\n"
        "  pushy job start chef-client --search 'chef_environment:production' -q 90% --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command_line", metavar="COMMAND", help="the command (must be whitelisted)")
    p.add_argument("nodes", metavar="NODE", nargs="*", help="nodes to run it on")
    p.add_argument(
        "-s",
        "--search",
        metavar="QUERY",
        help="run it on the nodes this query finds, resolved once when the job starts "
        "(instead of NODEs; offline matches end unavailable); prints how many matched",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="with --search: list the nodes it finds now, start nothing",
    )
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

    p = job.add_parser(
        "rerun",
        help="run a job again on its failed (or other) nodes and show its progress",
        description="Start a new job with the command, file, environment, user, directory, "
        "capture, timeout and rolling limits of job ID, on its nodes that failed (the "
        "default: failed, timed out, crashed or aborted), that were unsuccessful (those, and "
        "the ones that refused it or were unavailable), all of them, or the NODEs named; then "
        "follow it live as `job start` does, with the same exit codes. The quorum is the "
        "original's, as the same share of the new node count, unless --quorum says. A job "
        "with no such node is refused (exit 3).",
        epilog="examples:\n"
        "  pushy job rerun 3f2a            # the nodes of job 3f2a… that failed\n"
        "  pushy job rerun 3f2a --unsuccessful -q 90%\n"
        "  pushy job rerun 3f2a web-1 web-7",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job_id", metavar="ID", help=JOB_ID_HELP)
    p.add_argument("nodes", metavar="NODE", nargs="*", help="re-run on these nodes of the job")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--failed",
        dest="selection",
        action="store_const",
        const="failed",
        help="the nodes that failed, timed out, crashed or were aborted (the default)",
    )
    which.add_argument(
        "--unsuccessful",
        dest="selection",
        action="store_const",
        const="unsuccessful",
        help="those, and the nodes that refused the job (nacked) or were unavailable",
    )
    which.add_argument(
        "--all",
        dest="selection",
        action="store_const",
        const="all",
        help="every node of the job",
    )
    p.add_argument(
        "-q",
        "--quorum",
        type=_quorum,
        metavar="N|N%",
        help="nodes (or percentage of nodes) that must agree to run (default: the original "
        "quorum's share of the new node count)",
    )
    p.add_argument(
        "-b",
        "--nowait",
        action="store_true",
        help="print the new job's id and exit without waiting for it",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the final job document (with --nowait: the 201 body) as JSON",
    )
    add_credentials(p)
    p.set_defaults(handler=cmd_job_rerun)

    p = job.add_parser(
        "list",
        help="list jobs, newest first",
        description="List the org's jobs, newest first: id, status, creation time, command.",
    )
    p.add_argument("--status", choices=_JOB_STATUSES, help="only jobs with this status")
    p.add_argument("--limit", type=_positive, metavar="N", help="at most N jobs")
    p.add_argument("--json", action="store_true", help="print the API document (a JSON array)")
    add_credentials(p)
    p.set_defaults(handler=cmd_job_list)

    p = job.add_parser(
        "status",
        help="show a job's status and its nodes",
        description="Show a job: its status, command, options, and which nodes are in which "
        "state (with the reasons of nodes that refused it).",
    )
    p.add_argument("job_id", metavar="ID", help=JOB_ID_HELP)
    p.add_argument("--json", action="store_true", help="print the job document as JSON")
    add_credentials(p)
    p.set_defaults(handler=cmd_job_status)

    _output.add_parser(job)

    p = job.add_parser(
        "watch",
        help="follow a job's progress live until it ends",
        description="Follow a job live from its event feed, to its end; a server restart on "
        "the way is waited for (up to 120 s) and the feed resumed where it stopped. Exit codes "
        "as for `job start`.",
    )
    p.add_argument("job_id", metavar="ID", help=JOB_ID_HELP)
    add_credentials(p)
    p.set_defaults(handler=cmd_job_watch)

    p = job.add_parser(
        "abort",
        help="abort a voting or running job",
        description="Abort a voting or running job: running commands are stopped, nodes not "
        "yet started end aborted.",
    )
    p.add_argument("job_id", metavar="ID", help=JOB_ID_HELP)
    p.add_argument("--json", action="store_true", help="print the job document as JSON")
    add_credentials(p)
    p.set_defaults(handler=cmd_job_abort)


def _job_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST jobs`` body of ``job start``.

    Raises:
        ConfigError: the ``--file`` cannot be read.
    """
    body: dict[str, Any] = {"command": args.command_line}
    if args.search is not None:
        body["search"] = args.search
    else:
        body["nodes"] = list(args.nodes)
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


# --- commands -------------------------------------------------------------------------------


def _check_targets(args: argparse.Namespace) -> None:
    """NODEs or ``--search``, exactly one; ``--dry-run`` only with ``--search``.

    Raises:
        ConfigError: (exit 2) when that is not so.
    """
    why = None
    if args.search is not None and args.nodes:
        why = "give NODEs or --search QUERY, not both"
    elif args.search is None and not args.nodes:
        why = "give the NODEs to run it on, or --search QUERY"
    elif args.dry_run and args.search is None:
        why = "--dry-run goes with --search QUERY"
    if why is not None:
        raise ConfigError("pushy job start", None, why)


async def _dry_run(c: PushyClient, query: str, as_json: bool) -> int:
    """The nodes ``query`` finds now (``job start --search … --dry-run``)."""
    doc: dict[str, Any] = await c.json("GET", c.org_path("pushy/nodes"), params={"q": query})
    if as_json:
        print_json(doc)
    else:
        sys.stdout.write(f"search {query!r} matches {plural(int(doc['total']), 'node')}\n")
        print_table(("NODE", "STATUS", "AVAILABILITY"), node_rows(doc["rows"]))
    return EXIT_OK if doc["total"] else EXIT_FAILED


def cmd_job_start(args: argparse.Namespace) -> int:
    """``pushy job start``: start a job, then (unless ``--nowait``) follow it to its end."""
    _check_targets(args)
    body = _job_body(args)
    if args.dry_run:
        return run_client(args, lambda c: _dry_run(c, args.search, args.json))

    async def create(c: PushyClient) -> dict[str, Any]:
        created: dict[str, Any] = await c.json("POST", c.org_path("pushy/jobs"), body)
        return created

    return _start_and_follow(args, create, nodes=body.get("nodes", ()), search=args.search)


def cmd_job_rerun(args: argparse.Namespace) -> int:
    """``pushy job rerun ID``: start a re-run of a job, then follow it as ``job start``."""
    if args.nodes and args.selection is not None:
        raise ConfigError("pushy job rerun", None, f"give NODEs or --{args.selection}, not both")
    body: dict[str, Any] = {"nodes": list(args.nodes) if args.nodes else args.selection}
    if body["nodes"] is None:
        del body["nodes"]  # the server's default: the failed nodes
    if args.quorum is not None:
        body["quorum"] = args.quorum

    async def create(c: PushyClient) -> dict[str, Any]:
        job_id = await resolve_job_id(c, args.job_id)
        try:
            created: dict[str, Any] = await c.json("POST", job_path(c, job_id, "/rerun"), body)
        except ServerRefusedError as e:
            raise naming(e, "job", job_id) from None
        return created

    return _start_and_follow(args, create)


def _start_and_follow(
    args: argparse.Namespace,
    create: Callable[[PushyClient], Awaitable[dict[str, Any]]],
    *,
    nodes: Sequence[str] = (),
    search: str | None = None,
) -> int:
    """Create a job with ``create`` (its 201 body), then, unless ``--nowait``, show its
    progress to its end; exit 0 only when it ended ``complete`` with every node
    ``succeeded``. ``nodes``: the names asked for (those that are no client are warned
    about); ``search``: the query that named them (its match count is told)."""
    started: list[str] = []

    async def go(c: PushyClient) -> int:
        created = await create(c)
        job_id = str(created["id"])
        started.append(job_id)
        if search is not None:
            job = await get_job(c, job_id)
            count = sum(len(names) for names in job["nodes"].values())
            said = sys.stderr if args.json or args.nowait else sys.stdout
            print(f"search {search!r} matched {plural(count, 'node')}", file=said, flush=True)
        # said before the feed's history is shown, so it comes before these nodes' unavailable
        missing = await unknown_nodes(c, nodes) if nodes else []
        if missing:
            print(
                f"pushy: warning: no such node: {', '.join(missing)}"
                f" (not a client of org {c.creds.org}; it ends unavailable)",
                file=sys.stderr,
                flush=True,
            )
        if args.nowait:
            if args.json:
                print_json(created)
            else:
                sys.stdout.write(job_id + "\n")
            return EXIT_OK
        out: TextIO = sys.stderr if args.json else sys.stdout
        display = ProgressDisplay(job_id, out, quiet=args.json and not sys.stderr.isatty())
        doc = await watch_job(c, job_id, display)
        if args.json:
            print_json(doc)
        return EXIT_OK if job_succeeded(doc) else EXIT_FAILED

    try:
        return run_client(args, go)
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
        job_id = await resolve_job_id(c, args.job_id)
        doc = await watch_job(c, job_id, ProgressDisplay(job_id, sys.stdout))
        return EXIT_OK if job_succeeded(doc) else EXIT_FAILED

    return run_client(args, go)


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
            print_json(jobs)
            return EXIT_OK
        rows = [
            (str(j["id"]), str(j["status"]), str(j["created_at"]), str(j["command"])) for j in jobs
        ]
        print_table(("ID", "STATUS", "CREATED", "COMMAND"), rows)
        return EXIT_OK

    return run_client(args, go)


def cmd_job_status(args: argparse.Namespace) -> int:
    """``pushy job status ID``: the job document, as JSON or readable."""

    async def go(c: PushyClient) -> int:
        doc = await get_job(c, await resolve_job_id(c, args.job_id))
        if args.json:
            print_json(doc)
        else:
            sys.stdout.write(_describe_job(doc))
        return EXIT_OK

    return run_client(args, go)


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
        job_id = await resolve_job_id(c, args.job_id)
        try:
            doc: dict[str, Any] = await c.json("POST", job_path(c, job_id, "/abort"))
        except ServerRefusedError as e:
            raise naming(e, "job", job_id) from None
        if args.json:
            print_json(doc)
        else:
            counts = ", ".join(f"{len(v)} {k}" for k, v in (doc.get("nodes") or {}).items())
            sys.stdout.write(f"job {doc['id']} {doc['status']}: {counts}\n")
        return EXIT_OK

    return run_client(args, go)
