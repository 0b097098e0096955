"""Stream tickets: a single-use, short-lived credential opens one stream, so no user token rides in its URL."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace

import pytest
from tornado.httpclient import AsyncHTTPClient

from server import make_app
from services.tickets import MAX_TICKETS_PER_USER, TICKET_KEY_PREFIX, ticket_key
from tests.support import API, ServerProcess, SSEStream, error_of, eventually, on_every_node, serving

TICKET_PATH = "/notifications/stream-ticket"
OTHER_ORIGIN = "https://evil.example"


@pytest.fixture
def wakeup_hints() -> bool:
    """Tickets do not depend on how streams are woken."""
    return True


@pytest.fixture
def stream_ticket_ttl() -> float:
    return 30.0


@pytest.fixture
def settings(settings, stream_ticket_ttl):
    return replace(settings, stream_ticket_ttl=stream_ticket_ttl)


async def mint(api: API, headers: dict[str, str]) -> tuple[int, dict]:
    """POST for a ticket with these headers: the status and the JSON body."""
    response = await api.request("POST", TICKET_PATH, None, headers)
    return response.code, json.loads(response.body)


async def refused_stream(api: API, query: str) -> dict:
    """GET the stream with this query, expecting a JSON 401: its error."""
    response = await api.request("GET", f"/notifications/stream?{query}")
    assert response.code == 401, response.body
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="bellcast"'
    return error_of(response)


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_a_ticket_opens_one_stream_of_its_user_and_a_second_use_is_refused(api, open_stream, settings):
    response = await api.as_user("alice", "POST", TICKET_PATH)
    assert response.code == 200
    assert response.headers["Cache-Control"] == "no-store"
    minted = json.loads(response.body)
    assert set(minted) == {"ticket", "expires_in"} and minted["expires_in"] == settings.stream_ticket_ttl
    stream = await open_stream(None, ticket=minted["ticket"])
    assert stream.status == 200
    created = await api.create("alice", "through a ticket")
    [event] = await stream.notifications(1)
    assert event.id == created["id"]
    assert (await refused_stream(api, f"ticket={minted['ticket']}"))["code"] == "unauthorized"


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_two_requests_racing_with_one_ticket_open_one_stream(api, base_url):
    ticket = await api.stream_ticket("alice")
    streams = await asyncio.gather(*(SSEStream.open(base_url, None, ticket=ticket) for _ in range(5)))
    try:
        assert sorted(stream.status for stream in streams) == [200, 401, 401, 401, 401]
    finally:
        for stream in streams:
            stream.close()


@pytest.mark.gen_test
async def test_a_ticket_opens_the_stream_of_the_user_it_was_minted_for_whatever_else_the_request_names(
    api, open_stream
):
    ticket = await api.stream_ticket("alice")
    # Bob's token beside alice's ticket: the ticket alone says whose stream it is.
    stream = await open_stream(None, ticket=ticket, headers={"Authorization": f"Bearer {api.token('bob')}"})
    assert stream.status == 200
    await api.create("bob", "for bob")
    created = await api.create("alice", "for alice")
    [event] = await stream.notifications(1)
    assert event.json()["user_id"] == "alice" and event.id == created["id"]
    await stream.assert_silent(0.2)


@pytest.mark.gen_test
async def test_a_stream_opened_with_a_ticket_resumes_after_last_event_id(api, open_stream):
    before = await api.create("alice", "seen")
    missed = await api.create("alice", "missed")
    by_header = await open_stream(None, ticket=await api.stream_ticket("alice"), last_event_id=before["id"])
    [event] = await by_header.notifications(1)
    assert event.id == missed["id"]
    # What the bell does when it reopens: a new ticket, and the last id it saw in the query.
    url_ticket = await api.stream_ticket("alice")
    in_query = await SSEStream.open(api.base_url, None, ticket=f"{url_ticket}&last_event_id={before['id']}")
    try:
        [event] = await in_query.notifications(1)
        assert event.id == missed["id"]
    finally:
        in_query.close()


@pytest.mark.gen_test
@pytest.mark.parametrize("stream_ticket_ttl", [0.2])
async def test_an_expired_ticket_is_refused(api, runtime):
    ticket = await api.stream_ticket("alice")

    async def expired() -> bool:
        return not await runtime.redis.exists(ticket_key(ticket))

    await eventually(expired)
    assert (await refused_stream(api, f"ticket={ticket}"))["code"] == "unauthorized"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("ticket=", 401),
        ("ticket=x", 401),
        ("ticket=" + "A" * 43, 401),  # well formed, never minted
        ("ticket=" + "A" * 44, 401),
        ("ticket=" + "A" * 42 + "%2F", 401),
        ("ticket=" + "A" * 42 + "%00", 401),
        ("ticket=" + "A" * 10_000, 401),
        ("ticket=%ff%fe", 400),  # no text at all: Tornado's own 400
    ],
    ids=["empty", "short", "unknown", "long", "slash", "nul", "huge", "not-utf8"],
)
async def test_a_malformed_or_unknown_ticket_answers_a_json_error_and_opens_nothing(api, runtime, query, status):
    response = await api.request("GET", f"/notifications/stream?{query}")
    assert response.code == status, response.body
    error = error_of(response)
    assert error["code"] == {400: "bad_request", 401: "unauthorized"}[status]
    if status == 401:
        assert "ticket" in error["message"]  # refused as a ticket, not for want of a token
    assert len(runtime.streams) == 0


@pytest.mark.gen_test
async def test_minting_needs_a_valid_token(api):
    for headers in ({}, {"Authorization": f"Bearer {api.token('alice', lifetime=-60)}"}):
        response = await api.request("POST", TICKET_PATH, None, headers)
        assert response.code == 401
        assert error_of(response)["code"] == "unauthorized"


@pytest.mark.gen_test
async def test_a_ticket_minted_with_the_cookie_needs_json_from_an_allowed_page(api, base_url, open_stream):
    cookie = {"Cookie": f"bellcast_token={api.token('alice')}", "Content-Type": "application/json"}
    for origin in (OTHER_ORIGIN, None):
        headers = cookie if origin is None else {**cookie, "Origin": origin}
        status, body = await mint(api, headers)
        assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await mint(api, {**cookie, "Origin": base_url})
    assert status == 200
    assert (await open_stream(None, ticket=body["ticket"])).status == 200


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_a_user_minting_past_the_limit_gets_429_and_others_still_mint(api, runtime):
    headers = {"Authorization": f"Bearer {api.token('mallory')}"}
    statuses = [(await api.request("POST", TICKET_PATH, None, headers)).code for _ in range(MAX_TICKETS_PER_USER)]
    assert set(statuses) == {200}
    for _ in range(3):
        refused = await api.request("POST", TICKET_PATH, None, headers)
        assert refused.code == 429
        assert error_of(refused)["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 30
    # What Redis holds is bounded: the refused mints left nothing behind.
    tickets = await runtime.redis.keys(TICKET_KEY_PREFIX + "*", **on_every_node(runtime.redis))
    assert len(tickets) == MAX_TICKETS_PER_USER
    assert await api.stream_ticket("alice")


@pytest.mark.gen_test
async def test_with_redis_down_minting_and_redeeming_answer_a_json_503_and_the_server_keeps_serving(
    runtime_without_redis, settings
):
    assert settings.api_key is not None
    async with serving(make_app(runtime_without_redis, settings)) as base_url:
        api = API(AsyncHTTPClient(), base_url, settings.api_key, runtime_without_redis.authenticator)
        for method, path, headers in [
            ("POST", TICKET_PATH, {"Authorization": f"Bearer {api.token('alice')}"}),
            ("GET", "/notifications/stream?ticket=" + "A" * 43, {}),
        ]:
            response = await api.request(method, path, None, headers)
            assert response.code == 503, response.body
            assert error_of(response)["code"] == "store_unavailable"
        assert (await api.request("GET", "/healthz")).code == 503  # answers, naming Redis


@pytest.mark.gen_test
async def test_tickets_appear_in_no_log_record(api, open_stream, caplog):
    caplog.set_level(logging.DEBUG)
    used = await api.stream_ticket("alice")
    stream = await open_stream(None, ticket=used)
    await stream.next_event()
    await refused_stream(api, f"limit=1&ticket={used}")
    await refused_stream(api, f"tick%65t={used}")  # the same parameter, its name escaped
    stream.close()
    await asyncio.sleep(0.3)  # the stream's access line is written when it ends
    assert any(r.name == "tornado.access" and "ticket=[redacted]" in r.getMessage() for r in caplog.records)
    assert used not in caplog.text
    assert not [r for r in caplog.records if used in r.getMessage() or used in str(r.args)]


JWT_SECRET = "tickets-secret-" + "x" * 20
API_KEY = "tickets-api-key-" + "y" * 10


@pytest.mark.gen_test(timeout=60)
async def test_a_ticket_minted_by_one_server_opens_a_stream_on_another_sharing_the_redis(store_urls, tmp_path):
    servers = [
        ServerProcess(store_urls, tmp_path / f"bellcast-{name}.log", JWT_SECRET=JWT_SECRET, API_KEY=API_KEY)
        for name in ("minting", "streaming")
    ]
    try:
        for server in servers:
            server.wait_until_ready()
        minting, streaming = (server.api() for server in servers)
        ticket = await minting.stream_ticket("alice")
        stream = await SSEStream.open(streaming.base_url, None, ticket=ticket)
        try:
            assert stream.status == 200
            created = await streaming.create("alice", "across servers")
            [event] = await stream.notifications(1)
            assert event.id == created["id"]
            # Spent on the other server: refused on this one too.
            assert (await refused_stream(minting, f"ticket={ticket}"))["code"] == "unauthorized"
        finally:
            stream.close()
    finally:
        for server in servers:
            assert server.stop() == 0, server.output()[-3000:]
            server.drop_database()
