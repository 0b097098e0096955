/**
 * The event stream of one user, shared by all tabs of this origin.
 *
 * The tab holding a Web Lock opens the EventSource and passes events on over a BroadcastChannel;
 * when it closes, the lock and the stream move to another tab. Without those APIs, each tab opens
 * its own stream.
 */

const STREAM_PATH = "/notifications/stream";
// Consecutive failed attempts after which the bell says "offline" rather than "reconnecting".
const OFFLINE_AFTER_FAILURES = 3;
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30000;

/** The `sub` of a JWT, to key the shared stream by user; null when the token is not a JWT. */
function tokenSubject(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const subject = JSON.parse(atob(payload)).sub;
    return typeof subject === "string" ? subject : null;
  } catch (error) {
    return null;
  }
}

/** What tells one user's stream on one server from another's: tabs with the same key share a stream. */
export function streamKey(server, token) {
  return server + "|" + (tokenSubject(token) || token);
}

/**
 * The event stream of one user, shared by the tabs of this origin.
 *
 * `getTicket()` answers (a promise of) a single-use stream ticket: each EventSource is opened with a
 * new one, never with the user's token, and is never left to reconnect by itself, since its URL's
 * ticket is spent once it opened.
 *
 * `handlers` receives what every tab must apply: notification(n), changed(change) (the server's
 * `changed` event: what changed on any device, and the counts), read(message), readAll(message),
 * resync() (the stream was opened anew, or the server had more to replay than it will, so the list must be
 * reloaded), state(name).
 */
export class SharedStream {
  constructor(server, key, getTicket, handlers) {
    this.server = server;
    this.key = key;
    this.getTicket = getTicket;
    this.handlers = handlers;
    this.state = "connecting";
    this.leader = false;
    this.failures = 0;
    this.source = null;
    // The id of the last event this tab's streams received: a stream reopened with it resumes from there.
    this.lastEventId = null;
    this.askingForTicket = false;
    this.timer = null;
    this.channel = null;
    this.stopped = false;
    this.abort = null; // aborts the pending request for the lock
    this.release = null; // releases the lock once held
    this.onOnline = () => this.reconnectNow();
    this.onOffline = () => this.setState("offline");
  }

  /** Open the stream, or wait for the tab that holds it to pass its events on. */
  start() {
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    const shared = typeof BroadcastChannel === "function" && navigator.locks && navigator.locks.request;
    if (!shared) {
      this.lead();
      return;
    }
    this.channel = new BroadcastChannel("bellcast:" + this.key);
    this.channel.onmessage = (event) => this.receive(event.data);
    this.abort = new AbortController();
    // Granted to one tab at a time; held until that tab closes or the bell is removed.
    navigator.locks
      .request("bellcast:" + this.key, { signal: this.abort.signal }, () => this.lead())
      .catch(() => {});
    this.channel.postMessage({ type: "hello" });
  }

  /** Close the stream and give up the lock, so that another tab takes over. */
  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    if (this.release) this.release();
    if (this.abort) this.abort.abort();
    if (this.channel) this.channel.close();
  }

  /** Tell the other tabs (a read, a read-all). */
  publish(message) {
    if (this.channel && !this.stopped) this.channel.postMessage(message);
  }

  lead() {
    if (this.stopped) return undefined;
    this.leader = true;
    // Taking over from a tab that closed: its stream is gone until this one opens.
    if (this.state !== "connecting") this.setState("reconnecting");
    this.connect();
    return new Promise((resolve) => {
      this.release = resolve;
    });
  }

  receive(message) {
    if (this.stopped || !message) return;
    if (message.type === "hello") {
      if (this.leader) this.publish({ type: "state", state: this.state });
    } else if (message.type === "state") {
      if (!this.leader) this.setState(message.state);
    } else if (message.type === "notification") {
      this.handlers.notification(message.notification);
    } else if (message.type === "resync") {
      this.handlers.resync();
    } else if (message.type === "read") {
      this.handlers.read(message);
    } else if (message.type === "read-all") {
      this.handlers.readAll(message);
    } else if (message.type === "changed") {
      this.handlers.changed(message.change);
    }
  }

  setState(state) {
    this.state = state;
    this.handlers.state(state);
    if (this.leader) this.publish({ type: "state", state: state });
  }

  async connect() {
    // One ticket asked for at a time: coming back online while one is on its way must not open two streams.
    if (this.askingForTicket) return;
    this.askingForTicket = true;
    let ticket = null;
    try {
      ticket = await this.getTicket();
    } catch (error) {
      // Not signed in, a token the provider could not renew, or the server unreachable: try again later.
      console.warn("bellcast: no stream ticket", error);
    } finally {
      this.askingForTicket = false;
    }
    if (this.stopped) return;
    if (!ticket) {
      this.failed();
      this.retryLater();
      return;
    }
    let url = this.server + STREAM_PATH + "?ticket=" + encodeURIComponent(ticket);
    // A new EventSource cannot send Last-Event-ID: the id goes in the query, and the server replays what was missed.
    if (this.lastEventId) url += "&last_event_id=" + encodeURIComponent(this.lastEventId);
    const source = new EventSource(url);
    // Until an event had an id, and on any stream opened anew (this tab just took the stream over),
    // the tabs reload the list instead, so that nothing created meanwhile is lost.
    const resuming = Boolean(this.lastEventId);
    this.source = source;
    source.addEventListener("open", () => {
      this.failures = 0;
      this.setState("live");
      if (!resuming) this.resync();
    });
    source.addEventListener("notification", (event) => {
      let notification;
      try {
        notification = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (event.lastEventId) this.lastEventId = event.lastEventId;
      this.handlers.notification(notification);
      this.publish({ type: "notification", notification: notification });
    });
    // The server had more to replay than it will (MAX_REPLAY): it skipped the gap, so the tabs reload the
    // list. The event's id moves the last id on to the newest notification.
    source.addEventListener("resync", (event) => {
      if (event.lastEventId) this.lastEventId = event.lastEventId;
      this.resync();
    });
    // The user's notifications changed (here or on another device), with the server's counts. Its id is
    // the newest notification's, never a notification of its own.
    source.addEventListener("changed", (event) => {
      let change;
      try {
        change = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (event.lastEventId) this.lastEventId = event.lastEventId;
      this.handlers.changed(change);
      this.publish({ type: "changed", change: change });
    });
    source.addEventListener("error", () => {
      if (source !== this.source) return;
      // Dropped or refused (the server restarting, busy, or the ticket spent): EventSource would reconnect
      // by itself with this URL, whose ticket is spent; reopen with a new ticket instead.
      source.close();
      this.source = null;
      this.failed();
      this.retryLater();
    });
  }

  failed() {
    this.failures += 1;
    this.setState(this.failures >= OFFLINE_AFTER_FAILURES || !navigator.onLine ? "offline" : "reconnecting");
  }

  resync() {
    this.handlers.resync();
    this.publish({ type: "resync" });
  }

  retryLater() {
    clearTimeout(this.timer);
    const delay = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * Math.pow(2, Math.max(0, this.failures - 1)));
    this.timer = setTimeout(() => this.connect(), delay * (0.5 + Math.random() / 2));
  }

  /** Back online: say so if the stream survived, else open it now rather than after the backoff. */
  reconnectNow() {
    if (!this.leader || this.stopped) return;
    if (this.source && this.source.readyState === EventSource.OPEN) {
      this.setState("live");
    } else if (!this.source || this.source.readyState === EventSource.CLOSED) {
      clearTimeout(this.timer);
      this.connect();
    } else {
      this.setState("reconnecting");
    }
  }
}
