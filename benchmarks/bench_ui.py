"""The dashboard's job page for a 5,000-node job: time to first paint, and no freeze.

Run: ``python3 benchmarks/bench_ui.py [--nodes 5000] [--repeat 5] [--procs 1]``.

A real ``pushy serve`` (subprocess, TLS) with ``--nodes`` simulated nodes (``nodesim.py``;
for a job that captures output each node prints one line, one of three texts), and Debian's
Chromium under Playwright (headless, the flags of the browser tests). Two measurements:

* **finished job**: a job on every node with capture on runs to ``complete``; then, ``--repeat``
  times, a fresh tab opens its page. Reported, from navigation start: the first contentful
  paint (the page's frame), the first render of the job (counts and the grid, from the job
  document), and the page complete (status ``complete`` and the output groups, after the
  feed's whole history: about four events per node); and the longest main-thread task
  (``PerformanceObserver`` long tasks, 50 ms and over) while loading — how long the page could
  not answer a click.
* **live job**: the jobs page is open; a job on every node starts (POST); reported: POST to
  the page showing the new row, POST to its job page (opened on that row) showing
  ``complete``, and the longest task meanwhile.

Prints the figures and the command; ``--json FILE`` appends them as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from harness import (
    REPO,
    ServerProcess,
    SimFleet,
    admin_key,
    command_line,
    node_names,
    provision_clients,
)

sys.path.insert(0, str(REPO / "tests"))

import httpx
from playwright.sync_api import Page, sync_playwright

from pushy_appliance import chef_auth

from uiharness import CHROMIUM_FLAGS

JOBS = "/organizations/default/pushy/jobs"
LONG_TASKS = """
(() => {
  window.__longest = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__longest = Math.max(window.__longest, e.duration);
  }).observe({ type: "longtask", buffered: true });
})();
"""


class Api:
    """Signed requests as ``admin`` (synchronous: this runs in the browser's thread)."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        self.key = admin_key(data_dir)
        self.http = httpx.Client(verify=str(data_dir / "tls" / "ca.pem"), timeout=60)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        headers = chef_auth.sign_request(
            method, path, data, "admin", self.key, timestamp=datetime.now(UTC)
        )
        if data:
            headers["Content-Type"] = "application/json"
        r = self.http.request(method, self.url + path, content=data or None, headers=headers)
        r.raise_for_status()
        return r.json()

    def start(self, nodes: list[str]) -> str:
        body = {"command": "uname -a", "nodes": nodes, "capture_output": True}
        return str(self.call("POST", JOBS, body)["id"])

    def wait_finished(self, job_id: str) -> str:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = str(self.call("GET", f"{JOBS}/{job_id}")["status"])
            if status not in ("new", "voting", "running"):
                return status
            time.sleep(0.1)
        raise TimeoutError(job_id)


def _figures(page: Page) -> dict[str, float]:
    return page.evaluate(
        """() => {
          const fcp = performance.getEntriesByName("first-contentful-paint")[0];
          const view = document.getElementById("view");
          return {
            fcp_ms: fcp ? fcp.startTime : NaN,
            first_render_ms: Number(view.dataset.firstRendered),
            complete_ms: Number(view.dataset.rendered),
            longest_task_ms: window.__longest,
          };
        }"""
    )


def measure(url: str, data_dir: Path, nodes: list[str], repeat: int) -> dict[str, Any]:
    api = Api(url, data_dir)
    job_id = api.start(nodes)
    status = api.wait_finished(job_id)
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is missing: apt-get install chromium")
    out: dict[str, Any] = {"finished": [], "live": {}}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1280, "height": 900}
        )
        context.add_init_script(LONG_TASKS)
        page = context.new_page()
        page.set_default_timeout(300_000)
        page.goto(api.call("POST", "/organizations/default/pushy/ui/links")["url"])
        page.wait_for_selector("body[data-session=ok]")
        groups = "#job-output .output-group"
        for _ in range(repeat):
            tab = context.new_page()
            tab.set_default_timeout(300_000)
            tab.goto(f"{url}/ui/#/jobs/{job_id}")
            tab.wait_for_selector(f"#job-status[data-status={status}]")
            tab.locator(groups).nth(2).wait_for()
            tab.wait_for_timeout(300)  # the last feed events and render of the history
            out["finished"].append(_figures(tab))
            tab.close()

        # live: the jobs page open while a job starts, then its page until complete
        page.goto(f"{url}/ui/#/jobs")
        page.wait_for_selector("#feed-status[data-state=live]")
        page.evaluate("window.__longest = 0")
        t0 = time.perf_counter()
        live_id = api.start(nodes)
        page.wait_for_selector(f"#jobs-table tr[data-job='{live_id}']")
        out["live"]["row_s"] = time.perf_counter() - t0
        page.click(f"#jobs-table tr[data-job='{live_id}'] a")
        page.wait_for_selector("#job-status[data-status=complete]")
        page.locator(groups).nth(2).wait_for()
        out["live"]["complete_s"] = time.perf_counter() - t0
        out["live"]["longest_task_ms"] = page.evaluate("window.__longest")
        out["live"]["job_took"] = page.evaluate(
            """[...document.querySelectorAll('#job-head dl div')]
                 .find((d) => d.querySelector('dt').textContent === 'Took')
                 .querySelector('dd').textContent"""
        )
        out["live"]["counts"] = page.evaluate(
            "document.querySelector('#job-run [data-count=succeeded] .n').textContent"
        )
        browser.close()
    out["status"] = status
    return out


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="pushy-bench-ui-"))
    try:
        key = chef_auth.generate_private_key()
        key_file = root / "node.pem"
        key_file.write_text(chef_auth.private_key_pem(key))
        d = root / "data"
        server = ServerProcess(d)
        await server.start()
        await server.stop()
        names = node_names(a.nodes)
        await provision_clients(d, names, chef_auth.public_key_pem(key))
        server = ServerProcess(d)
        await server.start()
        try:
            fleet = SimFleet(
                server.node_url, server.ca_file, key_file, a.nodes, procs=a.procs, lifetime=1800
            )
            async with fleet.running():
                await fleet.wait_for("connected", a.nodes, within=60 + a.nodes / 50)
                url = str(server.info["url"])
                return await trio.to_thread.run_sync(measure, url, d, names, a.repeat)
        finally:
            await server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--procs", type=int, default=1, help="simulator processes")
    parser.add_argument("--json", metavar="FILE", help="append the figures as one JSON line")
    a = parser.parse_args()
    r = trio.run(main_async, a)
    runs = r["finished"]

    def line(key: str) -> str:
        values = [x[key] for x in runs]
        return (
            f"median {statistics.median(values):.0f} ms, best {min(values):.0f}, "
            f"worst {max(values):.0f} (all {', '.join(f'{v:.0f}' for v in values)})"
        )

    print(f"$ {command_line()}")
    print(f"job page of a finished {a.nodes:,}-node job ({r['status']}), {len(runs)} fresh tabs:")
    print(f"  first contentful paint      {line('fcp_ms')}")
    print(f"  counts and grid shown       {line('first_render_ms')}")
    print(f"  whole history and output    {line('complete_ms')}")
    print(f"  longest main-thread task    {line('longest_task_ms')}")
    live = r["live"]
    print(f"live {a.nodes:,}-node job, from POST:")
    print(f"  row on the jobs page        {live['row_s'] * 1000:.0f} ms")
    done = live["complete_s"] * 1000
    print(
        f"  job page shows complete     {done:.0f} ms ({live['counts']} succeeded; the job "
        f"itself took {live['job_took']} by its feed's timestamps)"
    )
    print(f"  longest main-thread task    {live['longest_task_ms']:.0f} ms")
    if a.json:
        with open(a.json, "a") as f:
            f.write(
                json.dumps({"scenario": "ui", "command": command_line(), "at": time.time(), **r})
                + "\n"
            )


if __name__ == "__main__":
    main()
