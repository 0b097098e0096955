/**
 * The bell's look: one style sheet in its shadow root, themable through --bellcast-* custom
 * properties and ::part(), light or dark as the user's system prefers or the `theme` attribute says.
 */

/**
 * The themable properties with their light and dark defaults. The rules below read only the
 * private --_name copies, set on .root from the host's --bellcast-name or else the theme's default,
 * so that one host property wins in both themes.
 */
const THEMED = [
  // [name, light default, dark default]
  ["color", "#1f2933", "#e5e7eb"],
  ["muted", "#4b5563", "#a3acb9"],
  ["background", "#fff", "#1f2937"],
  ["border", "#d9dee4", "#3b4657"],
  ["accent", "#2563eb", "#7cb4ff"],
  ["unread-background", "#eff6ff", "#1b2e4b"],
  ["hover-background", "rgba(0, 0, 0, 0.06)", "rgba(255, 255, 255, 0.1)"],
  ["icon-color", "currentColor", "currentColor"],
  ["badge-background", "#dc2626", "#dc2626"],
  ["badge-color", "#fff", "#fff"],
  ["live-color", "#15803d", "#4ade80"],
  ["warning-color", "#b45309", "#fbbf24"],
  ["error-color", "#b91c1c", "#fca5a5"],
  ["shadow", "0 12px 32px rgba(15, 23, 42, 0.18)", "0 12px 32px rgba(0, 0, 0, 0.5)"],
];

function palette(column) {
  return THEMED.map((row) => `--_${row[0]}: var(--bellcast-${row[0]}, ${row[column]});`).join("\n  ");
}

const LIGHT = `color-scheme: light;\n  ${palette(1)}`;
const DARK = `color-scheme: dark;\n  ${palette(2)}`;

export const STYLES = `
:host {
  all: initial;
  display: inline-block;
  position: relative;
  font-family: var(--bellcast-font, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif);
  font-size: var(--bellcast-font-size, 14px);
  line-height: 1.4;
}
:host([hidden]) { display: none; }
.root.theme-light, .root.theme-auto {
  ${LIGHT}
}
.root.theme-dark {
  ${DARK}
}
@media (prefers-color-scheme: dark) {
  .root.theme-auto {
    ${DARK}
  }
}
.root { color: var(--_color); }
*, *::before, *::after { box-sizing: border-box; }
button { font: inherit; color: inherit; cursor: pointer; }
:focus-visible { outline: 2px solid var(--_accent); outline-offset: 2px; }
.bell {
  position: relative; display: inline-flex; align-items: center; justify-content: center;
  width: calc(var(--bellcast-icon-size, 24px) + 16px); height: calc(var(--bellcast-icon-size, 24px) + 16px);
  padding: 0; border: 0; border-radius: 50%; background: transparent; color: var(--_icon-color);
  transition: background-color 0.15s;
}
.bell:hover, .bell[aria-expanded="true"] { background: var(--_hover-background); }
.bell svg { width: var(--bellcast-icon-size, 24px); height: var(--bellcast-icon-size, 24px); fill: currentColor; }
.badge {
  position: absolute; top: 2px; right: 0; min-width: 18px; height: 18px; padding: 0 5px;
  border-radius: 9px; background: var(--_badge-background); color: var(--_badge-color);
  font-size: 11px; font-weight: 700; line-height: 18px; text-align: center;
  box-shadow: 0 0 0 2px var(--_background);
  animation: pop 0.25s ease-out;
}
.dot-state {
  position: absolute; bottom: 4px; right: 4px; width: 8px; height: 8px; border-radius: 50%;
  background: var(--_muted); box-shadow: 0 0 0 2px var(--_background);
}
.panel {
  position: absolute; top: calc(100% + 6px); right: 0; z-index: var(--bellcast-z-index, 1000);
  width: min(var(--bellcast-panel-width, 360px), calc(100vw - 16px));
  background: var(--_background); color: var(--_color);
  border: 1px solid var(--_border); border-radius: var(--bellcast-radius, 10px);
  box-shadow: var(--_shadow);
  text-align: left; overflow: hidden; animation: drop 0.15s ease-out;
}
.panel.start { right: auto; left: 0; }
.panel:focus { outline: none; }
header {
  display: flex; align-items: center; gap: 8px; padding: 10px 12px 6px;
}
h2 { flex: 1; margin: 0; font-size: 1em; font-weight: 650; }
.state {
  display: inline-flex; align-items: center; gap: 5px; font-size: 0.85em; color: var(--_muted);
}
.state::before { content: ""; width: 8px; height: 8px; border-radius: 50%; background: currentColor; }
.state.live { color: var(--_live-color); }
.state.reconnecting, .state.connecting { color: var(--_warning-color); }
.state.offline { color: var(--_error-color); }
.tabs {
  display: flex; gap: 2px; padding: 0 8px; overflow-x: auto; scrollbar-width: thin;
  border-bottom: 1px solid var(--_border);
}
.tab {
  flex: none; padding: 6px 8px; border: 0; border-bottom: 2px solid transparent; background: transparent;
  color: var(--_muted); font-size: 0.9em; white-space: nowrap;
}
.tab:hover { color: var(--_color); }
.tab[aria-selected="true"] { color: var(--_color); font-weight: 600; border-bottom-color: var(--_accent); }
.tab:focus-visible { outline-offset: -2px; }
.actions { display: flex; gap: 4px; padding: 6px 12px; border-bottom: 1px solid var(--_border); }
.link-button {
  padding: 4px 6px; border: 0; border-radius: 6px; background: transparent;
  color: var(--_accent); font-size: 0.9em;
}
.link-button:hover:not(:disabled), .icon-button:hover { background: var(--_hover-background); }
.link-button:disabled { color: var(--_muted); cursor: default; }
.actions .link-button:last-child { margin-left: auto; }
ul {
  list-style: none; margin: 0; padding: 0; overflow-y: auto;
  max-height: var(--bellcast-panel-max-height, min(60vh, 440px));
}
li { position: relative; padding: 10px 12px 10px 26px; border-bottom: 1px solid var(--_border); }
li.with-avatar { display: grid; grid-template-columns: 32px minmax(0, 1fr); gap: 10px; }
li:last-child { border-bottom: 0; }
li.unread { background: var(--_unread-background); }
li.unread::before {
  content: ""; position: absolute; left: 10px; top: 16px; width: 8px; height: 8px; border-radius: 50%;
  background: var(--_accent);
}
li:focus-visible { outline-offset: -2px; }
.avatar { width: 32px; height: 32px; border-radius: 50%; object-fit: cover; background: var(--_border); }
.title { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.body { margin: 2px 0 0; white-space: pre-line; overflow-wrap: anywhere; color: var(--bellcast-body-color, inherit); }
.item-actions { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; }
.action {
  padding: 3px 10px; border: 1px solid var(--_border); border-radius: 6px;
  color: var(--_accent); font-size: 0.9em; font-weight: 600; text-decoration: none;
}
.action.primary { border-color: var(--_accent); }
.action:hover { background: var(--_hover-background); }
.meta {
  display: flex; flex-wrap: wrap; align-items: center; gap: 4px 10px; margin-top: 4px; font-size: 0.85em;
  color: var(--_muted);
}
.meta a { color: var(--_accent); }
.item-buttons { display: inline-flex; align-items: center; gap: 2px; margin-left: auto; }
.meta .link-button { padding: 2px 4px; }
.icon-button {
  display: inline-flex; align-items: center; justify-content: center; width: 26px; height: 26px;
  padding: 0; border: 0; border-radius: 6px; background: transparent; color: var(--_muted);
}
.icon-button svg { width: 16px; height: 16px; fill: currentColor; }
.icon-button.delete:hover { color: var(--_error-color); }
.empty, .error { margin: 0; padding: 24px 12px; text-align: center; color: var(--_muted); }
.error { padding: 10px 12px; color: var(--_error-color); }
footer { padding: 6px 12px; border-top: 1px solid var(--_border); text-align: center; }
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
