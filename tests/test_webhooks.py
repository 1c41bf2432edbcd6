"""The webhooks' pure rules and model (``webhooks/rules.py``, ``webhooks/model.py``): URLs,
the address policy (SSRF), the signature, the payload's size limit, the retry schedule, and
the durable queue fed by the jobs' own records (``docs/OPERATIONS.md``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from pushy_appliance.appliance import new_database
from pushy_appliance.config import WebhooksConfig
from pushy_appliance.errors import ValidationError
from pushy_appliance.store import open_store
from pushy_appliance.webhooks.engine import WebhookEngine
from pushy_appliance.webhooks.model import (
    DELIVERED,
    FAILED,
    PENDING,
    WebhooksModel,
    attempt_record,
    delivery_id,
)
from pushy_appliance.webhooks.rules import (
    AddressPolicy,
    encode_payload,
    next_attempt,
    parse_url,
    signature,
    validate_webhook_request,
)

SECRET = "0123456789abcdef"


# --- URLs and bodies --------------------------------------------------------------------------


def test_parse_url() -> None:
    t = parse_url("https://Hooks.Example.com/p?q=1", allow_http=False)
    assert (t.scheme, t.host, t.port, t.path, t.authority) == (
        "https",
        "hooks.example.com",
        443,
        "/p?q=1",
        "hooks.example.com",
    )
    t = parse_url("http://[::1]:8080", allow_http=True)
    assert (t.host, t.port, t.path, t.authority) == ("::1", 8080, "/", "[::1]:8080")


@pytest.mark.parametrize(
    ("url", "allow_http", "word"),
    [
        ("http://example.com/", False, "https://"),
        ("ftp://example.com/", True, "must start"),
        ("https://u:p@example.com/", False, "user"),
        ("https://example.com/#x", False, "fragment"),
        ("https://example.com:0/", False, "port"),
        ("https://example.com:99999/", False, "port"),
        ("https://exa mple.com/", False, "white space"),
        ("https:///nohost", False, "host"),
        ("https://bad_host!/", False, "host"),
        ("https://example.com/" + "a" * 2100, False, "2048"),
        (42, False, "string"),
    ],
)
def test_parse_url_refuses(url: object, allow_http: bool, word: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_url(url, allow_http=allow_http)
    assert word in e.value.message


def test_request_body() -> None:
    ok = {"url": "https://example.com/", "events": ["job_complete", "job_start"], "secret": SECRET}
    assert validate_webhook_request(ok, allow_http=False).events == ("job_complete", "job_start")
    for bad, word in (
        ({**ok, "events": []}, "events"),
        ({**ok, "events": ["job_complete", "job_complete"]}, "twice"),
        ({**ok, "secret": "x" * 15}, "secret"),
        ({**ok, "secret": "x" * 513}, "secret"),
        ({**ok, "more": 1}, "invalid key"),
    ):
        with pytest.raises(ValidationError) as e:
            validate_webhook_request(bad, allow_http=False)
        assert word in e.value.message


# --- where deliveries may go ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("93.184.216.34", False),
        ("10.0.0.5", False),  # private addresses are the operator's to forbid with allow
        ("2606:2800::1", False),
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped loopback
        ("169.254.169.254", True),  # cloud metadata
        ("fe80::1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("240.0.0.1", True),
    ],
)
def test_default_policy(address: str, refused: bool) -> None:
    why = AddressPolicy().refusal("h.example.com", 443, address, local=False)
    assert (why is not None) == refused, why


def test_allow_list_and_own_listeners() -> None:
    p = AddressPolicy.from_config(["127.0.0.1", "10.1.0.0/16", "*.corp.example"], (8443, 10003))
    assert p.refusal("x", 9000, "127.0.0.1", local=True) is None
    assert p.refusal("x", 9000, "10.1.2.3", local=False) is None
    assert p.refusal("a.corp.example", 443, "203.0.113.9", local=False) is None
    assert "webhooks.allow" in (p.refusal("corp.example", 443, "203.0.113.9", local=False) or "")
    assert "webhooks.allow" in (p.refusal("x", 443, "93.184.216.34", local=False) or "")
    for port in (8443, 10003):
        why = p.refusal("x", port, "127.0.0.1", local=True) or ""
        assert "own listeners" in why
        assert "own listeners" in (p.refusal("x", port, "192.0.2.7", local=True) or "")
    # another host on the same port is not the appliance
    assert p.refusal("x", 8443, "10.1.2.3", local=False) is None


# --- payload, signature, retries ---------------------------------------------------------------


def test_signature_is_the_hmac_of_the_body() -> None:
    body = b'{"a":1}'
    mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert signature(SECRET, body) == f"sha256={mac}"


def test_payload_cut_to_its_limit() -> None:
    names = [f"node-{i:05d}" for i in range(2000)]
    doc = {"event": "job_complete", "job": {"id": "j", "failed_nodes": names}}
    body = encode_payload(doc, 4096)
    assert len(body) <= 4096
    job = json.loads(body)["job"]
    assert job["failed_nodes_truncated"] is True
    assert job["failed_nodes"] == names[: len(job["failed_nodes"])] and job["failed_nodes"]
    small = encode_payload({"event": "e", "job": {"failed_nodes": ["a"]}}, 4096)
    assert json.loads(small) == {"event": "e", "job": {"failed_nodes": ["a"]}}


def test_retry_schedule_backs_off_and_gives_up() -> None:
    kw: dict[str, Any] = {"initial": 10.0, "maximum": 3600.0, "give_up_after": 86400.0}
    assert [next_attempt(n, 0.0, 0.0, **kw) for n in (1, 2, 3, 4)] == [10.0, 20.0, 40.0, 80.0]
    assert next_attempt(20, 0.0, 1000.0, **kw) == 4600.0
    assert next_attempt(30, 0.0, 86000.0, **kw) is None


# --- the durable queue ------------------------------------------------------------------------


class Jobs:
    """What the webhooks model asks of the jobs model: a job's org and whether it closed."""

    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}

    def apply(self, r: dict[str, Any]) -> None:
        if r["t"] == "job.create":
            self.jobs[r["id"]] = SimpleNamespace(id=r["id"], org=r["org"], closed=False)
        elif r["t"] == "job.step" and r.get("close"):
            self.jobs[r["id"]].closed = True


def replay(records: list[dict[str, Any]], **kw: Any) -> WebhooksModel:
    jobs = Jobs()
    model = WebhooksModel(jobs, **kw)  # type: ignore[arg-type]
    for r in records:
        if r["t"].startswith("job."):
            jobs.apply(r)
        model.apply(r)
    return model


def hook(i: str, org: str = "o1", events: tuple[str, ...] = ("job_complete",)) -> dict[str, Any]:
    return {
        "t": "webhook.create",
        "id": i,
        "org": org,
        "url": "https://h.example.com/",
        "events": list(events),
        "secret": SECRET,
        "at": 1.0,
        "by": "alice",
    }


def attempt(did: str, n: int, state: str, next_at: float | None = None) -> dict[str, Any]:
    return attempt_record(
        did, at=10.0 + n, n=n, status=500, error=None, ms=1.0, state=state, next_at=next_at
    )


def test_a_job_end_queues_one_delivery_per_webhook_and_replays_the_same() -> None:
    records = [
        hook("w1"),
        hook("w2", events=("job_start", "job_complete")),
        hook("w3", org="o2"),
        {"t": "job.create", "id": "j1", "org": "o1", "at": 5.0},
        {"t": "job.step", "id": "j1", "at": 6.0},
        {"t": "job.step", "id": "j1", "at": 7.0, "close": True},
        {"t": "job.step", "id": "j1", "at": 8.0, "close": True},  # a late step: no second one
    ]
    m = replay(records)
    queued = {(d.webhook, d.event, d.enqueued_at) for d in m.pending.values()}
    assert queued == {
        ("w1", "job_complete", 7.0),
        ("w2", "job_start", 5.0),
        ("w2", "job_complete", 7.0),
    }
    assert set(m.pending) == {
        delivery_id("w1", "j1", "job_complete"),
        delivery_id("w2", "j1", "job_start"),
        delivery_id("w2", "j1", "job_complete"),
    }
    did = delivery_id("w1", "j1", "job_complete")
    more = [attempt(did, 1, PENDING, 30.0), attempt(did, 2, DELIVERED)]
    m = replay(records + more)
    assert did not in m.pending
    d = m.webhooks["w1"].deliveries[did]
    assert (d.state, d.attempts, [a["n"] for a in d.history]) == (DELIVERED, 2, [1, 2])
    # a snapshot, then the log's tail, gives the same queue
    snap = replay(records[:5]).snapshot()
    jobs = Jobs()
    for r in records[:5]:
        if r["t"].startswith("job."):
            jobs.apply(r)
    again = WebhooksModel(jobs)  # type: ignore[arg-type]
    again.load(json.loads(json.dumps(snap)))
    for r in records[5:] + more:
        if r["t"].startswith("job."):
            jobs.apply(r)
        again.apply(r)
    assert set(again.pending) == set(m.pending)
    assert again.webhooks["w1"].deliveries[did].state == DELIVERED


def test_bounds_and_deletion() -> None:
    records = [hook("w1")]
    for i in range(4):
        records += [
            {"t": "job.create", "id": f"j{i}", "org": "o1", "at": 5.0},
            {"t": "job.step", "id": f"j{i}", "at": 6.0, "close": True},
        ]
    m = replay(records, max_pending=3, deliveries_kept=1)
    assert (len(m.pending), m.dropped, m.webhooks["w1"].dropped) == (3, 1, 1)
    done = [attempt(d, 1, FAILED) for d in list(m.pending)[:2]]
    m = replay(records + done, max_pending=3, deliveries_kept=1)
    assert len(m.webhooks["w1"].deliveries) == 2  # one pending, one finished kept
    assert m.webhooks["w1"].pending == 1
    m = replay([*records, {"t": "webhook.delete", "id": "w1"}], max_pending=3)
    assert m.pending == {} and m.webhooks == {}


# --- resolution at each attempt (DNS rebinding) ---------------------------------------------


class Resolver(trio.abc.HostnameResolver):
    """Answers ``rebind.example`` with the next list of ``answers`` at each lookup."""

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers

    async def getaddrinfo(self, host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        assert host in ("rebind.example", b"rebind.example")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in self.answers.pop(0)
        ]

    async def getnameinfo(self, *args: Any) -> Any:
        raise AssertionError("the engine never asks for a name")


async def test_every_address_is_checked_at_every_attempt() -> None:
    async with open_store(None) as store:
        engine = WebhookEngine(
            new_database(store), WebhooksConfig(), own_ports=(8443,), is_local=lambda a: False
        )
        target = parse_url("https://rebind.example/hook", allow_http=False)
        previous = trio.socket.set_custom_hostname_resolver(
            Resolver(
                [["93.184.216.34"], ["93.184.216.34", "127.0.0.1"], ["::ffff:169.254.169.254"]]
            )
        )
        try:
            assert await engine._address(target) == ("93.184.216.34", None)
            address, why = await engine._address(target)
            assert address is None and why == (
                "refused: 127.0.0.1 is a loopback address (not allowed by default)"
            )
            address, why = await engine._address(target)
            assert address is None and "link-local" in (why or "")
        finally:
            trio.socket.set_custom_hostname_resolver(previous)
