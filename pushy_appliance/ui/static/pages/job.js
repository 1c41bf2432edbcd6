// Job: what runs where, live. The job document (GET jobs/ID) owns each node's state and is
// fetched again, at most every REFETCH_MS, while the job feed reports changes; the feed itself
// gives who started the job, the votes and the output. A 5,000-node job stays fluid: counts
// are aggregates, the grid shows each state's nodes a page at a time, output is grouped.

import { ApiError, get, post } from "../api.js";
import { h, fill, badge, byName, plural, when, duration, seconds, coalesce, throttle } from "../dom.js";
import { openFeed } from "../feed.js";

// The buckets of the job document, in their order (API.md, GET jobs/ID).
const BUCKETS = ["new", "ready", "running", "succeeded", "failed", "aborted", "unavailable", "nacked", "crashed", "was_ready", "timed_out"];
const LIVE_JOB = new Set(["new", "voting", "running"]);
// The node states a re-run of the failed nodes runs again (docs/OPERATIONS.md, "failed").
const FAILED = ["failed", "timed_out", "crashed", "aborted"];
const GRID_PAGE = 200;
const REFETCH_MS = 250;
const OUTPUT_KEEP = 64 * 1024;
const OUTPUT_MS = 300;

export function mountJob(view, ctx, jobId) {
  const base = `${ctx.base}/jobs/${encodeURIComponent(jobId)}`;
  const state = {
    doc: null,
    requester: "",
    startedAt: NaN,
    endedAt: NaN,
    votes: new Map(),
    output: new Map(),
    outputVersion: 0,
    shown: new Map(),
    selected: "",
    selectedFetched: null,
    abortError: "",
    aborting: false,
    rerunning: false,
  };
  let feed = null;
  let gone = false;

  const head = h("div#job-head");
  const actions = h("div.actions#job-actions");
  const vote = h("section.panel#job-vote");
  const run = h("section.panel#job-run");
  const grid = h("section.panel#job-grid");
  const detail = h("section.panel#job-node");
  const output = h("section.panel#job-output");
  fill(view, head, actions, h("div.phases", {}, vote, run), grid, detail, output);

  const render = coalesce(() => {
    if (gone || !state.doc) return;
    renderHead();
    renderActions();
    renderVote();
    renderRun();
    renderGrid();
    renderDetail();
    renderOutput();
    // when the page first showed the job, and last updated it (ms since navigation start)
    if (!view.dataset.firstRendered) view.dataset.firstRendered = String(performance.now());
    view.dataset.rendered = String(performance.now());
  });

  async function fetchDoc() {
    try {
      state.doc = await get(base);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        fill(view, h("h1", {}, "Job not found"), h("p", {}, `No job ${jobId} in ${ctx.org}.`));
        gone = true;
        if (feed) feed.close();
        return;
      }
      state.abortError = e.message;
    }
    render();
  }
  const refetchSoon = throttle(fetchDoc, REFETCH_MS);
  // A finished job's document is final: replaying its feed's history changes nothing in it.
  const refetch = () => {
    if (state.doc && LIVE_JOB.has(state.doc.status)) refetchSoon();
  };

  // --- the feed -------------------------------------------------------------------------
  function openJobFeed() {
    feed = openFeed(`${ctx.base}/job_status_feed/${encodeURIComponent(jobId)}`, "Job", {
      start: (d) => {
        state.requester = d.user || "";
        state.startedAt = seconds(d.timestamp);
        render();
      },
      quorum_vote: (d) => {
        state.votes.set(d.node, d.status);
        refetch();
      },
      quorum_succeeded: refetch,
      run_start: refetch,
      run_complete: refetch,
      rehab: refetch,
      output: (d) => {
        const o = state.output.get(d.node) || { stdout: "", stderr: "", cut: false };
        let text = o[d.channel] + d.data;
        if (text.length > OUTPUT_KEEP) {
          text = text.slice(-OUTPUT_KEEP);
          o.cut = true;
        }
        o[d.channel] = text;
        state.output.set(d.node, o);
        state.outputVersion += 1;
        render();
      },
      job_complete: (d) => {
        state.endedAt = seconds(d.timestamp);
        feed.close();
        fetchDoc();
      },
      summary: () => {
        feed.close();
        fetchDoc();
      },
    });
  }

  // --- sections ---------------------------------------------------------------------------
  function nodeCount() {
    return Object.values(state.doc.nodes || {}).reduce((n, names) => n + names.length, 0);
  }

  function renderHead() {
    const d = state.doc;
    const live = LIVE_JOB.has(d.status);
    const start = Number.isFinite(state.startedAt) ? state.startedAt : seconds(d.created_at);
    const end = Number.isFinite(state.endedAt) ? state.endedAt : seconds(d.updated_at);
    const took = live ? Date.now() / 1000 - start : end - start;
    const facts = [
      ["Started by", state.requester || d.requester || "–"],
      ["Created", when(d.created_at)],
      ["Quorum", `${d.quorum.toLocaleString("en")} of ${plural(nodeCount(), "node")}`],
      [live ? "Running for" : "Took", duration(took)],
      ["Run timeout", duration(d.run_timeout)],
      ["Output", d.capture_output ? "captured" : "not captured"],
    ];
    if (d.rerun_of) facts.push(["Re-run of", h("a.mono#job-rerun-of", { href: `#/jobs/${d.rerun_of}` }, d.rerun_of.slice(0, 8))]);
    if (d.user) facts.push(["As user", d.user]);
    if (d.dir) facts.push(["In directory", d.dir]);
    if (d.env) facts.push(["Environment", Object.entries(d.env).map(([k, v]) => `${k}=${v}`).join(" ")]);
    if (d.max_concurrency != null) facts.push(["Max concurrency", String(d.max_concurrency)]);
    if (d.max_failures != null) facts.push(["Max failures", String(d.max_failures)]);
    fill(
      head,
      h("h1", {}, "Job ", h("span.mono", {}, d.id.slice(0, 8)), " ", h("span#job-status", { dataset: { status: d.status } }, badge(d.status))),
      h("pre.command#job-command", {}, d.command),
      h("dl.facts", {}, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
    );
  }

  function renderActions() {
    const live = LIVE_JOB.has(state.doc.status);
    if (ctx.canWrite && !live) {
      renderRerun();
      return;
    }
    if (!ctx.canWrite || !live) {
      fill(actions, state.abortError ? h("p.field-error", { role: "alert" }, state.abortError) : null);
      return;
    }
    fill(
      actions,
      h(
        "button.danger#job-abort",
        {
          type: "button",
          disabled: state.aborting,
          onclick: async () => {
            state.aborting = true;
            state.abortError = "";
            render();
            try {
              state.doc = await post(`${base}/abort`);
            } catch (e) {
              state.abortError = e.message;
            }
            state.aborting = false;
            render();
          },
        },
        state.aborting ? "Aborting…" : "Abort job",
      ),
      state.abortError ? h("p.field-error", { role: "alert" }, state.abortError) : null,
    );
  }

  // A finished job with failed nodes: start a new job like it on those (POST jobs/ID/rerun)
  // and go to its page.
  function renderRerun() {
    const failed = FAILED.reduce((n, b) => n + ((state.doc.nodes || {})[b] || []).length, 0);
    const error = state.abortError ? h("p.field-error", { role: "alert" }, state.abortError) : null;
    if (failed === 0) {
      fill(actions, error);
      return;
    }
    fill(
      actions,
      h(
        "button#job-rerun",
        {
          type: "button",
          disabled: state.rerunning,
          onclick: async () => {
            state.rerunning = true;
            state.abortError = "";
            render();
            try {
              const created = await post(`${base}/rerun`, { nodes: "failed" });
              ctx.go(`#/jobs/${created.id}`);
            } catch (e) {
              state.abortError = e.message;
            }
            state.rerunning = false;
            render();
          },
        },
        state.rerunning ? "Starting…" : `Re-run failed (${plural(failed, "node")})`,
      ),
      error,
    );
  }

  function renderVote() {
    const total = nodeCount();
    let acked = 0;
    let nacked = 0;
    let unavailable = 0;
    for (const status of state.votes.values()) {
      if (status === "success") acked += 1;
      else if (status === "failure") nacked += 1;
      else unavailable += 1;
    }
    const voted = acked + nacked + unavailable;
    const quorum = state.doc.quorum;
    const verdict =
      state.doc.status === "quorum_failed"
        ? "quorum not reached"
        : acked >= quorum && voted > 0 && state.doc.status !== "voting"
          ? "quorum reached"
          : state.doc.status === "voting"
            ? "waiting for votes"
            : "";
    const pct = (n) => `${total ? (100 * n) / total : 0}%`;
    const bar = h(
      "div.bar",
      { role: "img", "aria-label": `${acked} acked, quorum ${quorum}` },
      h("span.seg.acked"),
      h("span.seg.nacked"),
      h("span.seg.unavailable"),
      h("span.quorum-mark"),
    );
    bar.children[0].style.width = pct(acked);
    bar.children[1].style.width = pct(nacked);
    bar.children[2].style.width = pct(unavailable);
    bar.children[3].style.left = pct(quorum);
    fill(
      vote,
      h("h2", {}, "Vote ", h("span.muted", {}, verdict)),
      h(
        "div.tiles",
        {},
        count("voted", voted, `of ${total.toLocaleString("en")}`),
        count("acked", acked),
        count("nacked", nacked),
        count("unavailable", unavailable),
        count("quorum", quorum),
      ),
      bar,
    );
  }

  function renderRun() {
    const nodes = state.doc.nodes || {};
    const shown = ["running", "succeeded", "failed", "aborted", "timed_out", "crashed", "was_ready"];
    fill(
      run,
      h("h2", {}, "Run"),
      h(
        "div.tiles",
        {},
        shown.map((b) => count(b, (nodes[b] || []).length)),
      ),
    );
  }

  function renderGrid() {
    const nodes = state.doc.nodes || {};
    const groups = BUCKETS.filter((b) => (nodes[b] || []).length);
    fill(
      grid,
      h("h2", {}, "Nodes"),
      groups.map((b) => {
        const names = nodes[b];
        const limit = state.shown.get(b) || GRID_PAGE;
        const chips = names.slice(0, limit).map((n) =>
          h(
            `button.chip.st-${b}`,
            {
              type: "button",
              title: state.doc.nack_reasons?.[n] ? `${n}: ${state.doc.nack_reasons[n]}` : n,
              dataset: { node: n },
              "aria-pressed": String(state.selected === n),
              onclick: () => select(n),
            },
            n,
          ),
        );
        return h(
          "div.group",
          { dataset: { bucket: b } },
          h("h3", {}, badge(b), " ", h("span.group-count", {}, names.length.toLocaleString("en"))),
          h("div.chips", {}, chips),
          names.length > limit
            ? h(
                "button.more",
                { type: "button", onclick: () => (state.shown.set(b, limit + GRID_PAGE * 5), render()) },
                `Show more (${(names.length - limit).toLocaleString("en")} hidden)`,
              )
            : null,
        );
      }),
    );
  }

  function select(node) {
    state.selected = state.selected === node ? "" : node;
    state.selectedFetched = null;
    render();
    const finished = !["new", "ready", "running"].includes(bucketOf(node));
    if (state.selected && state.doc.capture_output && finished && !state.output.has(node)) {
      // no output seen on the feed (purged history): ask the output routes
      Promise.all(["stdout", "stderr"].map((c) => fetchOutput(node, c))).then(([stdout, stderr]) => {
        if (state.selected === node) {
          state.selectedFetched = { stdout, stderr };
          render();
        }
      });
    }
  }

  async function fetchOutput(node, channel) {
    const r = await fetch(`${base}/output/${encodeURIComponent(node)}/${channel}`, { credentials: "same-origin" });
    return r.ok ? r.text() : "";
  }

  function bucketOf(node) {
    for (const [b, names] of Object.entries(state.doc.nodes || {})) if (names.includes(node)) return b;
    return "";
  }

  function renderDetail() {
    const n = state.selected;
    if (!n) {
      fill(detail);
      detail.hidden = true;
      return;
    }
    detail.hidden = false;
    const o = state.output.get(n) || state.selectedFetched || { stdout: "", stderr: "" };
    const reason = state.doc.nack_reasons?.[n];
    fill(
      detail,
      h("h2", {}, "Node ", h("span.mono", {}, n), " ", badge(bucketOf(n) || "unknown")),
      reason ? h("p", {}, `Reason: ${reason}`) : null,
      state.doc.capture_output ? outputBlock(o) : h("p.muted", {}, "Output was not captured for this job."),
    );
  }

  // Grouping thousands of nodes' output is redone at most every OUTPUT_MS while it streams.
  let outputRendered = -1;
  let outputAt = -Infinity;
  let outputLater = null;
  function renderOutput() {
    if (!state.doc.capture_output) {
      fill(output, h("h2", {}, "Output"), h("p.muted", {}, "Output was not captured (start the job with capture on to see it here)."));
      return;
    }
    if (outputRendered === state.outputVersion) return;
    const wait = outputAt + OUTPUT_MS - performance.now();
    if (wait > 0) {
      if (!outputLater) outputLater = setTimeout(() => ((outputLater = null), render()), wait);
      return;
    }
    outputAt = performance.now();
    outputRendered = state.outputVersion;
    const groups = new Map();
    for (const [node, o] of state.output) {
      const key = `${o.stdout}\u0000${o.stderr}`;
      const g = groups.get(key) || { o, nodes: [] };
      g.nodes.push(node);
      groups.set(key, g);
    }
    for (const g of groups.values()) g.nodes.sort(byName);
    const sorted = [...groups.values()].sort((a, b) => b.nodes.length - a.nodes.length || byName(a.nodes[0], b.nodes[0]));
    fill(
      output,
      h("h2", {}, "Output ", h("span.muted", {}, sorted.length ? `${plural(sorted.length, "distinct output")}` : "none yet")),
      sorted.slice(0, 50).map((g) =>
        h(
          "div.output-group",
          { dataset: { nodes: String(g.nodes.length) } },
          h("h3", {}, plural(g.nodes.length, "node"), ": ", h("span.mono", {}, g.nodes.slice(0, 12).join(" ")), g.nodes.length > 12 ? ` and ${g.nodes.length - 12} more` : ""),
          outputBlock(g.o),
        ),
      ),
    );
  }

  function outputBlock(o) {
    return h(
      "div.output",
      {},
      o.cut ? h("p.muted", {}, "Showing the last 64 KiB of each channel.") : null,
      h("h4", {}, "stdout"),
      h("pre.stdout", {}, o.stdout || "(empty)"),
      o.stderr ? [h("h4", {}, "stderr"), h("pre.stderr", {}, o.stderr)] : null,
    );
  }

  const ticker = setInterval(() => {
    if (state.doc && LIVE_JOB.has(state.doc.status)) render();
  }, 1000);

  fetchDoc().then(() => {
    if (!gone) openJobFeed();
  });
  return () => {
    gone = true;
    clearInterval(ticker);
    clearTimeout(outputLater);
    if (feed) feed.close();
  };
}

function count(name, n, suffix = "") {
  return h(
    `div.tile.${name}`,
    { dataset: { count: name } },
    h("span.n", {}, n.toLocaleString("en")),
    h("span.label", {}, suffix ? `${name.replaceAll("_", " ")} ${suffix}` : name.replaceAll("_", " ")),
  );
}
