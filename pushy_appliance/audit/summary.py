"""What an audit entry says of a request's body: a summary that never holds a secret (pure).

Never kept: keys (``public_key``, a created key), environment values (their names are
kept), a job's ``file`` (its size is kept), a webhook's ``secret`` and the path and query of
its URL (a receiver's URL often is its credential: only ``scheme://host:port`` is kept).
Lists of names are cut at :data:`MAX_NAMES` (their length is kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from ..jobs.validation import JobRequest

__all__ = ["MAX_NAMES", "identity_summary", "job_summary", "names", "url_origin"]

MAX_NAMES: Final = 20
"""Names a summary lists of one list (nodes, group members); the count is always kept."""


def names(values: Iterable[str]) -> list[str]:
    """At most :data:`MAX_NAMES` of ``values``."""
    out: list[str] = []
    for value in values:
        if len(out) == MAX_NAMES:
            break
        out.append(value)
    return out


def job_summary(req: JobRequest) -> dict[str, Any]:
    """A validated ``POST jobs`` (or re-run) request: its fields, ``env`` by names, the
    ``file`` by its size, the first nodes and their count."""
    out: dict[str, Any] = {
        "command": req.command,
        "node_count": len(req.nodes),
        "nodes": names(req.nodes),
        "quorum": req.quorum,
        "run_timeout": req.run_timeout,
        "capture_output": req.capture_output,
    }
    if req.search is not None:
        out["search"] = req.search
    if req.user is not None:
        out["user"] = req.user
    if req.dir is not None:
        out["dir"] = req.dir
    if req.env is not None:
        out["env"] = sorted(req.env)
    if req.file_bytes is not None:
        out["file_bytes"] = len(req.file_bytes)
    # as the job stores them: a limit beyond the node count changes nothing, and any integer
    # a request may carry (2**64 and more) must fit the store's msgpack records
    if req.max_concurrency is not None:
        out["max_concurrency"] = min(req.max_concurrency, len(req.nodes))
    if req.max_failures is not None:
        out["max_failures"] = min(req.max_failures, len(req.nodes))
    return out


def identity_summary(
    body: Mapping[str, Any], fields: Iterable[str], *, key: bool = False
) -> dict[str, Any]:
    """An identity route's body: the named ``fields`` that are strings, booleans or lists of
    names (lists cut), and with ``key`` how the key was given (``created`` or ``given``,
    never the key).

    The ``actors`` of a group body are summarised per kind.
    """
    out: dict[str, Any] = {}
    for field in fields:
        value = body.get(field)
        if isinstance(value, str | bool):
            out[field] = value[:256] if isinstance(value, str) else value
        elif field == "actors" and isinstance(value, Mapping):
            for kind in ("users", "clients", "groups"):
                members = value.get(kind)
                if isinstance(members, list):
                    out[kind] = names(m for m in members if isinstance(m, str))
    if key:
        out["key"] = "given" if isinstance(body.get("public_key"), str) else "created"
    return out


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (its path and query left out)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{shown}" + (f":{port}" if port is not None else "")
