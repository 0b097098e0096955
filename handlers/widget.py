"""The embeddable bell's side of the server: the demo page at `/`, and static files other origins may import."""

from __future__ import annotations

from tornado import web

from handlers.base import BaseHandler, RequestIdentified


class DemoPageHandler(BaseHandler):
    """`/`: a host page with the bell embedded, as an app would embed it."""

    def get(self) -> None:
        """The demo page; with the development routes it signs in a demo user and can send test notifications."""
        self.render("demo.html", development_routes=self.development_routes)


class WidgetStaticFileHandler(RequestIdentified, web.StaticFileHandler):
    """Static files, the widget and its Vue runtime, readable from any origin.

    Host pages on other origins import the runtime as a module, which browsers fetch with CORS.
    These files are public and sent without credentials, so a wildcard exposes nothing.
    """

    def set_extra_headers(self, path: str) -> None:
        """Let pages of any origin import the file."""
        self.set_header("Access-Control-Allow-Origin", "*")


default_handlers = [(r"/", DemoPageHandler)]
