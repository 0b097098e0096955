"""The access log: one line per request, as Tornado's `log_function`."""

from __future__ import annotations

import logging
from typing import Any

from tornado import web

from handlers.base import RequestIdentified, redacted_uri
from services.logs import ACCESS_LOGGER, fields

access_log = logging.getLogger(ACCESS_LOGGER)


def log_request(handler: web.RequestHandler) -> None:
    """Access log line, with any token in the query string redacted; successful probes and scrapes at debug level.

    Its fields: status, method, uri, remote_ip, duration_ms, request_id, the user's pseudonym, and for a
    stream (logged when it ends) events_sent and ended_by.
    """
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    extra: dict[str, Any] = {}
    if isinstance(handler, RequestIdentified):
        extra = handler.log_fields()
        if status < 400 and handler.quiet_access_log:
            level = logging.DEBUG
    request = handler.request
    uri = redacted_uri(request.uri or "")
    duration_ms = round(1000.0 * request.request_time(), 2)
    access_log.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        uri,
        request.remote_ip,
        duration_ms,
        extra=fields(
            status=status, method=request.method, uri=uri, remote_ip=request.remote_ip, duration_ms=duration_ms, **extra
        ),
    )
