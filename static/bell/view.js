/**
 * The bell's rendering: the <notification-bell> Vue custom element, its panel with tabs, and the
 * keyboard and focus handling of a popover. The list's state is the store's; this module only
 * shows it, in the bell's language, and turns clicks into the store's actions.
 */
import * as Vue from "../vendor/vue.runtime.esm-browser.prod.js";
import { Credentials } from "./api.js";
import { Translator } from "./i18n.js";
import { BellStore, INBOX, tabFilter, tagTab } from "./store.js";
import { STYLES } from "./styles.js";

const h = Vue.h;
const BADGE_CAP = 99;
const CLOCK_TICK_MS = 30000;
const PANEL_ID = "bellcast-panel";
const LIST_PANEL_ID = "bellcast-list";
// As the server bounds a notification's tags.
const MAX_TAG_TABS = 8;
const MAX_TAG_LENGTH = 32;
const STATE_MESSAGES = {
  connecting: "stateConnecting",
  live: "stateLive",
  reconnecting: "stateReconnecting",
  offline: "stateOffline",
};
const BELL_ICON =
  "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-5.5-6.84V3.5" +
  "a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2z";
const ARCHIVE_ICON = "M4 4h16v4H4zm1 5h14v11H5zm4 3v2h6v-2z";
const UNARCHIVE_ICON = "M4 4h16v4H4zm1 5h14v11H5zm7 2-4 4h3v3h2v-3h3z";
const DELETE_ICON = "M9 3h6l1 2h4v2H4V5h4zm-3 5h12l-1 13H7zm4 3v7h1.5v-7zm3.5 0v7H15v-7z";

/**
 * Only http(s) URLs with a host and paths of this site become links, as the server checks them:
 * browsers read a backslash as a slash and drop tabs and newlines, so "/\evil.example" or
 * "/<tab>/evil.example" would open another site, as "//evil.example" does.
 */
function safeUrl(url) {
  if (typeof url !== "string" || /[\s\\]/.test(url)) return null;
  return /^(https?:\/\/[^/]|\/(?!\/))/i.test(url) ? url : null;
}

/** An avatar is shown only from an https URL with a host (never a path, data: or javascript:). */
function safeAvatarUrl(url) {
  if (typeof url !== "string" || /[\s\\]/.test(url)) return null;
  return /^https:\/\/[^/]/i.test(url) ? url : null;
}

/** The tags of the `tabs` attribute ("billing, security"): trimmed, each once, as many as a notification has. */
function tagTabs(attribute) {
  const tags = String(attribute || "")
    .split(",")
    .map((tag) => tag.trim())
    .filter((tag) => tag && tag.length <= MAX_TAG_LENGTH);
  return Array.from(new Set(tags)).slice(0, MAX_TAG_TABS);
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

  /**
   * Run `action` on the entry `entry` and keep keyboard focus in the panel when the focused
   * control goes away: on the entry if it is still listed, else on the one now in its place.
   */
  async function keepFocus(entry, action) {
    const index = entry ? entries().indexOf(entry) : -1;
    await action();
    await Vue.nextTick();
    const active = host.shadowRoot.activeElement;
    if (!open.value || (active && !active.disabled)) return;
    if (entry && entry.isConnected) entry.focus();
    else if (index >= 0 && entries().length) focusEntry(index);
    else if (panel.value) panel.value.focus();
  }

  function onPanelKeydown(event) {
    if (event.defaultPrevented) return;
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
// now (a ref of the time shown), announcement (a ref of what screen readers are told), props (the
// element's), i18n (a computed Translator), tabs (a computed list of { key, label }) }.

function textButton(name, label, disabled, onClick) {
  const attributes = { type: "button", class: "link-button " + name, part: "button", disabled: disabled };
  return h("button", { ...attributes, onClick: onClick }, label);
}

function iconButton(name, label, tooltip, icon, onClick) {
  const attributes = { type: "button", class: "icon-button " + name, part: "item-button", "aria-label": label };
  return h("button", { ...attributes, title: tooltip, onClick: onClick }, [
    h("svg", { viewBox: "0 0 24 24", "aria-hidden": "true", focusable: "false" }, [h("path", { d: icon })]),
  ]);
}

/** The links of a notification's `actions`, each checked as `url` is; following one marks it read. */
function renderActions(view, item) {
  const { store } = view;
  const t = (key, params) => view.i18n.value.t(key, params);
  const links = (Array.isArray(item.actions) ? item.actions : [])
    .map((action) => ({
      label: action && typeof action.label === "string" ? action.label : "",
      url: safeUrl(action && action.url),
    }))
    .filter((action) => action.label && action.url)
    .map((action, index) =>
      h(
        "a",
        {
          key: index,
          class: "action" + (index === 0 ? " primary" : ""),
          part: "action",
          href: action.url,
          "aria-label": t("actionLabel", { action: action.label, title: item.title }),
          // keepalive: the request outlives the page when the link navigates away.
          onClick: () => store.markRead(item, { keepalive: true }),
        },
        action.label
      )
    );
  return links.length ? h("div", { class: "item-actions" }, links) : null;
}

function renderItem(view, item, index) {
  const { store, panel } = view;
  const i18n = view.i18n.value;
  const t = (key, params) => i18n.t(key, params);
  const url = safeUrl(item.url);
  const avatar = safeAvatarUrl(item.avatar_url);
  const onEntry = (action) => (event) => panel.keepFocus(event.currentTarget.closest("li"), action);
  const meta = [
    h(
      "time",
      { datetime: item.created_at, title: i18n.dateTime(item.created_at), part: "time" },
      i18n.relativeTime(item.created_at, view.now.value)
    ),
  ];
  if (url) {
    // keepalive: the request outlives the page when the link navigates away.
    const onClick = () => store.markRead(item, { keepalive: true });
    meta.push(h("a", { href: url, "aria-label": t("openLabel", { title: item.title }), onClick: onClick }, t("open")));
  }
  const buttons = [];
  if (!item.read_at) {
    const label = t("markReadLabel", { title: item.title });
    const attributes = { type: "button", class: "link-button mark-read", part: "item-button", "aria-label": label };
    buttons.push(h("button", { ...attributes, onClick: onEntry(() => store.markRead(item)) }, t("markRead")));
  }
  if (item.archived_at) {
    const onClick = onEntry(() => store.setArchived(item, false));
    const label = t("unarchiveLabel", { title: item.title });
    buttons.push(iconButton("unarchive", label, t("unarchive"), UNARCHIVE_ICON, onClick));
  } else {
    const onClick = onEntry(() => store.setArchived(item, true));
    const label = t("archiveLabel", { title: item.title });
    buttons.push(iconButton("archive", label, t("archive"), ARCHIVE_ICON, onClick));
  }
  const onDelete = onEntry(() => store.remove(item));
  buttons.push(iconButton("delete", t("deleteLabel", { title: item.title }), t("delete"), DELETE_ICON, onDelete));
  meta.push(h("span", { class: "item-buttons" }, buttons));

  const attributes = {
    key: item.id,
    class: { item: true, unread: !item.read_at, "with-avatar": Boolean(avatar) },
    part: item.read_at ? "item" : "item item-unread",
    tabindex: index === 0 ? "0" : "-1",
    "data-id": item.id,
  };
  return h("li", attributes, [
    avatar
      ? h("img", {
          class: "avatar",
          part: "avatar",
          src: avatar,
          alt: "",
          loading: "lazy",
          referrerpolicy: "no-referrer",
          // A broken image says nothing: leave the space empty.
          onError: (event) => {
            event.currentTarget.style.visibility = "hidden";
          },
        })
      : null,
    h("div", { class: "content" }, [
      item.read_at ? null : h("span", { class: "visually-hidden" }, t("unreadMarker")),
      h("p", { class: "title", part: "title" }, item.title),
      item.body ? h("p", { class: "body", part: "body" }, item.body) : null,
      renderActions(view, item),
      h("div", { class: "meta" }, meta),
    ]),
  ]);
}

function emptyText(view) {
  const { state } = view.store;
  const t = (key, params) => view.i18n.value.t(key, params);
  if (state.loading) return t("loading");
  const filter = tabFilter(state.tab);
  if (filter.tag) return t("emptyTag", { tag: filter.tag });
  return t(filter.status === "unread" ? "emptyUnread" : filter.status === "archived" ? "emptyArchived" : "emptyInbox");
}

function renderList(view) {
  const { state } = view.store;
  if (!state.items.length) return h("p", { class: "empty", part: "empty" }, emptyText(view));
  const label = view.i18n.value.t("listLabel");
  const attributes = { ref: view.panel.list, class: "list", part: "list", "aria-label": label };
  return h("ul", attributes, state.items.map((item, index) => renderItem(view, item, index)));
}

/** Tabs as the ARIA tabs pattern: arrow keys, Home and End move between them and show the one reached. */
function renderTabs(view) {
  const { store } = view;
  const tabs = view.tabs.value;
  const selected = store.state.tab;
  function onKeydown(event) {
    const index = tabs.findIndex((tab) => tab.key === selected);
    const moves = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const tablist = event.currentTarget;
    const target = tabs[(moves[event.key] + tabs.length) % tabs.length];
    store.selectTab(target.key);
    Vue.nextTick(() => {
      const button = tablist.querySelector('[aria-selected="true"]');
      if (button) button.focus();
    });
  }
  const listAttributes = {
    class: "tabs",
    part: "tabs",
    role: "tablist",
    "aria-label": view.i18n.value.t("tabsLabel"),
    onKeydown: onKeydown,
  };
  return h(
    "div",
    listAttributes,
    tabs.map((tab, index) => {
      const isSelected = tab.key === selected;
      const attributes = {
        key: tab.key,
        id: "bellcast-tab-" + index,
        type: "button",
        role: "tab",
        class: "tab",
        part: isSelected ? "tab tab-selected" : "tab",
        "aria-selected": String(isSelected),
        "aria-controls": LIST_PANEL_ID,
        tabindex: isSelected ? "0" : "-1",
        "data-tab": tab.key,
        onClick: () => store.selectTab(tab.key),
      };
      return h("button", attributes, tab.label);
    })
  );
}

/** Whether "Mark all as read" has anything to do in the shown tab. */
function canMarkAllRead(state) {
  const filter = tabFilter(state.tab);
  const listedUnread = state.items.some((item) => !item.read_at);
  if (filter.status === "archived") return listedUnread || Boolean(state.nextBefore);
  // The unread count covers everything not archived: nothing there is unread when it is 0.
  if (!state.unread) return false;
  return filter.tag ? listedUnread || Boolean(state.nextBefore) : true;
}

function renderPanel(view) {
  const { store, panel } = view;
  const { state } = store;
  const t = (key, params) => view.i18n.value.t(key, params);
  const selectedIndex = view.tabs.value.findIndex((tab) => tab.key === state.tab);
  const attributes = {
    ref: panel.panel,
    id: PANEL_ID,
    class: { panel: true, start: panel.alignStart.value },
    part: "panel",
    role: "dialog",
    "aria-label": t("notifications"),
    tabindex: "-1",
    onKeydown: panel.onPanelKeydown,
  };
  const markAll = () => panel.keepFocus(null, () => store.markAllRead());
  const moreLabel = state.loadingMore ? t("loading") : t("loadMore");
  const problem = state.problem ? t(state.problem.key, { error: state.problem.error }) : "";
  return h("section", attributes, [
    h("header", { part: "header" }, [
      h("h2", t("notifications")),
      h("span", { class: "state " + state.connection, role: "status" }, t(STATE_MESSAGES[state.connection])),
    ]),
    renderTabs(view),
    h("div", { class: "actions", part: "toolbar" }, [
      // Never disabled while it works, so that keyboard focus stays on it.
      textButton("refresh", state.loading ? t("refreshing") : t("refresh"), false, () => store.refresh()),
      textButton("mark-all", t("markAllRead"), !canMarkAllRead(state), markAll),
    ]),
    problem ? h("p", { class: "error", role: "alert" }, problem) : null,
    h("div", { id: LIST_PANEL_ID, role: "tabpanel", "aria-labelledby": "bellcast-tab-" + Math.max(0, selectedIndex) }, [
      renderList(view),
    ]),
    state.nextBefore ? h("footer", [textButton("load-more", moreLabel, false, () => store.loadMore())]) : null,
  ]);
}

/** What the badge counts: unread by default, unseen with badge="unseen" (once the server counts them). */
function badgeCount(view) {
  const { unread, unseen } = view.store.state;
  return view.props.badge === "unseen" && unseen !== null ? unseen : unread;
}

function renderBellButton(view) {
  const { store, panel } = view;
  const { connection } = store.state;
  const t = (key, params) => view.i18n.value.t(key, params);
  const count = badgeCount(view);
  const unseenBadge = view.props.badge === "unseen" && store.state.unseen !== null;
  const badgeText = count > BADGE_CAP ? BADGE_CAP + "+" : String(count);
  const label = count
    ? t(unseenBadge ? "bellLabelUnseen" : "bellLabelUnread", { count: count })
    : t(unseenBadge ? "bellLabelNoneUnseen" : "bellLabelNone");
  const attributes = {
    ref: panel.bellButton,
    type: "button",
    class: "bell",
    part: "bell",
    "aria-label": label,
    "aria-expanded": String(panel.open.value),
    "aria-haspopup": "dialog",
    "aria-controls": PANEL_ID,
    title: t("bellTitle", { state: t(STATE_MESSAGES[connection]) }),
    onClick: panel.toggle,
  };
  return h("button", attributes, [
    h("svg", { viewBox: "0 0 24 24", "aria-hidden": "true", focusable: "false" }, [h("path", { d: BELL_ICON })]),
    // Keyed by the count, so that each change replays the badge's pop.
    count ? h("span", { class: "badge", part: "badge", "aria-hidden": "true", key: count }, badgeText) : null,
    connection === "live" ? null : h("span", { class: "dot-state", "aria-hidden": "true" }),
  ]);
}

function render(view) {
  const theme = view.props.theme === "dark" || view.props.theme === "light" ? view.props.theme : "auto";
  const attributes = { class: "root theme-" + theme, lang: view.i18n.value.locale, onFocusout: view.panel.onFocusOut };
  return h("div", attributes, [
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
    tabs: String,
    badge: String,
    theme: String,
    locale: String,
    messages: Object,
  },
  emits: ["notification"],
  styles: [STYLES],
  setup(props, context) {
    const announcement = Vue.ref("");
    const i18n = Vue.computed(() => new Translator(props.locale, props.messages));
    const credentials = new Credentials(() => props);
    const store = new BellStore(credentials, (notification) => {
      announcement.value = i18n.value.t("announceNew", { title: notification.title });
      context.emit("notification", notification);
    });
    const now = useClock();
    // Opening the panel shows times as of now, not as of the clock's last tick, and marks everything seen.
    const panel = usePanel(Vue.useHost(), () => {
      now.value = Date.now();
      store.markSeen();
    });
    const tabs = Vue.computed(() => {
      const t = (key) => i18n.value.t(key);
      const fixed = [
        { key: INBOX, label: t("tabInbox") },
        { key: "unread", label: t("tabUnread") },
        { key: "archived", label: t("tabArchived") },
      ];
      return fixed.concat(tagTabs(props.tabs).map((tag) => ({ key: tagTab(tag), label: tag })));
    });
    const view = { store, announcement, panel, now, props, i18n, tabs };

    Vue.watch(
      () => [props.server, props.token, props.tokenProvider],
      () => {
        if (props.token) credentials.forgetRenewedToken();
        store.connect();
      }
    );
    // A tag tab the host took away: back to the inbox.
    Vue.watch(tabs, (current) => {
      if (!current.some((tab) => tab.key === store.state.tab)) store.selectTab(INBOX);
    });
    Vue.onMounted(() => store.connect());
    Vue.onUnmounted(() => store.disconnect());

    context.expose({ refresh: () => store.refresh() });
    return () => render(view);
  },
};

/** The <notification-bell> element's class, for customElements.define. */
export const NotificationBell = Vue.defineCustomElement(Bell);
