"""Logs: one JSON object per line (or text), request ids, user pseudonyms, streams at open and close, no tokens."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
import sys
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from handlers.base import request_id_from
from server import Settings
from services.cache import connections_key
from services.logs import JSONFormatter, TextFormatter, UserIdHasher, fields, redact
from tests.support import ServerProcess, SSEStream

JWT_SECRET = "logs-secret-" + "x" * 20
API_KEY = "logs-api-key-" + "y" * 10
METRICS_TOKEN = "logs-metrics-token-" + "z" * 10
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


class LoggedServer:
    """`python server.py` with configured secrets, read through its output (the logs)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.api = server.api()

    def text(self) -> str:
        """Everything logged so far."""
        return self.server.output()

    def json_lines(self) -> list[dict]:
        """Every line, parsed (fails if one is not a JSON object)."""
        return [json.loads(line) for line in self.text().splitlines()]

    async def line(self, predicate, timeout: float = 5.0) -> dict:
        """The first JSON line matching `predicate`, waiting for it to be written."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.json_lines() if predicate(line)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, "no such log line:\n" + self.text()[-3000:]
            await asyncio.sleep(0.05)


def _start(store_urls, directory: Path, log_format: str | None, log_level: str | None = None) -> LoggedServer:
    server = ServerProcess(
        store_urls,
        directory / "bellcast.log",
        JWT_SECRET=JWT_SECRET,
        API_KEY=API_KEY,
        METRICS_TOKEN=METRICS_TOKEN,
        POLL_INTERVAL="0.1",
        LOG_FORMAT=log_format,
        LOG_LEVEL=log_level,
    )
    server.wait_until_ready("/readyz")
    return LoggedServer(server)


def _stop(logged: LoggedServer) -> None:
    logged.server.stop()


@pytest.fixture(scope="module")
def json_server(store_urls, tmp_path_factory):
    """LOG_FORMAT unset: with configured secrets that means JSON."""
    server = _start(store_urls, tmp_path_factory.mktemp("json-logs"), None)
    yield server
    _stop(server)


@pytest.fixture(scope="module")
def text_server(store_urls, tmp_path_factory):
    server = _start(store_urls, tmp_path_factory.mktemp("text-logs"), "text")
    yield server
    _stop(server)


@pytest.mark.gen_test
async def test_access_lines_carry_request_id_status_duration_and_a_pseudonym_never_the_user_id(json_server):
    user = f"grace-{uuid.uuid4().hex}"
    request_id = f"trace-{uuid.uuid4().hex[:8]}"
    response = await json_server.api.request(
        "GET",
        "/api/notifications",
        headers={"Authorization": f"Bearer {json_server.api.token(user)}", "X-Request-ID": request_id},
    )
    assert response.code == 200
    assert response.headers["X-Request-ID"] == request_id
    line = await json_server.line(lambda line: line.get("request_id") == request_id)
    assert line["logger"] == "tornado.access" and line["level"] == "INFO"
    assert (line["status"], line["method"], line["uri"]) == (200, "GET", "/api/notifications")
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["user"] == UserIdHasher(JWT_SECRET).hash(user)
    assert {"time", "pid", "message", "remote_ip"} <= set(line)
    assert user not in json_server.text()
    assert all(isinstance(line, dict) for line in json_server.json_lines()), "one JSON object per line"


@pytest.mark.gen_test
@pytest.mark.parametrize("sent", ["has a space", "x" * 129, 'quote"d', "new\\nline", "ümlaut"])
async def test_a_request_id_that_is_not_sane_is_replaced_by_a_new_one(json_server, sent):
    response = await json_server.api.request("GET", "/api/notifications", headers={"X-Request-ID": sent})
    assert response.code == 401
    generated = response.headers["X-Request-ID"]
    assert GENERATED_ID.match(generated)
    line = await json_server.line(
        lambda line: line.get("request_id") == generated and line["logger"] == "tornado.access"
    )
    assert line["status"] == 401 and line["level"] == "WARNING"
    # The error's own line names the request too.
    await json_server.line(lambda line: line.get("request_id") == generated and line["logger"] == "bellcast.handlers")


@pytest.mark.gen_test
async def test_a_stream_is_logged_when_it_opens_and_when_it_closes_with_duration_and_events_sent(
    json_server, store_urls
):
    user = f"heidi-{uuid.uuid4().hex}"
    pseudonym = UserIdHasher(JWT_SECRET).hash(user)
    stream = await SSEStream.open(json_server.api.base_url, json_server.api.token(user))
    await stream.next_event()
    opened = await json_server.line(lambda line: line["message"] == "stream opened" and line.get("user") == pseudonym)
    assert GENERATED_ID.match(opened["request_id"])
    # The connection id names the stream's registration in Redis.
    redis = Redis.from_url(store_urls[1])
    try:
        assert await redis.zscore(connections_key(user), opened["connection"]) is not None
    finally:
        await redis.aclose()
    for title in ("one", "two"):
        await json_server.api.create(user, title)
    await stream.notifications(2)
    [await stream.next_change() for _ in range(2)]  # each create is announced as a change too
    await asyncio.sleep(0.3)
    stream.close()
    closed = await json_server.line(lambda line: line.get("request_id") == opened["request_id"] and "status" in line)
    assert closed["uri"] == "/notifications/stream?access_token=[redacted]"
    # Two notifications, and the two `changed` events that announced them.
    assert (closed["status"], closed["events_sent"], closed["ended_by"]) == (200, 4, "client")
    assert closed["connection"] == opened["connection"]
    assert closed["duration_ms"] >= 300
    assert closed["user"] == pseudonym


@pytest.mark.gen_test
async def test_successful_probes_are_not_logged_at_info_level(json_server):
    request_id = f"probe-{uuid.uuid4().hex[:8]}"
    assert (await json_server.api.request("GET", "/readyz", headers={"X-Request-ID": request_id})).code == 200
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    await json_server.api.request("GET", "/api/notifications", headers={"X-Request-ID": marker})
    await json_server.line(lambda line: line.get("request_id") == marker)
    assert request_id not in json_server.text()


@pytest.mark.gen_test
async def test_at_log_level_warning_only_refused_requests_are_logged_not_streams_or_successes(
    store_urls, tmp_path_factory
):
    server = _start(store_urls, tmp_path_factory.mktemp("quiet-logs"), "json", "WARNING")
    try:
        user = f"quinn-{uuid.uuid4().hex}"
        stream = await SSEStream.open(server.api.base_url, server.api.token(user))
        await stream.next_event()
        await server.api.create(user, "hello")
        await stream.notifications(1)
        stream.close()
        marker = f"marker-{uuid.uuid4().hex[:8]}"
        refused = await server.api.request("GET", "/api/notifications", headers={"X-Request-ID": marker})
        assert refused.code == 401
        line = await server.line(lambda line: line.get("request_id") == marker)
        assert line["level"] == "WARNING"
        await asyncio.sleep(0.5)  # the stream's access line, had it been written, is written by now
        assert [line["level"] for line in server.json_lines()] == ["WARNING"]
    finally:
        _stop(server)


@pytest.mark.gen_test
@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_no_token_key_or_secret_reaches_the_logs(request, log_format):
    server: LoggedServer = request.getfixturevalue(f"{log_format}_server")
    api = server.api
    user = f"ivan-{uuid.uuid4().hex}"
    token = api.token(user)
    expired = api.token(user, lifetime=-60)
    stream = await SSEStream.open(api.base_url, token)
    await stream.next_event()
    await api.create(user, "hello")
    await stream.notifications(1)
    stream.close()
    refused = await SSEStream.open(api.base_url, expired)
    assert refused.status == 401
    refused.close()
    await api.request("GET", "/api/notifications", headers={"Authorization": f"Bearer {token}"})
    await api.request("GET", f"/api/notifications?access_token={token}&limit=5")
    await api.request("GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    await api.request("GET", "/metrics", headers={"Authorization": "Bearer not-the-token-at-all"})
    await api.request("POST", "/status", body=f"token={METRICS_TOKEN}")
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    await api.request("GET", "/api/notifications", headers={"X-Request-ID": marker})
    deadline = time.monotonic() + 5
    while marker not in server.text():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # the stream's own line, written when it noticed the close
    text = server.text()
    for secret in (token, expired, API_KEY, METRICS_TOKEN, JWT_SECRET, user):
        assert secret not in text
    assert "access_token=[redacted]" in text
    if log_format == "text":
        assert re.search(
            r"tornado\.access: 200 GET /api/notifications\?access_token=\[redacted\]&limit=5 .* request_id=", text
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET /notifications/stream?access_token=abc.def&x=1 (1.2.3.4)",
            "GET /notifications/stream?access_token=[redacted]&x=1 (1.2.3.4)",
        ),
        (
            "GET /notifications/stream?ticket=Ab-_9&last_event_id=6b0a (1.2.3.4)",
            "GET /notifications/stream?ticket=[redacted]&last_event_id=6b0a (1.2.3.4)",
        ),
        ("POST /status token=s3cr3t", "POST /status token=[redacted]"),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig-_x", "Bearer [redacted]"),
        ("nothing secret here", "nothing secret here"),
    ],
    ids=["query-token", "query-ticket", "form-token", "jwt", "plain"],
)
def test_tokens_are_redacted_from_any_message(text, expected):
    assert redact(text) == expected


def test_user_pseudonyms_are_stable_per_secret_and_do_not_reveal_the_id():
    hasher = UserIdHasher(JWT_SECRET)
    pseudonym = hasher.hash("alice@example.com")
    assert re.fullmatch(r"[0-9a-f]{16}", pseudonym)
    assert hasher.hash("alice@example.com") == UserIdHasher(JWT_SECRET).hash("alice@example.com") == pseudonym
    assert hasher.hash("bob@example.com") != pseudonym
    assert UserIdHasher("another-secret-" + "x" * 10).hash("alice@example.com") != pseudonym


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ("abc-123", True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
        ("req:42/a+b=@x.y_z", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("a b", False),
        ("a\tb", False),
        ('a"b', False),
        ("<script>", False),
        (None, False),
    ],
)
def test_an_incoming_request_id_is_kept_only_when_sane(header, kept):
    result = request_id_from(header)
    if kept:
        assert result == header
    else:
        assert GENERATED_ID.match(result)


@pytest.mark.parametrize(
    ("log_format", "secrets", "json_logs"),
    [("auto", True, True), ("auto", False, False), ("json", False, True), ("text", True, False)],
)
def test_log_format_auto_is_json_with_configured_secrets_and_text_in_development(log_format, secrets, json_logs):
    secret = "s" * 16 if secrets else None
    assert Settings(log_format=log_format, jwt_secret=secret, api_key=secret).json_logs is json_logs


def _record(message: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    record = logging.LogRecord("bellcast.test", logging.ERROR, __file__, 1, message, args, exc_info)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_hold_fields_and_a_redacted_traceback_and_never_let_fields_replace_the_basics():
    try:
        raise RuntimeError("failed for ?access_token=abc")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = _record("%s went wrong", "thing", exc_info=exc_info, **fields(request_id="r1", message="spoofed"))
    line = JSONFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "thing went wrong" and entry["request_id"] == "r1"
    assert entry["level"] == "ERROR" and entry["logger"] == "bellcast.test"
    assert "RuntimeError" in entry["exception"] and "abc" not in entry["exception"]


def test_json_lines_say_the_utc_time_to_the_millisecond_for_each_record_of_a_second_and_the_next():
    formatter = JSONFormatter()
    # Records of one second share the second's text: each still has its own milliseconds.
    for created in (1764590400.0, 1764590400.0015, 1764590400.25, 1764590400.9994, 1764590401.5, 951782400.125):
        record = _record("tick")
        record.created = created
        expected = datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat(timespec="milliseconds")
        assert json.loads(formatter.format(record))["time"] == expected


def test_text_lines_append_fields_as_key_value_pairs():
    line = TextFormatter().format(_record("stream opened", **fields(request_id="r1", user="ab12", skipped=None)))
    assert line.endswith("bellcast.test: stream opened request_id=r1 user=ab12")
