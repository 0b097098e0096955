"""CORS_ORIGINS: pages of the allowed origins may use the API and the stream; no one else, and never `*`."""

from __future__ import annotations

import dataclasses
import json

import pytest

from server import Settings, SettingsError, parse_settings

ALLOWED = "https://app.example.com"
OTHER = "https://evil.example.net"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, cors_origins=(ALLOWED, "http://localhost:3000"))


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("", ()),
        ("https://app.example.com", ("https://app.example.com",)),
        (" https://A.example.com , http://localhost:3000,", ("https://a.example.com", "http://localhost:3000")),
        ("https://app.example.com:443,http://x.test:80", ("https://app.example.com", "http://x.test")),
        ("http://[::1]:8080", ("http://[::1]:8080",)),
    ],
)
def test_cors_origins_are_parsed_as_browsers_send_origin(value, origins):
    assert parse_settings([], {"CORS_ORIGINS": value}).cors_origins == origins


@pytest.mark.parametrize("value", ["*", "https://app.example.com/", "https://app.example.com/path", "null", "ftp://x"])
def test_cors_origins_other_than_exact_origins_are_refused(value):
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        parse_settings([], {"CORS_ORIGINS": value})


@pytest.mark.gen_test
async def test_an_allowed_origin_is_echoed_on_answers_and_errors_alike(api):
    token = api.token("alice")
    listed = await api.request(
        "GET", "/api/notifications", headers={"Origin": ALLOWED, "Authorization": f"Bearer {token}"}
    )
    refused = await api.request("GET", "/api/notifications", headers={"Origin": ALLOWED})
    assert (listed.code, refused.code) == (200, 401)
    for response in (listed, refused):
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert response.headers["Vary"] == "Origin"
        assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.gen_test
async def test_another_origin_gets_no_cors_header(api):
    response = await api.as_user("alice", "GET", "/api/notifications")
    assert "Access-Control-Allow-Origin" not in response.headers
    other = await api.request("GET", "/api/notifications", headers={"Origin": OTHER})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert other.headers["Vary"] == "Origin"


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/api/notifications", "/api/notifications/read-all", "/notifications/stream"])
async def test_preflight_of_an_allowed_origin_names_methods_and_headers(api, path):
    response = await api.request(
        "OPTIONS",
        path,
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, last-event-id",
        },
    )
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert response.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE"
    assert response.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type, Last-Event-ID"
    assert int(response.headers["Access-Control-Max-Age"]) > 0


@pytest.mark.gen_test
async def test_preflight_of_another_origin_is_forbidden(api):
    response = await api.request("OPTIONS", "/api/notifications", headers={"Origin": OTHER})
    assert response.code == 403
    assert json.loads(response.body)["error"]["code"] == "forbidden"
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.gen_test
async def test_the_stream_answers_an_allowed_origin(open_stream):
    stream = await open_stream("alice", headers={"Origin": ALLOWED})
    assert stream.status == 200
    assert stream.headers["access-control-allow-origin"] == ALLOWED
    assert stream.headers["content-type"].startswith("text/event-stream")


FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


@pytest.mark.gen_test
@pytest.mark.parametrize("write", ["read-all", "read"])
@pytest.mark.parametrize(
    ("content_type", "origin", "allowed"),
    [
        (FORM, OTHER, False),  # another site's auto-submitting form
        ("text/plain", OTHER, False),  # the other content type a form or a no-preflight fetch can send
        (JSON, OTHER, False),
        (JSON, None, False),
        (FORM, "own", False),
        (JSON, "own", True),  # the bell on bellcast's own origin
        (JSON, ALLOWED, True),  # a page of CORS_ORIGINS
    ],
    ids=["cross-site-form", "cross-site-text", "cross-site-json", "no-origin", "own-page-form", "own-page", "allowed"],
)
async def test_a_write_authenticated_by_the_cookie_must_come_as_json_from_an_allowed_page(
    api, base_url, write, content_type, origin, allowed
):
    created = await api.create("alice", "Unread until alice reads it")
    path = "/api/notifications/" + ("read-all" if write == "read-all" else f"{created['id']}/read")
    headers = {"Cookie": f"bellcast_token={api.token('alice')}", "Content-Type": content_type}
    if origin is not None:
        headers["Origin"] = base_url if origin == "own" else origin
    response = await api.request("POST", path, "{}" if content_type == JSON else "x=1", headers)
    listed = json.loads((await api.as_user("alice", "GET", "/api/notifications")).body)
    if allowed:
        assert response.code == 200, response.body
        assert listed["unread_count"] == 0
    else:
        assert response.code == 403
        assert json.loads(response.body)["error"]["code"] == "forbidden"
        assert listed["unread_count"] == 1


@pytest.mark.gen_test
async def test_a_token_in_a_header_or_the_query_writes_from_any_page_and_the_cookie_still_reads(api):
    """Only the cookie rides along unasked: a token the page itself sends proves nothing is forged."""
    token = api.token("alice")
    await api.create("alice", "One")
    by_header = await api.request(
        "POST", "/api/notifications/read-all", "", {"Authorization": f"Bearer {token}", "Origin": OTHER}
    )
    by_query = await api.request("POST", f"/api/notifications/read-all?access_token={token}", "", {"Origin": OTHER})
    read = await api.request("GET", "/api/notifications", None, {"Cookie": f"bellcast_token={token}", "Origin": OTHER})
    assert (by_header.code, by_query.code, read.code) == (200, 200, 200)
