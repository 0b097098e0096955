"""The embedded Redis that `make run` starts: with a password, another process of the machine gets nothing but PING."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import AuthenticationError, NoPermissionError

from services.embedded import EmbeddedRedis, EmbeddedRedisCluster


@pytest.fixture
def password() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def guarded_redis(password: str) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(None, password=password).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_process_without_the_password_can_ping_the_embedded_redis_and_do_nothing_else(guarded_redis, password):
    stranger = redis.Redis(port=guarded_redis.port)
    try:
        assert stranger.ping()
        for command in (("SET", "k", "v"), ("KEYS", "*"), ("CONFIG", "GET", "*"), ("ACL", "LIST"), ("SUBSCRIBE", "c")):
            with pytest.raises(NoPermissionError):
                stranger.execute_command(*command)
        with pytest.raises(AuthenticationError):
            stranger.execute_command("AUTH", "bellcast", "not-" + password)
    finally:
        stranger.close()


def test_the_embedded_redis_url_carries_the_credentials_bellcast_connects_with(guarded_redis, password):
    parts = urlsplit(guarded_redis.url)
    assert (parts.username, parts.password, parts.hostname) == ("bellcast", password, "127.0.0.1")
    client = redis.Redis.from_url(guarded_redis.url)
    try:
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.eval("return redis.call('GET', KEYS[1])", 1, "k") == b"v"
    finally:
        client.close()


def test_an_embedded_cluster_with_a_password_forms_and_refuses_strangers(password):
    cluster = EmbeddedRedisCluster(None, nodes=3, password=password).start()
    try:
        client = RedisCluster.from_url(cluster.url)
        try:
            for key in ("a", "b", "c", "d"):
                client.set(key, key)
            assert [client.get(key) for key in ("a", "b", "c", "d")] == [b"a", b"b", b"c", b"d"]
        finally:
            # From a URL, the client's nodes share pools that `close` leaves open: their sockets would
            # be left to the garbage collector, whose ResourceWarning fails whichever test it runs in.
            client.disconnect_connection_pools()
            client.close()
        for node in cluster.nodes:
            stranger = redis.Redis(port=node.port)
            try:
                with pytest.raises(NoPermissionError):
                    stranger.execute_command("CLUSTER", "NODES")
            finally:
                stranger.close()
    finally:
        cluster.stop()
