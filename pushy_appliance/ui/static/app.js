// The dashboard: session bootstrap, the header, and a hash router over the pages.

import { ApiError, get, post, setCsrf, whenSignedOut } from "./api.js";
import { h, fill } from "./dom.js";
import { onFeedState } from "./feed.js";
import { mountFleet } from "./pages/fleet.js";
import { mountJob } from "./pages/job.js";
import { mountJobs } from "./pages/jobs.js";
import { mountStart } from "./pages/start.js";

const view = document.getElementById("view");
let unmount = () => {};

function signedOut(reason) {
  unmount();
  unmount = () => {};
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  document.body.dataset.session = "none";
  fill(
    view,
    h(
      "section.signed-out",
      {},
      h("h1", {}, "Not signed in"),
      h("p", {}, reason),
      h("p", {}, "Run ", h("code", {}, "pushy ui"), " and open the link it prints (it works once, for 60 seconds)."),
    ),
  );
}

function route(ctx) {
  unmount();
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  const [path, search = ""] = hash.split("?");
  const params = new URLSearchParams(search);
  const parts = path.split("/").filter(Boolean);
  let page = parts[0] || "fleet";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("current", a.dataset.nav === page);
  }
  view.replaceChildren();
  if (page === "jobs" && parts[1]) unmount = mountJob(view, ctx, parts[1]);
  else if (page === "jobs") unmount = mountJobs(view, ctx, params);
  else if (page === "start") unmount = mountStart(view, ctx);
  else {
    page = "fleet";
    unmount = mountFleet(view, ctx, params);
  }
  document.body.dataset.page = page;
}

async function main() {
  const status = document.getElementById("feed-status");
  onFeedState(({ state, text }) => {
    status.dataset.state = state;
    status.textContent = text;
  });
  let session;
  try {
    session = await get("/ui/session");
  } catch (e) {
    signedOut(e instanceof ApiError && e.status === 401 ? "Your session has ended." : e.message);
    return;
  }
  setCsrf(session.csrf);
  whenSignedOut(() => signedOut("Your session has ended (signed out, idle too long, or the server restarted)."));
  const ctx = {
    session,
    org: session.org,
    base: `/organizations/${encodeURIComponent(session.org)}/pushy`,
    canWrite: session.can_write,
    go: (hash) => {
      location.hash = hash;
    },
  };
  document.getElementById("nav").hidden = false;
  document.getElementById("nav-start").hidden = !session.can_write;
  const who = session.principal;
  document.getElementById("who").textContent = `${who.name} (${who.kind}) · ${session.org}`;
  const logout = document.getElementById("logout");
  logout.hidden = false;
  logout.onclick = async () => {
    try {
      await post("/ui/logout");
    } finally {
      signedOut("You signed out.");
    }
  };
  document.body.dataset.session = "ok";
  window.addEventListener("hashchange", () => route(ctx));
  route(ctx);
}

main();
