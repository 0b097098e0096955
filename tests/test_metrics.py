"""`/metrics`: Prometheus's text format behind METRICS_TOKEN, counting what streams and producers do."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from server import Settings, SettingsError, make_app, make_metrics_app, parse_settings, start_runtime
from services.embedded import EmbeddedMongo, free_port
from services.metrics import created_at_of, quantile
from tests.support import FailingObserver, Samples, eventually, parse_exposition, sample, serving

METRICS_TOKEN = "metrics-token-" + "z" * 20
AUTHORIZED = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, metrics_token=METRICS_TOKEN)


async def scrape(api) -> Samples:
    response = await api.request("GET", "/metrics", headers=AUTHORIZED)
    assert response.code == 200, response.body
    return parse_exposition(response.body.decode())


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/metrics", "/status", "/status/data"])
async def test_without_a_metrics_token_metrics_and_status_answer_404(api, runtime, settings, path):
    async with serving(make_app(runtime, replace(settings, metrics_token=None))) as base_url:
        response = await api.client.fetch(base_url + path, headers=AUTHORIZED, raise_error=False)
    assert response.code == 404
    assert json.loads(response.body)["error"]["code"] == "not_found"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {METRICS_TOKEN}"}],
    ids=["none", "wrong", "not-bearer"],
)
async def test_metrics_want_the_bearer_token(api, headers):
    response = await api.request("GET", "/metrics", headers=headers)
    assert response.code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert b"bellcast_" not in response.body


@pytest.mark.gen_test
async def test_metrics_answer_in_prometheus_text_format_with_the_token(api):
    response = await api.request("GET", "/metrics", headers=AUTHORIZED)
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    found = parse_exposition(response.body.decode())
    for name in ("streams_open", "streams_opened_total", "notifications_created_total", "slow_clients_dropped_total"):
        assert (f"bellcast_{name}", frozenset({("process", "0")})) in found, name
    assert sample(found, "store_errors_total", store="redis") == 0
    assert not any(name.endswith("_created") for name, _ in found), "no _created series"


@pytest.mark.gen_test
async def test_a_scraper_asking_for_openmetrics_gets_it(api):
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    response = await api.request("GET", "/metrics", headers={**AUTHORIZED, "Accept": accept})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.body.endswith(b"# EOF\n")


@pytest.mark.gen_test
async def test_streams_notifications_deliveries_and_lag_are_counted(api, open_stream, settings):
    alice = [await open_stream("alice"), await open_stream("alice")]
    bob = await open_stream("bob")
    for stream in [*alice, bob]:
        await stream.next_event()
    created = [await api.create("alice", f"n{i}") for i in range(3)]
    for stream in alice:
        assert [e.id for e in await stream.notifications(3)] == [c["id"] for c in created]
    found = await scrape(api)
    assert sample(found, "streams_open") == 3
    assert sample(found, "streams_opened_total") == 3
    assert sample(found, "streams_closed_total") == 0
    assert sample(found, "notifications_created_total") == 3
    assert sample(found, "entries_delivered_total", source="live") == 6
    assert sample(found, "entries_delivered_total", source="catch_up") == 0
    assert sample(found, "delivery_lag_seconds_count") == 6
    assert 0 < sample(found, "delivery_lag_seconds_sum") < 6 * 5
    assert sample(found, "delivery_lag_seconds_bucket", le="+Inf") == 6
    if not settings.wakeup_hints:  # with hints, idle tabs write what the hints carried without reading their inboxes
        assert sample(found, "cache_scan_duration_seconds_count") >= 1

    bob.close()

    async def closed() -> bool:
        found = await scrape(api)
        return sample(found, "streams_open") == 2 and sample(found, "streams_closed_total") == 1

    await eventually(closed)


@pytest.mark.gen_test
async def test_catch_up_deliveries_are_counted_apart_and_left_out_of_the_lag(api, open_stream):
    first, second, third = [await api.create("carol", f"n{i}") for i in range(3)]
    stream = await open_stream("carol", last_event_id=first["id"])
    assert [e.id for e in await stream.notifications(2)] == [second["id"], third["id"]]
    found = await scrape(api)
    assert sample(found, "entries_delivered_total", source="catch_up") == 2
    assert sample(found, "entries_delivered_total", source="live") == 0
    assert sample(found, "delivery_lag_seconds_count") == 0


@pytest.mark.gen_test
async def test_observer_failures_are_counted_by_observer(api, runtime):
    runtime.notifications.register_observer(FailingObserver())
    await api.create("dave", "one")
    await api.create("dave", "two")
    found = await scrape(api)
    assert sample(found, "observer_failures_total", observer="FailingObserver") == 2
    assert sample(found, "notifications_created_total") == 2


@pytest.mark.gen_test(timeout=30)
async def test_an_unreachable_redis_is_counted_as_store_errors(http_client, settings, runtime_without_redis):
    async with serving(make_app(runtime_without_redis, settings)) as base_url:
        response = await http_client.fetch(base_url + "/readyz", raise_error=False)
        assert response.code == 503
        assert json.loads(response.body)["checks"]["redis"] == "unreachable"
        response = await http_client.fetch(base_url + "/metrics", headers=AUTHORIZED)
    found = parse_exposition(response.body.decode())
    assert sample(found, "store_errors_total", store="redis") >= 1
    assert sample(found, "store_errors_total", store="mongodb") == 0


@pytest.mark.gen_test(timeout=60)
async def test_a_mongodb_that_stops_answering_is_counted_as_store_errors(http_client, settings, store_urls):
    _, redis_url = store_urls
    mongo = EmbeddedMongo(None, port=free_port()).start()
    runtime = await start_runtime(settings, mongo.url, redis_url)
    try:
        async with serving(make_app(runtime, settings)) as base_url:
            mongo.stop()
            response = await http_client.fetch(base_url + "/readyz", raise_error=False)
            assert response.code == 503
            assert json.loads(response.body)["checks"]["mongodb"] in ("unreachable", "timed out")

            async def counted() -> bool:
                # The probe outlives the readiness answer (READINESS_TIMEOUT): it counts once it fails or
                # times out itself (HEALTH_CHECK_TIMEOUT).
                response = await http_client.fetch(base_url + "/metrics", headers=AUTHORIZED)
                return sample(parse_exposition(response.body.decode()), "store_errors_total", store="mongodb") >= 1

            await eventually(counted, timeout=10, interval=0.2)
    finally:
        # Close the client at rest: PyMongo 4.20 leaks the socket of a server check cancelled mid-connect.
        mongo.start()

        async def healthy() -> bool:
            return (await runtime.health.check()).healthy

        await eventually(healthy, timeout=15)
        await runtime.close()
        mongo.stop()


@pytest.mark.gen_test
@pytest.mark.parametrize("token", [None, METRICS_TOKEN], ids=["open", "token"])
async def test_the_metrics_port_serves_only_the_operators_routes(http_client, runtime, settings, token):
    """METRICS_PORT without METRICS_TOKEN is open (the port is the protection); with one, it wants it too."""
    async with serving(make_metrics_app(runtime, replace(settings, metrics_token=token))) as base_url:
        anonymous = await http_client.fetch(base_url + "/metrics", raise_error=False)
        authorized = await http_client.fetch(base_url + "/metrics", headers=AUTHORIZED, raise_error=False)
        ready = await http_client.fetch(base_url + "/readyz", raise_error=False)
        api = await http_client.fetch(base_url + "/api/notifications", raise_error=False)
        stream = await http_client.fetch(base_url + "/notifications/stream", raise_error=False)
    assert anonymous.code == (401 if token else 200)
    assert authorized.code == 200 and b"bellcast_streams_open" in authorized.body
    assert ready.code == 200
    assert (api.code, stream.code) == (404, 404)


NOTIFICATION = (
    '{"id":"6b0a16314feefeba04026005","user_id":"u","type":"info","title":"t","body":"",'
    '"data":{"created_at":"1999-01-01T00:00:00.000Z"},"url":null,'
    '"created_at":"2026-11-27T23:45:53.402Z","read_at":"2026-11-28T00:00:00.000Z"}'
)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (NOTIFICATION, 1795823153.402),
        (NOTIFICATION.encode(), 1795823153.402),
        ('{"id":"x"}', None),
        ('{"created_at":"not a time at all, no"}', None),
    ],
    ids=["data-has-the-key-too", "bytes", "absent", "garbage"],
)
def test_created_at_is_read_from_the_json_without_parsing_it(payload, expected):
    assert created_at_of(payload) == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(0.1, 0.0), (1.0, 10.0), (float("inf"), 10.0)], 0.55),
        (0.99, [(0.1, 5.0), (1.0, 10.0), (float("inf"), 10.0)], 0.982),
        (0.5, [(0.1, 10.0), (float("inf"), 10.0)], 0.05),
        (0.99, [(0.1, 1.0), (1.0, 1.0), (float("inf"), 100.0)], 1.0),
        (0.5, [(0.1, 0.0), (float("inf"), 0.0)], None),
        (0.5, [], None),
    ],
    ids=["within-a-bucket", "upper", "first-bucket", "beyond-the-last-bound", "no-observations", "no-buckets"],
)
def test_quantiles_are_estimated_from_buckets_as_prometheus_does(q, buckets, expected):
    result = quantile(q, buckets)
    assert result == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"METRICS_TOKEN": "short"}, "METRICS_TOKEN=<hidden>"),
        ({"METRICS_PORT": "99999"}, "METRICS_PORT='99999'"),
        ({"STATUS_INTERVAL": "0"}, "STATUS_INTERVAL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT='xml'"),
        ({"SHUTDOWN_DELAY": "-1"}, "SHUTDOWN_DELAY"),
    ],
)
def test_invalid_observability_settings_are_refused_and_the_token_never_shown(environ, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        parse_settings([], environ)


def test_observability_settings_from_the_environment():
    settings = parse_settings(
        [], {"METRICS_TOKEN": METRICS_TOKEN, "METRICS_PORT": "9100", "LOG_FORMAT": "json", "SHUTDOWN_DELAY": "0"}
    )
    assert (settings.metrics_token, settings.metrics_port, settings.log_format) == (METRICS_TOKEN, 9100, "json")
    assert settings.shutdown_delay == 0 and settings.status_interval == 5
    assert settings.metrics_enabled and not Settings().metrics_enabled
