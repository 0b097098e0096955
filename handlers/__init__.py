"""HTTP in and out: every route of bellcast, joined from each module's `default_handlers`."""

from handlers import development, health, notifications, stream, widget
from handlers.base import NotFoundHandler, redacted_uri
from handlers.widget import WidgetStaticFileHandler

default_handlers = [
    *notifications.default_handlers,
    *stream.default_handlers,
    *health.default_handlers,
    *widget.default_handlers,
]

# Only when the secrets were generated for development, never with JWT_SECRET and API_KEY configured.
development_handlers = [*development.default_handlers]

__all__ = ["NotFoundHandler", "WidgetStaticFileHandler", "default_handlers", "development_handlers", "redacted_uri"]
