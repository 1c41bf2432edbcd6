"""The dashboard in a real browser (Debian's Chromium under Playwright), against a real
appliance without agents: signing in by link (used and expired links refused), signing out,
another org's session, the jobs list's filters and live updates (and a lost feed resumed with
``Last-Event-ID``), the start form's errors beside their fields, and a 5,000-node job page.
Jobs here name nodes that are not clients, so they end ``quorum_failed`` at once. The pages
with agents running jobs are in ``test_ui_jobs.py``.

One appliance (its own thread, on a clock the tests can move) and one browser for the module;
each test opens fresh browser contexts, so cookies never leak between them. Screenshots of
every page go to a folder under the test run (the ``screenshots`` fixture prints where).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from playwright.sync_api import Browser, Request, expect

from pushy_appliance.appliance import ServerInfo, serve

from helpers import test_config
from uiharness import SyncSigned, Tab, TrioThread, chromium

BASE = "/organizations/default/pushy"


class Appliance:
    def __init__(self, thread: TrioThread, info: ServerInfo, clock: trio.testing.MockClock):
        self.thread = thread
        self.info = info
        self.clock = clock
        self.url = info.url
        keys = info.data_dir / "keys"
        self.admin = SyncSigned.from_file(info.url, "admin", keys / "admin.pem")
        self.pivotal = SyncSigned.from_file(info.url, "pivotal", keys / "pivotal.pem")

    def job(self, client: SyncSigned, command: str, nodes: list[str], org: str = "default") -> str:
        """A job on nodes that are no clients: it ends ``quorum_failed`` at once."""
        made = client.ok(
            "POST", f"/organizations/{org}/pushy/jobs", {"command": command, "nodes": nodes}
        )
        return str(made["id"])

    def jump(self, seconds: float) -> None:
        """Move the appliance's clock once it is idle (see ``test_ui_http``)."""
        self.thread.run(trio.testing.wait_all_tasks_blocked)
        self.thread.run_sync(self.clock.jump, seconds)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    config = test_config(tmp_path_factory.mktemp("pages") / "data", insecure_http=True)
    clock = trio.testing.MockClock(rate=1.0)
    thread = TrioThread(functools.partial(serve, config), clock=clock)
    info = thread.start()
    appliance = Appliance(thread, info, clock)
    try:
        yield appliance
    finally:
        appliance.admin.close()
        appliance.pivotal.close()
        thread.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("screenshots-pages")
    print(f"screenshots in {path}")
    return path


@pytest.fixture
def tab(browser: Browser, screenshots: Path) -> Iterator[Tab]:
    t = Tab(browser, screenshots)
    yield t
    t.close()


def test_a_login_link_opens_the_dashboard_once(
    app: Appliance, browser: Browser, tab: Tab, screenshots: Path
) -> None:
    link = app.admin.login_link()
    page = tab.login(link)
    assert page.url == f"{app.url}/ui/"
    expect(page.locator("#who")).to_have_text("admin (user) · default")
    expect(page.locator("#nav-start")).to_be_visible()
    expect(page.locator("#fleet-table")).to_have_text("No node has connected yet.")
    for name in ("online", "offline", "busy", "total"):
        expect(page.locator(f"#fleet-counts [data-count={name}] .n")).to_have_text("0")
    (cookie,) = tab.context.cookies()
    assert {k: cookie[k] for k in ("name", "path", "httpOnly", "secure", "sameSite")} == {
        "name": "pushy_session",
        "path": "/",
        "httpOnly": True,
        "secure": True,
        "sameSite": "Strict",
    }
    assert cookie["expires"] == -1  # a browser-session cookie; the server ends it when idle
    # the page cannot read its own session cookie
    assert page.evaluate("document.cookie") == ""
    tab.shot("fleet-empty")

    again = Tab(browser, screenshots)
    response = again.page.goto(link)
    assert response is not None and response.status == 401
    expect(again.page.locator("h1")).to_have_text("This login link cannot be used")
    expect(again.page.locator("main")).to_contain_text("unknown, used or expired")
    assert again.context.cookies() == []
    again.shot("link-refused")
    again.close(expect_errors=("status of 401",))


def test_an_expired_link_is_refused(app: Appliance, browser: Browser, screenshots: Path) -> None:
    link = app.admin.login_link()
    app.jump(61.0)
    t = Tab(browser, screenshots)
    response = t.page.goto(link)
    assert response is not None and response.status == 401
    expect(t.page.locator("h1")).to_have_text("This login link cannot be used")
    assert t.context.cookies() == []
    t.close(expect_errors=("status of 401",))


def test_sign_out_ends_the_session(app: Appliance, tab: Tab) -> None:
    page = tab.login(app.admin.login_link())
    (cookie,) = tab.context.cookies()
    page.click("#logout")
    expect(page.locator(".signed-out h1")).to_have_text("Not signed in")
    expect(page.locator("#nav")).to_be_hidden()
    assert tab.context.cookies() == []
    tab.shot("signed-out")
    # the server ended the session: its cookie, put back, is refused
    tab.context.add_cookies([cookie])  # type: ignore[list-item]
    status = page.evaluate(f"fetch('{BASE}/jobs').then(r => r.status)")
    assert status == 401
    page.reload()
    expect(page.locator(".signed-out h1")).to_have_text("Not signed in")
    tab.errors.clear()  # the 401s above are the point


def test_another_orgs_session_sees_nothing_of_this_org(app: Appliance, tab: Tab) -> None:
    job_id = app.job(app.admin, "hostname", ["web-1"])
    app.pivotal.ok("POST", "/organizations", {"name": "other", "full_name": "Other"})
    olga = app.pivotal.new_user("olga", "other", admin=True)
    try:
        page = tab.login(olga.login_link("other"))
        expect(page.locator("#who")).to_have_text("olga (user) · other")
        page.goto(f"{app.url}/ui/#/jobs")
        expect(page.locator("#jobs-table")).to_have_text("No job matches.")
        page.goto(f"{app.url}/ui/#/jobs/{job_id}")
        expect(page.locator("h1")).to_have_text("Job not found")
        refused = page.evaluate(
            f"fetch('{BASE}/jobs/{job_id}').then(async r => [r.status, await r.json()])"
        )
        assert refused == [403, {"error": ["this session is for organization 'other'"]}]
        refused = page.evaluate(f"fetch('{BASE}/jobs').then(r => r.status)")
        assert refused == 403
        tab.errors.clear()  # the 403 and 404 above are the point
    finally:
        olga.close()


def test_jobs_filters_live_rows_and_a_lost_feed_resumed(app: Appliance, tab: Tab) -> None:
    mine = app.job(app.admin, "echo admin-job", ["web-1"])
    theirs = app.job(app.pivotal, "echo pivotal-job", ["web-2"])
    page = tab.login(app.admin.login_link())
    feed_requests: list[Request] = []
    page.on(
        "request",
        lambda r: feed_requests.append(r) if r.url.endswith(f"{BASE}/job_status_feed") else None,
    )
    page.goto(f"{app.url}/ui/#/jobs")
    rows = page.locator("#jobs-table tbody tr")
    expect(rows.first).to_have_attribute("data-job", theirs)  # newest first
    assert rows.nth(1).get_attribute("data-job") == mine
    expect(rows.first.locator("td").nth(3)).to_have_text("pivotal")
    expect(rows.first.locator(".badge")).to_have_text("quorum failed")
    tab.shot("jobs")

    page.fill("#jobs-requester", "admin")
    page.click("#jobs-filters button[type=submit]")
    expect(page.locator("#jobs-table tbody tr[data-job]")).not_to_have_count(0)
    assert set(
        page.locator("#jobs-table tbody tr").evaluate_all(
            "rs => rs.map(r => r.cells[3].textContent)"
        )
    ) == {"admin"}
    assert page.url.endswith("#/jobs?requester=admin")
    page.select_option("#jobs-status", "complete")
    expect(page.locator("#jobs-table")).to_have_text("No job matches.")
    page.select_option("#jobs-status", "")
    page.fill("#jobs-requester", "")
    page.click("#jobs-filters button[type=submit]")
    expect(page.locator(f"#jobs-table tr[data-job='{mine}']")).to_be_visible()

    # a job started elsewhere shows up without a reload
    page.evaluate("window.__notReloaded = true")
    expect(page.locator("#feed-status")).to_have_attribute("data-state", "live")
    live = app.job(app.admin, "echo live", ["web-3"])
    expect(rows.first).to_have_attribute("data-job", live)

    # the server ends the org feed (as a restart of a proxy would): the page says so, the
    # browser comes back with Last-Event-ID, and later jobs still show up
    app.thread.run_sync(app.info.services.hub.close_topic, "org:default")
    expect(page.locator("#feed-status")).to_have_attribute("data-state", "lost")
    expect(page.locator("#feed-status")).to_contain_text(
        "Org feed lost, reconnecting (resuming after org-"
    )
    expect(page.locator("#feed-status")).to_contain_text("Org feed live again (resumed after org-")
    resumed_from = feed_requests[-1].all_headers().get("last-event-id")
    assert resumed_from is not None and re.fullmatch(r"org-[0-9]+", resumed_from)
    assert "last-event-id" not in feed_requests[0].all_headers()
    after = app.job(app.admin, "echo after", ["web-4"])
    expect(rows.first).to_have_attribute("data-job", after)
    assert page.evaluate("window.__notReloaded") is True


def test_the_start_form_shows_the_apis_errors_beside_their_fields(app: Appliance, tab: Tab) -> None:
    # two nodes the inventory knows (seen once, offline now): the form's box is a search
    for name in ("web-1", "web-2"):
        app.thread.run(
            app.info.services.nodes.record_status, "default", name, "offline", {"tags": ["web"]}
        )
    page = tab.login(app.admin.login_link())
    page.goto(f"{app.url}/ui/#/start")
    page.fill("#f-targets", "tags:web")
    expect(page.locator("#f-preview")).to_have_text("2 nodes, 2 offline or busy")
    page.click("#f-submit")
    expect(page.locator("#err-command")).to_have_text("invalid command supplied")
    page.fill("#f-command", "uptime")
    page.fill("#f-quorum", "often")
    page.click("#f-submit")
    expect(page.locator("#err-quorum")).to_have_text(
        "invalid type supplied for quorum (expected a number)"
    )
    expect(page.locator("#err-command")).to_have_text("")
    page.fill("#f-quorum", "3")
    page.click("#f-submit")
    expect(page.locator("#err-quorum")).to_have_text("invalid quorum (must be 0 .. 2)")
    page.fill("#f-quorum", "")
    page.fill("#f-env", "NOEQUALS")
    page.click("#f-submit")
    expect(page.locator("#err-env")).to_have_text(
        "invalid environment line 'NOEQUALS' (expected NAME=value)"
    )
    page.fill("#f-env", "A=1")
    page.fill("#f-targets", "")
    page.click("#f-submit")
    expect(page.locator("#err-targets")).to_have_text(
        "invalid search query: empty query at position 0"
    )
    page.fill("#f-targets", "tags:db")
    page.click("#f-submit")
    expect(page.locator("#err-targets")).to_have_text("no nodes match the search")
    tab.shot("start-errors")
    page.fill("#f-targets", "tags:web")
    page.click("#f-submit")
    expect(page.locator("#job-status")).to_have_attribute("data-status", "quorum_failed")
    assert re.fullmatch(rf"{re.escape(app.url)}/ui/#/jobs/[0-9a-f]{{32}}", page.url)
    expect(page.locator("#job-command")).to_have_text("uptime")
    tab.errors.clear()  # the 400 answers above are the point


def test_a_5000_node_job_page_shows_counts_and_a_paged_grid(app: Appliance, tab: Tab) -> None:
    names = [f"n{i:04d}" for i in range(5000)]
    job_id = app.job(app.admin, "true", names)
    page = tab.login(app.admin.login_link())
    start = page.evaluate("performance.now()")
    page.goto(f"{app.url}/ui/#/jobs/{job_id}")
    expect(page.locator("#job-status")).to_have_attribute("data-status", "quorum_failed")
    expect(page.locator("#job-vote [data-count=unavailable] .n")).to_have_text("5,000")
    group = page.locator("#job-grid .group[data-bucket=unavailable]")
    expect(group.locator(".group-count")).to_have_text("5,000")
    expect(group.locator(".chip")).to_have_count(200)
    expect(group.locator("button.more")).to_have_text("Show more (4,800 hidden)")
    rendered: Any = page.evaluate("Number(document.getElementById('view').dataset.rendered)")
    print(f"5,000-node job page rendered {rendered - start:.0f} ms after navigation")
    group.locator("button.more").click()
    expect(group.locator(".chip")).to_have_count(1200)
    tab.shot("job-5000-nodes", full_page=False)
