// Jobs: the org's job history, newest first, filtered by status, who started it and since
// when (all three are GET jobs query parameters), kept current by the org feed.

import { get, query } from "../api.js";
import { h, fill, badge, ago, when, duration, seconds, throttle } from "../dom.js";
import { openFeed } from "../feed.js";

const STATUSES = ["new", "voting", "running", "complete", "quorum_failed", "timed_out", "aborted", "crashed"];
const SINCE = [
  ["", "any time"],
  ["3600", "last hour"],
  ["86400", "last 24 hours"],
  ["604800", "last 7 days"],
  ["2592000", "last 30 days"],
];
const PAGE = 50;

export function mountJobs(view, ctx, params) {
  const filters = {
    status: params.get("status") || "",
    requester: params.get("requester") || "",
    since: params.get("since") || "",
  };
  let jobs = [];
  let more = false;
  let error = "";

  const status = h(
    "select#jobs-status",
    { "aria-label": "Status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s.replaceAll("_", " "))),
  );
  const requester = h("input#jobs-requester", {
    type: "search",
    value: filters.requester,
    placeholder: "started by (user or client)",
    "aria-label": "Started by",
  });
  const since = h(
    "select#jobs-since",
    { "aria-label": "Since" },
    SINCE.map(([v, label]) => h("option", { value: v, selected: v === filters.since }, label)),
  );
  const problem = h("p.field-error#jobs-error", { role: "alert" });
  const list = h("div#jobs-table");
  const form = h(
    "form.toolbar#jobs-filters",
    {
      onsubmit: (e) => {
        e.preventDefault();
        apply();
      },
    },
    status,
    requester,
    since,
    h("button", { type: "submit" }, "Filter"),
  );
  status.addEventListener("change", () => apply());
  since.addEventListener("change", () => apply());
  fill(view, h("h1", {}, "Jobs"), form, problem, list);

  function apply() {
    filters.status = status.value;
    filters.requester = requester.value.trim();
    filters.since = since.value;
    history.replaceState(null, "", `#/jobs${query(filters)}`);
    load(PAGE);
  }

  function params_(extra) {
    const p = { status: filters.status, requester: filters.requester, ...extra };
    if (filters.since) p.since = new Date(Date.now() - Number(filters.since) * 1000).toISOString();
    return p;
  }

  async function load(limit) {
    try {
      const page = await get(`${ctx.base}/jobs${query(params_({ limit: limit + 1 }))}`);
      more = page.length > limit;
      jobs = page.slice(0, limit);
      error = "";
    } catch (e) {
      error = e.message;
    }
    render();
  }

  async function older() {
    if (!jobs.length) return;
    try {
      const last = jobs[jobs.length - 1].id;
      const page = await get(`${ctx.base}/jobs${query(params_({ limit: PAGE + 1, before: last }))}`);
      more = page.length > PAGE;
      jobs = jobs.concat(page.slice(0, PAGE));
    } catch (e) {
      error = e.message;
    }
    render();
  }

  function render() {
    problem.textContent = error;
    if (!jobs.length) {
      fill(list, h("p.muted", {}, "No job matches."));
      return;
    }
    const rows = jobs.map((j) => {
      const finished = !["new", "voting", "running"].includes(j.status);
      const took = seconds(j.updated_at) - seconds(j.created_at);
      return h(
        "tr",
        { dataset: { job: j.id, status: j.status } },
        h("td.id", {}, h("a", { href: `#/jobs/${j.id}` }, j.id.slice(0, 8))),
        h("td.command", {}, h("code", {}, j.command)),
        h("td", {}, badge(j.status)),
        h("td", {}, j.requester || "–"),
        h("td", { title: when(j.created_at) }, ago(j.created_at)),
        h("td", {}, finished ? duration(took) : "…"),
      );
    });
    fill(
      list,
      h(
        "table.grid",
        {},
        h("thead", {}, h("tr", {}, ["Job", "Command", "Status", "Started by", "Created", "Took"].map((c) => h("th", {}, c)))),
        h("tbody", {}, rows),
      ),
      more ? h("button.more", { type: "button", onclick: older }, "Older jobs") : null,
    );
  }

  const refresh = throttle(() => load(Math.max(PAGE, jobs.length)), 300);
  const feed = openFeed(`${ctx.base}/job_status_feed`, "Org", { start: refresh, job_complete: refresh });
  load(PAGE);
  return () => feed.close();
}
