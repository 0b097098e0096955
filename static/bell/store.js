/**
 * The state of one bell's list: its items, the unread count and the stream's state, kept
 * reactive for the view. It merges live events with the pages it fetches, and keeps reads in
 * step across the tabs that share one stream.
 */
import { reactive } from "../vendor/vue.runtime.esm-browser.prod.js";
import { ApiClient } from "./api.js";
import { SharedStream, streamKey } from "./stream.js";

function newestFirst(a, b) {
  // ObjectIds are 24 lowercase hex digits: comparing the strings orders them by creation.
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

/**
 * The list of one user on one server, fed by the API and the shared stream.
 *
 * `onNew(notification)` is called for each notification that arrives live and was not listed yet.
 * Failures are not thrown: they set `state.problem`, which the view shows.
 */
export class BellStore {
  constructor(credentials, onNew) {
    this.credentials = credentials;
    this.api = new ApiClient(credentials);
    this.onNew = onNew;
    this.state = reactive({
      items: [],
      unread: 0,
      nextBefore: null, // the cursor of the next older page; null when the list is complete
      connection: "connecting", // connecting, live, reconnecting or offline
      loading: false,
      loadingMore: false,
      problem: "",
    });
    this.stream = null;
    this.key = null; // whose stream this is: a request answered for another user is dropped
    // Ids received live while a list request is in flight: the answer may predate them.
    this.arrivedDuringLoad = new Set();
  }

  /** (Re)start the shared stream when the server or the user changes; a renewed token keeps it. */
  async connect() {
    let token = null;
    try {
      token = await this.credentials.token(false);
    } catch (error) {
      console.warn("bellcast: the token provider failed", error);
    }
    if (!token) {
      this.state.connection = "offline";
      this.state.problem = "Not signed in.";
      return;
    }
    const server = this.credentials.server();
    const key = streamKey(server, token);
    if (key === this.key) return;
    this.disconnect();
    this.key = key;
    this.state.items = [];
    this.state.unread = 0;
    this.state.nextBefore = null;
    this.stream = new SharedStream(server, key, () => this.api.streamTicket(), {
      notification: (notification) => this.receive(notification),
      read: (message) => this.applyRead(message.id, message.read_at, message.wasUnread),
      readAll: (message) => this.applyReadAll(message.read_at),
      resync: () => this.refresh(),
      state: (name) => {
        this.state.connection = name;
      },
    });
    this.stream.start();
    this.refresh();
  }

  /** Stop the stream (the element left the page). */
  disconnect() {
    if (this.stream) this.stream.stop();
    this.stream = null;
    this.key = null;
  }

  /** The listed notification of this id, if any. */
  find(id) {
    return this.state.items.find((item) => item.id === id);
  }

  /** A notification from the stream: listed once, however many times it arrives. */
  receive(notification) {
    if (!notification || typeof notification.id !== "string" || this.find(notification.id)) return;
    this.arrivedDuringLoad.add(notification.id);
    this.state.items = this.state.items.concat([notification]).sort(newestFirst);
    if (!notification.read_at) this.state.unread += 1;
    this.onNew(notification);
  }

  /** Replace the list with the server's newest page (Refresh, after a stream was reopened, and on `resync`). */
  async refresh() {
    this.arrivedDuringLoad = new Set();
    this.state.loading = true;
    const key = this.key;
    try {
      const page = await this.api.list(null);
      if (key !== this.key) return; // the user or server changed meanwhile
      this.replaceWithNewestPage(page);
      this.state.problem = "";
    } catch (error) {
      this.state.problem = "Could not load notifications: " + error.message;
    } finally {
      this.state.loading = false;
    }
  }

  /** The page replaces the list, except for what arrived live after the page was asked for. */
  replaceWithNewestPage(page) {
    const fetched = new Set(page.notifications.map((n) => n.id));
    const later = this.state.items.filter((n) => this.arrivedDuringLoad.has(n.id) && !fetched.has(n.id));
    this.state.items = page.notifications.concat(later).sort(newestFirst);
    this.state.unread = page.unread_count + later.filter((n) => !n.read_at).length;
    this.state.nextBefore = page.next_before;
  }

  /** Append the next older page. */
  async loadMore() {
    if (!this.state.nextBefore || this.state.loadingMore) return;
    this.state.loadingMore = true;
    const key = this.key;
    try {
      const page = await this.api.list(this.state.nextBefore);
      if (key !== this.key) return;
      const older = page.notifications.filter((n) => !this.find(n.id));
      this.state.items = this.state.items.concat(older).sort(newestFirst);
      this.state.nextBefore = page.next_before;
      this.state.problem = "";
    } catch (error) {
      this.state.problem = "Could not load more: " + error.message;
    } finally {
      this.state.loadingMore = false;
    }
  }

  /** Mark one read on the server, here and in the other tabs. `options` as for ApiClient.request. */
  async markRead(item, options) {
    if (item.read_at) return;
    try {
      const updated = await this.api.markRead(item.id, options);
      this.applyRead(item.id, updated.read_at, true);
      this.publish({ type: "read", id: item.id, read_at: updated.read_at, wasUnread: true });
    } catch (error) {
      this.state.problem = "Could not mark as read: " + error.message;
    }
  }

  /** Mark all read on the server, here and in the other tabs. */
  async markAllRead() {
    try {
      await this.api.markAllRead();
      const readAt = new Date().toISOString();
      this.applyReadAll(readAt);
      this.publish({ type: "read-all", read_at: readAt });
    } catch (error) {
      this.state.problem = "Could not mark all as read: " + error.message;
    }
  }

  /**
   * A read, here or in another tab. `wasUnread` says whether it counted as unread, for an item
   * this tab has not listed (an older page it has not loaded).
   */
  applyRead(id, readAt, wasUnread) {
    const item = this.find(id);
    if (item ? item.read_at : !wasUnread) return;
    if (item) item.read_at = readAt;
    this.state.unread = Math.max(0, this.state.unread - 1);
  }

  /** Everything read, here or in another tab. */
  applyReadAll(readAt) {
    this.state.items.forEach((item) => {
      if (!item.read_at) item.read_at = readAt;
    });
    this.state.unread = 0;
  }

  /** Tell the other tabs of this user. */
  publish(message) {
    if (this.stream) this.stream.publish(message);
  }
}
