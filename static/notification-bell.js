/*
 * bellcast's notification bell: one script tag and one element on any page, no build step.
 *
 *   <script src="https://notify.example.com/static/notification-bell.js"></script>
 *   <notification-bell server="https://notify.example.com" token="…"></notification-bell>
 *
 * A classic script, so that it runs everywhere a script tag does. It loads the bell's ES modules
 * from beside itself, with import(), and defines <notification-bell> from them:
 *
 *   bell/api.js     the user API's client (list, mark read, archive, delete, ...) and the token in use
 *   bell/stream.js  the event stream, shared by the tabs of one origin and user
 *   bell/store.js   the list's state: the tab's items, the counts, live events merged with fetched pages
 *   bell/view.js    the Vue custom element that renders it (bell/styles.js: its style sheet)
 *   bell/i18n.js    its words in English, German and French, and relative times
 *
 * The bell brings its own Vue 3 (vendor/, the ESM runtime build): the host page's window.Vue,
 * if any, is never read or replaced. The element has a shadow root, so that the host's CSS and
 * the bell's do not touch.
 */
(function () {
  "use strict";

  var TAG = "notification-bell";
  if (!window.customElements || window.customElements.get(TAG)) return;

  var script = document.currentScript || document.querySelector('script[src*="notification-bell.js"]');
  var base = script && script.src ? script.src : document.baseURI;
  var MODULES = [
    "bell/view.js",
    "vendor/vue.runtime.esm-browser.prod.js",
    "bell/styles.js",
    "bell/store.js",
    "bell/stream.js",
    "bell/api.js",
    "bell/i18n.js",
  ];
  // All requested at once: left to the modules' own imports, each level would wait for the one above.
  // The module map loads and evaluates each URL once however many times it is imported.
  var loading = MODULES.map(function (path) {
    return import(new URL(path, base).href);
  });

  Promise.all(loading).then(
    function (modules) {
      if (!window.customElements.get(TAG)) window.customElements.define(TAG, modules[0].NotificationBell);
    },
    function (error) {
      console.error("bellcast: could not load the bell from " + new URL("bell/", base).href, error);
    }
  );
})();
