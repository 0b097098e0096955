"""HTTP in and out: every route of bellcast, joined from each module's `default_handlers`."""

from handlers import development, health, notifications, observability, openapi, stream, widget
from handlers.base import NotFoundHandler, RequestIdentified, redacted_uri
from handlers.observability import ACCESS_OFF, ACCESS_OPEN, ACCESS_TOKEN
from handlers.widget import WidgetStaticFileHandler

default_handlers = [
    *notifications.default_handlers,
    *stream.default_handlers,
    *health.default_handlers,
    *observability.default_handlers,
    *widget.default_handlers,
    *openapi.default_handlers,
]

# Only when the secrets were generated for development, never with JWT_SECRET and API_KEY configured.
development_handlers = [*development.default_handlers]

# The METRICS_PORT listener: what an operator's tools ask, nothing a browser of a user does.
metrics_port_handlers = [*health.default_handlers, *observability.default_handlers]

__all__ = [
    "ACCESS_OFF",
    "ACCESS_OPEN",
    "ACCESS_TOKEN",
    "NotFoundHandler",
    "RequestIdentified",
    "WidgetStaticFileHandler",
    "default_handlers",
    "development_handlers",
    "metrics_port_handlers",
    "redacted_uri",
]
