"""The dashboard in a real browser with real agents: a job started from the form and watched
live (voting → running → complete, without a reload) to its grouped output; a running job
aborted from its page; a reader who can watch but neither start nor abort; the fleet's counts
following the org feed.

The appliance is ``pushy sandbox``'s :func:`sandbox.run_sandbox` (the server and three
agents in one trio thread), plus one ``pushy agent`` subprocess, ``slow-1``, that the tests
stop (SIGSTOP) to hold a job in its vote and continue (SIGCONT) to let it go on. Commands
that must keep running wait for a file the test creates.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from playwright.sync_api import Browser, expect

from pushy_appliance.sandbox import SandboxInfo, run_sandbox, sandbox_config

from uiharness import TIMEOUT_MS, SyncSigned, Tab, TrioThread, chromium

BASE = "/organizations/default/pushy"
NODES = ["sandbox-1", "sandbox-2", "sandbox-3", "slow-1"]

# Records every job status the page shows, in order, without a reload losing the record.
WATCH_STATUS = """
() => {
  window.__seen = [];
  window.__notReloaded = true;
  new MutationObserver(() => {
    const el = document.getElementById("job-status");
    const s = el && el.dataset.status;
    if (s && window.__seen[window.__seen.length - 1] !== s) window.__seen.push(s);
  }).observe(document.getElementById("view"), { childList: true, subtree: true, attributes: true });
}
"""


class Fleet:
    def __init__(
        self, thread: TrioThread, info: SandboxInfo, work: Path, slow: subprocess.Popen[bytes]
    ):
        self.thread = thread
        self.info = info
        self.url = info.server.url
        self.work = work
        self.slow = slow
        keys = info.data_dir / "keys"
        self.admin = SyncSigned.from_file(self.url, "admin", keys / "admin.pem")
        self.pivotal = SyncSigned.from_file(self.url, "pivotal", keys / "pivotal.pem")

    def job(self, command: str, nodes: list[str]) -> str:
        body = {"command": command, "nodes": nodes, "capture_output": True}
        return str(self.admin.ok("POST", f"{BASE}/jobs", body)["id"])

    def wait_for(self, path: Path) -> str:
        """A command that runs until ``path`` exists, then prints its node's name prefix."""
        return f'while [ ! -e {path} ]; do sleep 0.05; done; echo "${{PUSHY_NODE_NAME%-*}}"'


def start_slow_agent(
    work: Path, info: SandboxInfo, admin: SyncSigned, log: IO[bytes]
) -> subprocess.Popen[bytes]:
    made = admin.ok(
        "POST", "/organizations/default/clients", {"name": "slow-1", "create_key": True}
    )
    key = work / "slow-1.pem"
    key.write_text(made["chef_key"]["private_key"])
    config = work / "slow-1.toml"
    config.write_text(
        f'server_url = "{info.org_url}"\nnode_name = "slow-1"\nclient_key = "{key}"\n'
        f"state_dir = \"{work / 'slow-1-state'}\"\n[[allow]]\npattern = '(?s).+'\nshell = true\n"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "pushy_appliance.cli", "agent", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    config = sandbox_config(listen="127.0.0.1:0", data_dir=str(work / "sandbox"))
    thread = TrioThread(functools.partial(run_sandbox, config, 3))
    info: SandboxInfo = thread.start()
    slow: subprocess.Popen[bytes] | None = None
    log = (work / "slow-1.log").open("wb")
    try:
        admin = SyncSigned.from_file(info.server.url, "admin", info.data_dir / "keys" / "admin.pem")
        slow = start_slow_agent(work, info, admin, log)
        admin.close()
        f = Fleet(thread, info, work, slow)
        link = info.server.services.link
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while not thread.run_sync(link.is_available, "default", "slow-1"):
            assert time.monotonic() < deadline, (work / "slow-1.log").read_text()
            time.sleep(0.05)
        yield f
        f.admin.close()
        f.pivotal.close()
    finally:
        if slow is not None:
            slow.send_signal(signal.SIGCONT)
            slow.terminate()
            slow.wait(30)
        log.close()
        thread.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("screenshots-jobs")
    print(f"screenshots in {path}")
    return path


@pytest.fixture
def tab(browser: Browser, screenshots: Path) -> Iterator[Tab]:
    t = Tab(browser, screenshots)
    yield t
    t.close()


def test_start_from_the_form_and_watch_it_live(fleet: Fleet, tab: Tab) -> None:
    go = fleet.work / "go-1"
    page = tab.login(fleet.admin.login_link())
    page.goto(f"{fleet.url}/ui/#/start")
    page.fill("#f-command", fleet.wait_for(go))
    page.fill("#f-targets", " ".join(NODES))
    expect(page.locator("#f-preview")).to_have_text("4 nodes, 0 offline or busy")
    page.fill("#f-timeout", "120")
    tab.shot("start")
    page.evaluate(WATCH_STATUS)
    os.kill(fleet.slow.pid, signal.SIGSTOP)  # slow-1 will not vote until continued
    try:
        page.click("#f-submit")
        status = page.locator("#job-status")
        expect(status).to_have_attribute("data-status", "voting")
        vote = page.locator("#job-vote")
        expect(vote.locator("[data-count=voted] .label")).to_have_text("voted of 4")
        expect(vote.locator("[data-count=voted] .n")).to_have_text("3")
        expect(vote.locator("[data-count=acked] .n")).to_have_text("3")
        expect(vote.locator("[data-count=quorum] .n")).to_have_text("4")
        expect(page.locator("#job-grid .group[data-bucket=new] .chip")).to_have_text(["slow-1"])
        expect(page.locator("#job-vote h2")).to_contain_text("waiting for votes")
        tab.shot("job-voting")
    finally:
        os.kill(fleet.slow.pid, signal.SIGCONT)
    expect(status).to_have_attribute("data-status", "running")
    expect(page.locator("#job-run [data-count=running] .n")).to_have_text("4")
    expect(page.locator("#job-vote h2")).to_contain_text("quorum reached")
    expect(page.locator("#job-grid .group[data-bucket=running] .chip")).to_have_text(NODES)
    expect(page.locator("#job-actions #job-abort")).to_be_visible()
    tab.shot("job-running")
    go.touch()
    expect(status).to_have_attribute("data-status", "complete")
    expect(page.locator("#job-run [data-count=succeeded] .n")).to_have_text("4")
    expect(page.locator("#job-abort")).to_have_count(0)
    groups = page.locator("#job-output .output-group")
    expect(groups).to_have_count(2)
    expect(groups.nth(0).locator("h3")).to_have_text("3 nodes: sandbox-1 sandbox-2 sandbox-3")
    expect(groups.nth(0).locator("pre.stdout")).to_have_text("sandbox\n")
    expect(groups.nth(1).locator("h3")).to_have_text("1 node: slow-1")
    expect(groups.nth(1).locator("pre.stdout")).to_have_text("slow\n")
    expect(page.locator("#job-head dl")).to_contain_text("Started byadmin")
    page.locator("#job-grid .chip[data-node=slow-1]").click()
    expect(page.locator("#job-node h2")).to_contain_text("slow-1")
    expect(page.locator("#job-node pre.stdout")).to_have_text("slow\n")
    page.locator("#job-grid .chip[data-node=slow-1]").click()
    tab.shot("job")
    assert page.evaluate("window.__seen") == ["voting", "running", "complete"]
    assert page.evaluate("window.__notReloaded") is True


def test_abort_a_running_job_from_its_page(fleet: Fleet, tab: Tab) -> None:
    job_id = fleet.job(fleet.wait_for(fleet.work / "never"), ["sandbox-1"])
    page = tab.login(fleet.admin.login_link())
    page.goto(f"{fleet.url}/ui/#/jobs/{job_id}")
    status = page.locator("#job-status")
    expect(status).to_have_attribute("data-status", "running")
    page.click("#job-abort")
    expect(status).to_have_attribute("data-status", "aborted")
    expect(page.locator("#job-grid .group[data-bucket=aborted] .chip")).to_have_text(["sandbox-1"])
    expect(page.locator("#job-abort")).to_have_count(0)
    tab.shot("job-aborted")
    doc = fleet.admin.ok("GET", f"{BASE}/jobs/{job_id}")
    assert (doc["status"], doc["nodes"]) == ("aborted", {"aborted": ["sandbox-1"]})


def test_a_reader_watches_but_cannot_start_or_abort(fleet: Fleet, tab: Tab) -> None:
    rita = fleet.pivotal.new_user("rita")  # a member, not an admin: reads only
    go = fleet.work / "go-3"
    job_id = fleet.job(fleet.wait_for(go), ["sandbox-2"])
    try:
        page = tab.login(rita.login_link())
        expect(page.locator("#who")).to_have_text("rita (user) · default")
        expect(page.locator("#nav-start")).to_be_hidden()
        counts = page.locator("#fleet-counts")
        expect(counts.locator("[data-count=online] .n")).to_have_text("4")
        expect(counts.locator("[data-count=busy] .n")).to_have_text("1")
        expect(page.locator("#fleet-table tr[data-node=sandbox-2] td").nth(2)).to_have_text("busy")
        tab.shot("fleet")

        page.goto(f"{fleet.url}/ui/#/jobs/{job_id}")
        expect(page.locator("#job-status")).to_have_attribute("data-status", "running")
        expect(page.locator("#job-grid .group[data-bucket=running] .chip")).to_have_text(
            ["sandbox-2"]
        )
        expect(page.locator("#job-abort")).to_have_count(0)
        page.goto(f"{fleet.url}/ui/#/start")
        expect(page.locator("#start-refused")).to_be_visible()
        expect(page.locator("#start-form")).to_have_count(0)
        # and the API refuses the session too, CSRF token and all
        refused = page.evaluate(
            """async ([base, id]) => {
              const s = await (await fetch("/ui/session")).json();
              const h = { "X-Pushy-CSRF": s.csrf, "Content-Type": "application/json" };
              const abort = await fetch(`${base}/jobs/${id}/abort`, { method: "POST", headers: h });
              const start = await fetch(`${base}/jobs`, {
                method: "POST",
                headers: h,
                body: JSON.stringify({ command: "id", nodes: ["sandbox-1"] }),
              });
              return [abort.status, start.status, (await start.json()).error];
            }""",
            [BASE, job_id],
        )
        assert refused == [
            403,
            403,
            ["User or client 'rita' does not have access to that action on this server."],
        ]
        tab.errors.clear()  # the two 403s are the point

        # the fleet follows the org feed: the job's end frees sandbox-2 without a reload
        page.goto(f"{fleet.url}/ui/#/fleet")
        expect(counts.locator("[data-count=busy] .n")).to_have_text("1")
        go.touch()
        expect(counts.locator("[data-count=busy] .n")).to_have_text("0")
        expect(page.locator("#fleet-table tr[data-node=sandbox-2] td").nth(2)).to_have_text("idle")
        # (reloaded because of the feed's job_complete, not by the page's slow refresh)
        expect(page.locator("#fleet-table")).to_have_attribute("data-loaded-by", "feed")
    finally:
        go.touch()
        rita.close()


def test_the_fleet_follows_its_nodes_going_offline_and_online(fleet: Fleet, tab: Tab) -> None:
    """An agent that stops shows as offline within the org feed's latency (its node_status
    event, at most half a second after the change, then the page's reload), with no timer."""
    made = fleet.admin.ok(
        "POST", "/organizations/default/clients", {"name": "brief-1", "create_key": True}
    )
    key = fleet.work / "brief-1.pem"
    key.write_text(made["chef_key"]["private_key"])
    config = fleet.work / "brief-1.toml"
    config.write_text(
        f'server_url = "{fleet.info.org_url}"\nnode_name = "brief-1"\nclient_key = "{key}"\n'
        f'state_dir = "{fleet.work / "brief-1-state"}"\n'
    )
    argv = [sys.executable, "-m", "pushy_appliance.cli", "agent", "--config", str(config)]
    page = tab.login(fleet.admin.login_link())
    counts = page.locator("#fleet-counts")
    row = page.locator("#fleet-table tr[data-node=brief-1] td")
    expect(counts.locator("[data-count=online] .n")).to_have_text("4")
    expect(page.locator("#fleet-table")).to_have_attribute("data-loaded-by", "start")
    with (fleet.work / "brief-1.log").open("wb") as log:
        agent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
    try:
        # it connects while the page is open: online, from the feed
        expect(row.nth(1)).to_have_text("online")
        expect(counts.locator("[data-count=online] .n")).to_have_text("5")
        expect(page.locator("#fleet-table")).to_have_attribute("data-loaded-by", "feed")
        agent.terminate()
        agent.wait(30)
        began = time.monotonic()
        expect(counts.locator("[data-count=offline] .n")).to_have_text("1", timeout=3000)
        expect(counts.locator("[data-count=online] .n")).to_have_text("4")
        expect(row.nth(1)).to_have_text("offline")
        assert time.monotonic() - began < 3.0
        expect(page.locator("#fleet-table")).to_have_attribute("data-loaded-by", "feed")
        tab.shot("fleet-offline")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(30)
