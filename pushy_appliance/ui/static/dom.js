// Building the page without innerHTML: every value lands in a text node or an attribute.

/** h("a.cls#id", {href: "#"}, child, …): an element; children are nodes, text or arrays. */
export function h(spec, attrs = {}, ...children) {
  const [tagAndClasses, id] = spec.split("#");
  const [tag, ...classes] = tagAndClasses.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  if (id) el.id = id;
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace a container's content. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Compare names as people sort them: web-2 before web-10. */
export const byName = new Intl.Collator("en", { numeric: true }).compare;

export function plural(n, word, many = `${word}s`) {
  return `${n.toLocaleString("en")} ${n === 1 ? word : many}`;
}

/** "2h 03m", "4m 10s", "12.3s". */
export function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)}s`;
  const s = Math.floor(seconds);
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  if (hours) return `${hours}h ${String(minutes).padStart(2, "0")}m`;
  return `${minutes}m ${String(s % 60).padStart(2, "0")}s`;
}

/** A date (RFC 1123 or the feeds' "YYYY-MM-DD HH:MM:SS.ffffffZ") as seconds since the epoch. */
export function seconds(text) {
  if (!text) return NaN;
  const feedForm = /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)Z$/.exec(text);
  const ms = Date.parse(feedForm ? `${feedForm[1]}T${feedForm[2]}Z` : text);
  return ms / 1000;
}

/** Local date and time of a date text, or "–". */
export function when(text) {
  const t = seconds(text);
  if (!Number.isFinite(t)) return "–";
  return new Date(t * 1000).toLocaleString();
}

/** "5s ago", "3m ago", "2h ago", "4d ago". */
export function ago(text) {
  const t = seconds(text);
  if (!Number.isFinite(t)) return "–";
  const d = Math.max(0, Date.now() / 1000 - t);
  if (d < 60) return `${Math.floor(d)}s ago`;
  if (d < 3600) return `${Math.floor(d / 60)}m ago`;
  if (d < 86400) return `${Math.floor(d / 3600)}h ago`;
  return `${Math.floor(d / 86400)}d ago`;
}

export function badge(status) {
  return h(`span.badge.st-${status}`, {}, status.replaceAll("_", " "));
}

/** Run fn at most once per animation frame however often it is asked for. */
export function coalesce(fn) {
  let pending = false;
  return () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      fn();
    });
  };
}

/** Call fn at most every `ms` milliseconds (trailing call kept). */
export function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, wait);
  };
}
