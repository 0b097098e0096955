"""The OpenAPI document tells the truth: every response it lists is produced, every response produced is listed.

Real requests go through real sockets; openapi-core checks each response (status, content type,
required headers, body) and, for the successful ones, the request too, against the document the
server serves at /api/openapi.json.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.tcpclient import TCPClient
from tornado.testing import bind_unused_port

import handlers
from handlers.openapi import OPENAPI_DOCUMENT
from server import Runtime, make_app, start_runtime
from services.idempotency import MAX_KEY_LENGTH
from services.tickets import MAX_TICKETS_PER_USER
from tests.relay import StoreRelay, store_address, through_relay
from tests.support import API, eventually

DOCUMENT = json.loads(OPENAPI_DOCUMENT.read_text())
UNKNOWN_ID = "0123456789abcdef01234567"
NEW = (
    '{"user_id": "alice", "title": "Hello", "data": {"n": 1}, "url": "/n/1", "tags": ["billing"], '
    '"actions": [{"label": "Pay", "url": "https://pay.example/1"}], "avatar_url": "https://a.example/1.png", '
    '"expires_at": "2099-01-01T00:00:00Z"}'
)
NEW_FOR_SEVERAL = '{"user_ids": ["alice", "bob"], "title": "Hello"}'


@pytest.fixture
def wakeup_hints() -> bool:
    """The contract does not depend on how streams are woken: one mode is enough."""
    return True


def _decode_text(value: bytes, **parameters: str) -> str:
    return value.decode(parameters.get("charset", "utf-8"))


def load_contract(document: dict[str, Any]) -> OpenAPI:
    """The document as openapi-core's validator (which also checks that it is valid OpenAPI 3.1)."""
    # openapi-core knows JSON and forms; the event stream's body is text.
    return OpenAPI.from_dict(
        document, config=Config(extra_media_type_deserializers={"text/event-stream": _decode_text})
    )


@dataclass(frozen=True)
class Case:
    """One request, and the documented response it must get."""

    status: int
    method: str
    template: str
    path: str = ""
    credentials: str = ""
    body: str | None = None
    # Sent as Idempotency-Key; a valid one is first used for a create of NEW, so that the case repeats it.
    idempotency_key: str = ""

    @property
    def id(self) -> str:
        key = f" key {self.idempotency_key[:8]!r}" if self.idempotency_key else ""
        return f"{self.method} {self.path or self.template} {self.credentials or 'anonymous'}{key} -> {self.status}"


# Against working stores. `{id}` in a path is a notification of alice's created first.
CASES = [
    Case(201, "POST", "/api/notifications", credentials="producer", body=NEW),
    Case(201, "POST", "/api/notifications", credentials="producer", body=NEW_FOR_SEVERAL),
    Case(201, "POST", "/api/notifications", credentials="producer", body=NEW, idempotency_key="repeated"),
    Case(409, "POST", "/api/notifications", credentials="producer", body=NEW_FOR_SEVERAL, idempotency_key="reused"),
    Case(400, "POST", "/api/notifications", credentials="producer", body=NEW, idempotency_key="k" * 256),
    Case(400, "POST", "/api/notifications", credentials="producer", body="{not json"),
    Case(400, "POST", "/api/notifications", credentials="producer", body='{"user_id": "alice", "titel": "typo"}'),
    Case(401, "POST", "/api/notifications", body=NEW),
    Case(403, "POST", "/api/notifications", credentials="wrong key", body=NEW),
    Case(413, "POST", "/api/notifications", credentials="producer", body='{"title": "' + "x" * 70000 + '"}'),
    Case(200, "GET", "/api/notifications", "/api/notifications?limit=5", credentials="user"),
    Case(200, "GET", "/api/notifications", "/api/notifications?before={id}", credentials="user"),
    Case(200, "GET", "/api/notifications", "/api/notifications", credentials="cookie"),
    Case(400, "GET", "/api/notifications", "/api/notifications?limit=0", credentials="user"),
    Case(401, "GET", "/api/notifications"),
    Case(200, "POST", "/api/notifications/{notification_id}/read", "/api/notifications/{id}/read", credentials="user"),
    Case(400, "POST", "/api/notifications/{notification_id}/read", "/api/notifications/xyz/read", credentials="user"),
    Case(401, "POST", "/api/notifications/{notification_id}/read", "/api/notifications/{id}/read"),
    Case(404, "POST", "/api/notifications/{notification_id}/read", f"/api/notifications/{UNKNOWN_ID}/read", "user"),
    Case(200, "GET", "/api/notifications", "/api/notifications?status=archived&tag=billing", credentials="user"),
    Case(400, "GET", "/api/notifications", "/api/notifications?status=everything", credentials="user"),
    Case(200, "POST", "/api/notifications/read-all", credentials="user"),
    Case(200, "POST", "/api/notifications/read-all", "/api/notifications/read-all?status=unread&tag=billing", "user"),
    Case(400, "POST", "/api/notifications/read-all", "/api/notifications/read-all?status=everything", "user"),
    Case(401, "POST", "/api/notifications/read-all"),
    Case(200, "POST", "/api/notifications/archive-all", "/api/notifications/archive-all?tag=billing", "user"),
    Case(400, "POST", "/api/notifications/archive-all", "/api/notifications/archive-all?tag=%20", "user"),
    Case(401, "POST", "/api/notifications/archive-all"),
    Case(200, "POST", "/api/notifications/seen", credentials="user"),
    Case(401, "POST", "/api/notifications/seen"),
    Case(200, "POST", "/api/notifications/{notification_id}/archive", "/api/notifications/{id}/archive", "user"),
    Case(400, "POST", "/api/notifications/{notification_id}/archive", "/api/notifications/xyz/archive", "user"),
    Case(401, "POST", "/api/notifications/{notification_id}/archive", "/api/notifications/{id}/archive"),
    Case(
        404, "POST", "/api/notifications/{notification_id}/archive", f"/api/notifications/{UNKNOWN_ID}/archive", "user"
    ),
    Case(200, "POST", "/api/notifications/{notification_id}/unarchive", "/api/notifications/{id}/unarchive", "user"),
    Case(400, "POST", "/api/notifications/{notification_id}/unarchive", "/api/notifications/xyz/unarchive", "user"),
    Case(401, "POST", "/api/notifications/{notification_id}/unarchive", "/api/notifications/{id}/unarchive"),
    Case(
        404,
        "POST",
        "/api/notifications/{notification_id}/unarchive",
        f"/api/notifications/{UNKNOWN_ID}/unarchive",
        "user",
    ),
    Case(204, "DELETE", "/api/notifications/{notification_id}", "/api/notifications/{id}", credentials="user"),
    Case(400, "DELETE", "/api/notifications/{notification_id}", "/api/notifications/xyz", credentials="user"),
    Case(401, "DELETE", "/api/notifications/{notification_id}", "/api/notifications/{id}"),
    Case(404, "DELETE", "/api/notifications/{notification_id}", f"/api/notifications/{UNKNOWN_ID}", credentials="user"),
    Case(200, "GET", "/notifications/stream", credentials="query"),
    Case(200, "GET", "/notifications/stream", credentials="user"),
    Case(200, "GET", "/notifications/stream", credentials="ticket"),
    Case(401, "GET", "/notifications/stream"),
    Case(401, "GET", "/notifications/stream", credentials="unknown ticket"),
    Case(200, "POST", "/notifications/stream-ticket", credentials="user"),
    Case(401, "POST", "/notifications/stream-ticket"),
    Case(403, "POST", "/notifications/stream-ticket", credentials="cookie"),
    Case(200, "GET", "/healthz"),
    Case(200, "GET", "/readyz"),
    Case(200, "GET", "/api/openapi.json"),
]

# With MongoDB and Redis no longer answering.
STORES_DOWN_CASES = [
    Case(503, "POST", "/api/notifications", credentials="producer", body=NEW),
    Case(503, "GET", "/api/notifications", credentials="user"),
    Case(503, "POST", "/api/notifications/{notification_id}/read", f"/api/notifications/{UNKNOWN_ID}/read", "user"),
    Case(503, "POST", "/api/notifications/read-all", credentials="user"),
    Case(503, "POST", "/api/notifications/archive-all", credentials="user"),
    Case(503, "POST", "/api/notifications/seen", credentials="user"),
    Case(
        503, "POST", "/api/notifications/{notification_id}/archive", f"/api/notifications/{UNKNOWN_ID}/archive", "user"
    ),
    Case(
        503,
        "POST",
        "/api/notifications/{notification_id}/unarchive",
        f"/api/notifications/{UNKNOWN_ID}/unarchive",
        "user",
    ),
    Case(503, "DELETE", "/api/notifications/{notification_id}", f"/api/notifications/{UNKNOWN_ID}", credentials="user"),
    # Redis down: the stream opens all the same, and recovers from MongoDB once Redis is back.
    Case(200, "GET", "/notifications/stream", credentials="query"),
    # ... but a ticket can be neither minted nor redeemed.
    Case(503, "POST", "/notifications/stream-ticket", credentials="user"),
    Case(503, "GET", "/notifications/stream", credentials="unknown ticket"),
    Case(503, "GET", "/healthz"),
    Case(503, "GET", "/readyz"),
]
# The stream's limits: MAX_STREAMS_PER_USER (5 in the tests), then MAX_STREAMS (set to 1 below).
LIMIT_CASES = [
    Case(429, "GET", "/notifications/stream", credentials="query"),
    Case(503, "GET", "/notifications/stream", credentials="query"),
    Case(429, "POST", "/notifications/stream-ticket", credentials="user"),
]


@dataclass
class Exchange:
    """A request as sent and the response as received, in openapi-core's terms."""

    request: MockRequest
    response: MockResponse


def _request_headers(case: Case, api: API) -> tuple[dict[str, str], str]:
    """(headers, query) carrying the case's credentials."""
    token = api.token("alice")
    return {
        "": ({}, ""),
        "producer": ({"X-API-Key": api.api_key}, ""),
        "wrong key": ({"X-API-Key": "wrong-key-" + "w" * 16}, ""),
        "user": ({"Authorization": f"Bearer {token}"}, ""),
        "cookie": ({"Cookie": f"bellcast_token={token}"}, ""),
        "query": ({}, f"access_token={token}"),
        "unknown ticket": ({}, "ticket=" + "A" * 43),
    }[case.credentials]


async def exchange(case: Case, api: API, notification_id: str) -> Exchange:
    """Send the case's request; the stream's response is read up to its first block of events."""
    headers: dict[str, str]
    if case.credentials == "ticket":
        headers, query = {}, f"ticket={await api.stream_ticket('alice')}"
    else:
        headers, query = _request_headers(case, api)
    if case.body is not None:
        headers["Content-Type"] = "application/json"
    if case.idempotency_key:
        headers["Idempotency-Key"] = case.idempotency_key
        if len(case.idempotency_key) <= MAX_KEY_LENGTH:
            assert (await api.request("POST", "/api/notifications", NEW, headers)).code == 201
    path = (case.path or case.template).replace("{id}", notification_id)
    if query:
        path += ("&" if "?" in path else "?") + query
    if case.template == "/notifications/stream" and case.status == 200:
        status, response_headers, body = await _open_stream(api.base_url, path, headers)
    else:
        response = await api.request(case.method, path, case.body, headers)
        status, response_headers, body = response.code, dict(response.headers.get_all()), response.body
    url = urlsplit(path)
    cookies = dict(part.strip().split("=", 1) for part in headers.pop("Cookie", "").split(";") if part.strip())
    request = MockRequest(
        api.base_url,
        case.method,
        url.path,
        args=dict(parse_qsl(url.query)),
        headers=headers,
        cookies=cookies,
        data=case.body.encode() if case.body is not None else None,
        content_type=headers.get("Content-Type", ""),
    )
    content_type = response_headers.get("Content-Type", "")
    return Exchange(request, MockResponse(body, status, headers=response_headers, content_type=content_type))


async def _open_stream(base_url: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """Open the stream on a raw socket, as a browser would: its head and first chunk, then close."""
    url = urlsplit(base_url)
    stream = await TCPClient().connect(url.hostname or "127.0.0.1", url.port or 80)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {url.netloc}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        await stream.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await stream.read_until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        response_headers = dict(line.split(": ", 1) for line in head[1:] if line)
        assert response_headers.get("Transfer-Encoding") == "chunked"
        size = int(await stream.read_until(b"\r\n"), 16)
        first_chunk = await stream.read_bytes(size)
        return int(head[0].split()[1]), response_headers, first_chunk
    finally:
        stream.close()


def _check(contract: OpenAPI, case: Case, done: Exchange) -> None:
    assert done.response.status_code == case.status, done.response.data[:500]
    contract.validate_response(done.request, done.response)
    if case.status < 400:
        contract.validate_request(done.request)


@pytest.fixture
def contract(io_loop, http_server, base_url: str, http_client) -> OpenAPI:
    """The document the server serves, loaded into openapi-core."""
    served = io_loop.run_sync(lambda: http_client.fetch(base_url + "/api/openapi.json"))
    return load_contract(json.loads(served.body))


def test_the_served_document_is_the_shipped_one_and_valid_openapi_3_1(contract, io_loop, http_client, base_url):
    served = io_loop.run_sync(lambda: http_client.fetch(base_url + "/api/openapi.json"))
    assert served.headers["Content-Type"].startswith("application/json")
    assert json.loads(served.body) == DOCUMENT
    assert DOCUMENT["openapi"].startswith("3.1.")


@pytest.mark.gen_test
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
async def test_response_matches_the_document(contract, api, case):
    created = await api.create("alice")
    _check(contract, case, await exchange(case, api, created["id"]))


@pytest.fixture
def stores_down(io_loop, settings, store_urls) -> Iterator[API]:
    """A bellcast whose MongoDB and Redis stop answering once it has started: the API as its client."""
    settings = dataclasses.replace(settings, store_timeout=0.5)
    relays = [StoreRelay(*store_address(url)) for url in store_urls]

    async def start() -> Runtime:
        for relay in relays:
            await relay.start()
        mongodb_url, redis_url = (through_relay(url, relay) for url, relay in zip(store_urls, relays, strict=True))
        return await start_runtime(settings, mongodb_url, redis_url)

    runtime = io_loop.run_sync(start)
    sock, port = bind_unused_port()
    server = HTTPServer(make_app(runtime, settings))
    server.add_sockets([sock])
    for relay in relays:
        relay.hang()
    assert settings.api_key is not None
    yield API(AsyncHTTPClient(), f"http://127.0.0.1:{port}", settings.api_key, runtime.authenticator)

    async def healthy() -> bool:
        return (await runtime.health.check()).healthy

    async def stop() -> None:
        for relay in relays:
            relay.recover()
        # Close clients at rest: PyMongo 4.20 leaks the socket of a server check cancelled mid-connect.
        await eventually(healthy, timeout=10)
        await runtime.close()
        for relay in relays:
            await relay.close()

    server.stop()
    io_loop.run_sync(stop)


@pytest.mark.gen_test(timeout=60)
async def test_with_the_stores_down_every_endpoint_answers_its_documented_503(contract, stores_down):
    for case in STORES_DOWN_CASES:
        _check(contract, case, await exchange(case, stores_down, UNKNOWN_ID))


@pytest.mark.gen_test
async def test_a_user_over_the_stream_limit_gets_the_documented_429(contract, api, open_stream, settings):
    for _ in range(settings.max_streams_per_user):
        assert (await open_stream("alice")).status == 200
    _check(contract, LIMIT_CASES[0], await exchange(LIMIT_CASES[0], api, UNKNOWN_ID))


@pytest.mark.gen_test
@pytest.mark.parametrize("max_streams", [1])
async def test_a_full_server_gets_the_documented_503(contract, api, open_stream):
    assert (await open_stream("bob")).status == 200
    _check(contract, LIMIT_CASES[1], await exchange(LIMIT_CASES[1], api, UNKNOWN_ID))


@pytest.mark.gen_test
async def test_a_user_past_the_ticket_limit_gets_the_documented_429(contract, api):
    for _ in range(MAX_TICKETS_PER_USER):
        await api.stream_ticket("alice")
    _check(contract, LIMIT_CASES[2], await exchange(LIMIT_CASES[2], api, UNKNOWN_ID))


def _documented_operations() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item}


def test_every_documented_response_is_exercised_above():
    documented = {
        (method.upper(), path, int(status))
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
    }
    exercised = {(case.method, case.template, case.status) for case in CASES + STORES_DOWN_CASES + LIMIT_CASES}
    assert exercised == documented


def test_every_route_and_method_is_documented_and_nothing_else():
    served: set[tuple[str, str]] = set()
    # The demo page is HTML for people, and /metrics and /status are for operators: not part of the API.
    not_api = handlers.widget.default_handlers + handlers.observability.default_handlers
    api_routes = [route for route in handlers.default_handlers if route not in not_api]
    for pattern, handler_class, *_ in api_routes:
        # A route with an id matches its own template only; "/api/notifications/seen" is a path of its own.
        [template] = [
            t
            for t in DOCUMENT["paths"]
            if re.fullmatch(pattern, t.replace("{notification_id}", UNKNOWN_ID))
            and ("(?P<notification_id>" in pattern) == ("{notification_id}" in t)
        ]
        served |= {(m, template) for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if m.lower() in vars(handler_class)}
    assert served == _documented_operations()
