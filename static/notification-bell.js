/*
 * bellcast's notification bell: one script tag and one element on any page, no build step.
 *
 *   <script src="https://notify.example.com/static/notification-bell.js"></script>
 *   <notification-bell server="https://notify.example.com" token="…"></notification-bell>
 *
 * A classic script, so that it runs everywhere a script tag does. It brings its own Vue 3
 * (the ESM runtime build beside it, loaded with import(): the host page's window.Vue, if any,
 * is never read or replaced) and defines <notification-bell> as a Vue custom element with a
 * shadow root, so that the host's CSS and the bell's do not touch.
 *
 * All tabs of one origin and user share one event stream: the tab holding a Web Lock opens
 * the EventSource and passes events on over a BroadcastChannel; when it closes, the lock and
 * the stream move to another tab. Without those APIs, each tab opens its own stream.
 */
(function () {
  "use strict";

  var TAG = "notification-bell";
  if (!window.customElements || window.customElements.get(TAG)) return;

  var script = document.currentScript || document.querySelector('script[src*="notification-bell.js"]');
  var base = script && script.src ? script.src : document.baseURI;
  var runtimeUrl = new URL("vendor/vue.runtime.esm-browser.prod.js", base).href;

  import(runtimeUrl).then(
    function (Vue) {
      if (!window.customElements.get(TAG)) window.customElements.define(TAG, defineBell(Vue));
    },
    function (error) {
      console.error("bellcast: could not load the Vue runtime from " + runtimeUrl, error);
    }
  );

  var PAGE_SIZE = 20;
  var BADGE_CAP = 99;
  var STREAM_PATH = "/notifications/stream";
  var LIST_PATH = "/api/notifications";
  // Consecutive failed attempts after which the bell says "offline" rather than "reconnecting".
  var OFFLINE_AFTER_FAILURES = 3;
  var RETRY_MIN_MS = 1000;
  var RETRY_MAX_MS = 30000;
  var CLOCK_TICK_MS = 30000;
  var STATE_LABELS = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: "Reconnecting…",
    offline: "Offline",
  };

  /** The `sub` of a JWT, to key the shared stream by user; null when the token is not a JWT. */
  function tokenSubject(token) {
    try {
      var payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      var subject = JSON.parse(atob(payload)).sub;
      return typeof subject === "string" ? subject : null;
    } catch (error) {
      return null;
    }
  }

  /** Only http(s) URLs and same-site paths become links (the server enforces this too). */
  function safeUrl(url) {
    return typeof url === "string" && /^(https?:\/\/|\/(?!\/))/i.test(url) ? url : null;
  }

  function newestFirst(a, b) {
    // ObjectIds are 24 lowercase hex digits: comparing the strings orders them by creation.
    return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
  }

  var relativeTimeFormat = null;

  function relativeTime(iso, now) {
    // Never "in 2 seconds": a server clock slightly ahead of this one still reads as "now".
    var seconds = Math.min(0, Math.round((Date.parse(iso) - now) / 1000));
    relativeTimeFormat = relativeTimeFormat || new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
    var format = relativeTimeFormat;
    var units = [
      ["year", 31536000],
      ["month", 2592000],
      ["week", 604800],
      ["day", 86400],
      ["hour", 3600],
      ["minute", 60],
    ];
    for (var i = 0; i < units.length; i++) {
      if (Math.abs(seconds) >= units[i][1]) return format.format(Math.round(seconds / units[i][1]), units[i][0]);
    }
    return format.format(0, "second");
  }

  /**
   * The event stream of one user, shared by the tabs of this origin.
   *
   * `handlers` receives what every tab must apply: notification(n), read(message), readAll(message),
   * resync() (the stream was opened anew, so something may have been missed), state(name).
   */
  class SharedStream {
    constructor(server, key, getToken, handlers) {
      this.server = server;
      this.key = key;
      this.getToken = getToken;
      this.handlers = handlers;
      this.state = "connecting";
      this.leader = false;
      this.failures = 0;
      this.source = null;
      this.timer = null;
      this.channel = null;
      this.stopped = false;
      this.onOnline = () => this.reconnectNow();
      this.onOffline = () => this.setState("offline");
    }

    start() {
      window.addEventListener("online", this.onOnline);
      window.addEventListener("offline", this.onOffline);
      var shared = typeof BroadcastChannel === "function" && navigator.locks && navigator.locks.request;
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
      this.connect(false);
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
      }
    }

    setState(state) {
      this.state = state;
      this.handlers.state(state);
      if (this.leader) this.publish({ type: "state", state: state });
    }

    async connect(renewToken) {
      var token = null;
      try {
        token = await this.getToken(renewToken);
      } catch (error) {
        console.warn("bellcast: the token provider failed", error);
      }
      if (this.stopped) return;
      if (!token) {
        this.failed();
        this.retryLater();
        return;
      }
      var source = new EventSource(this.server + STREAM_PATH + "?access_token=" + encodeURIComponent(token));
      // EventSource resumes with Last-Event-ID only once it has seen an id; until then, and on any
      // stream opened anew, the tabs reload the list instead so that nothing created meanwhile is lost.
      var resumable = false;
      this.source = source;
      source.addEventListener("open", () => {
        this.failures = 0;
        this.setState("live");
        if (!resumable) this.resync();
      });
      source.addEventListener("notification", (event) => {
        var notification;
        try {
          notification = JSON.parse(event.data);
        } catch (error) {
          return;
        }
        resumable = resumable || Boolean(event.lastEventId);
        this.handlers.notification(notification);
        this.publish({ type: "notification", notification: notification });
      });
      source.addEventListener("error", () => {
        if (source !== this.source) return;
        this.failed();
        if (source.readyState === EventSource.CLOSED) {
          // Refused (an expired token, the server busy): EventSource gives up, so retry with a fresh token.
          source.close();
          this.source = null;
          this.retryLater();
        }
        // Otherwise the browser reconnects by itself after the server's retry delay, with Last-Event-ID.
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
      var delay = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * Math.pow(2, Math.max(0, this.failures - 1)));
      this.timer = setTimeout(() => this.connect(true), delay * (0.5 + Math.random() / 2));
    }

    /** Back online: say so if the stream survived, else open it now rather than after the backoff. */
    reconnectNow() {
      if (!this.leader || this.stopped) return;
      if (this.source && this.source.readyState === EventSource.OPEN) {
        this.setState("live");
      } else if (!this.source || this.source.readyState === EventSource.CLOSED) {
        clearTimeout(this.timer);
        this.connect(true);
      } else {
        this.setState("reconnecting");
      }
    }
  }

  var BELL_ICON =
    "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-5.5-6.84V3.5" +
    "a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2z";

  var STYLES = `
:host {
  all: initial;
  display: inline-block;
  position: relative;
  font-family: var(--bellcast-font, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif);
  font-size: var(--bellcast-font-size, 14px);
  line-height: 1.4;
  color: var(--bellcast-color, #1f2933);
}
:host([hidden]) { display: none; }
*, *::before, *::after { box-sizing: border-box; }
button { font: inherit; color: inherit; cursor: pointer; }
:focus-visible { outline: 2px solid var(--bellcast-accent, #2563eb); outline-offset: 2px; }
.bell {
  position: relative; display: inline-flex; align-items: center; justify-content: center;
  width: calc(var(--bellcast-icon-size, 24px) + 16px); height: calc(var(--bellcast-icon-size, 24px) + 16px);
  padding: 0; border: 0; border-radius: 50%; background: transparent; color: var(--bellcast-icon-color, currentColor);
  transition: background-color 0.15s;
}
.bell:hover, .bell[aria-expanded="true"] { background: var(--bellcast-hover-background, rgba(0, 0, 0, 0.06)); }
.bell svg { width: var(--bellcast-icon-size, 24px); height: var(--bellcast-icon-size, 24px); fill: currentColor; }
.badge {
  position: absolute; top: 2px; right: 0; min-width: 18px; height: 18px; padding: 0 5px;
  border-radius: 9px; background: var(--bellcast-badge-background, #dc2626); color: var(--bellcast-badge-color, #fff);
  font-size: 11px; font-weight: 700; line-height: 18px; text-align: center;
  box-shadow: 0 0 0 2px var(--bellcast-background, #fff);
  animation: pop 0.25s ease-out;
}
.dot-state {
  position: absolute; bottom: 4px; right: 4px; width: 8px; height: 8px; border-radius: 50%;
  background: var(--bellcast-muted, #6b7280); box-shadow: 0 0 0 2px var(--bellcast-background, #fff);
}
.panel {
  position: absolute; top: calc(100% + 6px); right: 0; z-index: var(--bellcast-z-index, 1000);
  width: min(var(--bellcast-panel-width, 360px), calc(100vw - 16px));
  background: var(--bellcast-background, #fff); color: var(--bellcast-color, #1f2933);
  border: 1px solid var(--bellcast-border, #d9dee4); border-radius: var(--bellcast-radius, 10px);
  box-shadow: var(--bellcast-shadow, 0 12px 32px rgba(15, 23, 42, 0.18));
  text-align: left; overflow: hidden; animation: drop 0.15s ease-out;
}
.panel.start { right: auto; left: 0; }
.panel:focus { outline: none; }
header {
  display: flex; align-items: center; gap: 8px; padding: 10px 12px;
  border-bottom: 1px solid var(--bellcast-border, #d9dee4);
}
h2 { flex: 1; margin: 0; font-size: 1em; font-weight: 650; }
.state {
  display: inline-flex; align-items: center; gap: 5px; font-size: 0.85em; color: var(--bellcast-muted, #6b7280);
}
.state::before { content: ""; width: 8px; height: 8px; border-radius: 50%; background: currentColor; }
.state.live { color: var(--bellcast-live-color, #15803d); }
.state.reconnecting, .state.connecting { color: var(--bellcast-warning-color, #b45309); }
.state.offline { color: var(--bellcast-error-color, #b91c1c); }
.actions { display: flex; gap: 4px; padding: 6px 12px; border-bottom: 1px solid var(--bellcast-border, #d9dee4); }
.link-button {
  padding: 4px 6px; border: 0; border-radius: 6px; background: transparent;
  color: var(--bellcast-accent, #2563eb); font-size: 0.9em;
}
.link-button:hover:not(:disabled) { background: var(--bellcast-hover-background, rgba(0, 0, 0, 0.06)); }
.link-button:disabled { color: var(--bellcast-muted, #6b7280); cursor: default; }
.actions .link-button:last-child { margin-left: auto; }
ul {
  list-style: none; margin: 0; padding: 0; overflow-y: auto;
  max-height: var(--bellcast-panel-max-height, min(60vh, 440px));
}
li { position: relative; padding: 10px 12px 10px 26px; border-bottom: 1px solid var(--bellcast-border, #d9dee4); }
li:last-child { border-bottom: 0; }
li.unread { background: var(--bellcast-unread-background, #eff6ff); }
li.unread::before {
  content: ""; position: absolute; left: 10px; top: 16px; width: 8px; height: 8px; border-radius: 50%;
  background: var(--bellcast-accent, #2563eb);
}
li:focus-visible { outline-offset: -2px; }
.title { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.body { margin: 2px 0 0; white-space: pre-line; overflow-wrap: anywhere; color: var(--bellcast-body-color, inherit); }
.meta {
  display: flex; align-items: center; gap: 10px; margin-top: 4px; font-size: 0.85em;
  color: var(--bellcast-muted, #6b7280);
}
.meta a { color: var(--bellcast-accent, #2563eb); }
.meta .link-button { margin-left: auto; padding: 2px 4px; }
.empty, .error { margin: 0; padding: 24px 12px; text-align: center; color: var(--bellcast-muted, #6b7280); }
.error { padding: 10px 12px; color: var(--bellcast-error-color, #b91c1c); }
footer { padding: 6px 12px; border-top: 1px solid var(--bellcast-border, #d9dee4); text-align: center; }
.visually-hidden {
  position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; border: 0;
}
@keyframes pop { from { transform: scale(0.4); } to { transform: scale(1); } }
@keyframes drop { from { opacity: 0; transform: translateY(-4px); } to { opacity: 1; transform: none; } }
@media (prefers-reduced-motion: reduce) {
  *, *::before, *::after { animation: none !important; transition: none !important; scroll-behavior: auto !important; }
}
`;

  function defineBell(Vue) {
    var h = Vue.h;

    var Bell = {
      name: "NotificationBell",
      props: {
        server: String,
        token: String,
        tokenProvider: Function,
      },
      emits: ["notification"],
      styles: [STYLES],
      setup: function (props, context) {
        var host = Vue.useHost();
        var items = Vue.ref([]);
        var unread = Vue.ref(0);
        var nextBefore = Vue.ref(null);
        var open = Vue.ref(false);
        var alignStart = Vue.ref(false);
        var state = Vue.ref("connecting");
        var loading = Vue.ref(false);
        var loadingMore = Vue.ref(false);
        var problem = Vue.ref("");
        var announcement = Vue.ref("");
        var now = Vue.ref(Date.now());
        var bellButton = Vue.ref(null);
        var panel = Vue.ref(null);
        var list = Vue.ref(null);
        var stream = null;
        var streamKey = null;
        var renewedToken = null;
        // Ids received live while a list request is in flight: the answer may predate them.
        var arrivedDuringLoad = new Set();
        var clock = null;
        var panelId = "bellcast-panel";

        function server() {
          return (props.server || window.location.origin).replace(/\/+$/, "");
        }

        async function currentToken(renew) {
          if (props.tokenProvider && (renew || !(renewedToken || props.token))) {
            renewedToken = await props.tokenProvider();
            return renewedToken;
          }
          return renewedToken || props.token || null;
        }

        async function api(method, path, options) {
          for (var attempt = 0; ; attempt++) {
            var token = await currentToken(attempt > 0);
            if (!token) throw new Error("not signed in");
            var response = await fetch(server() + path, {
              method: method,
              headers: { Authorization: "Bearer " + token },
              credentials: "omit",
              keepalive: Boolean(options && options.keepalive),
            });
            // An expired token: ask the host app for a new one, once.
            if (response.status === 401 && attempt === 0 && props.tokenProvider) continue;
            if (!response.ok) {
              var body = await response.json().catch(() => null);
              throw new Error((body && body.error && body.error.message) || "HTTP " + response.status);
            }
            return response.json();
          }
        }

        function known(id) {
          return items.value.find((item) => item.id === id);
        }

        function receive(notification) {
          if (!notification || typeof notification.id !== "string" || known(notification.id)) return;
          arrivedDuringLoad.add(notification.id);
          items.value = items.value.concat([notification]).sort(newestFirst);
          if (!notification.read_at) unread.value += 1;
          announcement.value = "New notification: " + notification.title;
          context.emit("notification", notification);
        }

        /** Replace the list with the server's newest page (Refresh, and after a stream was reopened). */
        async function refresh() {
          arrivedDuringLoad = new Set();
          loading.value = true;
          var forKey = streamKey;
          try {
            var page = await api("GET", LIST_PATH + "?limit=" + PAGE_SIZE);
            if (forKey !== streamKey) return; // the user or server changed meanwhile
            var fetched = new Set(page.notifications.map((n) => n.id));
            var later = items.value.filter((n) => arrivedDuringLoad.has(n.id) && !fetched.has(n.id));
            items.value = page.notifications.concat(later).sort(newestFirst);
            unread.value = page.unread_count + later.filter((n) => !n.read_at).length;
            nextBefore.value = page.next_before;
            problem.value = "";
          } catch (error) {
            problem.value = "Could not load notifications: " + error.message;
          } finally {
            loading.value = false;
          }
        }

        async function loadMore() {
          if (!nextBefore.value || loadingMore.value) return;
          loadingMore.value = true;
          var forKey = streamKey;
          try {
            var query = "?limit=" + PAGE_SIZE + "&before=" + encodeURIComponent(nextBefore.value);
            var page = await api("GET", LIST_PATH + query);
            if (forKey !== streamKey) return;
            var older = page.notifications.filter((n) => !known(n.id));
            items.value = items.value.concat(older).sort(newestFirst);
            nextBefore.value = page.next_before;
            problem.value = "";
          } catch (error) {
            problem.value = "Could not load more: " + error.message;
          } finally {
            loadingMore.value = false;
          }
        }

        function applyRead(id, readAt, wasUnread) {
          var item = known(id);
          if (item ? item.read_at : !wasUnread) return;
          if (item) item.read_at = readAt;
          unread.value = Math.max(0, unread.value - 1);
        }

        async function markRead(item, options) {
          if (item.read_at) return;
          try {
            var updated = await api("POST", LIST_PATH + "/" + encodeURIComponent(item.id) + "/read", options);
            applyRead(item.id, updated.read_at, true);
            if (stream) stream.publish({ type: "read", id: item.id, read_at: updated.read_at, wasUnread: true });
          } catch (error) {
            problem.value = "Could not mark as read: " + error.message;
          }
        }

        /** Keep keyboard focus in the panel when the focused control goes away (read, or disabled). */
        async function keepFocus(fallback) {
          await Vue.nextTick();
          var active = host.shadowRoot.activeElement;
          if (open.value && (!active || active.disabled)) {
            var target = fallback && fallback.isConnected ? fallback : panel.value;
            if (target) target.focus();
          }
        }

        function applyReadAll(readAt) {
          items.value.forEach((item) => {
            if (!item.read_at) item.read_at = readAt;
          });
          unread.value = 0;
        }

        async function markAllRead() {
          try {
            await api("POST", LIST_PATH + "/read-all");
            var readAt = new Date().toISOString();
            applyReadAll(readAt);
            if (stream) stream.publish({ type: "read-all", read_at: readAt });
          } catch (error) {
            problem.value = "Could not mark all as read: " + error.message;
          }
        }

        /** (Re)start the shared stream when the server or the user changes; a renewed token keeps it. */
        async function connect() {
          var token = null;
          try {
            token = await currentToken(false);
          } catch (error) {
            console.warn("bellcast: the token provider failed", error);
          }
          if (!token) {
            state.value = "offline";
            problem.value = "Not signed in.";
            return;
          }
          var key = server() + "|" + (tokenSubject(token) || token);
          if (key === streamKey) return;
          if (stream) stream.stop();
          streamKey = key;
          items.value = [];
          unread.value = 0;
          nextBefore.value = null;
          stream = new SharedStream(server(), key, currentToken, {
            notification: receive,
            read: (message) => applyRead(message.id, message.read_at, message.wasUnread),
            readAll: (message) => applyReadAll(message.read_at),
            resync: refresh,
            state: (name) => {
              state.value = name;
            },
          });
          stream.start();
          refresh();
        }

        Vue.watch(
          () => [props.server, props.token, props.tokenProvider],
          () => {
            if (props.token) renewedToken = null;
            connect();
          }
        );

        function onDocumentPointer(event) {
          if (open.value && !event.composedPath().includes(host)) open.value = false;
        }

        function onDocumentKeydown(event) {
          // Escape closes the panel wherever focus is, as a popover does.
          if (open.value && event.key === "Escape") {
            if (host.shadowRoot.activeElement) event.preventDefault();
            close();
          }
        }

        Vue.onMounted(() => {
          document.addEventListener("pointerdown", onDocumentPointer, true);
          document.addEventListener("keydown", onDocumentKeydown);
          clock = setInterval(() => {
            now.value = Date.now();
          }, CLOCK_TICK_MS);
          connect();
        });

        Vue.onUnmounted(() => {
          document.removeEventListener("pointerdown", onDocumentPointer, true);
          document.removeEventListener("keydown", onDocumentKeydown);
          clearInterval(clock);
          if (stream) stream.stop();
          stream = null;
          streamKey = null;
        });

        function entries() {
          return list.value ? Array.from(list.value.querySelectorAll("li")) : [];
        }

        function focusEntry(index) {
          var all = entries();
          if (!all.length) return;
          var target = all[Math.max(0, Math.min(all.length - 1, index))];
          all.forEach((li) => li.setAttribute("tabindex", li === target ? "0" : "-1"));
          target.focus();
        }

        async function toggle() {
          open.value = !open.value;
          if (!open.value) return;
          now.value = Date.now();
          var rect = host.getBoundingClientRect();
          alignStart.value = rect.right < Math.min(360, window.innerWidth - 16);
          await Vue.nextTick();
          if (entries().length) focusEntry(0);
          else if (panel.value) panel.value.focus();
        }

        function close() {
          // Focus returns to the bell only if it was in the panel, never taken from the host page.
          var hadFocus = Boolean(host.shadowRoot.activeElement);
          open.value = false;
          if (hadFocus) Vue.nextTick(() => bellButton.value && bellButton.value.focus());
        }

        function onPanelKeydown(event) {
          var all = entries();
          var current = all.indexOf(event.target.closest ? event.target.closest("li") : null);
          if (event.key === "ArrowDown" || event.key === "ArrowUp") {
            event.preventDefault();
            focusEntry(current < 0 ? 0 : current + (event.key === "ArrowDown" ? 1 : -1));
          } else if (event.key === "Home" && current >= 0) {
            event.preventDefault();
            focusEntry(0);
          } else if (event.key === "End" && current >= 0) {
            event.preventDefault();
            focusEntry(all.length - 1);
          }
        }

        function onFocusOut(event) {
          // Focus moved out of the bell (Tab past the last control): close, as a menu would.
          var to = event.relatedTarget;
          if (open.value && to && !host.shadowRoot.contains(to) && to !== host) open.value = false;
        }

        function badgeText() {
          return unread.value > BADGE_CAP ? BADGE_CAP + "+" : String(unread.value);
        }

        function bellLabel() {
          return "Notifications, " + (unread.value ? unread.value + " unread" : "no unread");
        }

        function renderItem(item, index) {
          var url = safeUrl(item.url);
          var meta = [
            h(
              "time",
              { datetime: item.created_at, title: new Date(item.created_at).toLocaleString() },
              relativeTime(item.created_at, now.value)
            ),
          ];
          if (url) {
            // keepalive: the request outlives the page when the link navigates away.
            var onClick = () => markRead(item, { keepalive: true });
            meta.push(h("a", { href: url, "aria-label": "Open: " + item.title, onClick: onClick }, "Open"));
          }
          if (!item.read_at) {
            meta.push(
              h(
                "button",
                {
                  type: "button",
                  class: "link-button mark-read",
                  "aria-label": "Mark as read: " + item.title,
                  onClick: (event) => {
                    var entry = event.currentTarget.closest("li");
                    markRead(item).then(() => keepFocus(entry));
                  },
                },
                "Mark as read"
              )
            );
          }
          return h(
            "li",
            {
              key: item.id,
              class: { item: true, unread: !item.read_at },
              tabindex: index === 0 ? "0" : "-1",
              "data-id": item.id,
            },
            [
              item.read_at ? null : h("span", { class: "visually-hidden" }, "Unread:"),
              h("p", { class: "title" }, item.title),
              item.body ? h("p", { class: "body" }, item.body) : null,
              h("div", { class: "meta" }, meta),
            ]
          );
        }

        function textButton(name, label, disabled, onClick) {
          var attributes = { type: "button", class: "link-button " + name, disabled: disabled, onClick: onClick };
          return h("button", attributes, label);
        }

        function renderPanel() {
          var content;
          if (items.value.length) {
            var attributes = { ref: list, class: "list", "aria-label": "Notifications, newest first" };
            content = h("ul", attributes, items.value.map(renderItem));
          } else {
            content = h("p", { class: "empty" }, loading.value ? "Loading…" : "You have no notifications.");
          }
          return h(
            "section",
            {
              ref: panel,
              id: panelId,
              class: { panel: true, start: alignStart.value },
              role: "dialog",
              "aria-label": "Notifications",
              tabindex: "-1",
              onKeydown: onPanelKeydown,
            },
            [
              h("header", [
                h("h2", "Notifications"),
                h("span", { class: "state " + state.value, role: "status" }, STATE_LABELS[state.value] || state.value),
              ]),
              h("div", { class: "actions" }, [
                // Never disabled while it works, so that keyboard focus stays on it.
                textButton("refresh", loading.value ? "Refreshing…" : "Refresh", false, refresh),
                textButton("mark-all", "Mark all as read", !unread.value, () => {
                  markAllRead().then(() => keepFocus(null));
                }),
              ]),
              problem.value ? h("p", { class: "error", role: "alert" }, problem.value) : null,
              content,
              nextBefore.value
                ? h("footer", [
                    textButton("load-more", loadingMore.value ? "Loading…" : "Load more", false, loadMore),
                  ])
                : null,
            ]
          );
        }

        context.expose({ refresh: refresh });

        return function render() {
          return h("div", { class: "root", onFocusout: onFocusOut }, [
            h(
              "button",
              {
                ref: bellButton,
                type: "button",
                class: "bell",
                "aria-label": bellLabel(),
                "aria-expanded": String(open.value),
                "aria-haspopup": "dialog",
                "aria-controls": panelId,
                title: "Notifications (" + (STATE_LABELS[state.value] || state.value) + ")",
                onClick: toggle,
              },
              [
                h("svg", { viewBox: "0 0 24 24", "aria-hidden": "true", focusable: "false" }, [
                  h("path", { d: BELL_ICON }),
                ]),
                // Keyed by the count, so that each change replays the badge's pop.
                unread.value
                  ? h("span", { class: "badge", "aria-hidden": "true", key: unread.value }, badgeText())
                  : null,
                state.value === "live" ? null : h("span", { class: "dot-state", "aria-hidden": "true" }),
              ]
            ),
            open.value ? renderPanel() : null,
            h("div", { class: "visually-hidden", "aria-live": "polite" }, announcement.value),
          ]);
        };
      },
    };

    return Vue.defineCustomElement(Bell);
  }
})();
