"""The dashboard's "Re-run failed" button (issue 16) in a real browser with real agents: a
finished job with a failed node offers it, the re-run starts on that node only and its page
says which job it re-runs; a job that fully succeeded offers nothing. Same fleet as
``test_ui_jobs.py`` (``pushy sandbox``'s agents, which run any command)."""

from __future__ import annotations

import re

from playwright.sync_api import expect
from test_ui_jobs import BASE, Fleet, browser, fleet, screenshots, tab

from uiharness import Tab

__all__ = ["browser", "fleet", "screenshots", "tab"]  # the fixtures, shared

FAIL_ON_2 = '[ "$PUSHY_NODE_NAME" = sandbox-2 ] && exit 3; echo ok'


def test_rerun_failed_from_the_job_page(fleet: Fleet, tab: Tab) -> None:
    job_id = fleet.job(FAIL_ON_2, ["sandbox-1", "sandbox-2"])
    page = tab.login(fleet.admin.login_link())
    page.goto(f"{fleet.url}/ui/#/jobs/{job_id}")
    expect(page.locator("#job-status")).to_have_attribute("data-status", "complete")
    expect(page.locator("#job-grid .group[data-bucket=failed] .chip")).to_have_text(["sandbox-2"])
    button = page.locator("#job-actions #job-rerun")
    expect(button).to_have_text("Re-run failed (1 node)")
    tab.shot("job-rerun-offered")
    button.click()
    expect(page).to_have_url(re.compile(r"#/jobs/(?!" + job_id + r")[0-9a-f]{32}$"))
    new_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-status")).to_have_attribute("data-status", "complete")
    expect(page.locator("#job-grid .group[data-bucket=failed] .chip")).to_have_text(["sandbox-2"])
    expect(page.locator("#job-grid .chip")).to_have_count(1)
    expect(page.locator("#job-rerun-of")).to_have_text(job_id[:8])
    tab.shot("job-rerun")
    doc = fleet.admin.ok("GET", f"{BASE}/jobs/{new_id}")
    assert (doc["rerun_of"], doc["command"], doc["nodes"]) == (
        job_id,
        FAIL_ON_2,
        {"failed": ["sandbox-2"]},
    )

    ok_id = fleet.job("echo ok", ["sandbox-1"])
    page.goto(f"{fleet.url}/ui/#/jobs/{ok_id}")
    expect(page.locator("#job-status")).to_have_attribute("data-status", "complete")
    expect(page.locator("#job-rerun")).to_have_count(0)
