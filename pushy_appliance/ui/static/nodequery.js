// Which nodes a query means: the one place the Fleet page and the Start form ask it.
//
// With the fleet inventory (INVENTORY = true, issue 14):
//   * findNodes() sends the query (Chef's search syntax) to GET …/pushy/nodes?q=QUERY and
//     turns its rows into node documents (last_seen stands in for updated_at);
//   * the Start form's box is a search (jobTarget() sends {"search": QUERY}).
// With INVENTORY = false (a server without the inventory) findNodes() reads
// GET …/pushy/node_states and filters by node name here, and the Start form takes node names
// (jobTarget() sends {"nodes": [...]}).

import { get, query } from "./api.js";

export const INVENTORY = true;

/** A node document: {node_name, status, availability, updated_at, facts?}. */
export async function findNodes(base, text) {
  const q = (text || "").trim();
  if (INVENTORY) {
    const found = await get(`${base}/nodes${query({ q })}`);
    return found.rows.map((r) => ({
      node_name: r.name,
      status: r.status,
      availability: r.availability,
      updated_at: r.last_seen,
      facts: r.facts,
    }));
  }
  const all = await get(`${base}/node_states`);
  if (!q) return all;
  const match = nameMatcher(q);
  return all.filter((n) => match(n.node_name));
}

/** A filter over node names: a glob (* and ?) when it holds one, else a substring. */
export function nameMatcher(text) {
  const q = text.toLowerCase();
  if (!/[*?]/.test(q)) return (name) => name.toLowerCase().includes(q);
  const escaped = q.replace(/[.+^${}()|[\]\\]/g, "\\$&").replaceAll("*", ".*").replaceAll("?", ".");
  const re = new RegExp(`^${escaped}$`);
  return (name) => re.test(name.toLowerCase());
}

/** Node names typed in a box: separated by spaces, commas or new lines, duplicates dropped. */
export function splitNames(text) {
  return [...new Set((text || "").split(/[\s,]+/).filter(Boolean))];
}

/** The part of a POST jobs body that names its nodes. */
export function jobTarget(text) {
  if (INVENTORY) return { search: (text || "").trim() };
  return { nodes: splitNames(text) };
}

/**
 * The live preview of a job's targets: {count, offline, unknown} for what the form holds.
 * "offline" counts nodes that would end unavailable now (offline, or online but busy).
 */
export async function previewTargets(base, text) {
  if (INVENTORY) {
    const nodes = await findNodes(base, text);
    const down = nodes.filter((n) => n.availability !== "available").length;
    return { count: nodes.length, offline: down, unknown: 0 };
  }
  const names = splitNames(text);
  if (!names.length) return { count: 0, offline: 0, unknown: 0 };
  const known = new Map((await get(`${base}/node_states`)).map((n) => [n.node_name, n]));
  let offline = 0;
  let unknown = 0;
  for (const name of names) {
    const n = known.get(name);
    if (!n) unknown += 1;
    else if (n.availability !== "available") offline += 1;
  }
  return { count: names.length, offline, unknown };
}
