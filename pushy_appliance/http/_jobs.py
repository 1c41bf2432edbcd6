"""Job routes: ``jobs``, ``jobs/ID``, ``jobs/ID/abort``, ``jobs/ID/rerun`` and the output
routes (``API.md`` §3, ``docs/OPERATIONS.md``). Each change is committed with its audit entry
(``_audit.audit_entry``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from ..audit.summary import job_summary
from ..errors import NotAcceptableError, NotFoundError, ValidationError
from ..jobs.model import JobEntry
from ..jobs.rerun import parse_rerun_request, rerun_body, rerun_nodes, scaled_quorum
from ..jobs.runner import JobRunner
from ..jobs.status import JobStatus
from ..jobs.validation import JobRequest, validate_job_request, with_matches
from ..jsonbody import parse_json_body
from ..search import compile_query
from ..services import Services
from ._audit import audit_entry
from ._request import (
    JSON_STYLE,
    authorized,
    base_url,
    find_job,
    json_response,
    request_body,
    require_json_content,
    rfc1123,
    signed,
)

__all__ = ["job_document", "register"]

CHECK_IN_THREAD_BYTES = 64 * 1024
"""A ``POST jobs`` body this large or larger is decoded and checked in a worker thread: a
100,000-node job's names take 50-80 ms of CPU to check, which must not hold the event loop."""


def _summary(e: JobEntry) -> dict[str, Any]:
    spec = e.spec
    doc: dict[str, Any] = {
        "id": e.id,
        "command": spec["command"],
        "status": e.status,
        "run_timeout": spec["run_timeout"],
        "created_at": rfc1123(e.created_at),
        "updated_at": rfc1123(e.updated_at),
        "requester": spec.get("requester"),
    }
    if spec["user"] is not None:
        doc["user"] = spec["user"]
    if spec["dir"] is not None:
        doc["dir"] = spec["dir"]
    if spec["env"] is not None:
        doc["env"] = spec["env"]
    if spec["capture"]:
        doc["capture_output"] = True
    if e.file_specified:
        doc["file_specified"] = True
    return doc


def job_document(
    e: JobEntry, *, include_file: bool = False, include_results: bool = False
) -> dict[str, Any]:
    """The ``GET jobs/ID`` document (the original's shape plus ``quorum``, ``nack_reasons``,
    ``search`` for a job whose nodes a query named, ``rerun_of`` for a re-run; with
    ``include_results``, ``results``: node → its stored result, late ones included)."""
    doc = _summary(e)
    doc["nodes"] = e.buckets()
    doc["quorum"] = e.job["quorum"]
    if include_file and e.file_specified:
        doc.pop("file_specified", None)
        doc["file"] = e.file()
    reasons = e.nack_reasons()
    if reasons:
        doc["nack_reasons"] = reasons
    if e.spec.get("max_concurrency") is not None:
        doc["max_concurrency"] = e.spec["max_concurrency"]
    if e.spec.get("max_failures") is not None:
        doc["max_failures"] = e.spec["max_failures"]
    if e.spec.get("search") is not None:
        doc["search"] = e.spec["search"]
    if e.spec.get("rerun_of") is not None:
        doc["rerun_of"] = e.spec["rerun_of"]
    if include_results:
        doc["results"] = e.results()
    return doc


def _int_param(name: str, low: int, high: int) -> int | None:
    """A query parameter of ASCII digits in ``low .. high`` (else 400), or ``None`` if absent.

    ``int()`` would also take ``１`` (a full-width digit), other scripts' digits, signs,
    underscores and spaces: none of them is a number in a URL.
    """
    raw = request.args.get(name)
    if raw is None:
        return None
    message = f"invalid {name} (must be an integer {low} .. {high})"
    # at most 20 digits: no number of thousands of digits is ever converted
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20):
        raise ValidationError(message)
    value = int(raw)
    if not low <= value <= high:
        raise ValidationError(message)
    return value


def register(app: QuartTrio, svc: Services) -> None:
    """Register the job routes on ``app``."""
    runner: JobRunner = svc.jobs
    limits = svc.config.limits

    @app.route("/organizations/<org>/pushy/jobs", methods=["GET", "POST"])
    async def jobs(org: str) -> Response:
        who = await authorized(svc, org)
        if request.method == "GET":
            svc.auth.require(org, who, "read")
            return await _list_jobs(runner, org)
        svc.auth.require(org, who, "write")
        raw = await request_body(svc)
        require_json_content()

        def check() -> JobRequest:
            return _validated(parse_json_body(raw, mark_duplicates=True))

        if len(raw) < CHECK_IN_THREAD_BYTES:
            req = check()
        else:  # pure: it shares nothing with the event loop
            req = await trio.to_thread.run_sync(check)
        if req.search is not None:
            # resolved once, now: the job keeps these nodes whatever the facts do later
            found = await svc.inventory.search(org, compile_query(req.search))
            req = with_matches(req, found, max_nodes=limits.max_nodes_per_job)
        summary = job_summary(req)

        def entry(job_id: str) -> list[dict[str, Any]]:
            return [
                audit_entry(svc, who, org, "job.create", status=201, target=job_id, summary=summary)
            ]

        job_id = await runner.create(org, req, who.name, riders=entry)
        return _created(org, job_id)

    def _created(org: str, job_id: str) -> Response:
        uri = f"{base_url(svc)}/organizations/{org}/pushy/jobs/{job_id}"
        return json_response({"id": job_id, "uri": uri}, 201, {"Location": uri})

    @app.route("/organizations/<org>/pushy/jobs/<job_id>", methods=["GET"])
    async def job(org: str, job_id: str) -> Response:
        await authorized(svc, org, "read")
        entry = await find_job(svc, org, job_id)
        include = request.args.get("include_file", "").lower() == "true"
        results = request.args.get("include_results", "").lower() == "true"
        return json_response(job_document(entry, include_file=include, include_results=results))

    @app.route("/organizations/<org>/pushy/jobs/<job_id>/abort", methods=["POST"])
    async def abort(org: str, job_id: str) -> Response:
        who = await authorized(svc, org, "write")
        raw = await request_body(svc)
        if raw.strip():
            require_json_content()
            body = parse_json_body(raw)
            if body != {}:
                raise ValidationError("abort takes an empty body or {}")
        entry = await find_job(svc, org, job_id)
        record = audit_entry(svc, who, org, "job.abort", status=200, target=job_id)
        await runner.abort(org, job_id, riders=[record])
        return json_response(job_document(entry))

    @app.route("/organizations/<org>/pushy/jobs/<job_id>/rerun", methods=["POST"])
    async def rerun(org: str, job_id: str) -> Response:
        who = await authorized(svc, org, "write")
        raw = await request_body(svc)
        body: object = {}
        if raw.strip():
            require_json_content()
            body = parse_json_body(raw)
        asked = parse_rerun_request(body)
        entry = await find_job(svc, org, job_id)
        nodes = rerun_nodes(job_id, entry.buckets(), asked.nodes)
        quorum = asked.quorum
        if quorum is None:
            quorum = scaled_quorum(int(entry.job["quorum"]), len(entry.nodes), len(nodes))
        # an archived job's spec leaves its file in the archive: read it back
        spec = {**entry.spec, "file": entry.file()}
        req = _validated(rerun_body(spec, nodes, quorum))
        summary = {
            "rerun_of": job_id,
            "selection": asked.nodes if isinstance(asked.nodes, str) else "nodes",
            **job_summary(req),
        }

        def entry_of(new_id: str) -> list[dict[str, Any]]:
            return [
                audit_entry(svc, who, org, "job.rerun", status=201, target=new_id, summary=summary)
            ]

        new_id = await runner.create(org, req, who.name, rerun_of=job_id, riders=entry_of)
        return _created(org, new_id)

    def _validated(body: object) -> JobRequest:
        """A ``POST jobs`` body through ``POST jobs``'s own validation."""
        return validate_job_request(
            body,
            max_file_bytes=limits.max_file_bytes,
            max_nodes=limits.max_nodes_per_job,
            default_run_timeout=svc.config.jobs.default_run_timeout,
        )

    @app.route("/organizations/<org>/pushy/jobs/<job_id>/output/<node>/<channel>", methods=["GET"])
    async def output(org: str, job_id: str, node: str, channel: str) -> Response:
        accept = request.headers.get("Accept", "")
        if accept.strip().lower() == "application/json":
            raise NotAcceptableError("application/octet-stream")
        who = await signed(svc, org)
        svc.auth.require(org, who, "read")
        if channel not in ("stdout", "stderr"):
            raise NotFoundError(f"no channel '{channel[:32]}' (stdout or stderr)", list_form=False)
        entry = await find_job(svc, org, job_id)
        if node not in entry.nodes:
            raise NotFoundError(f"node '{node[:300]}' is not part of job {job_id}", list_form=False)
        if not entry.spec["capture"]:
            raise NotFoundError(f"job {job_id} did not capture output", list_form=False)
        buf = entry.output.get(node)
        if buf is None or not buf.finished:
            raise NotFoundError(f"node '{node}' has not finished job {job_id}", list_form=False)
        data = bytes(buf.channel(channel))
        total = buf.stdout_total if channel == "stdout" else buf.stderr_total
        headers = {"X-Pushy-Output-Total-Bytes": str(max(total, len(data)))}
        if total > len(data):
            headers["X-Pushy-Output-Truncated"] = "true"
        return Response(data, status=200, headers=headers, content_type="application/octet-stream")


LIST_CHUNK = 1000
"""Jobs listed, and encoded, between two checkpoints: a year of history is 100,000 jobs or
more, about a second of CPU to list, which must not hold the event loop."""


async def _list_jobs(runner: JobRunner, org: str) -> Response:
    status = request.args.get("status")
    if status is not None and status not in JobStatus.__members__.values():
        raise ValidationError(f"invalid status '{status[:40]}'")
    limit = _int_param("limit", 1, 10_000)
    before = request.args.get("before")
    requester = request.args.get("requester")
    since_text = request.args.get("since")
    since: float | None = None
    if since_text is not None:
        try:
            parsed = datetime.fromisoformat(since_text.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError("invalid since (expected an RFC 3339 time)") from None
        # Without an offset: UTC (never local time, whose conversion fails for year 1).
        since = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    out: list[dict[str, Any]] = []
    skipping = before is not None
    # a copy: other tasks add (and purge) jobs at the checkpoints
    for seen, e in enumerate(reversed(list(runner.model.jobs.values())), 1):
        if seen % LIST_CHUNK == 0:
            await trio.lowlevel.checkpoint()
        if skipping:
            if e.id == before:
                skipping = False
            continue
        if e.org != org:
            continue
        if status is not None and e.status != status:
            continue
        if requester is not None and e.spec.get("requester") != requester:
            continue
        if since is not None and e.created_at < since:
            break
        out.append(_summary(e))
        if limit is not None and len(out) >= limit:
            break
    parts: list[str] = []
    for start in range(0, len(out), LIST_CHUNK):
        if start:
            await trio.lowlevel.checkpoint()
        parts.append(json.dumps(out[start : start + LIST_CHUNK], **JSON_STYLE)[1:-1])
    return Response("[" + ",".join(parts) + "]", status=200, content_type="application/json")
