"""The pure rules of ``POST jobs/ID/rerun`` (``jobs/rerun.py``): the body, the node
selections, the scaled quorum and the ``POST jobs`` body built from a stored spec."""

from __future__ import annotations

from typing import Any

import pytest

from pushy_appliance.errors import NothingToRerunError, ValidationError
from pushy_appliance.jobs.rerun import (
    RerunRequest,
    parse_rerun_request,
    rerun_body,
    rerun_nodes,
    scaled_quorum,
)

BUCKETS = {
    "succeeded": ["a"],
    "failed": ["f"],
    "timed_out": ["t"],
    "crashed": ["c"],
    "aborted": ["x"],
    "nacked": ["n"],
    "unavailable": ["u"],
}


@pytest.mark.parametrize(
    ("body", "parsed"),
    [
        ({}, RerunRequest("failed", None)),
        ({"nodes": "unsuccessful"}, RerunRequest("unsuccessful", None)),
        ({"nodes": "all", "quorum": "50%"}, RerunRequest("all", "50%")),
        ({"nodes": ["b", "a"], "quorum": 2.0}, RerunRequest(("b", "a"), 2)),
    ],
)
def test_parse_accepts(body: dict[str, Any], parsed: RerunRequest) -> None:
    assert parse_rerun_request(body) == parsed


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON"),
        ({"nodes": "failed", "command": "x"}, "invalid key supplied"),
        ({"nodes": "some"}, "invalid nodes"),
        ({"nodes": []}, "invalid nodes"),
        ({"nodes": ["a", 1]}, "invalid nodes"),
        ({"nodes": ["a", "a"]}, "named twice"),
        ({"quorum": True}, "quorum"),
        ({"quorum": None}, "quorum"),
        ({"quorum": 1.5}, "whole number"),
    ],
)
def test_parse_refuses(body: object, message: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_rerun_request(body)
    assert message in e.value.message


def test_selections() -> None:
    assert rerun_nodes("j", BUCKETS, "failed") == ["c", "f", "t", "x"]
    assert rerun_nodes("j", BUCKETS, "unsuccessful") == ["c", "f", "n", "t", "u", "x"]
    assert rerun_nodes("j", BUCKETS, "all") == ["a", "c", "f", "n", "t", "u", "x"]
    assert rerun_nodes("j", BUCKETS, ("u", "a")) == ["u", "a"]


def test_names_not_in_the_job_are_named() -> None:
    with pytest.raises(ValidationError) as e:
        rerun_nodes("j1", BUCKETS, ("a", "zz", "yy"))
    assert e.value.message == "nodes not in job j1: zz, yy"
    many = tuple(f"m{i}" for i in range(13))
    with pytest.raises(ValidationError) as e:
        rerun_nodes("j1", BUCKETS, many)
    assert e.value.message.endswith("m9 and 3 more")


def test_nothing_to_rerun() -> None:
    with pytest.raises(NothingToRerunError) as e:
        rerun_nodes("j1", {"succeeded": ["a"]}, "failed")
    assert (str(e.value), e.value.job_id, e.value.selection) == (
        "no nodes to re-run",
        "j1",
        "failed",
    )


@pytest.mark.parametrize(
    ("quorum", "count", "new", "scaled"),
    [(3, 3, 1, 1), (10, 10, 4, 4), (5, 10, 3, 2), (1, 10, 3, 1), (0, 4, 2, 0), (7, 10, 1, 1)],
)
def test_scaled_quorum(quorum: int, count: int, new: int, scaled: int) -> None:
    assert scaled_quorum(quorum, count, new) == scaled


def test_body_keeps_the_spec_but_not_its_nodes() -> None:
    spec = {
        "command": "deploy",
        "nodes": ["a", "b"],
        "run_timeout": 60,
        "capture": True,
        "user": "app",
        "dir": "/srv",
        "env": {"K": "v"},
        "file": "raw:x",
        "max_concurrency": 2,
        "max_failures": None,
        "requester": "alice",
    }
    assert rerun_body(spec, ["b"], "50%") == {
        "command": "deploy",
        "nodes": ["b"],
        "quorum": "50%",
        "run_timeout": 60,
        "capture_output": True,
        "user": "app",
        "dir": "/srv",
        "env": {"K": "v"},
        "file": "raw:x",
        "max_concurrency": 2,
    }
