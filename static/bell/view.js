/**
 * The bell's rendering: the <notification-bell> Vue custom element, its panel, and the keyboard
 * and focus handling of a popover. The list's state is the store's; this module only shows it
 * and turns clicks into the store's actions.
 */
import * as Vue from "../vendor/vue.runtime.esm-browser.prod.js";
import { Credentials } from "./api.js";
import { BellStore } from "./store.js";
import { STYLES } from "./styles.js";

const h = Vue.h;
const BADGE_CAP = 99;
const CLOCK_TICK_MS = 30000;
const PANEL_ID = "bellcast-panel";
const STATE_LABELS = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};
const BELL_ICON =
  "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-5.5-6.84V3.5" +
  "a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2z";

/**
 * Only http(s) URLs with a host and paths of this site become links, as the server checks them:
 * browsers read a backslash as a slash and drop tabs and newlines, so "/\evil.example" or
 * "/<tab>/evil.example" would open another site, as "//evil.example" does.
 */
function safeUrl(url) {
  if (typeof url !== "string" || /[\s\\]/.test(url)) return null;
  return /^(https?:\/\/[^/]|\/(?!\/))/i.test(url) ? url : null;
}

let relativeTimeFormat = null;

function relativeTime(iso, now) {
  // Never "in 2 seconds": a server clock slightly ahead of this one still reads as "now".
  const seconds = Math.min(0, Math.round((Date.parse(iso) - now) / 1000));
  relativeTimeFormat = relativeTimeFormat || new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const units = [
    ["year", 31536000],
    ["month", 2592000],
    ["week", 604800],
    ["day", 86400],
    ["hour", 3600],
    ["minute", 60],
  ];
  for (const [unit, length] of units) {
    if (Math.abs(seconds) >= length) return relativeTimeFormat.format(Math.round(seconds / length), unit);
  }
  return relativeTimeFormat.format(0, "second");
}

function stateLabel(name) {
  return STATE_LABELS[name] || name;
}

/**
 * The panel's opening, closing and keyboard focus, as a popover's: focus goes to the first entry
 * on opening, arrows move between entries, Escape, a click outside or tabbing out closes it.
 * `onOpen()` is called each time the panel opens.
 */
function usePanel(host, onOpen) {
  const open = Vue.ref(false);
  const alignStart = Vue.ref(false);
  const bellButton = Vue.ref(null);
  const panel = Vue.ref(null);
  const list = Vue.ref(null);

  function entries() {
    return list.value ? Array.from(list.value.querySelectorAll("li")) : [];
  }

  function focusEntry(index) {
    const all = entries();
    if (!all.length) return;
    const target = all[Math.max(0, Math.min(all.length - 1, index))];
    all.forEach((li) => li.setAttribute("tabindex", li === target ? "0" : "-1"));
    target.focus();
  }

  async function toggle() {
    open.value = !open.value;
    if (!open.value) return;
    onOpen();
    const rect = host.getBoundingClientRect();
    alignStart.value = rect.right < Math.min(360, window.innerWidth - 16);
    await Vue.nextTick();
    if (entries().length) focusEntry(0);
    else if (panel.value) panel.value.focus();
  }

  function close() {
    // Focus returns to the bell only if it was in the panel, never taken from the host page.
    const hadFocus = Boolean(host.shadowRoot.activeElement);
    open.value = false;
    if (hadFocus) Vue.nextTick(() => bellButton.value && bellButton.value.focus());
  }

  /** Keep keyboard focus in the panel when the focused control goes away (read, or disabled). */
  async function keepFocus(fallback) {
    await Vue.nextTick();
    const active = host.shadowRoot.activeElement;
    if (open.value && (!active || active.disabled)) {
      const target = fallback && fallback.isConnected ? fallback : panel.value;
      if (target) target.focus();
    }
  }

  function onPanelKeydown(event) {
    const all = entries();
    const current = all.indexOf(event.target.closest ? event.target.closest("li") : null);
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
    const to = event.relatedTarget;
    if (open.value && to && !host.shadowRoot.contains(to) && to !== host) open.value = false;
  }

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
  });
  Vue.onUnmounted(() => {
    document.removeEventListener("pointerdown", onDocumentPointer, true);
    document.removeEventListener("keydown", onDocumentKeydown);
  });

  return { open, alignStart, bellButton, panel, list, toggle, keepFocus, onPanelKeydown, onFocusOut };
}

/** The current time, ticking so that "2 minutes ago" stays true while the page is open. */
function useClock() {
  const now = Vue.ref(Date.now());
  let timer = null;
  Vue.onMounted(() => {
    timer = setInterval(() => {
      now.value = Date.now();
    }, CLOCK_TICK_MS);
  });
  Vue.onUnmounted(() => clearInterval(timer));
  return now;
}

// The render functions below take the element's `view`: { store (a BellStore), panel (usePanel's),
// now (a ref of the time shown), announcement (a ref of what screen readers are told) }.

function textButton(name, label, disabled, onClick) {
  return h("button", { type: "button", class: "link-button " + name, disabled: disabled, onClick: onClick }, label);
}

function renderItem(view, item, index) {
  const { store, panel } = view;
  const url = safeUrl(item.url);
  const meta = [
    h(
      "time",
      { datetime: item.created_at, title: new Date(item.created_at).toLocaleString() },
      relativeTime(item.created_at, view.now.value)
    ),
  ];
  if (url) {
    // keepalive: the request outlives the page when the link navigates away.
    const onClick = () => store.markRead(item, { keepalive: true });
    meta.push(h("a", { href: url, "aria-label": "Open: " + item.title, onClick: onClick }, "Open"));
  }
  if (!item.read_at) {
    const onClick = (event) => {
      const entry = event.currentTarget.closest("li");
      store.markRead(item).then(() => panel.keepFocus(entry));
    };
    const attributes = { type: "button", class: "link-button mark-read", "aria-label": "Mark as read: " + item.title };
    meta.push(h("button", { ...attributes, onClick: onClick }, "Mark as read"));
  }
  const attributes = {
    key: item.id,
    class: { item: true, unread: !item.read_at },
    tabindex: index === 0 ? "0" : "-1",
    "data-id": item.id,
  };
  return h("li", attributes, [
    item.read_at ? null : h("span", { class: "visually-hidden" }, "Unread:"),
    h("p", { class: "title" }, item.title),
    item.body ? h("p", { class: "body" }, item.body) : null,
    h("div", { class: "meta" }, meta),
  ]);
}

function renderList(view) {
  const { state } = view.store;
  if (!state.items.length) {
    return h("p", { class: "empty" }, state.loading ? "Loading…" : "You have no notifications.");
  }
  const attributes = { ref: view.panel.list, class: "list", "aria-label": "Notifications, newest first" };
  return h("ul", attributes, state.items.map((item, index) => renderItem(view, item, index)));
}

function renderPanel(view) {
  const { store, panel } = view;
  const { state } = store;
  const attributes = {
    ref: panel.panel,
    id: PANEL_ID,
    class: { panel: true, start: panel.alignStart.value },
    role: "dialog",
    "aria-label": "Notifications",
    tabindex: "-1",
    onKeydown: panel.onPanelKeydown,
  };
  const markAll = () => store.markAllRead().then(() => panel.keepFocus(null));
  const moreLabel = state.loadingMore ? "Loading…" : "Load more";
  return h("section", attributes, [
    h("header", [
      h("h2", "Notifications"),
      h("span", { class: "state " + state.connection, role: "status" }, stateLabel(state.connection)),
    ]),
    h("div", { class: "actions" }, [
      // Never disabled while it works, so that keyboard focus stays on it.
      textButton("refresh", state.loading ? "Refreshing…" : "Refresh", false, () => store.refresh()),
      textButton("mark-all", "Mark all as read", !state.unread, markAll),
    ]),
    state.problem ? h("p", { class: "error", role: "alert" }, state.problem) : null,
    renderList(view),
    state.nextBefore ? h("footer", [textButton("load-more", moreLabel, false, () => store.loadMore())]) : null,
  ]);
}

function renderBellButton(view) {
  const { store, panel } = view;
  const { unread, connection } = store.state;
  const badgeText = unread > BADGE_CAP ? BADGE_CAP + "+" : String(unread);
  const attributes = {
    ref: panel.bellButton,
    type: "button",
    class: "bell",
    "aria-label": "Notifications, " + (unread ? unread + " unread" : "no unread"),
    "aria-expanded": String(panel.open.value),
    "aria-haspopup": "dialog",
    "aria-controls": PANEL_ID,
    title: "Notifications (" + stateLabel(connection) + ")",
    onClick: panel.toggle,
  };
  return h("button", attributes, [
    h("svg", { viewBox: "0 0 24 24", "aria-hidden": "true", focusable: "false" }, [h("path", { d: BELL_ICON })]),
    // Keyed by the count, so that each change replays the badge's pop.
    unread ? h("span", { class: "badge", "aria-hidden": "true", key: unread }, badgeText) : null,
    connection === "live" ? null : h("span", { class: "dot-state", "aria-hidden": "true" }),
  ]);
}

function render(view) {
  return h("div", { class: "root", onFocusout: view.panel.onFocusOut }, [
    renderBellButton(view),
    view.panel.open.value ? renderPanel(view) : null,
    h("div", { class: "visually-hidden", "aria-live": "polite" }, view.announcement.value),
  ]);
}

const Bell = {
  name: "NotificationBell",
  props: {
    server: String,
    token: String,
    tokenProvider: Function,
  },
  emits: ["notification"],
  styles: [STYLES],
  setup(props, context) {
    const announcement = Vue.ref("");
    const credentials = new Credentials(() => props);
    const store = new BellStore(credentials, (notification) => {
      announcement.value = "New notification: " + notification.title;
      context.emit("notification", notification);
    });
    const now = useClock();
    // Opening the panel shows times as of now, not as of the clock's last tick.
    const panel = usePanel(Vue.useHost(), () => {
      now.value = Date.now();
    });
    const view = { store, announcement, panel, now };

    Vue.watch(
      () => [props.server, props.token, props.tokenProvider],
      () => {
        if (props.token) credentials.forgetRenewedToken();
        store.connect();
      }
    );
    Vue.onMounted(() => store.connect());
    Vue.onUnmounted(() => store.disconnect());

    context.expose({ refresh: () => store.refresh() });
    return () => render(view);
  },
};

/** The <notification-bell> element's class, for customElements.define. */
export const NotificationBell = Vue.defineCustomElement(Bell);
