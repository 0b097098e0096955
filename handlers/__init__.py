"""HTTP in and out: every route of bellcast, joined from each module's `default_handlers`."""

from handlers import health, notifications, openapi, stream
from handlers.base import NotFoundHandler

default_handlers = [
    *notifications.default_handlers,
    *stream.default_handlers,
    *health.default_handlers,
    *openapi.default_handlers,
]

__all__ = ["NotFoundHandler", "default_handlers"]
