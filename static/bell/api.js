/**
 * The bell's client of bellcast's user API: where the server is, which token to send, and the
 * requests the bell makes (a page of the list, mark read, seen, archive, delete, a stream ticket).
 */

const LIST_PATH = "/api/notifications";
const STREAM_TICKET_PATH = "/notifications/stream-ticket";
const PAGE_SIZE = 20;

/**
 * The server and the user's token, read from the element's current attributes and properties.
 *
 * `source()` returns `{ server, token, tokenProvider }` as they are now; a token the provider
 * renewed is kept until the host sets another `token`.
 */
export class Credentials {
  constructor(source) {
    this.source = source;
    this.renewedToken = null;
  }

  /** The server's origin without a trailing slash; the page's own origin when none is given. */
  server() {
    return (this.source().server || window.location.origin).replace(/\/+$/, "");
  }

  /** Whether a refused token can be replaced (the host gave a token provider). */
  canRenew() {
    return Boolean(this.source().tokenProvider);
  }

  /** The token to send; asks the host's token provider when told to renew, or when there is none yet. */
  async token(renew) {
    const { token, tokenProvider } = this.source();
    if (tokenProvider && (renew || !(this.renewedToken || token))) {
      this.renewedToken = await tokenProvider();
      return this.renewedToken;
    }
    return this.renewedToken || token || null;
  }

  /** The host set a token of its own: it wins over one renewed earlier. */
  forgetRenewedToken() {
    this.renewedToken = null;
  }
}

/** `filter`'s status and tag as a query string starting with `separator`; "" for none. */
function filterQuery(filter, separator) {
  const parts = [];
  if (filter && filter.status) parts.push("status=" + encodeURIComponent(filter.status));
  if (filter && filter.tag) parts.push("tag=" + encodeURIComponent(filter.tag));
  return parts.length ? separator + parts.join("&") : "";
}

/** A request the server refused: its message can be shown, its HTTP `status` tells what to do about it. */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** The user API's requests; each answers the parsed JSON body or throws an Error whose message can be shown. */
export class ApiClient {
  constructor(credentials) {
    this.credentials = credentials;
  }

  /**
   * One page of the list, newest first: `{ notifications, unread_count, unseen_count, next_before }`.
   * `filter`: `{ status, tag }` as a tab shows (no status: everything not archived).
   */
  list(before, filter) {
    const query = "?limit=" + PAGE_SIZE + (before ? "&before=" + encodeURIComponent(before) : "");
    return this.request("GET", LIST_PATH + query + filterQuery(filter, "&"));
  }

  /** Mark one notification read; answers the notification with its `read_at`. */
  markRead(id, options) {
    return this.request("POST", LIST_PATH + "/" + encodeURIComponent(id) + "/read", options);
  }

  /** Mark read every notification of `filter` (all when none): `{ updated, unread_count, unseen_count }`. */
  markAllRead(filter) {
    return this.request("POST", LIST_PATH + "/read-all" + filterQuery(filter, "?"));
  }

  /** Mark everything listed as seen (the panel was opened): `{ updated, unread_count, unseen_count }`. */
  markSeen() {
    return this.request("POST", LIST_PATH + "/seen");
  }

  /** Archive one notification; answers it with its `archived_at`. */
  archive(id) {
    return this.request("POST", LIST_PATH + "/" + encodeURIComponent(id) + "/archive");
  }

  /** Move one archived notification back to the inbox; answers it. */
  unarchive(id) {
    return this.request("POST", LIST_PATH + "/" + encodeURIComponent(id) + "/unarchive");
  }

  /** Delete one notification for good. */
  remove(id) {
    return this.request("DELETE", LIST_PATH + "/" + encodeURIComponent(id));
  }

  /**
   * A single-use ticket that opens one stream within seconds: what the stream's URL carries, so
   * that the user's token, sent here in a header, never travels in a URL.
   */
  async streamTicket() {
    return (await this.request("POST", STREAM_TICKET_PATH)).ticket;
  }

  /** `options.keepalive`: let the request outlive the page (a link that navigates away). */
  async request(method, path, options) {
    for (let attempt = 0; ; attempt++) {
      const token = await this.credentials.token(attempt > 0);
      if (!token) throw new Error("not signed in");
      const response = await fetch(this.credentials.server() + path, {
        method: method,
        headers: { Authorization: "Bearer " + token },
        credentials: "omit",
        keepalive: Boolean(options && options.keepalive),
      });
      // An expired token: ask the host app for a new one, once.
      if (response.status === 401 && attempt === 0 && this.credentials.canRenew()) continue;
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        throw new ApiError((body && body.error && body.error.message) || "HTTP " + response.status, response.status);
      }
      return response.status === 204 ? null : response.json();
    }
  }
}
