"""`/metrics` for Prometheus, and `/status`: the same numbers drawn for an operator. Neither is public by accident.

With METRICS_TOKEN configured both want it: Prometheus sends `Authorization: Bearer <token>`;
a browser types it once into the status page's form and gets an HttpOnly cookie for the status
pages only. Without METRICS_TOKEN they answer 404, except on the METRICS_PORT listener, where
the port itself is the protection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time

from tornado import httputil

from handlers.base import APIError, BaseHandler
from services.attempts import FailedAttempts
from services.status import StatusHistory

STATUS_COOKIE = "bellcast_status"
STATUS_COOKIE_PATH = "/status"
STATUS_COOKIE_LIFETIME_SECONDS = 12 * 3600
# The sign-in form's body: `token=` and METRICS_TOKEN, form-encoded.
STATUS_FORM_BYTES = 4096
STATUS_PAGE_CSP = (
    "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

# How a listener guards the observability routes (an Application setting).
ACCESS_TOKEN = "token"  # METRICS_TOKEN configured: required
ACCESS_OPEN = "open"  # the METRICS_PORT listener without a token: the port is the protection
ACCESS_OFF = "off"  # the main listener without a token: 404


def status_cookie_value(token: str, expires: int) -> str:
    """A status-page pass valid until `expires`: signed with METRICS_TOKEN, so it does not contain it."""
    signature = hmac.new(token.encode(), f"bellcast status page until {expires}".encode(), hashlib.sha256).digest()
    return f"{expires}.{base64.urlsafe_b64encode(signature).decode().rstrip('=')}"


def status_cookie_valid(token: str, value: str | None, now: float) -> bool:
    """True for a pass `status_cookie_value` made with this token that has not expired."""
    expires, _, _ = (value or "").partition(".")
    if not expires.isdigit() or int(expires) < now:
        return False
    return hmac.compare_digest(status_cookie_value(token, int(expires)), value or "")


class ObservabilityHandler(BaseHandler):
    """The guard of the metrics and the status page."""

    quiet_access_log = True

    @property
    def status_history(self) -> StatusHistory:
        """The metrics sampled for the status page."""
        return self.settings["status_history"]

    @property
    def sign_in_attempts(self) -> FailedAttempts:
        """Wrong tokens typed into the status page's form, per address."""
        return self.settings["status_sign_in_attempts"]

    async def admit(self) -> None:
        """Pretend not to exist where no protection is configured."""
        if self.settings["metrics_access"] == ACCESS_OFF:
            raise APIError(404, "not_found", "no such endpoint")

    def authorized(self, cookie: bool = False) -> bool:
        """The Bearer token (or, for the status pages, their cookie) matches METRICS_TOKEN; always on an open port."""
        token = self.config.metrics_token
        if token is None:
            return bool(self.settings["metrics_access"] == ACCESS_OPEN)
        scheme, _, credentials = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode()):
            return True
        return cookie and status_cookie_valid(token, self.get_cookie(STATUS_COOKIE), time.time())

    def require_token(self, cookie: bool = False) -> None:
        """401 with a Bearer challenge unless `authorized`."""
        if not self.authorized(cookie):
            raise APIError(401, "unauthorized", "send METRICS_TOKEN as a Bearer token")


class MetricsHandler(ObservabilityHandler):
    """`GET /metrics`: every process's metrics in Prometheus's text format (or OpenMetrics if asked)."""

    def get(self) -> None:
        """The exposition; 401 without the token."""
        self.require_token()
        body, content_type = self.metrics.exposition(self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)


class StatusPageHandler(ObservabilityHandler):
    """`/status`: live charts of the metrics; a form takes the token once and leaves a cookie."""

    def get(self) -> None:
        """The page, or the form asking for the token (401)."""
        if not self.authorized(cookie=True):
            self.page(signed_in=False, status=401)
            return
        self.page(signed_in=True)

    def body_limit(self) -> int:
        """The form holds one token."""
        return STATUS_FORM_BYTES if self.request.method == "POST" else 0

    async def admit(self) -> None:
        """The form is refused before its body is read: where the status pages do not exist, and, past ten wrong
        tokens from one address within a minute, with 429 until the minute ends."""
        await super().admit()
        if self.request.method != "POST":
            return
        wait = self.sign_in_attempts.wait_for(self.request.remote_ip or "")
        if wait:
            self.set_header("Retry-After", str(math.ceil(wait)))
            self.page(signed_in=False, status=429, error="Too many wrong tokens: try again in a minute.")

    def post(self) -> None:
        """The form: a right token sets the HttpOnly cookie and goes back to the page (303); a wrong one, 401."""
        request = self.request
        httputil.parse_body_arguments(
            request.headers.get("Content-Type", ""), self.body, request.body_arguments, request.files, request.headers
        )
        typed = self.get_body_argument("token", "")
        token = self.config.metrics_token
        if token is None or not hmac.compare_digest(typed.encode(), token.encode()):
            self.sign_in_attempts.failed(self.request.remote_ip or "")
            self.page(signed_in=False, status=401, error="That is not the metrics token.")
            return
        expires = int(time.time()) + STATUS_COOKIE_LIFETIME_SECONDS
        self.set_cookie(
            STATUS_COOKIE,
            status_cookie_value(token, expires),
            path=STATUS_COOKIE_PATH,
            max_age=STATUS_COOKIE_LIFETIME_SECONDS,
            httponly=True,
            secure=self.request.protocol == "https",
            samesite="Strict",
        )
        self.redirect(STATUS_COOKIE_PATH, status=303)

    def page(self, signed_in: bool, status: int = 200, error: str | None = None) -> None:
        """Render the page, with a strict Content-Security-Policy for its own inline script and style only."""
        nonce = secrets.token_urlsafe(16)
        self.set_status(status)
        self.set_header("Content-Security-Policy", STATUS_PAGE_CSP.format(nonce=nonce))
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")
        self.render("status.html", signed_in=signed_in, error=error, nonce=nonce, interval=self.status_history.interval)


class StatusDataHandler(ObservabilityHandler):
    """`GET /status/data`: what the status page draws, as JSON."""

    def get(self) -> None:
        """`{"time", "interval", "lag_window", "now": {...}, "series": {...}}`; 401 without the token or cookie."""
        self.require_token(cookie=True)
        self.set_header("Cache-Control", "no-store")
        self.write_json(self.status_history.report())


default_handlers = [
    (r"/metrics", MetricsHandler),
    (r"/status", StatusPageHandler),
    (r"/status/data", StatusDataHandler),
]
