"""Issue 16 end to end (``docs/OPERATIONS.md``): re-run on failed nodes, the audit log and
signed webhooks, with real ``pushy agent`` subprocesses, the real CLI, a webhook receiver on
127.0.0.1 (allowed by the test's config) and restarts of the appliance on the same data
directory."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from test_cli_jobs import Cli, knife_profile, show
from test_jobs_e2e import JOBS, LIMIT, ORG, cluster, job_doc, output, start_job, wait_job
from test_node_e2e import create_client

from pushy_appliance import chef_auth, tls
from pushy_appliance.appliance import compact_store

from helpers import Signed, admin_client, running_server, test_config

SECRET = "s3cret-s3cret-s3cret"
HOOK_FLAGS: dict[str, Any] = {
    "webhooks.allow": ["127.0.0.1"],
    "webhooks.allow_http_orgs": ["default"],
    "webhooks.per_receiver": 1,
}


# --- a webhook receiver -----------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """An HTTP/1.1 receiver on 127.0.0.1: answers each request with the next status of
    ``script`` (200 once it is empty) and keeps what it got."""

    port: int = 0
    script: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)

    async def handle(self, stream: trio.abc.Stream) -> None:
        with suppress(trio.BrokenResourceError):  # a client that refused our TLS handshake
            await self._handle(stream)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                return
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        while len(body) < int(headers.get("content-length", "0")):
            chunk = await stream.receive_some()
            if not chunk:
                return
            body += chunk
        self.got.append(Received(lines[0].split(" ")[1], headers, body))
        status = self.script.pop(0) if self.script else 200
        await stream.send_all(
            f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await stream.aclose()

    async def wait_count(self, n: int) -> list[Received]:
        """Poll until ``n`` requests have arrived."""
        while True:
            if len(self.got) >= n:
                return self.got
            await trio.sleep(0.02)


@asynccontextmanager
async def receiver(script: list[int] | None = None) -> AsyncIterator[Receiver]:
    r = Receiver(script=list(script or []))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, r.handle, 0, host="127.0.0.1"))
        r.port = listeners[0].socket.getsockname()[1]
        yield r
        nursery.cancel_scope.cancel()


def verify(secret: str, got: Received) -> None:
    """What a receiver does: the signature is the HMAC of the exact body."""
    mac = hmac.new(secret.encode(), got.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(got.headers["x-pushy-signature"], f"sha256={mac}")


async def add_hook(admin: Signed, url: str, events: list[str] | None = None) -> str:
    body = {"url": url, "events": events or ["job_complete"], "secret": SECRET}
    r = await admin.post(f"{ORG}/pushy/webhooks", body)
    assert r.status_code == 201, r.text
    assert SECRET not in r.text
    return str(r.json()["id"])


async def deliveries(admin: Signed, hook: str) -> list[dict[str, Any]]:
    r = await admin.get(f"{ORG}/pushy/webhooks/{hook}/deliveries")
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()
    return found


async def wait_delivery(admin: Signed, hook: str, **want: Any) -> dict[str, Any]:
    """Poll the newest delivery of ``hook`` until its fields are as wanted."""
    while True:
        found = await deliveries(admin, hook)
        if found and all(found[0].get(k) == v for k, v in want.items()):
            return found[0]
        await trio.sleep(0.05)


async def audit(admin: Signed, **params: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    r = await admin.get(f"{ORG}/pushy/audit" + (f"?{query}" if query else ""))
    assert r.status_code == 200, r.text
    entries: list[dict[str, Any]] = r.json()["entries"]
    return entries


# --- re-run -----------------------------------------------------------------------------------


async def test_rerun_failed_runs_only_the_failed_nodes(tmp_path: Path) -> None:
    nodes = ["n1", "n2", "n3"]
    async with cluster(tmp_path, nodes) as c:
        admin = c.admin
        with trio.fail_after(LIMIT):
            job = await start_job(
                admin,
                {
                    "command": "fail-on n2",
                    "nodes": nodes,
                    "capture_output": True,
                    "env": {"GREETING": "hi"},
                    "run_timeout": 120,
                },
            )
            first = await wait_job(admin, job)
            assert first["nodes"] == {"succeeded": ["n1", "n3"], "failed": ["n2"]}

            r = await admin.post(f"{JOBS}/{job}/rerun", {"nodes": "failed"})
            assert r.status_code == 201, r.text
            again = r.json()["id"]
            assert r.headers["Location"] == r.json()["uri"]
            doc = await wait_job(admin, again)
            assert doc["rerun_of"] == job
            assert doc["command"] == "fail-on n2"
            assert doc["nodes"] == {"failed": ["n2"]}
            assert doc["quorum"] == 1  # 3 of 3 scaled to 1 node
            assert doc["capture_output"] is True
            assert doc["run_timeout"] == 120
            assert await output(admin, again, "n2", "stdout") == b"ran on n2\n"
            assert "rerun_of" not in await job_doc(admin, job)

            # an explicit list, with a quorum given
            r = await admin.post(f"{JOBS}/{job}/rerun", {"nodes": ["n1", "n3"], "quorum": "50%"})
            assert r.status_code == 201, r.text
            doc = await wait_job(admin, r.json()["id"])
            assert doc["nodes"] == {"succeeded": ["n1", "n3"]}
            assert doc["quorum"] == 1

            # names that are not the job's: 400 naming them; nothing to re-run: 409
            r = await admin.post(f"{JOBS}/{job}/rerun", {"nodes": ["n1", "zz9"]})
            assert r.status_code == 400, r.text
            assert f"nodes not in job {job}: zz9" in r.text, r.text
            ok = await start_job(admin, {"command": "say hi", "nodes": ["n1"]})
            assert (await wait_job(admin, ok))["status"] == "complete"
            r = await admin.post(f"{JOBS}/{ok}/rerun", {"nodes": "failed"})
            assert (r.status_code, r.json()) == (409, {"error": "no nodes to re-run"})
            r = await admin.post(f"{JOBS}/{'0' * 32}/rerun", {})
            assert r.status_code == 404

        # the CLI: same progress display and exit code as job start
        home = tmp_path / "home"
        knife_profile(home, c.url, c.data_dir)
        done = await Cli(home).run("job", "rerun", job[:8], "--failed")
        assert done.returncode == 1, show(done)
        text = done.stdout.decode()
        assert "n2: failed" in text, show(done)
        assert "n1" not in text and "n3" not in text, show(done)
        r = await admin.get(JOBS)
        newest = r.json()[0]["id"]
        doc = await job_doc(admin, newest)
        assert (doc["rerun_of"], doc["nodes"]) == (job, {"failed": ["n2"]})
        done = await Cli(home).run("job", "rerun", ok, "--failed")
        assert done.returncode == 3, show(done)
        assert b"no nodes to re-run" in done.stderr, show(done)


# --- the audit log ----------------------------------------------------------------------------


async def test_audit_records_writes_and_refusals_and_survives_a_restart(tmp_path: Path) -> None:
    flags = {"audit.refusals_per_minute": 2, **HOOK_FLAGS}
    async with cluster(tmp_path, ["n1"], **flags) as c:
        admin = c.admin
        with trio.fail_after(LIMIT):
            job = await start_job(
                admin, {"command": "fail-on n1", "nodes": ["n1"], "env": {"TOKEN": "hunter2x"}}
            )
            await wait_job(admin, job)
            r = await admin.post(f"{JOBS}/{job}/rerun", {})
            assert r.status_code == 201, r.text
            rerun = r.json()["id"]
            await wait_job(admin, rerun)
            slow = await start_job(admin, {"command": "slow 30", "nodes": ["n1"]})
            await wait_job(admin, slow, {"running"})
            r = await admin.post(f"{JOBS}/{slow}/abort")
            assert r.status_code == 200, r.text
            hook = await add_hook(admin, "http://127.0.0.1:9/hook?token=private")
            r = await admin.delete(f"{ORG}/pushy/webhooks/{hook}")
            assert r.status_code == 200, r.text

            # refusals: a client that is no admin (403), then a bad signature (401) five
            # times; 2 refusals a minute of one peer are recorded, the rest counted
            pem = await create_client(admin, "viewer")
            assert pem is not None
            viewer = Signed(admin.http, admin.base, "viewer", chef_auth.load_private_key(pem))
            r = await viewer.get(f"{ORG}/pushy/audit")
            assert r.status_code == 403
            stranger = Signed(admin.http, admin.base, "admin", chef_auth.generate_private_key())
            for _ in range(5):
                r = await stranger.get(f"{ORG}/pushy/jobs")
                assert r.status_code == 401
            while True:  # refusals are committed in batches (1 s)
                if len(await audit(admin, action="refused")) == 2:
                    break
                await trio.sleep(0.05)

            before = await audit(admin, limit="1000")
        by_action: dict[str, list[dict[str, Any]]] = {}
        for e in before:
            by_action.setdefault(e["action"], []).append(e)
        assert [e["target"] for e in by_action["job.create"]] == [slow, job]
        assert [e["target"] for e in by_action["job.rerun"]] == [rerun]
        assert by_action["job.rerun"][0]["summary"]["rerun_of"] == job
        assert [e["target"] for e in by_action["job.abort"]] == [slow]
        assert [e["target"] for e in by_action["webhook.create"]] == [hook]
        assert [e["target"] for e in by_action["webhook.delete"]] == [hook]
        assert {e["target"] for e in by_action["client.create"]} == {"n1", "viewer"}
        assert any(e["target"] == "n1" for e in by_action["node.connect"])
        for e in before:
            if e["action"] != "refused" and not e["action"].startswith("node."):
                assert (e["actor"], e["actor_kind"], e["org"]) == ("admin", "user", "default")
                assert e["peer"] == "127.0.0.1" and e["status"] in (200, 201), e
        create = by_action["job.create"][1]
        assert (create["method"], create["route"]) == ("POST", "/organizations/<org>/pushy/jobs")
        assert create["summary"]["env"] == ["TOKEN"]
        assert by_action["webhook.create"][0]["summary"]["url"] == "http://127.0.0.1:9"
        text = json.dumps(before)
        for secret in ("hunter2x", "private", SECRET, "BEGIN"):
            assert secret not in text
        refused = sorted(by_action["refused"], key=lambda e: e["id"])
        assert [e["status"] for e in refused] == [403, 401]
        assert [e["actor"] for e in refused] == ["viewer", "admin"]  # the name claimed
        assert refused[1]["route"] == "/organizations/<org>/pushy/jobs"
        assert all(e["peer"] == "127.0.0.1" for e in refused)
        # newest first, and paged
        ids = [e["id"] for e in before]
        assert ids == sorted(ids, reverse=True)
        page = await audit(admin, limit="2", before=str(ids[0]))
        assert [e["id"] for e in page] == ids[1:3]

    config = test_config(tmp_path / "data", **flags)
    for restart in ("log", "snapshot"):
        if restart == "snapshot":
            assert await compact_store(tmp_path / "data") > 0
        async with running_server(config) as info, admin_client(info) as admin:
            after = await audit(admin, limit="1000")
            kept = {e["id"]: e for e in after}
            for e in before:
                assert kept[e["id"]] == e
            # the superuser's view across organizations
            async with admin_client(info, "pivotal") as root:
                r = await root.get("/pushy/audit?action=job.create")
                assert r.status_code == 200, r.text
                assert [e["target"] for e in r.json()["entries"]] == [slow, job]
                r = await admin.get("/pushy/audit")
                assert r.status_code == 403


# --- webhooks -------------------------------------------------------------------------------


async def test_webhook_signed_delivery_retries_and_refuses_own_listener(tmp_path: Path) -> None:
    flags = {**HOOK_FLAGS, "webhooks.retry_initial": 0.3}
    async with receiver() as rx, cluster(tmp_path, ["n1"], **flags) as c:
        admin = c.admin
        with trio.fail_after(LIMIT):
            hook = await add_hook(admin, f"http://127.0.0.1:{rx.port}/hook?k=1")
            r = await admin.get(f"{ORG}/pushy/webhooks")
            assert [h["id"] for h in r.json()] == [hook]
            assert "secret" not in r.text and SECRET not in r.text
            assert c.info is not None
            api_port = int(c.info.url.rsplit(":", 1)[1])
            own = await add_hook(admin, f"http://127.0.0.1:{api_port}/organizations")

            # one job, one signed delivery
            job = await start_job(admin, {"command": "fail-on n1", "nodes": ["n1"]})
            await wait_job(admin, job)
            [got] = await rx.wait_count(1)
            assert got.path == "/hook?k=1"
            verify(SECRET, got)
            doc = got.doc
            assert doc["event"] == "job_complete" and doc["org"] == "default"
            assert doc["delivery"] == got.headers["x-pushy-delivery"]
            assert got.headers["x-pushy-event"] == "job_complete"
            assert got.headers["x-pushy-attempt"] == "1"
            assert doc["job"]["id"] == job and doc["job"]["command"] == "fail-on n1"
            assert doc["job"]["status"] == "complete" and doc["job"]["requester"] == "admin"
            assert doc["job"]["nodes"] == {"failed": 1}
            assert doc["job"]["failed_nodes"] == ["n1"]
            assert doc["job"]["duration_s"] >= 0
            first = await wait_delivery(admin, hook, state="delivered")
            assert (first["job"], first["attempts"]) == (job, 1)

            # the appliance's own listener is never a receiver
            refused = await wait_delivery(admin, own, attempts=1)
            assert refused["state"] == "pending"
            assert "own listeners" in refused["last_attempts"][0]["error"]

            # a receiver that answers 500 twice gets it on the third try
            rx.script = [500, 500]
            job2 = await start_job(admin, {"command": "say hi", "nodes": ["n1"]})
            await wait_job(admin, job2)
            done = await wait_delivery(admin, hook, job=job2, state="delivered")
            assert done["attempts"] == 3
            assert [a["status"] for a in done["last_attempts"]] == [500, 500, 200]
            got = rx.got[1:]
            assert len(got) == 3
            assert [g.headers["x-pushy-attempt"] for g in got] == ["1", "2", "3"]
            assert {g.headers["x-pushy-delivery"] for g in got} == {done["id"]}
            assert {g.body for g in got} == {got[0].body}
            verify(SECRET, got[2])
            assert got[2].doc["job"]["failed_nodes"] == []
            assert len(rx.got) == 4  # the first job's delivery was sent once


async def test_webhook_restart_between_attempts_neither_loses_nor_repeats(tmp_path: Path) -> None:
    # the retry comes 5 s after the 500: the appliance is stopped well before
    flags = {**HOOK_FLAGS, "webhooks.retry_initial": 5.0}
    async with receiver([500]) as rx:
        async with cluster(tmp_path, ["n1"], **flags) as c:
            admin = c.admin
            with trio.fail_after(LIMIT):
                hook = await add_hook(admin, f"http://127.0.0.1:{rx.port}/hook")
                job = await start_job(admin, {"command": "say hi", "nodes": ["n1"]})
                await wait_job(admin, job)
                pending = await wait_delivery(admin, hook, attempts=1)
                assert pending["state"] == "pending"
                assert [a["status"] for a in pending["last_attempts"]] == [500]
        assert len(rx.got) == 1

        config = test_config(tmp_path / "data", **flags)
        with trio.fail_after(LIMIT):
            async with running_server(config) as info, admin_client(info) as admin:
                done = await wait_delivery(admin, hook, state="delivered")
                assert (done["id"], done["attempts"]) == (pending["id"], 2)
        assert [g.headers["x-pushy-attempt"] for g in rx.got] == ["1", "2"]
        assert {g.headers["x-pushy-delivery"] for g in rx.got} == {pending["id"]}

        # after another restart, from a snapshot this time, the acknowledged delivery is not
        # sent again: a new job's delivery (one at a time to this receiver) is the only
        # request that comes
        assert await compact_store(tmp_path / "data") > 0
        with trio.fail_after(LIMIT):
            async with running_server(config) as info, admin_client(info) as admin:
                job2 = await start_job(admin, {"command": "say hi", "nodes": ["n1"]})
                await wait_job(admin, job2)
                await wait_delivery(admin, hook, job=job2, state="delivered")
                assert [g.doc["job"]["id"] for g in rx.got] == [job, job, job2]
                later = await deliveries(admin, hook)
                assert [(d["job"], d["state"]) for d in later] == [
                    (job2, "delivered"),
                    (job, "delivered"),
                ]


async def test_webhook_routes_refuse_bad_bodies_and_non_admins(tmp_path: Path) -> None:
    config = test_config(tmp_path / "data")
    async with running_server(config) as info, admin_client(info) as admin:
        path = f"{ORG}/pushy/webhooks"
        rows = [
            ({"url": "http://example.com/x", "events": ["job_complete"], "secret": SECRET},
             "https://"),
            ({"url": "https://example.com/x", "events": ["nope"], "secret": SECRET},
             "events"),
            ({"url": "https://example.com/x", "events": ["job_complete"], "secret": "short"},
             "secret"),
            ({"url": "https://u:p@example.com/x", "events": ["job_complete"],
              "secret": SECRET}, "user"),
            ({"url": "https://example.com/x", "events": ["job_complete"], "secret": SECRET,
              "extra": 1}, "invalid key"),
        ]  # fmt: skip
        for body, word in rows:
            r = await admin.post(path, body)
            assert r.status_code == 400, (body, r.text)
            assert word in r.text, (body, r.text)
        hook = await add_hook(admin, "https://example.com/x")
        r = await admin.get(f"{path}/{hook}")
        assert r.status_code == 200 and r.json()["url"] == "https://example.com/x"
        pem = await create_client(admin, "plain")
        assert pem is not None
        plain = Signed(admin.http, admin.base, "plain", chef_auth.load_private_key(pem))
        for method, target in (("GET", path), ("DELETE", f"{path}/{hook}")):
            r = await plain.request(method, target)
            assert r.status_code == 403, r.text
        r = await admin.delete(f"{path}/{hook}")
        assert r.status_code == 200
        r = await admin.delete(f"{path}/{hook}")
        assert r.status_code == 404
        r = await admin.get(f"{path}/{hook}/deliveries")
        assert r.status_code == 404


async def test_cli_webhook_and_audit_commands(tmp_path: Path) -> None:
    config = test_config(tmp_path / "data")
    async with running_server(config) as info, admin_client(info) as admin:
        home = tmp_path / "home"
        knife_profile(home, info.url, info.data_dir)
        cli = Cli(home)
        added = await cli.run("webhook", "add", "https://hooks.example.com/x?t=1", "--json")
        assert added.returncode == 0, show(added)
        doc = json.loads(added.stdout)
        assert doc["events"] == ["job_complete"] and len(doc["secret"]) == 64
        r = await admin.get(f"{ORG}/pushy/webhooks")
        assert [h["id"] for h in r.json()] == [doc["id"]]
        assert doc["secret"] not in r.text
        listed = await cli.run("webhook", "list")
        assert listed.returncode == 0, show(listed)
        assert doc["id"] in listed.stdout.decode()
        assert "https://hooks.example.com/x?t=1" in listed.stdout.decode()
        refused = await cli.run("webhook", "add", "http://hooks.example.com/x")
        assert refused.returncode == 3, show(refused)
        assert b"https://" in refused.stderr
        removed = await cli.run("webhook", "remove", doc["id"][:6])
        assert removed.returncode == 0, show(removed)
        assert f"webhook {doc['id']} removed" in removed.stdout.decode()

        shown = await cli.run("audit", "--since", "1h", "--action", "webhook", "--json")
        assert shown.returncode == 0, show(shown)
        entries = json.loads(shown.stdout)["entries"]
        assert [(e["action"], e["target"]) for e in entries] == [
            ("webhook.delete", doc["id"]),
            ("webhook.create", doc["id"]),
        ]
        assert doc["secret"] not in shown.stdout.decode()
        table = await cli.run("audit", "--actor", "admin", "--limit", "1")
        assert table.returncode == 0, show(table)
        lines = table.stdout.decode().splitlines()
        assert lines[0].split() == ["TIME", "ACTOR", "ACTION", "TARGET", "STATUS", "FROM"]
        assert lines[1].split()[1:] == [
            "admin",
            "webhook.delete",
            f"default/{doc['id']}",
            "200",
            "127.0.0.1",
        ]
        assert b"more entries than --limit 1" in table.stderr
        future = await cli.run("audit", "--since", "2999-01-01T00:00:00Z", "--json")
        assert json.loads(future.stdout) == {"entries": [], "more": False}
        bad = await cli.run("audit", "--since", "yesterday")
        assert bad.returncode == 2, show(bad)


async def test_webhook_over_https_checks_the_receivers_certificate(tmp_path: Path) -> None:
    ca_pem, ca_key = tls.generate_ca("receivers' CA")
    cert, key = tls.issue_server_cert(ca_pem, ca_key, ["localhost"], [])
    for name, pem in (("ca.pem", ca_pem), ("cert.pem", cert), ("key.pem", key)):
        (tmp_path / name).write_bytes(pem)
    context = tls.server_ssl_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    rx = Receiver()
    flags = {
        "webhooks.allow": ["127.0.0.1", "::1"],
        "webhooks.ca_file": str(tmp_path / "ca.pem"),
        "webhooks.retry_initial": 60.0,
    }
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_ssl_over_tcp, rx.handle, 0, context, host="localhost")
        )
        rx.port = listeners[0].transport_listener.socket.getsockname()[1]
        config = test_config(tmp_path / "data", **flags)
        async with running_server(config) as info, admin_client(info) as admin:
            with trio.fail_after(LIMIT):
                good = await add_hook(admin, f"https://localhost:{rx.port}/in")
                # the certificate names localhost, not the address
                bad = await add_hook(admin, f"https://127.0.0.1:{rx.port}/in")
                job = await start_job(admin, {"command": "x", "nodes": ["nowhere"]})
                await wait_job(admin, job)
                done = await wait_delivery(admin, good, state="delivered")
                assert done["attempts"] == 1
                [got] = rx.got
                assert got.headers["host"] == f"localhost:{rx.port}"
                verify(SECRET, got)
                assert got.doc["job"]["nodes"] == {"unavailable": 1}
                failed = await wait_delivery(admin, bad, attempts=1)
                assert failed["state"] == "pending"
                assert "certificate" in failed["last_attempts"][0]["error"].lower()
                assert len(rx.got) == 1
        nursery.cancel_scope.cancel()


async def test_a_receiver_that_never_answers_delays_no_other(tmp_path: Path) -> None:
    hung = trio.Event()

    async def never_answer(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        hung.set()
        await trio.sleep_forever()

    flags = {**HOOK_FLAGS, "webhooks.timeout": 2.0, "webhooks.retry_initial": 60.0}
    async with receiver() as rx, trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, never_answer, 0, host="127.0.0.1"))
        dead_port = listeners[0].socket.getsockname()[1]
        config = test_config(tmp_path / "data", **flags)
        async with running_server(config) as info, admin_client(info) as admin:
            with trio.fail_after(LIMIT):
                dead = await add_hook(admin, f"http://127.0.0.1:{dead_port}/")
                alive = await add_hook(admin, f"http://127.0.0.1:{rx.port}/")
                job = await start_job(admin, {"command": "x", "nodes": ["nowhere"]})
                await wait_job(admin, job)
                await hung.wait()
                # delivered while the other receiver holds its attempt open
                done = await wait_delivery(admin, alive, state="delivered")
                assert done["attempts"] == 1
                assert (await deliveries(admin, dead))[0]["attempts"] == 0
                late = await wait_delivery(admin, dead, attempts=1)
                assert late["state"] == "pending"
                assert late["last_attempts"][0]["error"] == "no answer within 2 s"
                assert late["last_attempts"][0]["ms"] >= 2000
        nursery.cancel_scope.cancel()


async def test_audit_behind_a_trusted_proxy(tmp_path: Path) -> None:
    flags = {"audit.trusted_proxies": ["127.0.0.0/8"], "audit.refusals_per_minute": 1}
    config = test_config(tmp_path / "data", **flags)
    async with running_server(config) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            fwd = {"X-Forwarded-For": "198.51.100.7, 203.0.113.5"}
            r = await admin.post(f"{ORG}/groups", {"groupname": "ops"}, headers=fwd)
            assert r.status_code == 201, r.text
            # refusals are counted per client the proxy names: one each is recorded
            stranger = Signed(admin.http, admin.base, "admin", chef_auth.generate_private_key())
            for client in ("203.0.113.5", "203.0.113.5", "203.0.113.6"):
                r = await stranger.get(f"{ORG}/pushy/jobs", headers={"X-Forwarded-For": client})
                assert r.status_code == 401
            while True:
                refused = await audit(admin, action="refused")
                if len(refused) == 2:
                    break
                await trio.sleep(0.05)
            assert [e["forwarded_for"] for e in refused] == ["203.0.113.6", "203.0.113.5"]
            assert {e["peer"] for e in refused} == {"127.0.0.1"}
            [made] = await audit(admin, action="group.create")
            assert (made["target"], made["peer"]) == ("ops", "127.0.0.1")
            assert made["forwarded_for"] == "198.51.100.7, 203.0.113.5"
    # without the proxy trusted, the header is not recorded
    async with running_server(test_config(tmp_path / "data2")) as info, admin_client(info) as admin:
        r = await admin.post(f"{ORG}/groups", {"groupname": "ops"}, headers=fwd)
        assert r.status_code == 201, r.text
        [made] = await audit(admin, action="group.create")
        assert made["forwarded_for"] is None
        r = await admin.get("/pushy/audit")  # the superuser's only
        assert r.status_code == 403
        async with admin_client(info, "pivotal") as root:  # no org's: the superuser sees it
            with trio.fail_after(LIMIT):
                while True:
                    r = await root.get("/pushy/audit?action=refused")
                    refused = r.json()["entries"]
                    if refused:
                        break
                    await trio.sleep(0.05)
        assert [(e["org"], e["actor"], e["route"], e["status"]) for e in refused] == [
            (None, "admin", "/pushy/audit", 403)
        ]
        # a dashboard login link is a credential handed out: recorded (batched)
        r = await admin.post(f"{ORG}/pushy/ui/links")
        assert r.status_code == 201, r.text
        with trio.fail_after(LIMIT):
            while True:
                links = await audit(admin, action="ui.link")
                if links:
                    break
                await trio.sleep(0.05)
        assert [(e["actor"], e["route"], e["status"]) for e in links] == [
            ("admin", "/organizations/<org>/pushy/ui/links", 201)
        ]
        assert r.json()["url"].rsplit("/", 1)[1] not in json.dumps(links)


async def test_cli_webhook_secret_file_and_deliveries(tmp_path: Path) -> None:
    config = test_config(tmp_path / "data", **HOOK_FLAGS)
    async with receiver([503]) as rx, running_server(config) as info, admin_client(info) as admin:
        home = tmp_path / "home"
        knife_profile(home, info.url, info.data_dir)
        cli = Cli(home)
        (home / "secret").write_text(SECRET + "\n")
        url = f"http://127.0.0.1:{rx.port}/in"
        added = await cli.run(
            "webhook", "add", url, "--secret-file", str(home / "secret"), "--event", "job_start"
        )
        assert added.returncode == 0, show(added)
        assert SECRET not in added.stdout.decode() and "secret" not in added.stdout.decode()
        hook = added.stdout.decode().split()[1].rstrip(":")
        with trio.fail_after(LIMIT):
            job = await start_job(admin, {"command": "x", "nodes": ["nowhere"]})
            [got] = await rx.wait_count(1)
            verify(SECRET, got)  # the secret as read from the file, its newline dropped
            assert got.doc["event"] == "job_start" and got.doc["job"]["id"] == job
            await wait_delivery(admin, hook, attempts=1)
        shown = await cli.run("webhook", "deliveries", hook[:8])
        assert shown.returncode == 0, show(shown)
        lines = shown.stdout.decode().splitlines()
        assert lines[0].split() == ["DELIVERY", "EVENT", "JOB", "STATE", "ATTEMPTS", "LAST"]
        assert lines[1].split()[1:] == ["job_start", job, "pending", "1", "503"]
