/**
 * The bell's words: English, German and French, chosen by the `locale` attribute, any of them
 * replaced by the host through the `messages` property, and relative times ("3 minutes ago")
 * from Intl.RelativeTimeFormat in the same locale.
 *
 * A message is a string with `{name}` placeholders, or, where a count decides the wording, an
 * object keyed by Intl.PluralRules categories ("one", "other", ...) whose "other" is required.
 */

export const DEFAULT_LOCALE = "en";

export const MESSAGES = {
  en: {
    notifications: "Notifications",
    bellLabelUnread: "Notifications, {count} unread",
    bellLabelUnseen: "Notifications, {count} new",
    bellLabelNone: "Notifications, no unread",
    bellLabelNoneUnseen: "Notifications, nothing new",
    bellTitle: "Notifications ({state})",
    stateConnecting: "Connecting…",
    stateLive: "Live",
    stateReconnecting: "Reconnecting…",
    stateOffline: "Offline",
    tabsLabel: "Show",
    tabInbox: "Inbox",
    tabUnread: "Unread",
    tabArchived: "Archived",
    listLabel: "Notifications, newest first",
    refresh: "Refresh",
    refreshing: "Refreshing…",
    markAllRead: "Mark all as read",
    loading: "Loading…",
    loadMore: "Load more",
    emptyInbox: "You have no notifications.",
    emptyUnread: "You have no unread notifications.",
    emptyArchived: "You have no archived notifications.",
    emptyTag: "You have no notifications tagged {tag}.",
    unreadMarker: "Unread:",
    open: "Open",
    openLabel: "Open: {title}",
    actionLabel: "{action}: {title}",
    markRead: "Mark as read",
    markReadLabel: "Mark as read: {title}",
    archive: "Archive",
    archiveLabel: "Archive: {title}",
    unarchive: "Move to inbox",
    unarchiveLabel: "Move to inbox: {title}",
    delete: "Delete",
    deleteLabel: "Delete: {title}",
    announceNew: "New notification: {title}",
    notSignedIn: "Not signed in.",
    couldNotLoad: "Could not load notifications: {error}",
    couldNotLoadMore: "Could not load more: {error}",
    couldNotMarkRead: "Could not mark as read: {error}",
    couldNotMarkAllRead: "Could not mark all as read: {error}",
    couldNotArchive: "Could not archive: {error}",
    couldNotUnarchive: "Could not move to the inbox: {error}",
    couldNotDelete: "Could not delete: {error}",
  },
  de: {
    notifications: "Benachrichtigungen",
    bellLabelUnread: "Benachrichtigungen, {count} ungelesen",
    bellLabelUnseen: "Benachrichtigungen, {count} neu",
    bellLabelNone: "Benachrichtigungen, keine ungelesen",
    bellLabelNoneUnseen: "Benachrichtigungen, nichts Neues",
    bellTitle: "Benachrichtigungen ({state})",
    stateConnecting: "Verbinde…",
    stateLive: "Live",
    stateReconnecting: "Verbinde neu…",
    stateOffline: "Offline",
    tabsLabel: "Anzeigen",
    tabInbox: "Eingang",
    tabUnread: "Ungelesen",
    tabArchived: "Archiv",
    listLabel: "Benachrichtigungen, neueste zuerst",
    refresh: "Aktualisieren",
    refreshing: "Aktualisiere…",
    markAllRead: "Alle als gelesen markieren",
    loading: "Lade…",
    loadMore: "Mehr laden",
    emptyInbox: "Keine Benachrichtigungen.",
    emptyUnread: "Keine ungelesenen Benachrichtigungen.",
    emptyArchived: "Keine archivierten Benachrichtigungen.",
    emptyTag: "Keine Benachrichtigungen mit dem Schlagwort {tag}.",
    unreadMarker: "Ungelesen:",
    open: "Öffnen",
    openLabel: "Öffnen: {title}",
    actionLabel: "{action}: {title}",
    markRead: "Als gelesen markieren",
    markReadLabel: "Als gelesen markieren: {title}",
    archive: "Archivieren",
    archiveLabel: "Archivieren: {title}",
    unarchive: "In den Eingang",
    unarchiveLabel: "In den Eingang: {title}",
    delete: "Löschen",
    deleteLabel: "Löschen: {title}",
    announceNew: "Neue Benachrichtigung: {title}",
    notSignedIn: "Nicht angemeldet.",
    couldNotLoad: "Benachrichtigungen konnten nicht geladen werden: {error}",
    couldNotLoadMore: "Weitere konnten nicht geladen werden: {error}",
    couldNotMarkRead: "Konnte nicht als gelesen markiert werden: {error}",
    couldNotMarkAllRead: "Konnten nicht als gelesen markiert werden: {error}",
    couldNotArchive: "Konnte nicht archiviert werden: {error}",
    couldNotUnarchive: "Konnte nicht in den Eingang verschoben werden: {error}",
    couldNotDelete: "Konnte nicht gelöscht werden: {error}",
  },
  fr: {
    notifications: "Notifications",
    bellLabelUnread: { one: "Notifications, {count} non lue", other: "Notifications, {count} non lues" },
    bellLabelUnseen: { one: "Notifications, {count} nouvelle", other: "Notifications, {count} nouvelles" },
    bellLabelNone: "Notifications, aucune non lue",
    bellLabelNoneUnseen: "Notifications, rien de nouveau",
    bellTitle: "Notifications ({state})",
    stateConnecting: "Connexion…",
    stateLive: "En direct",
    stateReconnecting: "Reconnexion…",
    stateOffline: "Hors ligne",
    tabsLabel: "Afficher",
    tabInbox: "Boîte de réception",
    tabUnread: "Non lues",
    tabArchived: "Archivées",
    listLabel: "Notifications, les plus récentes d’abord",
    refresh: "Actualiser",
    refreshing: "Actualisation…",
    markAllRead: "Tout marquer comme lu",
    loading: "Chargement…",
    loadMore: "Afficher plus",
    emptyInbox: "Vous n’avez aucune notification.",
    emptyUnread: "Vous n’avez aucune notification non lue.",
    emptyArchived: "Vous n’avez aucune notification archivée.",
    emptyTag: "Vous n’avez aucune notification avec l’étiquette {tag}.",
    unreadMarker: "Non lue :",
    open: "Ouvrir",
    openLabel: "Ouvrir : {title}",
    actionLabel: "{action} : {title}",
    markRead: "Marquer comme lue",
    markReadLabel: "Marquer comme lue : {title}",
    archive: "Archiver",
    archiveLabel: "Archiver : {title}",
    unarchive: "Remettre dans la boîte",
    unarchiveLabel: "Remettre dans la boîte : {title}",
    delete: "Supprimer",
    deleteLabel: "Supprimer : {title}",
    announceNew: "Nouvelle notification : {title}",
    notSignedIn: "Non connecté.",
    couldNotLoad: "Impossible de charger les notifications : {error}",
    couldNotLoadMore: "Impossible d’en charger plus : {error}",
    couldNotMarkRead: "Impossible de marquer comme lue : {error}",
    couldNotMarkAllRead: "Impossible de tout marquer comme lu : {error}",
    couldNotArchive: "Impossible d’archiver : {error}",
    couldNotUnarchive: "Impossible de remettre dans la boîte : {error}",
    couldNotDelete: "Impossible de supprimer : {error}",
  },
};

/**
 * The shipped locale for a BCP 47 tag ("de-CH" → "de"), or the default; with no tag, the host
 * page's `<html lang>`, so that a bell on a German page speaks German unasked.
 */
export function resolveLocale(requested) {
  const tag = requested || document.documentElement.lang || DEFAULT_LOCALE;
  const language = String(tag).toLowerCase().split(/[-_]/)[0];
  return Object.prototype.hasOwnProperty.call(MESSAGES, language) ? language : DEFAULT_LOCALE;
}

const RELATIVE_UNITS = [
  ["year", 31536000],
  ["month", 2592000],
  ["week", 604800],
  ["day", 86400],
  ["hour", 3600],
  ["minute", 60],
];

/**
 * The words of one locale with the host's overrides: `t(key, params)` answers the text, plural
 * forms chosen by `params.count`; `relativeTime(iso, now)` says how long ago `iso` was.
 */
export class Translator {
  constructor(locale, overrides) {
    this.locale = resolveLocale(locale);
    this.messages = { ...MESSAGES[DEFAULT_LOCALE], ...MESSAGES[this.locale], ...(overrides || {}) };
    this.plurals = new Intl.PluralRules(this.locale);
    this.relative = new Intl.RelativeTimeFormat(this.locale, { numeric: "auto" });
  }

  /** The message `key` with `{name}` replaced by `params.name`; the key itself when unknown. */
  t(key, params) {
    let message = this.messages[key];
    if (message && typeof message === "object") {
      const count = params && typeof params.count === "number" ? params.count : 0;
      message = message[this.plurals.select(count)] || message.other;
    }
    if (typeof message !== "string") return key;
    return message.replace(/\{(\w+)\}/g, (whole, name) =>
      params && params[name] !== undefined ? String(params[name]) : whole
    );
  }

  /** "3 minutes ago" in this locale; never "in 2 seconds": a server clock slightly ahead still reads as "now". */
  relativeTime(iso, now) {
    const seconds = Math.min(0, Math.round((Date.parse(iso) - now) / 1000));
    for (const [unit, length] of RELATIVE_UNITS) {
      if (Math.abs(seconds) >= length) return this.relative.format(Math.round(seconds / length), unit);
    }
    return this.relative.format(0, "second");
  }

  /** The full date and time, for a tooltip. */
  dateTime(iso) {
    return new Date(iso).toLocaleString(this.locale);
  }
}
