"""TRUSTED_PROXIES: the client address a proxy forwards is believed from that proxy, and from no one else."""

from __future__ import annotations

import ipaddress
import logging

import pytest
from tornado.testing import bind_unused_port

from handlers.proxy import TrustedProxyHTTPServer, is_trusted
from server import parse_settings
from tests.support import status_of_get


@pytest.fixture
def wakeup_hints() -> bool:
    """Streams play no part here: one delivery mode is enough."""
    return True


def _networks(*specs: str) -> tuple:
    return tuple(ipaddress.ip_network(spec) for spec in specs)


@pytest.mark.parametrize(
    ("remote_ip", "trusted", "expected"),
    [
        ("127.0.0.1", ["127.0.0.1/32"], True),
        ("127.0.0.2", ["127.0.0.1/32"], False),
        ("10.1.2.3", ["10.0.0.0/8", "192.168.0.0/16"], True),
        ("::ffff:10.1.2.3", ["10.0.0.0/8"], True),
        ("::1", ["::1/128"], True),
        ("::1", [], False),
        ("not an address", ["0.0.0.0/0"], False),
    ],
)
def test_is_trusted_matches_addresses_against_networks(remote_ip, trusted, expected):
    assert is_trusted(remote_ip, _networks(*trusted)) is expected


def test_trusted_proxies_setting_is_a_list_of_networks():
    settings = parse_settings(["--trusted-proxies", "127.0.0.1, 10.0.0.0/8,::1"], {})
    assert settings.trusted_proxies == _networks("127.0.0.1/32", "10.0.0.0/8", "::1/128")
    assert parse_settings([], {}).trusted_proxies == ()


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("trusted", "source_ip", "headers", "logged_ip"),
    [
        (["127.0.0.1"], "127.0.0.1", {"X-Real-IP": "198.51.100.7"}, "198.51.100.7"),
        (["127.0.0.1"], "127.0.0.2", {"X-Real-IP": "198.51.100.7"}, "127.0.0.2"),
        (["127.0.0.1"], "127.0.0.2", {"X-Forwarded-For": "198.51.100.7"}, "127.0.0.2"),
        ([], "127.0.0.1", {"X-Real-IP": "198.51.100.7"}, "127.0.0.1"),
        (["127.0.0.0/8"], "127.0.0.2", {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}, "198.51.100.7"),
    ],
    ids=["trusted-peer", "untrusted-peer", "untrusted-peer-xff", "none-trusted", "rightmost-forwarded-for"],
)
async def test_forwarded_client_address_is_believed_only_from_trusted_proxies(
    app, caplog, trusted, source_ip, headers, logged_ip
):
    caplog.set_level(logging.DEBUG, logger="tornado.access")  # a successful /healthz is logged at debug level
    sock, port = bind_unused_port()
    server = TrustedProxyHTTPServer(app, trusted_proxies=_networks(*trusted))
    server.add_sockets([sock])
    try:
        assert await status_of_get(port, "/healthz", source_ip, headers) == 200
    finally:
        server.stop()
    [line] = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert f"GET /healthz ({logged_ip})" in line
