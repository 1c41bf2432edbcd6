// Start a job: the fields of POST jobs, a live preview of the targets ("N nodes, M offline"),
// the API's own error message beside the field it names, then straight to the job's page.

import { post } from "../api.js";
import { h, fill, plural } from "../dom.js";
import { INVENTORY, jobTarget, previewTargets } from "../nodequery.js";

// The field an API validation message is about (API.md, POST jobs: "invalid quorum (…)",
// "invalid type supplied for run_timeout (…)", "at least one node must be supplied").
const FIELDS = {
  command: "command",
  quorum: "quorum",
  run_timeout: "run_timeout",
  capture_output: "capture_output",
  env: "env",
  environment: "env",
  node: "targets",
  nodes: "targets",
  search: "targets",
  user: "user",
  dir: "dir",
  max_concurrency: "max_concurrency",
  max_failures: "max_failures",
};

export function fieldOf(message) {
  const m = /^invalid (?:type supplied for )?([a-z_]+)/.exec(message);
  const word = m ? m[1] : /\bnodes?\b/.test(message) ? "node" : "";
  return FIELDS[word];
}

export function mountStart(view, ctx) {
  if (!ctx.canWrite) {
    fill(
      view,
      h("h1", {}, "Start a job"),
      h("p.notice#start-refused", {}, `${ctx.session.principal.name} may not start jobs in ${ctx.org} (that takes the pushy_job_writers group, or admins when it does not exist).`),
    );
    return () => {};
  }
  const errors = {};
  const field = (name, label, input, hint) => {
    errors[name] = h("p.field-error", { id: `err-${name}`, role: "alert" });
    return h("div.field", { dataset: { field: name } }, h("label", { for: input.id }, label), input, hint ? h("p.hint", {}, hint) : null, errors[name]);
  };
  const command = h("input#f-command", { name: "command", required: true, autocomplete: "off", placeholder: "uname -a" });
  const targets = h("textarea#f-targets", {
    name: "targets",
    rows: 3,
    placeholder: INVENTORY ? "tags:web AND platform:ubuntu" : "node names, separated by spaces or new lines",
  });
  const preview = h("p.preview#f-preview", { "aria-live": "polite" });
  const quorum = h("input#f-quorum", { name: "quorum", placeholder: "all (N or N%)", autocomplete: "off" });
  const timeout = h("input#f-timeout", { name: "run_timeout", type: "number", min: 1, max: 86400, placeholder: "3600" });
  const capture = h("input#f-capture", { name: "capture_output", type: "checkbox", checked: true });
  const env = h("textarea#f-env", { name: "env", rows: 2, placeholder: "NAME=value, one per line" });
  const concurrency = h("input#f-concurrency", { name: "max_concurrency", type: "number", min: 1, placeholder: "unlimited" });
  const failures = h("input#f-failures", { name: "max_failures", type: "number", min: 0, placeholder: "unlimited" });
  const user = h("input#f-user", { name: "user", autocomplete: "off", placeholder: "the agent's user" });
  const dir = h("input#f-dir", { name: "dir", autocomplete: "off", placeholder: "the agent's working directory" });
  const formError = h("p.field-error#start-error", { role: "alert" });
  const submit = h("button.primary#f-submit", { type: "submit" }, "Start job");

  const form = h(
    "form.start#start-form",
    { novalidate: true, onsubmit: (e) => (e.preventDefault(), start()) },
    field("command", "Command", command, "Run on each node as written; the agent's whitelist decides what may run."),
    field("targets", INVENTORY ? "Nodes (search)" : "Nodes", targets),
    preview,
    h(
      "div.row",
      {},
      field("quorum", "Quorum", quorum),
      field("run_timeout", "Timeout (seconds)", timeout),
      field("max_concurrency", "Max concurrency", concurrency),
      field("max_failures", "Max failures", failures),
    ),
    h("div.field.check", { dataset: { field: "capture_output" } }, capture, h("label", { for: "f-capture" }, "Capture output"), (errors.capture_output = h("p.field-error", { id: "err-capture_output", role: "alert" }))),
    field("env", "Environment", env),
    h("details", {}, h("summary", {}, "Run as another user or in another directory"), h("div.row", {}, field("user", "As user", user), field("dir", "In directory", dir))),
    formError,
    submit,
  );
  fill(view, h("h1", {}, "Start a job"), form);

  let typing = null;
  let previewSeq = 0;
  targets.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(updatePreview, 250);
  });
  async function updatePreview() {
    const mine = ++previewSeq;
    if (!targets.value.trim()) {
      preview.textContent = "";
      return;
    }
    try {
      const p = await previewTargets(ctx.base, targets.value);
      if (mine !== previewSeq) return;
      const parts = [plural(p.count, "node"), `${p.offline.toLocaleString("en")} offline or busy`];
      if (p.unknown) parts.push(`${p.unknown.toLocaleString("en")} unknown`);
      preview.textContent = parts.join(", ");
      preview.dataset.count = String(p.count);
      preview.dataset.offline = String(p.offline);
    } catch (e) {
      if (mine === previewSeq) preview.textContent = e.message;
    }
  }

  function clearErrors() {
    for (const el of Object.values(errors)) el.textContent = "";
    formError.textContent = "";
  }

  function showError(message) {
    const name = fieldOf(message);
    (name && errors[name] ? errors[name] : formError).textContent = message;
  }

  function body() {
    const b = { command: command.value, ...jobTarget(targets.value), capture_output: capture.checked };
    const q = quorum.value.trim();
    if (q) b.quorum = /^\d+$/.test(q) ? Number(q) : q;
    const number = (el) => (el.value.trim() === "" ? undefined : Number(el.value));
    if (number(timeout) !== undefined) b.run_timeout = number(timeout);
    if (number(concurrency) !== undefined) b.max_concurrency = number(concurrency);
    if (number(failures) !== undefined) b.max_failures = number(failures);
    if (user.value.trim()) b.user = user.value.trim();
    if (dir.value.trim()) b.dir = dir.value.trim();
    const lines = env.value.split("\n").map((l) => l.trim()).filter(Boolean);
    if (lines.length) {
      b.env = {};
      for (const line of lines) {
        const eq = line.indexOf("=");
        if (eq <= 0) throw Object.assign(new Error(`invalid environment line '${line}' (expected NAME=value)`), { field: "env" });
        b.env[line.slice(0, eq)] = line.slice(eq + 1);
      }
    }
    return b;
  }

  async function start() {
    clearErrors();
    let b;
    try {
      b = body();
    } catch (e) {
      errors[e.field].textContent = e.message;
      return;
    }
    submit.disabled = true;
    try {
      const created = await post(`${ctx.base}/jobs`, b);
      ctx.go(`#/jobs/${created.id}`);
    } catch (e) {
      showError(e.message);
    } finally {
      submit.disabled = false;
    }
  }

  return () => clearTimeout(typing);
}
