"""The embeddable bell's side of the server: the demo page at `/`, and static files other origins may import."""

from __future__ import annotations

from tornado import web

from handlers.base import BaseHandler, BoundedBody, RequestIdentified


class DemoPageHandler(BaseHandler):
    """`/`: a host page with the bell embedded, as an app would embed it."""

    def get(self) -> None:
        """The demo page; with the development routes it signs in a demo user and can send test notifications."""
        self.render("demo.html", development_routes=self.development_routes)


class WidgetStaticFileHandler(BoundedBody, RequestIdentified, web.StaticFileHandler):
    """Static files, the widget, its modules and its Vue runtime, readable from any origin.

    Host pages on other origins import the bell's modules and the runtime, which browsers fetch with CORS.
    These files are public and sent without credentials, so a wildcard exposes nothing. A request for one
    takes no body.
    """

    def set_extra_headers(self, path: str) -> None:
        """Let pages of any origin import the file; have browsers revalidate a URL without `?v=`."""
        self.set_header("Access-Control-Allow-Origin", "*")
        # The embed snippet's script and the modules it imports carry no version: a copy kept by the
        # browser's heuristics could pair this deploy's script with the last one's modules.
        if "v" not in self.request.arguments:
            self.set_header("Cache-Control", "no-cache")


default_handlers = [(r"/", DemoPageHandler)]
