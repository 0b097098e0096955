/**
 * The state of one bell's list: the shown tab's items, the unread and unseen counts and the
 * stream's state, kept reactive for the view. It merges live events with the pages it fetches,
 * applies the server's `changed` events (what any device of the user did, with the counts), and
 * keeps reads in step across the tabs that share one stream.
 */
import { reactive } from "../vendor/vue.runtime.esm-browser.prod.js";
import { ApiClient } from "./api.js";
import { SharedStream, streamKey } from "./stream.js";

/** The tab shown first: everything not archived. */
export const INBOX = "inbox";
const TAG_TAB_PREFIX = "tag:";
// Changes that decide what a tab lists: sent for many notifications without their ids or filter,
// only the server knows which changed (a bulk "seen" changes nothing a tab shows).
const BULK_CHANGES_OF_THE_LIST = new Set(["read_all", "archived", "archived_all", "unarchived", "deleted", "expired"]);

function newestFirst(a, b) {
  // ObjectIds are 24 lowercase hex digits: comparing the strings orders them by creation.
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

/** A tab's key ("inbox", "unread", "archived", "tag:billing") as the API's `{ status, tag }` filter. */
export function tabFilter(tab) {
  if (tab === "unread" || tab === "archived") return { status: tab, tag: null };
  if (typeof tab === "string" && tab.startsWith(TAG_TAB_PREFIX)) {
    return { status: null, tag: tab.slice(TAG_TAB_PREFIX.length) };
  }
  return { status: null, tag: null };
}

/** The key of the tab that lists one tag. */
export function tagTab(tag) {
  return TAG_TAB_PREFIX + tag;
}

/** Whether a notification belongs in a list of `filter`, as the server decides it (no status: not archived). */
export function matchesFilter(item, filter) {
  const { status, tag } = filter || {};
  if (tag && !(Array.isArray(item.tags) && item.tags.includes(tag))) return false;
  if (status === "archived") return Boolean(item.archived_at);
  if (item.archived_at) return false;
  if (status === "unread") return !item.read_at;
  if (status === "read") return Boolean(item.read_at);
  return true;
}

/**
 * The list of one user on one server, fed by the API and the shared stream.
 *
 * `onNew(notification)` is called for each notification that arrives live and was not known yet.
 * Failures are not thrown: they set `state.problem` to `{ key, error }` (a message key and the
 * error's text), which the view shows in the bell's language.
 */
export class BellStore {
  constructor(credentials, onNew) {
    this.credentials = credentials;
    this.api = new ApiClient(credentials);
    this.onNew = onNew;
    this.state = reactive({
      tab: INBOX,
      items: [], // the shown tab's, newest first
      unread: 0,
      unseen: null, // null until the server tells (older servers do not count it)
      nextBefore: null, // the cursor of the next older page; null when the list is complete
      connection: "connecting", // connecting, live, reconnecting or offline
      loading: false,
      loadingMore: false,
      problem: null,
    });
    this.stream = null;
    this.key = null; // whose stream this is: a request answered for another user is dropped
    // Every notification this bell has listed or received, by id, whichever tab listed it: a change
    // on another device can move one into the shown tab without a request.
    this.known = new Map();
    // Set once the stream sent a `changed` event: from then on the counts are the server's, never
    // worked out here, so that no two sources count one change twice.
    this.serverCounts = false;
    // Ids received live, and whether the counts changed, while a list request is in flight: the
    // answer may predate them.
    this.arrivedDuringLoad = new Set();
    this.countsChangedDuringLoad = false;
    this.changesDuringLoad = []; // `changed` events received while a page was on its way
    // How many `changed` events came: an answer to a request sent before the last of them may carry older counts.
    this.changesReceived = 0;
    this.generation = 0; // of list requests: only the newest one's answer is shown
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
      this.state.problem = { key: "notSignedIn", error: "" };
      return;
    }
    const server = this.credentials.server();
    const key = streamKey(server, token);
    if (key === this.key) return;
    this.disconnect();
    this.key = key;
    this.known = new Map();
    this.serverCounts = false;
    this.state.items = [];
    this.state.unread = 0;
    this.state.unseen = null;
    this.state.nextBefore = null;
    this.stream = new SharedStream(server, key, () => this.api.streamTicket(), {
      notification: (notification) => this.receive(notification),
      changed: (change) => this.applyChange(change),
      read: (message) => this.applyRead(message.id, message.read_at, message.wasUnread),
      readAll: (message) => this.applyReadAll(message.read_at, message.filter),
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

  /** Keep a notification the server sent; an id known already takes the newer fields. Answers the reactive one. */
  remember(notification) {
    const known = this.known.get(notification.id);
    if (known) return Object.assign(known, notification);
    const item = reactive({ ...notification });
    this.known.set(item.id, item);
    return item;
  }

  /** Show another tab: its newest page replaces the list. */
  selectTab(tab) {
    if (tab === this.state.tab) return Promise.resolve();
    this.state.tab = tab;
    this.state.items = [];
    this.state.nextBefore = null;
    return this.refresh();
  }

  /** The shown tab's `{ status, tag }`. */
  filter() {
    return tabFilter(this.state.tab);
  }

  /** A notification from the stream: known once, however many times it arrives, and listed if the tab shows it. */
  receive(notification) {
    if (!notification || typeof notification.id !== "string" || this.known.has(notification.id)) return;
    const item = this.remember(notification);
    this.arrivedDuringLoad.add(item.id);
    if (matchesFilter(item, this.filter())) this.state.items = this.state.items.concat([item]).sort(newestFirst);
    if (!item.read_at && !this.serverCounts) this.state.unread += 1;
    this.onNew(item);
  }

  /** The counts of an answer or event that carries them (older servers send no unseen_count). */
  setCounts(source) {
    if (typeof source.unread_count === "number") this.state.unread = source.unread_count;
    if (typeof source.unseen_count === "number") this.state.unseen = source.unseen_count;
  }

  /** Replace the list with the server's newest page (Refresh, a tab chosen, a stream reopened, `resync`). */
  async refresh() {
    this.arrivedDuringLoad = new Set();
    this.countsChangedDuringLoad = false;
    this.changesDuringLoad = [];
    this.state.loading = true;
    const key = this.key;
    const tab = this.state.tab;
    const generation = ++this.generation;
    try {
      const page = await this.api.list(null, tabFilter(tab));
      // The user, the server or the tab changed meanwhile, or a newer request was sent.
      if (key !== this.key || generation !== this.generation) return;
      this.replaceWithNewestPage(page);
      this.state.problem = null;
    } catch (error) {
      if (generation === this.generation) this.state.problem = { key: "couldNotLoad", error: error.message };
    } finally {
      if (generation === this.generation) this.state.loading = false;
    }
  }

  /** The page replaces the list, except for what arrived live after the page was asked for. */
  replaceWithNewestPage(page) {
    const fetched = page.notifications.map((n) => this.remember(n));
    const fetchedIds = new Set(fetched.map((n) => n.id));
    const later = this.state.items.filter((n) => this.arrivedDuringLoad.has(n.id) && !fetchedIds.has(n.id));
    this.state.items = fetched.concat(later).sort(newestFirst);
    this.state.nextBefore = page.next_before;
    this.changesDuringLoad.forEach((change) => this.applyToItems(change));
    // Counts the stream sent during the request may be newer than the answer's.
    if (this.countsChangedDuringLoad) return;
    this.setCounts(page);
    if (!this.serverCounts) this.state.unread += later.filter((n) => !n.read_at).length;
  }

  /** Append the next older page of the shown tab. */
  async loadMore() {
    if (!this.state.nextBefore || this.state.loadingMore) return;
    if (!this.state.loading) this.changesDuringLoad = [];
    this.state.loadingMore = true;
    const key = this.key;
    const generation = this.generation;
    try {
      const page = await this.api.list(this.state.nextBefore, this.filter());
      if (key !== this.key || generation !== this.generation) return;
      const listed = new Set(this.state.items.map((n) => n.id));
      const older = page.notifications.filter((n) => !listed.has(n.id)).map((n) => this.remember(n));
      this.state.items = this.state.items.concat(older).sort(newestFirst);
      this.state.nextBefore = page.next_before;
      this.changesDuringLoad.forEach((change) => this.applyToItems(change));
      this.state.problem = null;
    } catch (error) {
      this.state.problem = { key: "couldNotLoadMore", error: error.message };
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
      this.failedOn(item, "couldNotMarkRead", error);
    }
  }

  /** Mark read what the shown tab lists (its status and tag) on the server, here and in the other tabs. */
  async markAllRead() {
    const filter = this.filter();
    try {
      const changesBefore = this.changesReceived;
      const answer = await this.api.markAllRead(filter);
      const readAt = new Date().toISOString();
      this.applyReadAll(readAt, filter);
      // The stream's events since the request carry newer counts (its own read_all's among them).
      if (answer && this.changesReceived === changesBefore) this.setCounts(answer);
      this.publish({ type: "read-all", read_at: readAt, filter: filter });
    } catch (error) {
      this.state.problem = { key: "couldNotMarkAllRead", error: error.message };
    }
  }

  /** The panel was opened: everything is seen. Asks only when the server counts something unseen. */
  async markSeen() {
    if (!this.state.unseen) return;
    try {
      const changesBefore = this.changesReceived;
      const answer = await this.api.markSeen();
      const seenAt = new Date().toISOString();
      this.known.forEach((item) => {
        if (!item.seen_at) item.seen_at = seenAt;
      });
      // A read on any device while the request was on its way: the stream's counts are newer than the answer's.
      if (this.changesReceived === changesBefore) this.setCounts(answer);
    } catch (error) {
      // Nothing the user can do about it: the badge stays as it is.
      console.warn("bellcast: could not mark as seen", error);
    }
  }

  /** Archive one notification, or move an archived one back to the inbox. */
  async setArchived(item, archived) {
    try {
      const updated = archived ? await this.api.archive(item.id) : await this.api.unarchive(item.id);
      this.remember(updated);
      this.reconcile([item]);
    } catch (error) {
      this.failedOn(item, archived ? "couldNotArchive" : "couldNotUnarchive", error);
    }
  }

  /** Delete one notification for good. */
  async remove(item) {
    try {
      await this.api.remove(item.id);
      this.forget([item.id]);
    } catch (error) {
      this.failedOn(item, "couldNotDelete", error);
    }
  }

  /**
   * An action on `item` failed. A 404 says it is gone (expired, or deleted on a device whose
   * change this bell missed): it leaves the list. Anything else is shown as the problem `key`.
   */
  failedOn(item, key, error) {
    if (error.status === 404) this.forget([item.id]);
    else this.state.problem = { key: key, error: error.message };
  }

  /**
   * A `changed` event: what the user's devices (this one too) did, with the server's counts. The
   * notifications it names change here without a request. A bulk change names none: with the
   * filter it applied to, the same happens here; without, only the server knows which changed,
   * so the shown tab is reloaded.
   */
  applyChange(change) {
    if (!change || typeof change !== "object") return;
    this.serverCounts = true;
    this.countsChangedDuringLoad = true;
    this.changesReceived += 1;
    this.setCounts(change);
    const ids = Array.isArray(change.ids) ? change.ids : [];
    if (!ids.length && !change.filter && BULK_CHANGES_OF_THE_LIST.has(change.change)) {
      this.refresh();
      return;
    }
    // A page on its way may predate this change: it is applied again to the page when that comes.
    if (this.state.loading || this.state.loadingMore) this.changesDuringLoad.push(change);
    this.applyToItems(change);
  }

  /** What a `changed` event does to the notifications this bell holds. */
  applyToItems(change) {
    const ids = Array.isArray(change.ids) ? change.ids : [];
    const affected = ids.length
      ? ids.map((id) => this.known.get(id)).filter(Boolean)
      : Array.from(this.known.values()).filter((item) => matchesFilter(item, change.filter));
    const now = new Date().toISOString();
    switch (change.change) {
      case "read":
      case "read_all":
        affected.forEach((item) => {
          if (!item.read_at) item.read_at = now;
        });
        break;
      case "seen":
        affected.forEach((item) => {
          if (!item.seen_at) item.seen_at = now;
        });
        break;
      case "archived":
      case "archived_all":
        affected.forEach((item) => {
          if (!item.archived_at) item.archived_at = now;
        });
        break;
      case "unarchived":
        // An unarchived notification is in the inbox again, whatever the filter of a bulk change was.
        (ids.length ? affected : []).forEach((item) => {
          item.archived_at = null;
        });
        break;
      case "deleted":
      case "expired":
        this.forget(ids);
        return;
      default:
        return; // "created" (its notification comes as its own event), "counts"
    }
    this.reconcile(affected);
  }

  /**
   * A read, here or in another tab. `wasUnread` says whether it counted as unread, for an item
   * this tab has not listed (an older page it has not loaded).
   */
  applyRead(id, readAt, wasUnread) {
    const item = this.known.get(id);
    if (item ? item.read_at : !wasUnread) return;
    if (item) item.read_at = readAt;
    if (!this.serverCounts) this.state.unread = Math.max(0, this.state.unread - 1);
    this.reconcile(item ? [item] : []);
  }

  /** Everything of `filter` (no status: all not archived) read, here or in another tab. */
  applyReadAll(readAt, filter) {
    let changed = 0;
    const affected = Array.from(this.known.values()).filter((item) => matchesFilter(item, filter));
    affected.forEach((item) => {
      if (item.read_at) return;
      item.read_at = readAt;
      if (!item.archived_at) changed += 1;
    });
    if (!this.serverCounts) {
      // Everything not archived: none is left unread, listed or not. A narrower filter: those known.
      const everything = !filter || (!filter.tag && filter.status !== "archived");
      this.state.unread = everything ? 0 : Math.max(0, this.state.unread - changed);
    }
    this.reconcile(affected);
  }

  /** Notifications gone for good (deleted, expired). */
  forget(ids) {
    const gone = new Set(ids);
    gone.forEach((id) => this.known.delete(id));
    if (this.state.items.some((item) => gone.has(item.id))) {
      this.state.items = this.state.items.filter((item) => !gone.has(item.id));
    }
  }

  /**
   * After a change to `touched`: the list keeps what its tab still shows, and takes in those of
   * them that now belong to it, within the pages it has loaded.
   */
  reconcile(touched) {
    const filter = this.filter();
    const listed = new Set(this.state.items.map((item) => item.id));
    const kept = this.state.items.filter((item) => matchesFilter(item, filter));
    const nextBefore = this.state.nextBefore;
    const added = touched.filter(
      (item) => !listed.has(item.id) && matchesFilter(item, filter) && (!nextBefore || item.id > nextBefore)
    );
    if (kept.length === this.state.items.length && !added.length) return;
    this.state.items = kept.concat(added).sort(newestFirst);
  }

  /** Tell the other tabs of this user. */
  publish(message) {
    if (this.stream) this.stream.publish(message);
  }
}
