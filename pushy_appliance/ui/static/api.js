// Requests to the appliance's API with the session cookie (same origin). Every request that
// changes something carries the session's CSRF token in X-Pushy-CSRF (docs/DASHBOARD.md).

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let csrfToken = "";

/** The session's CSRF token, from GET /ui/session. */
export function setCsrf(token) {
  csrfToken = token;
}

/** Called with every 401: the session ended (logout elsewhere, idle expiry, restart). */
let onSignedOut = () => {};
export function whenSignedOut(fn) {
  onSignedOut = fn;
}

function message(body, fallback) {
  if (body && typeof body === "object" && "error" in body) {
    return Array.isArray(body.error) ? body.error.join("; ") : String(body.error);
  }
  return fallback;
}

/**
 * Send a request; resolve with the decoded JSON body (null for 204), reject with ApiError
 * carrying the API's own message.
 */
export async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (method !== "GET" && method !== "HEAD") headers["X-Pushy-CSRF"] = csrfToken;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `the server cannot be reached (${e.message})`);
  }
  if (response.status === 204) return null;
  let decoded = null;
  try {
    decoded = await response.json();
  } catch {
    decoded = null;
  }
  if (!response.ok) {
    if (response.status === 401) onSignedOut();
    throw new ApiError(response.status, message(decoded, response.statusText));
  }
  return decoded;
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);

/** "?a=1&b=2" from an object, skipping empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}
