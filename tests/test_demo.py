"""The demo page at `/`, the widget's static files, and the development-only routes behind the demo."""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json

import pytest
from tornado.testing import bind_unused_port

from handlers.development import is_loopback
from handlers.proxy import TrustedProxyHTTPServer
from server import SettingsError, make_app, parse_settings
from services.auth import Authenticator


@pytest.fixture
def development() -> bool:
    """Configured secrets by default, as in production; parametrize True for `make run`'s development mode."""
    return False


@pytest.fixture
def app(runtime, settings, development: bool):
    return make_app(runtime, settings, development)


def _json_post(api, path: str, body: object, content_type: str = "application/json"):
    return api.request("POST", path, json.dumps(body), {"Content-Type": content_type})


@pytest.mark.gen_test
async def test_demo_page_embeds_the_bell_with_one_script_and_one_element(api):
    response = await api.request("GET", "/")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.body.decode()
    assert '<script src="/static/notification-bell.js?v=' in page
    assert "<notification-bell" in page
    assert "/dev/token" not in page and "Send a test notification" not in page


@pytest.mark.gen_test
@pytest.mark.parametrize("development", [True])
async def test_demo_page_in_development_signs_in_and_offers_the_test_form(api, development):
    page = (await api.request("GET", "/")).body.decode()
    assert "/dev/token" in page and "Send a test notification" in page


def test_development_routes_and_generated_secrets_only_when_neither_secret_is_configured():
    assert parse_settings([], {}).generates_secrets
    both = {"JWT_SECRET": "configured-" + "s" * 32, "API_KEY": "configured-" + "k" * 16}
    assert not parse_settings([], both).generates_secrets


@pytest.mark.parametrize("configured", ["JWT_SECRET", "API_KEY"])
def test_one_secret_without_the_other_is_refused_rather_than_the_other_generated(configured):
    # A configured JWT_SECRET beside a generated API key must never mint demo tokens, nor be printed.
    value = {"JWT_SECRET": "configured-" + "s" * 32, "API_KEY": "configured-" + "k" * 16}[configured]
    with pytest.raises(SettingsError, match="JWT_SECRET and API_KEY go together"):
        parse_settings([], {configured: value})


@pytest.mark.gen_test
@pytest.mark.parametrize(("method", "path"), [("POST", "/dev/token"), ("POST", "/dev/notifications")])
async def test_development_routes_do_not_exist_when_secrets_are_configured(api, method, path):
    response = await _json_post(api, path, {"user_id": "alice", "title": "Hi"})
    assert response.code == 404
    assert json.loads(response.body)["error"]["code"] == "not_found"


@pytest.mark.gen_test
@pytest.mark.parametrize("development", [True])
async def test_development_token_is_a_valid_user_token(api, settings, development):
    minted = json.loads((await _json_post(api, "/dev/token", {"user_id": "alice"})).body)
    assert minted["user_id"] == "alice" and minted["expires_in"] > 0
    assert Authenticator(settings.jwt_secret, settings.api_key).user_id(minted["token"]) == "alice"
    default = json.loads((await _json_post(api, "/dev/token", {})).body)
    assert default["user_id"] == "demo"
    listed = await api.request("GET", "/api/notifications", headers={"Authorization": f"Bearer {minted['token']}"})
    assert listed.code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("development", [True])
@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ({"user_id": ""}, "application/json", 400),
        ({"user_id": 7}, "application/json", 400),
        (["alice"], "application/json", 400),
        ({"user_id": "alice"}, "text/plain", 415),
    ],
)
async def test_development_token_refuses_bad_requests(api, development, body, content_type, status):
    response = await _json_post(api, "/dev/token", body, content_type)
    assert response.code == status
    assert "error" in json.loads(response.body)


@pytest.mark.gen_test
@pytest.mark.parametrize("development", [True])
async def test_development_test_notification_takes_the_producer_path(api, open_stream, development):
    stream = await open_stream("demo")
    response = await _json_post(api, "/dev/notifications", {"title": "Build passed", "url": "/builds/1"})
    assert response.code == 201
    created = json.loads(response.body)
    assert (created["user_id"], created["title"], created["url"]) == ("demo", "Build passed", "/builds/1")
    [event] = await stream.notifications(1)
    assert event.json() == created
    invalid = await _json_post(api, "/dev/notifications", {"title": "x", "url": "javascript:alert(1)"})
    assert invalid.code == 400 and json.loads(invalid.body)["error"]["code"] == "invalid"


@pytest.mark.gen_test
async def test_widget_and_its_runtime_are_served_to_any_origin(api):
    for path in ("/static/notification-bell.js", "/static/vendor/vue.runtime.esm-browser.prod.js"):
        response = await api.request("GET", path, headers={"Origin": "https://host.example"})
        assert response.code == 200, path
        assert response.headers["Content-Type"] in ("application/javascript", "text/javascript")
        assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.gen_test
async def test_without_cors_origins_the_api_sends_no_cors_headers(api):
    response = await api.request("GET", "/api/notifications", headers={"Origin": "https://app.example.com"})
    assert "Access-Control-Allow-Origin" not in response.headers and "Vary" not in response.headers
    preflight = await api.request("OPTIONS", "/api/notifications", headers={"Origin": "https://app.example.com"})
    assert preflight.code == 403


def _development_post(port: int, path: str, headers: dict[str, str], source_ip: str = "127.0.0.1"):
    """A JSON post to a development route from `source_ip`, with the Host the page asked for."""
    body = json.dumps({"user_id": "alice", "title": "Hi"}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source_ip, 0))
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.gen_test
@pytest.mark.parametrize("development", [True])
@pytest.mark.parametrize("path", ["/dev/token", "/dev/notifications"])
@pytest.mark.parametrize(
    ("host", "forwarded_for", "allowed"),
    [
        ("localhost:8888", None, True),
        ("127.0.0.1:8888", None, True),
        ("[::1]:8888", None, True),
        ("attacker.example", None, False),
        ("attacker.example:8888", None, False),
        ("localhost.attacker.example", None, False),
        ("localhost:8888", "198.51.100.7", False),
    ],
    ids=["localhost", "ipv4-loopback", "ipv6-loopback", "rebound-name", "rebound-name-port", "lookalike", "proxied"],
)
async def test_development_routes_answer_only_a_client_on_this_machine_that_asked_for_localhost(
    app, runtime, development, path, host, forwarded_for, allowed
):
    """DNS rebinding (another site's name resolving to 127.0.0.1) and a client elsewhere behind a proxy on
    this machine are refused; nothing is minted or created for them."""
    sock, port = bind_unused_port()
    server = TrustedProxyHTTPServer(app, trusted_proxies=[ipaddress.ip_network("127.0.0.1/32")])
    server.add_sockets([sock])
    headers = {"Host": host, **({"X-Real-IP": forwarded_for} if forwarded_for else {})}
    try:
        status, body = await asyncio.get_running_loop().run_in_executor(None, _development_post, port, path, headers)
    finally:
        server.stop()
    if allowed:
        assert status in (200, 201), body
    else:
        assert status == 403, body
        assert json.loads(body)["error"]["code"] == "forbidden"
        assert b"token" not in body.replace(b"development routes", b"")
        stored = await runtime.notifications.list_recent("alice", 10)
        assert stored.notifications == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),  # a client on a dual-stack socket
        ("::ffff:198.51.100.7", False),
        ("localhost.attacker.example", False),
        ("0.0.0.0", False),
        ("", False),
    ],
)
def test_only_this_machine_counts_as_loopback_for_the_development_routes(host, loopback):
    assert is_loopback(host) is loopback
