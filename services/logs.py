"""Log lines: one JSON object per line, or plain text; user ids pseudonymised; tokens never written.

A log call adds structured fields with ``extra={"fields": {...}}``: the JSON format writes
them as keys of the object, the text format appends them as ``key=value``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import time
from typing import Any

LOG_FORMATS = ("auto", "json", "text")
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FIELDS_ATTRIBUTE = "fields"
ACCESS_LOGGER = "tornado.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# Defence in depth, for messages bellcast does not write itself (Tornado's warnings name the URI):
# the token or stream ticket of the query string, and anything shaped like a JWT.
_SECRETS = (
    (re.compile(r"((?:access_token|token|ticket)=)[^&\s\"']+"), r"\1[redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted]"),
)
USER_HASH_LENGTH = 16
# What each pattern of _SECRETS needs to find: text without either is returned as it is, at the cost
# of two substring searches instead of two regular expression substitutions (most messages).
_SECRET_MARKERS = ("token=", "ticket=", "eyJ")
# The access line's message already says these; the text format does not repeat them.
_IN_ACCESS_MESSAGE = frozenset({"status", "method", "uri", "remote_ip", "duration_ms"})
# One encoder for every line, rather than one built per json.dumps call with these options.
_JSON_LINE = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))


def redact(text: str) -> str:
    """`text` without tokens: query-string tokens and JWTs become [redacted]."""
    if not any(marker in text for marker in _SECRET_MARKERS):
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class UserIdHasher:
    """Turns user ids into stable pseudonyms for logs: an HMAC keyed by a secret, so ids cannot be guessed back.

    The same user gets the same pseudonym in every process that shares the secret, so an operator
    can follow one user through the logs, and find their lines by computing `hash(user_id)`.
    """

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), b"bellcast log pseudonyms", hashlib.sha256).digest()

    def hash(self, user_id: str) -> str:
        """The user's pseudonym: 16 hexadecimal digits."""
        return hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()[:USER_HASH_LENGTH]


# Failures this close to the last one belong to the same outage: a store that comes back fails once more on
# each connection its client kept from before, after the first success.
OUTAGE_QUIET_SECONDS = 30.0


class OutageLog:
    """One warning when something starts failing and one line when it works again, however many failures
    come between: an outage under thousands of streams must not log thousands of lines."""

    __slots__ = ("_failing", "_last_failure", "_log", "_recovered", "_what")

    def __init__(self, log: logging.Logger, what: str, recovered: str = "works again") -> None:
        self._log = log
        self._what = what
        self._recovered = recovered
        self._failing = False
        self._last_failure = -math.inf

    def failed(self, message: str, *args: object) -> None:
        """A failure: a warning if it begins an outage, else a debug line."""
        now = time.monotonic()
        begins = not self._failing and now - self._last_failure > OUTAGE_QUIET_SECONDS
        self._failing = True
        self._last_failure = now
        self._log.log(logging.WARNING if begins else logging.DEBUG, "%s: " + message, self._what, *args)

    def succeeded(self) -> None:
        """A success: if failures came before, say the outage is over."""
        if self._failing:
            self._failing = False
            self._log.info("%s: %s", self._what, self._recovered)


def fields(**values: Any) -> dict[str, Any]:
    """The `extra` of a log call with structured fields."""
    return {FIELDS_ATTRIBUTE: values}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process id, message, the call's fields, any exception."""

    # The UTC second most recently written, and its text: lines come many to a second.
    _second = -1
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        """The record as compact JSON (non-ASCII kept, newlines escaped)."""
        entry: dict[str, Any] = {
            "time": self._utc_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": redact(record.getMessage()),
        }
        for key, value in getattr(record, FIELDS_ATTRIBUTE, {}).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return _JSON_LINE.encode(entry)

    def _utc_time(self, created: float) -> str:
        """ISO 8601 in UTC, cut to the millisecond: the form `datetime.isoformat(timespec="milliseconds")` writes."""
        second = int(created)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"


class TextFormatter(logging.Formatter):
    """The classic line, the call's fields appended as key=value; tokens redacted."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """The record as one human-readable line (and an exception's traceback after it)."""
        line = super().format(record)
        extra = getattr(record, FIELDS_ATTRIBUTE, {})
        if extra:
            head, newline, rest = line.partition("\n")
            shown = {key: value for key, value in extra.items() if value is not None}
            if record.name == ACCESS_LOGGER:
                shown = {key: value for key, value in shown.items() if key not in _IN_ACCESS_MESSAGE}
            suffix = " ".join(f"{key}={value}" for key, value in shown.items())
            line = f"{head} {suffix}{newline}{rest}" if suffix else line
        return redact(line)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Send every log record to stderr in `log_format` ("json" or "text"), replacing earlier handlers."""
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Neither format names the caller's file or line, so skip looking them up (the Logging HOWTO's
    # "Optimization" advice): it walks the stack on every record, and on a stream's first line it
    # materialises the frame of the handler's coroutine, which then lives as long as the stream.
    logging._srcfile = None
    # Nor the thread or the multiprocessing process, which every record would otherwise look up.
    logging.logThreads = False
    logging.logMultiprocessing = False
