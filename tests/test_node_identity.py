"""A node's session is bound to the identity it authenticated with (issue 13 #1): its
organization, its client and the client's key. When any of them goes (the organization or
the client deleted, the client re-created, its key replaced), the session is closed with 4003
at once, and no job reaches it: a real agent reproduces the attack run's scenario; raw signed
clients cover each kind of change and the changes made while a node is still saying hello."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from test_node_e2e import (
    AGENT,
    LIMIT,
    close_code,
    create_client,
    heartbeat_frame,
    hello_frame,
    log_messages,
    node_state,
    raw_node,
    spawn,
    welcomed,
    write_key,
)

from pushy_appliance import chef_auth
from pushy_appliance.model import client_record

from helpers import Signed, admin_client, running_server, test_config

ORGD = "/organizations/orgd"


async def _make_org(pivotal: Signed, org: str) -> None:
    r = await pivotal.post("/organizations", {"name": org})
    assert r.status_code == 201, r.text


async def _make_client(pivotal: Signed, org: str, name: str) -> str:
    r = await pivotal.post(f"/organizations/{org}/clients", {"name": name, "create_key": True})
    assert r.status_code == 201, r.text
    return str(r.json()["chef_key"]["private_key"])


async def test_a_session_ends_with_its_org_and_a_job_of_the_new_org_never_reaches_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack run: org ``orgd`` and client ``noded`` connected; the superuser deletes
    ``orgd``, re-creates it and ``noded`` with a new key, and starts a job (with an env
    secret) for ``noded`` in the new org. The job must not reach the old session."""
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    async with (
        running_server(test_config(data)) as info,
        admin_client(info, "pivotal") as pivotal,
    ):
        with trio.fail_after(LIMIT):
            await _make_org(pivotal, "orgd")
            key = write_key(tmp_path / "noded.pem", await _make_client(pivotal, "orgd", "noded"))
            argv = [
                *AGENT,
                "--server",
                f"{info.url}{ORGD}",
                "--node",
                "noded",
                "--key",
                str(key),
                "--ca-cert",
                str(data / "tls" / "ca.pem"),
                "--state-dir",
                str(tmp_path / "state"),
                "--log-level",
                "debug",
            ]
            async with spawn("agent", argv) as agent:
                await agent.wait_for_line("connected (server incarnation")
                old = info.services.nodes.get("orgd", "noded")
                assert old is not None and old.close_code is None

                r = await pivotal.delete(ORGD)
                assert r.status_code == 200, r.text
                # closed with the org, at once (well within the heartbeat timeout)
                assert old.close_code == 4003
                assert old.close_reason == "organization deleted"
                await agent.wait_for_line("closed by the server: 4003")

                await _make_org(pivotal, "orgd")
                await _make_client(pivotal, "orgd", "noded")
                r = await pivotal.post(
                    f"{ORGD}/pushy/jobs",
                    {"command": "chef-client", "nodes": ["noded"], "env": {"SECRET": "s3cr3t"}},
                )
                assert r.status_code == 201, r.text
                job_id = r.json()["id"]
                while True:
                    doc = (await pivotal.get(f"{ORGD}/pushy/jobs/{job_id}")).json()
                    if doc["status"] == "quorum_failed":
                        break
                    await trio.sleep(0.05)
                assert doc["nodes"] == {"unavailable": ["noded"]}
                # the agent holds the old key: refused, it backs off
                await agent.wait_for_line("refused")
            assert not any(job_id in line for line in agent.lines)
            assert not any("s3cr3t" in line for line in agent.lines)
            assert info.services.nodes.get("orgd", "noded") is None
            assert any(
                "node orgd/noded: organization deleted, closing its session" in m
                for m in log_messages(caplog)
            )


async def test_a_deleted_then_re_created_client_does_not_keep_its_old_session(
    tmp_path: Path,
) -> None:
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            pem = await create_client(admin, "web1")
            other_pem = await create_client(admin, "web2")
            assert pem is not None and other_pem is not None
            async with (
                raw_node(info, "web1", chef_auth.load_private_key(pem)) as ws,
                raw_node(info, "web2", chef_auth.load_private_key(other_pem)) as other,
            ):
                await welcomed(ws)
                await welcomed(other)
                r = await admin.delete("/organizations/default/clients/web1")
                assert r.status_code == 200, r.text
                await create_client(admin, "web1")  # a new key
                with trio.fail_after(1.0):
                    assert await close_code(ws) == 4003
                # the other node of the org is untouched
                await other.send_message(heartbeat_frame(2))
                assert (await node_state(admin, "web2"))["status"] == "online"
                assert (await node_state(admin, "web1"))["status"] == "offline"


async def test_a_replaced_key_closes_the_session_it_signed(tmp_path: Path) -> None:
    """No route replaces a client's key yet; the record a future one would commit
    (``client.put`` of the same client with another key) closes the session at once, and the
    same record keeping the key does not."""
    async with running_server(test_config(tmp_path)) as info, admin_client(info) as admin:
        with trio.fail_after(LIMIT):
            pem = await create_client(admin, "web1")
            assert pem is not None
            key = chef_auth.load_private_key(pem)
            db = info.services.db
            async with raw_node(info, "web1", key) as ws:
                await welcomed(ws)
                session = info.services.nodes.get("default", "web1")
                assert session is not None
                same = chef_auth.public_key_pem(key.public_key())
                await db.commit(client_record("default", "web1", same, admin=True))
                await ws.send_message(heartbeat_frame(2))
                assert session.close_code is None
                new = chef_auth.public_key_pem(chef_auth.generate_private_key().public_key())
                await db.commit(client_record("default", "web1", new))
                assert (session.close_code, session.close_reason) == (4003, "client key replaced")
                assert await close_code(ws) == 4003


@pytest.mark.parametrize("change", ["client deleted", "organization deleted", "key replaced"])
async def test_an_identity_gone_while_the_node_says_hello_opens_no_session(
    tmp_path: Path, change: str
) -> None:
    """The upgrade is authenticated; the change lands before the node's ``hello``: the
    session would be bound to an identity that is gone, so it is never opened."""
    async with (
        running_server(test_config(tmp_path)) as info,
        admin_client(info, "pivotal") as pivotal,
    ):
        with trio.fail_after(LIMIT):
            await _make_org(pivotal, "orgd")
            key = chef_auth.load_private_key(await _make_client(pivotal, "orgd", "noded"))
            async with raw_node(info, "noded", key, org="orgd") as ws:
                if change == "client deleted":
                    r = await pivotal.delete(f"{ORGD}/clients/noded")
                    assert r.status_code == 200, r.text
                elif change == "organization deleted":
                    r = await pivotal.delete(ORGD)
                    assert r.status_code == 200, r.text
                    await _make_org(pivotal, "orgd")
                    await _make_client(pivotal, "orgd", "noded")
                else:
                    other = chef_auth.generate_private_key().public_key()
                    pem = chef_auth.public_key_pem(other)
                    await info.services.db.commit(client_record("orgd", "noded", pem))
                await ws.send_message(hello_frame())
                assert await close_code(ws) == 4003
            assert info.services.nodes.get("orgd", "noded") is None
            assert "noded" not in info.services.nodes.known_nodes("orgd")
