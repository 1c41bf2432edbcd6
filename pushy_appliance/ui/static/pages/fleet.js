// Fleet: counts (online, offline, busy) and a searchable table of nodes, kept current by the
// org feed: its node_status events (a node went on- or offline, or busy or idle), its
// nodes_changed events (many nodes at once), and every job's start and end.

import { h, fill, byName, plural, ago, when, throttle } from "../dom.js";
import { openFeed } from "../feed.js";
import { INVENTORY, findNodes } from "../nodequery.js";

const PAGE = 500;

export function mountFleet(view, ctx, params) {
  let text = params.get("q") || "";
  let shown = PAGE;
  let nodes = [];
  let error = "";
  let seq = 0;

  const counts = h("div.tiles#fleet-counts");
  const input = h("input#fleet-search", {
    type: "search",
    value: text,
    placeholder: INVENTORY ? "Search: platform:ubuntu AND tags:web" : "Filter by name: web, or a glob: web-*",
    "aria-label": "Search nodes",
  });
  const problem = h("p.field-error#fleet-error", { role: "alert" });
  const table = h("div#fleet-table");
  fill(view, h("h1", {}, "Fleet"), counts, h("div.toolbar", {}, input, problem), table);

  // why the table was last loaded ("feed", "search", "start"), for the tests
  async function load(reason = "start") {
    const mine = ++seq;
    try {
      const found = await findNodes(ctx.base, text);
      if (mine !== seq) return;
      nodes = found.sort((a, b) => byName(a.node_name, b.node_name));
      error = "";
    } catch (e) {
      if (mine !== seq) return;
      error = e.message;
    }
    table.dataset.loadedBy = reason;
    render();
  }
  const refresh = throttle(() => load("feed"), 500);

  function render() {
    const online = nodes.filter((n) => n.status === "online");
    const busy = online.filter((n) => n.availability !== "available");
    fill(
      counts,
      tile("online", online.length),
      tile("offline", nodes.length - online.length),
      tile("busy", busy.length),
      tile("total", nodes.length),
    );
    problem.textContent = error;
    if (!nodes.length) {
      fill(table, h("p.muted", {}, text ? "No node matches." : "No node has connected yet."));
      return;
    }
    // facts come with the inventory (issue 14); until then node_states has none
    const withFacts = nodes.some((n) => n.facts && typeof n.facts === "object");
    const rows = nodes.slice(0, shown).map((n) =>
      h(
        "tr",
        { dataset: { node: n.node_name } },
        h("td.name", {}, n.node_name),
        h("td", {}, h(`span.dot.${n.status}`), n.status),
        h("td", {}, n.availability === "available" ? "idle" : n.status === "online" ? "busy" : "–"),
        h("td", { title: when(n.updated_at) }, n.updated_at ? ago(n.updated_at) : "never"),
        withFacts ? h("td.facts", {}, factsText(n.facts)) : null,
      ),
    );
    const columns = ["Node", "Status", "Job", INVENTORY ? "Last seen" : "Since", ...(withFacts ? ["Facts"] : [])];
    const more =
      nodes.length > shown
        ? h(
            "button.more",
            { type: "button", onclick: () => ((shown += PAGE), render()) },
            `Show ${Math.min(PAGE, nodes.length - shown)} more of ${plural(nodes.length - shown, "node")}`,
          )
        : null;
    fill(
      table,
      h(
        "table.grid",
        {},
        h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
        h("tbody", {}, rows),
      ),
      more,
    );
  }

  let typing = null;
  input.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      text = input.value;
      shown = PAGE;
      history.replaceState(null, "", text ? `#/fleet?q=${encodeURIComponent(text)}` : "#/fleet");
      load("search");
    }, 250);
  });

  const feed = openFeed(`${ctx.base}/job_status_feed?node_events=true`, "Org", {
    start: refresh,
    job_complete: refresh,
    node_status: refresh,
    nodes_changed: refresh,
  });
  load();
  return () => {
    feed.close();
    clearTimeout(typing);
  };
}

function tile(name, n) {
  return h(`div.tile.${name}`, { dataset: { count: name } }, h("span.n", {}, n.toLocaleString("en")), h("span.label", {}, name));
}

function factsText(facts) {
  if (!facts || typeof facts !== "object") return "";
  return Object.entries(facts)
    .slice(0, 6)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(",") : typeof v === "object" ? "…" : v}`)
    .join("  ");
}
