"""The one base handler: services from the Application, JSON bodies in, JSON errors out, CORS for allowed origins."""

from __future__ import annotations

import json
import logging
import re
import uuid
from types import TracebackType
from typing import Any, NoReturn

from tornado import httputil, web

from services.auth import Authenticator
from services.cache import DeliveryCache
from services.delivery import StreamTiming, WakeupHub
from services.errors import DomainError, Forbidden, Invalid, NotFound, StoreUnavailable, TooMany, Unauthorized
from services.health import HealthService
from services.logs import UserIdHasher, fields
from services.metrics import Metrics
from services.notifications import NotificationService
from services.streams import StreamLimits, StreamRegistry

log = logging.getLogger("bellcast.handlers")

MAX_JSON_BODY_BYTES = 64 * 1024

ERROR_STATUS: dict[type[DomainError], int] = {
    Invalid: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    TooMany: 429,
    StoreUnavailable: 503,
}

_HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}

# What a page of an allowed origin may send: the widget's REST calls carry a Bearer token, and
# EventSource resends Last-Event-ID on reconnect.
CORS_ALLOW_METHODS = "GET, POST"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID"
CORS_MAX_AGE_SECONDS = 600

TOKEN_COOKIE = "bellcast_token"
TOKEN_QUERY_ARGUMENT = "access_token"

REQUEST_ID_HEADER = "X-Request-ID"
# A proxy's or client's request id is kept when it is short and plain: no spaces, quotes or control characters.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:+=/@-]{1,128}$")


def request_id_from(header: str | None) -> str:
    """The id of a request: the incoming X-Request-ID when sane, else a new random one."""
    if header is not None and _SANE_REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


class APIError(web.HTTPError):
    """An HTTP error with a machine-readable code and a message safe to show the client."""

    def __init__(self, status_code: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(status_code, reason=None)
        self.code = code
        self.message = message
        self.retry_after = retry_after


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


class RequestIdentified(web.RequestHandler):
    """Every answer names its request: X-Request-ID, the client's if sane, else a new one; logs carry it."""

    _request_id: str | None = None
    # Probes and scrapes come every few seconds: their successful answers are logged at debug level only.
    quiet_access_log = False

    @property
    def request_id(self) -> str:
        """This request's id."""
        if self._request_id is None:
            self._request_id = request_id_from(self.request.headers.get(REQUEST_ID_HEADER))
        return self._request_id

    def set_default_headers(self) -> None:
        """Echo the request id, on errors too."""
        self.set_header(REQUEST_ID_HEADER, self.request_id)

    def log_fields(self) -> dict[str, Any]:
        """What the log lines of this request carry besides the access line's own fields."""
        return {"request_id": self.request_id}


class BaseHandler(RequestIdentified):
    """Typed access to the services the Application was built with, and JSON errors."""

    # Set once the request's token was verified; only its pseudonym is ever logged.
    _user_id: str | None = None

    @property
    def notifications(self) -> NotificationService:
        """The notification service."""
        return self.settings["notifications"]

    @property
    def delivery_cache(self) -> DeliveryCache:
        """The Redis delivery cache."""
        return self.settings["delivery_cache"]

    @property
    def authenticator(self) -> Authenticator:
        """Verifies user tokens and the producers' key."""
        return self.settings["authenticator"]

    @property
    def health(self) -> HealthService:
        """The store checks."""
        return self.settings["health"]

    @property
    def wakeups(self) -> WakeupHub:
        """This process's subscription to wake-up hints."""
        return self.settings["wakeups"]

    @property
    def stream_timing(self) -> StreamTiming:
        """Heartbeat and scan intervals of streams."""
        return self.settings["stream_timing"]

    @property
    def stream_limits(self) -> StreamLimits:
        """How many streams may be open, and how long a write may wait for its client."""
        return self.settings["stream_limits"]

    @property
    def streams(self) -> StreamRegistry:
        """The open event streams, for shutdown."""
        return self.settings["streams"]

    @property
    def metrics(self) -> Metrics:
        """This process's metrics."""
        return self.settings["metrics"]

    @property
    def user_hasher(self) -> UserIdHasher:
        """Pseudonyms of user ids, for logs."""
        return self.settings["user_hasher"]

    @property
    def cors_origins(self) -> frozenset[str]:
        """The exact origins (CORS_ORIGINS) whose pages may read bellcast's answers."""
        return self.settings["cors_origins"]

    @property
    def development(self) -> bool:
        """True when neither secret is configured (`make run`): the demo page signs in a demo user."""
        return bool(self.settings["development"])

    def set_default_headers(self) -> None:
        """The request id, and CORS: an allowed origin is echoed back (never a wildcard) on every answer."""
        super().set_default_headers()
        if not self.cors_origins:
            return
        self.set_header("Vary", "Origin")
        origin = self.request.headers.get("Origin")
        if origin in self.cors_origins:
            self.set_header("Access-Control-Allow-Origin", origin)

    def options(self, *args: str, **kwargs: str) -> None:
        """CORS preflight: 204 with the methods and headers an allowed origin may use, else 403."""
        if self.request.headers.get("Origin") not in self.cors_origins:
            raise APIError(403, "forbidden", "this origin is not allowed (CORS_ORIGINS)")
        self.set_header("Access-Control-Allow-Methods", CORS_ALLOW_METHODS)
        self.set_header("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS)
        self.set_header("Access-Control-Max-Age", str(CORS_MAX_AGE_SECONDS))
        self.set_status(204)
        self.finish()

    def current_user_id(self) -> str:
        """The user of the request's token: Bearer header, then cookie, then query parameter."""
        header = self.request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        token = credentials.strip() if scheme.lower() == "bearer" else None
        token = token or self.get_cookie(TOKEN_COOKIE) or self.get_query_argument(TOKEN_QUERY_ARGUMENT, None)
        self._user_id = self.authenticator.user_id(token)
        return self._user_id

    def log_fields(self) -> dict[str, Any]:
        """The request id, and the user's pseudonym (never the id itself) once authenticated."""
        logged = super().log_fields()
        if self._user_id is not None:
            logged["user"] = self.user_hasher.hash(self._user_id)
        return logged

    def require_api_key(self) -> None:
        """Let only producers holding the API key through."""
        self.authenticator.check_api_key(self.request.headers.get("X-API-Key"))

    def get_json_body(self) -> Any:
        """The request body as JSON: 413 past the size limit, 400 when it is not JSON."""
        if len(self.request.body) > MAX_JSON_BODY_BYTES:
            raise APIError(413, "payload_too_large", f"the body must be at most {MAX_JSON_BODY_BYTES} bytes")
        try:
            return json.loads(self.request.body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise APIError(400, "malformed_json", "the body is not valid JSON") from None

    def write_json(self, value: Any, status: int = 200) -> None:
        """Answer with `value` as compact JSON."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(value, separators=(",", ":")))

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Domain errors are answers, not failures: log them without a traceback."""
        if isinstance(value, DomainError):
            log.info("%s %s: %s", self.request.method, self.request.path, value, extra=fields(**self.log_fields()))
        else:
            super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error as `{"error": {"code", "message"}}`; unexpected ones say only "internal error"."""
        error = kwargs["exc_info"][1] if "exc_info" in kwargs else None
        retry_after = getattr(error, "retry_after", None)
        if isinstance(error, DomainError):
            status_code = ERROR_STATUS.get(type(error), 400)
            code, message = error.code, str(error)
        elif isinstance(error, APIError):
            code, message = error.code, error.message
        elif isinstance(error, web.HTTPError) and status_code < 500:
            code = _HTTP_ERROR_CODES.get(status_code, "error")
            message = httputil.responses.get(status_code, "error").lower()
        else:
            code, message = "internal_error", "internal error"
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="bellcast"')
        if retry_after is not None:
            self.set_header("Retry-After", str(retry_after))
        self.clear_header("Content-Disposition")
        self.write_json({"error": {"code": code, "message": message}}, status=status_code)


class NotFoundHandler(BaseHandler):
    """Every unknown path answers a JSON 404."""

    def prepare(self) -> None:
        """Refuse before any method runs."""
        raise APIError(404, "not_found", "no such endpoint")
