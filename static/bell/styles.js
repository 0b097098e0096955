/** The bell's look: one style sheet in its shadow root, themable through --bellcast-* custom properties. */

export const STYLES = `
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
