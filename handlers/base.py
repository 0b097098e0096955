"""The one base handler: services from the Application, JSON bodies in, JSON errors out, CORS for allowed origins."""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import unquote_plus

from tornado import httputil, web

from services.auth import Authenticator
from services.cache import DeliveryCache
from services.connection import StreamTiming
from services.errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    StoreUnavailable,
    TooMany,
    Unauthorized,
)
from services.health import HealthService
from services.logs import UserIdHasher, fields
from services.metrics import Metrics
from services.notifications import NotificationService
from services.ratelimit import ProducerRateLimiter
from services.recovery import RecoveryReads
from services.settings import Settings
from services.streams import StreamLimits, StreamRegistry
from services.tickets import StreamTickets
from services.wakeups import WakeupHub

log = logging.getLogger("bellcast.handlers")

ERROR_STATUS: dict[type[DomainError], int] = {
    Invalid: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooMany: 429,
    RateLimited: 429,
    StoreUnavailable: 503,
}

_HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}

# What a page of an allowed origin may send: the widget's REST calls carry a Bearer token, and
# EventSource resends Last-Event-ID on reconnect.
CORS_ALLOW_METHODS = "GET, POST, DELETE"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID"
CORS_MAX_AGE_SECONDS = 600

TOKEN_COOKIE = "bellcast_token"
TOKEN_QUERY_ARGUMENT = "access_token"
# A stream ticket (services/tickets.py) is short-lived, but a credential all the same.
TICKET_QUERY_ARGUMENT = "ticket"
_REDACTED_QUERY_ARGUMENTS = frozenset({TOKEN_QUERY_ARGUMENT, TICKET_QUERY_ARGUMENT})

REQUEST_ID_HEADER = "X-Request-ID"
# A proxy's or client's request id is kept when it is short and plain: no spaces, quotes or control characters.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:+=/@-]{1,128}$")
# A Content-Length this layer may judge; anything else is Tornado's to refuse (400) before it reads a byte.
_PLAIN_LENGTH = re.compile(r"^[0-9]{1,19}$")
# What an endpoint that reads no body accepts and ignores: a client sending `{}` as JSON (as the cookie's writes must).
IGNORED_BODY_BYTES = 1024


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


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but no double: Python would read it as inf and write back Infinity, which is not JSON.
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} does not fit in a double")
    return number


def redacted_uri(uri: str) -> str:
    """The request URI with every `access_token` and `ticket` query value hidden, however its name is escaped."""
    path, question_mark, query = uri.partition("?")
    if not question_mark:
        return uri
    parts = []
    for part in query.split("&"):
        name = part.partition("=")[0]
        parts.append(f"{name}=[redacted]" if unquote_plus(name).strip().lower() in _REDACTED_QUERY_ARGUMENTS else part)
    return f"{path}?{'&'.join(parts)}"


@web.stream_request_body
class BoundedBody(web.RequestHandler):
    """Reads a request's body only once its headers were admitted, and only as much as its endpoint takes.

    Left to itself Tornado reads a whole body (up to the server's cutoff, 1 MiB) into memory before any
    handler code runs: hundreds of clients trickling bodies without credentials would each hold that much.
    Here `admit()` refuses a request from its headers alone, before a byte of its body is read (the
    connection then closes with the rest unread); a body past `body_limit()`, declared or as it arrives,
    answers 413 at once. Endpoints that read no body take none.
    """

    # A class-level default: a request without a body (every stream) carries no buffer of its own.
    _received: bytearray | None = None

    async def admit(self) -> None:
        """Refuse the request from its headers alone (credentials, origin): raise, or answer; runs before its
        body is read."""

    def body_limit(self) -> int:
        """The most bytes of body this request may send: none, unless its endpoint reads one."""
        return 0

    async def prepare(self) -> None:
        """Admit the request, then refuse a declared body longer than the endpoint takes: neither reads the body."""
        await self.admit()
        if self._finished:  # admit() answered (a page of its own)
            return
        declared = self.request.headers.get("Content-Length", "")
        if _PLAIN_LENGTH.match(declared) and int(declared) > self.body_limit():
            raise self._too_large()

    def data_received(self, chunk: bytes) -> None:
        """Keep the body as it arrives, up to the endpoint's limit; past it answer 413 and keep nothing."""
        if self._finished:  # refused already: Tornado closes the connection, the rest goes unread
            return
        received = self._received if self._received is not None else bytearray()
        if len(received) + len(chunk) > self.body_limit():
            self._received = None
            error = self._too_large()
            self.send_error(error.status_code, exc_info=(type(error), error, None))
            return
        received += chunk
        self._received = received

    @property
    def body(self) -> bytes:
        """The request's body, once read (the method runs only then)."""
        return bytes(self._received) if self._received is not None else b""

    def _too_large(self) -> APIError:
        limit = self.body_limit()
        message = f"the body must be at most {limit} bytes" if limit else "this request takes no body"
        return APIError(413, "payload_too_large", message)


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
        """Echo the request id, on errors too; and forbid browsers to guess another type than the one sent."""
        self.set_header(REQUEST_ID_HEADER, self.request_id)
        # A JSON answer echoing a producer's text must never be run as a script or rendered as a page.
        self.set_header("X-Content-Type-Options", "nosniff")

    def log_fields(self) -> dict[str, Any]:
        """What the log lines of this request carry besides the access line's own fields."""
        return {"request_id": self.request_id}


class BaseHandler(BoundedBody, RequestIdentified):
    """Typed access to the services the Application was built with, bodies read only once admitted, and JSON
    errors."""

    # Set once the request's token was verified; only its pseudonym is ever logged.
    _user_id: str | None = None

    @property
    def config(self) -> Settings:
        """bellcast's settings (Tornado's own `self.settings` is the Application's dict that holds them)."""
        return self.settings["config"]

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
    def producer_rate_limiter(self) -> ProducerRateLimiter:
        """Counts producers' requests per API key across every process."""
        return self.settings["producer_rate_limiter"]

    @property
    def stream_tickets(self) -> StreamTickets:
        """Mints and redeems the single-use tickets that open streams."""
        return self.settings["stream_tickets"]

    @property
    def health(self) -> HealthService:
        """The store checks."""
        return self.settings["health"]

    @property
    def recovery_reads(self) -> RecoveryReads:
        """MongoDB's reads of what streams missed, shared by the tabs of a user and bounded in number."""
        return self.settings["recovery_reads"]

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
    def development_routes(self) -> bool:
        """True when neither secret is configured (`make run`): the demo page signs in a demo user."""
        return bool(self.settings["development_routes"])

    def set_default_headers(self) -> None:
        """The request id, and CORS: an allowed origin is echoed back (never a wildcard) on every answer."""
        super().set_default_headers()
        if not self.config.cors_origins:
            return
        self.set_header("Vary", "Origin")
        origin = self.request.headers.get("Origin")
        if origin in self.config.cors_origins:
            self.set_header("Access-Control-Allow-Origin", origin)

    def options(self, *args: str, **kwargs: str) -> None:
        """CORS preflight: 204 with the methods and headers an allowed origin may use, else 403."""
        if self.request.headers.get("Origin") not in self.config.cors_origins:
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
        if not token and (cookie := self.get_cookie(TOKEN_COOKIE)):
            self._check_cookie_write_is_from_an_allowed_page()
            token = cookie
        token = token or self.get_query_argument(TOKEN_QUERY_ARGUMENT, None)
        self._user_id = self.authenticator.user_id(token)
        return self._user_id

    def _check_cookie_write_is_from_an_allowed_page(self) -> None:
        """A browser sends the cookie with any site's form: a write it authenticates must prove its page.

        JSON needs a CORS preflight from another site, and Origin names the page that sent it: this
        server's own origin or one of CORS_ORIGINS. Reads stay open to the cookie (CORS keeps their
        answers from other sites' pages).
        """
        if self.request.method in ("GET", "HEAD", "OPTIONS"):
            return
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        origin = self.request.headers.get("Origin")
        own_origin = f"{self.request.protocol}://{self.request.host}".lower()
        if content_type != "application/json" or (origin != own_origin and origin not in self.config.cors_origins):
            raise APIError(
                403,
                "forbidden",
                "a write authenticated by the cookie must be sent as application/json from an allowed page (Origin)",
            )

    def log_fields(self) -> dict[str, Any]:
        """The request id, and the user's pseudonym (never the id itself) once authenticated."""
        logged = super().log_fields()
        if self._user_id is not None:
            logged["user"] = self.user_hasher.hash(self._user_id)
        return logged

    def get_json_body(self) -> Any:
        """The request body as JSON (its size was bounded as it arrived): 400 when it is not JSON (NaN and 1e400
        included)."""
        try:
            return json.loads(self.body, parse_constant=_reject_constant, parse_float=_finite_float)
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
        """Domain errors are answers, not failures: logged without a traceback. No line names the query (tokens)."""
        request = f"{self.request.method} {self.request.path}"
        if isinstance(value, DomainError):
            log.info("%s: %s", request, value, extra=fields(**self.log_fields()))
        elif isinstance(value, web.HTTPError):
            # Tornado's own messages may quote an argument's value, the token's among them.
            log.info(
                "%s: %d %s",
                request,
                value.status_code,
                httputil.responses.get(value.status_code, "error"),
                extra=fields(**self.log_fields()),
            )
        else:
            log.error("uncaught exception in %s", request, exc_info=value)

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

    async def admit(self) -> None:
        """Refuse before any method runs, and before any body is read."""
        raise APIError(404, "not_found", "no such endpoint")
