// The event feeds through EventSource, which sends the session cookie and, after a lost
// connection, reconnects on its own with Last-Event-ID. This wrapper reports the feed's state
// so the page can say when it is live, lost (and resuming after which event) or closed.

const listeners = new Set();
const feeds = new Map();

/** Subscribe to the combined state of the open feeds: fn({state, text}). */
export function onFeedState(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function announce() {
  let state = "none";
  let text = "";
  for (const f of feeds.values()) {
    if (f.state === "lost") {
      state = "lost";
      text = f.lastId
        ? `${f.label} feed lost, reconnecting (resuming after ${f.lastId})…`
        : `${f.label} feed lost, reconnecting…`;
      break;
    }
    if (f.state === "live") {
      state = "live";
      text = f.resumed ? `${f.label} feed live again (resumed after ${f.resumed})` : "live";
    } else if (f.state === "connecting" && state === "none") {
      state = "connecting";
      text = "connecting…";
    }
  }
  for (const fn of listeners) fn({ state, text });
}

/**
 * Open a feed. handlers maps event names to fn(data, id). onClosed(reason) is called when the
 * browser gives up (the server refused: signed out, or the job is gone).
 * Returns {close()}.
 */
export function openFeed(url, label, handlers, onClosed = () => {}) {
  const es = new EventSource(url);
  const feed = { state: "connecting", label, lastId: "", resumed: "" };
  feeds.set(es, feed);
  announce();
  es.onopen = () => {
    if (feed.state === "lost") feed.resumed = feed.lastId || "the start";
    feed.state = "live";
    announce();
  };
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      close();
      onClosed("closed");
    } else {
      feed.state = "lost";
      announce();
    }
  };
  for (const [name, fn] of Object.entries(handlers)) {
    es.addEventListener(name, (e) => {
      if (e.lastEventId) feed.lastId = e.lastEventId;
      let data = null;
      try {
        data = JSON.parse(e.data);
      } catch {
        return;
      }
      fn(data, e.lastEventId);
    });
  }
  function close() {
    es.close();
    feeds.delete(es);
    announce();
  }
  return { close };
}
