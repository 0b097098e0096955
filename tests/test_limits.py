"""Limits, configurable: request body size, `limit` bounds, and the producers' rate limit per API key."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace

import pytest

from server import SettingsError, parse_settings
from services.errors import RateLimited
from services.ratelimit import KEY_PREFIX, ProducerRateLimiter, RateLimit, rate_key
from services.redis_backend import connect_redis_backend
from tests.relay import StoreRelay, store_address, through_relay
from tests.support import command_calls, error_of


@pytest.fixture
def wakeup_hints() -> bool:
    """Limits do not depend on how streams are woken."""
    return True


@pytest.fixture
def producer_rate() -> tuple[float, float]:
    """(PRODUCER_RATE_LIMIT, PRODUCER_RATE_WINDOW) of a test: the defaults unless it parametrizes them."""
    return 500.0, 10.0


@pytest.fixture
def max_body_bytes() -> int:
    return 64 * 1024


@pytest.fixture
def settings(settings, producer_rate, max_body_bytes):
    rate, window = producer_rate
    return replace(settings, producer_rate_limit=rate, producer_rate_window=window, max_body_bytes=max_body_bytes)


async def _post(api, title: str = "t", user_id: str = "alice"):
    body = json.dumps({"user_id": user_id, "title": title})
    return await api.request("POST", "/api/notifications", body, {"X-API-Key": api.api_key})


@pytest.mark.gen_test
@pytest.mark.parametrize("producer_rate", [(0.5, 10.0)])
async def test_a_producer_past_its_rate_limit_gets_a_json_429_with_retry_after_and_nothing_is_stored(api, runtime):
    statuses = [(await _post(api, f"n{i}")).code for i in range(5)]
    assert statuses == [201] * 5
    refused = await _post(api, "one too many")
    assert refused.code == 429
    assert error_of(refused)["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 10
    assert await runtime.mongo.database["notifications"].count_documents({}) == 5
    assert runtime.rate_limiter.refused == 1


@pytest.mark.gen_test
@pytest.mark.parametrize("producer_rate", [(10.0, 1.0)])
async def test_a_create_for_several_users_counts_each_notification_against_the_rate_limit(api, runtime):
    """The limit bounds what a key makes MongoDB and the streams do: a create for ten users is ten."""

    async def post_for(count: int, title: str):
        body = json.dumps({"user_ids": [f"user{i}" for i in range(count)], "title": title})
        return await api.request("POST", "/api/notifications", body, {"X-API-Key": api.api_key})

    too_many = await post_for(11, "more than a window allows")
    assert too_many.code == 429 and error_of(too_many)["code"] == "rate_limited"
    assert await runtime.mongo.database["notifications"].count_documents({}) == 0
    await asyncio.sleep(1.1)  # a new window
    assert (await post_for(9, "nine")).code == 201
    assert (await _post(api, "the tenth")).code == 201
    assert (await post_for(2, "two more")).code == 429
    assert (await _post(api, "one more")).code == 429
    assert await runtime.mongo.database["notifications"].count_documents({}) == 10


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("producer_rate", [(2.0, 1.0)])
async def test_a_rate_limited_producer_is_admitted_again_once_the_window_ends(api):
    assert [(await _post(api)).code for _ in range(2)] == [201, 201]
    refused = await _post(api)
    assert refused.code == 429
    assert refused.headers["Retry-After"] == "1"
    await asyncio.sleep(1.2)
    assert (await _post(api)).code == 201


@pytest.mark.gen_test
@pytest.mark.parametrize("producer_rate", [(0.5, 10.0)])
async def test_the_rate_counter_is_one_expiring_redis_key_that_does_not_contain_the_api_key(api, runtime):
    await _post(api)
    keys = await runtime.redis.keys(KEY_PREFIX + "*")
    assert len(keys) == 1
    assert api.api_key.encode() not in keys[0]
    assert 0 < await runtime.redis.pttl(keys[0]) <= 10_000


@pytest.mark.gen_test(timeout=60)
@pytest.mark.also_on_cluster
async def test_processes_count_in_redis_once_a_share_and_together_never_admit_more_than_the_allowance(
    redis_url, redis_cluster, runtime
):
    """Each process takes 1 % of a window's allowance from Redis at a time and admits from it: a create costs no
    round trip of its own. Redis never lets more than the allowance in, whatever the processes hold; a process is
    refused at most the others' unspent shares early, and those admit them."""
    limit = RateLimit(100.0, 10.0)  # 1,000 a window, in shares of 10
    backends = [connect_redis_backend(redis_url, redis_cluster) for _ in range(2)]
    first, second = (ProducerRateLimiter(backend, limit) for backend in backends)

    async def admitted(limiter: ProducerRateLimiter, api_key: str, tries: int) -> int:
        count = 0
        for _ in range(tries):
            try:
                await limiter.admit(api_key)
            except RateLimited:
                continue
            count += 1
        return count

    try:
        counted_before = await command_calls(runtime.redis, "incrby")
        evenly = 0
        for _ in range(500):
            evenly += await admitted(first, "evenly-key", 1) + await admitted(second, "evenly-key", 1)
        assert evenly == 1000
        assert await command_calls(runtime.redis, "incrby") - counted_before == 100
        assert await admitted(first, "evenly-key", 5) + await admitted(second, "evenly-key", 5) == 0

        assert await admitted(first, "unevenly-key", 5) == 5  # holds 5 more of its share
        assert await admitted(second, "unevenly-key", 1100) == 990
        assert await admitted(first, "unevenly-key", 10) == 5
    finally:
        for backend in backends:
            await backend.aclose()


@pytest.mark.gen_test
async def test_a_share_taken_as_its_window_ends_admits_what_redis_counted(redis_url, monkeypatch):
    """Redis answers a count with the milliseconds its window has left, 0 when it ends as it answers: what it
    counted within the allowance is admitted all the same."""
    backend = connect_redis_backend(redis_url, False)
    limiter = ProducerRateLimiter(backend, RateLimit(100.0, 1.0))  # shares of 1
    count_in_redis = limiter._count

    async def count_as_the_window_ends(key: str, notifications: int) -> tuple[int, int]:
        count, _ = await count_in_redis(key, notifications)
        return count, 0

    monkeypatch.setattr(limiter, "_count", count_as_the_window_ends)
    try:
        for _ in range(4):
            await limiter.admit("window-ending-key")
        assert limiter.refused == 0
    finally:
        await backend.client.delete(rate_key("window-ending-key"))
        await backend.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_creates_waiting_for_a_share_from_a_redis_that_hangs_fail_open_with_that_one_take(
    store_urls, monkeypatch
):
    """The creates of a key that wait while one takes a share from Redis do not each try again once it times out,
    one timeout after another: they are admitted with it (the limit fails open while Redis does not answer)."""
    relay = await StoreRelay(*store_address(store_urls[1])).start()
    backend = connect_redis_backend(through_relay(store_urls[1], relay), False, timeout=0.5)
    limiter = ProducerRateLimiter(backend, RateLimit(0.1, 10.0))  # 1 a window, shares of 1
    count_in_redis, takes = limiter._count, 0

    async def counting_takes(key: str, notifications: int) -> tuple[int, int]:
        nonlocal takes
        takes += 1
        return await count_in_redis(key, notifications)

    monkeypatch.setattr(limiter, "_count", counting_takes)
    try:
        relay.hang()
        await asyncio.gather(*(limiter.admit("hanging-key") for _ in range(20)))
        assert (takes, limiter.refused) == (1, 0)
    finally:
        await backend.aclose()
        await relay.close()


@pytest.mark.gen_test
@pytest.mark.parametrize("producer_rate", [(0.0, 10.0)])
async def test_a_rate_limit_of_zero_turns_it_off(api, runtime):
    assert [(await _post(api)).code for _ in range(20)] == [201] * 20
    assert await runtime.redis.keys(KEY_PREFIX + "*") == []


@pytest.mark.gen_test
@pytest.mark.parametrize("producer_rate", [(0.5, 10.0)])
async def test_requests_without_a_valid_api_key_are_refused_before_they_count(api, runtime):
    for _ in range(10):
        response = await api.request(
            "POST", "/api/notifications", '{"user_id": "a", "title": "t"}', {"X-API-Key": "wrong-key-wrong-key"}
        )
        assert response.code == 403
    assert await runtime.redis.keys(KEY_PREFIX + "*") == []
    assert (await _post(api)).code == 201


@pytest.fixture
def store_urls(store_urls, request):
    """The session's stores, or the private Redis for the tests that stop it."""
    if "private_redis" not in request.fixturenames:
        return store_urls
    private = request.getfixturevalue("private_redis")
    return store_urls[0], private.url


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("producer_rate", [(0.1, 10.0)])
async def test_with_redis_down_producers_are_admitted_and_stored_and_it_is_logged_once(
    api, runtime, private_redis, caplog
):
    assert (await _post(api, "first")).code == 201
    assert (await _post(api, "second")).code == 429
    private_redis.stop()
    with caplog.at_level(logging.WARNING, logger="bellcast.ratelimit"):
        statuses = [(await _post(api, f"during {i}")).code for i in range(5)]
    assert statuses == [201] * 5
    outage_logs = [r for r in caplog.records if r.name == "bellcast.ratelimit"]
    assert len(outage_logs) == 1, [r.getMessage() for r in outage_logs]
    assert await runtime.mongo.database["notifications"].count_documents({}) == 6
    private_redis.start()
    # A restarted Redis has forgotten the count: the allowance starts afresh, and is enforced again
    # (the first call after the restart may still meet a connection of the old server, and let one more in).
    statuses = [(await _post(api, f"after {i}")).code for i in range(4)]
    assert statuses[0] == 201 and statuses[-1] == 429 and statuses.count(201) <= 2, statuses


@pytest.mark.gen_test
@pytest.mark.parametrize("max_body_bytes", [1024])
async def test_bodies_past_max_body_bytes_get_a_json_413(api):
    fits = json.dumps({"user_id": "alice", "title": "t", "body": ""})
    fits = fits[:-2] + "x" * (1024 - len(fits)) + '"}'
    assert len(fits.encode()) == 1024
    assert (await api.request("POST", "/api/notifications", fits, {"X-API-Key": api.api_key})).code == 201
    too_big = fits[:-2] + 'x"}'
    response = await api.request("POST", "/api/notifications", too_big, {"X-API-Key": api.api_key})
    assert response.code == 413
    error = error_of(response)
    assert error["code"] == "payload_too_large" and "1024" in error["message"]


@pytest.mark.gen_test
async def test_the_list_limit_takes_1_to_100(api):
    for _ in range(3):
        await api.create("alice")
    for limit, shown in [(1, 1), (2, 2), (100, 3)]:
        response = await api.as_user("alice", "GET", f"/api/notifications?limit={limit}")
        assert len(json.loads(response.body)["notifications"]) == shown
    for limit in (0, 101, -1):
        response = await api.as_user("alice", "GET", f"/api/notifications?limit={limit}")
        assert response.code == 400 and "between 1 and 100" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PRODUCER_RATE_LIMIT": "-1"}, "PRODUCER_RATE_LIMIT"),
        ({"PRODUCER_RATE_LIMIT": "nan"}, "PRODUCER_RATE_LIMIT"),
        ({"PRODUCER_RATE_WINDOW": "0"}, "PRODUCER_RATE_WINDOW"),
        ({"MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES"),
        ({"MAX_BODY_BYTES": "64k"}, "MAX_BODY_BYTES"),
        ({"STORE_TIMEOUT": "0"}, "STORE_TIMEOUT"),
        ({"JWT_AUDIENCE": "  "}, "JWT_AUDIENCE"),
        ({"JWT_SECRET": "-----BEGIN PUBLIC KEY-----\nMIIB..."}, "JWT_SECRET=<hidden>: must be a shared secret"),
    ],
)
def test_invalid_limits_are_refused_with_the_variable_named(environ, message):
    with pytest.raises(SettingsError, match=message):
        parse_settings([], environ)


def test_limits_are_read_from_the_environment():
    settings = parse_settings(
        [],
        {
            "PRODUCER_RATE_LIMIT": "0",
            "PRODUCER_RATE_WINDOW": "2.5",
            "MAX_BODY_BYTES": "1000",
            "STORE_TIMEOUT": "1.5",
            "JWT_AUDIENCE": "bellcast",
            "JWT_ISSUER": "https://app.example.com",
        },
    )
    assert (settings.producer_rate_limit, settings.producer_rate_window) == (0.0, 2.5)
    assert not settings.producer_rate.enabled
    assert (settings.max_body_bytes, settings.store_timeout) == (1000, 1.5)
    assert (settings.jwt_audience, settings.jwt_issuer) == ("bellcast", "https://app.example.com")


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("producer_rate", [(0.2, 10.0)])
async def test_a_redis_pool_with_every_connection_in_use_does_not_switch_the_rate_limit_off(
    api, app, runtime, redis_url, settings, caplog
):
    """Load is no outage: a request whose count found no free connection answers 503, and no one passes the limit."""
    crowded = connect_redis_backend(
        redis_url + ("&" if "?" in redis_url else "?") + "max_connections=1",
        settings.redis_cluster,
        settings.store_timeout,
    )
    app.settings["producer_rate_limiter"] = ProducerRateLimiter(crowded, settings.producer_rate)
    try:
        # The pool's one connection is busy (a blocking read stands in for other work) while the creates come.
        busy = asyncio.ensure_future(crowded.client.blpop(["bellcast-test:nothing"], timeout=3))
        await asyncio.sleep(0.2)
        with caplog.at_level(logging.WARNING, logger="bellcast.ratelimit"):
            crowded_out = await asyncio.gather(*(_post(api, f"crowd {index}") for index in range(30)))
        await busy
        once_free = [(await _post(api, f"after {index}")).code for index in range(3)]
    finally:
        await crowded.aclose()
    assert [response.code for response in crowded_out] == [503] * 30
    assert once_free == [201, 201, 429]
    assert await runtime.mongo.database["notifications"].count_documents({}) == 2
    assert not [record for record in caplog.records if "not enforced" in record.getMessage()]
