"""`/status`: the metrics drawn for an operator, behind METRICS_TOKEN; `/status/data` the series it polls."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import replace
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest

from handlers.observability import STATUS_COOKIE, status_cookie_valid, status_cookie_value
from server import Settings
from services.attempts import FailedAttempts
from services.metrics import Snapshot
from services.status import lag_quantiles
from tests.support import eventually

METRICS_TOKEN = "status-token-" + "z" * 20
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, metrics_token=METRICS_TOKEN, status_interval=0.1)


async def sign_in(api) -> str:
    """Post the form; returns the cookie header a browser would send back."""
    response = await api.client.fetch(
        api.base_url + "/status",
        method="POST",
        body=urlencode({"token": METRICS_TOKEN}),
        headers=FORM,
        follow_redirects=False,
        raise_error=False,
    )
    assert response.code == 303
    assert response.headers["Location"] == "/status"
    [set_cookie] = response.headers.get_list("Set-Cookie")
    cookie = SimpleCookie(set_cookie)[STATUS_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/status"
    assert METRICS_TOKEN not in set_cookie
    return f"{STATUS_COOKIE}={cookie.value}"


@pytest.mark.gen_test
async def test_without_credentials_the_page_asks_for_the_token(api):
    response = await api.request("GET", "/status")
    assert response.code == 401
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.body.decode()
    assert '<form method="post" action="/status">' in page and 'type="password"' in page
    assert "<svg" not in page
    assert (await api.request("GET", "/status/data")).code == 401


@pytest.mark.gen_test
async def test_a_wrong_token_in_the_form_is_refused_without_a_cookie(api):
    response = await api.request("POST", "/status", body=urlencode({"token": "not-it"}), headers=FORM)
    assert response.code == 401
    assert "That is not the metrics token." in response.body.decode()
    assert "Set-Cookie" not in response.headers


@pytest.mark.gen_test
async def test_guessing_the_token_stops_after_ten_wrong_ones_from_an_address_until_its_minute_ends(api, app):
    wrong = urlencode({"token": "not-it"})
    for _ in range(10):
        assert (await api.request("POST", "/status", body=wrong, headers=FORM)).code == 401
    refused = await api.request("POST", "/status", body=urlencode({"token": METRICS_TOKEN}), headers=FORM)
    assert refused.code == 429, "the right token still counted as a guess"
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert "Set-Cookie" not in refused.headers
    # The same limit, with a window the test can wait out: the right token works again after it.
    app.settings["status_sign_in_attempts"] = FailedAttempts(limit=2, window=0.5)
    for _ in range(2):
        assert (await api.request("POST", "/status", body=wrong, headers=FORM)).code == 401
    assert (await api.request("POST", "/status", body=wrong, headers=FORM)).code == 429
    await asyncio.sleep(0.6)
    await sign_in(api)


def test_failed_attempts_remember_a_bounded_number_of_addresses():
    attempts = FailedAttempts(limit=1, window=60, max_addresses=100)
    for index in range(1000):
        attempts.failed(f"198.51.100.{index}", now=0)
    assert attempts.wait_for("198.51.100.999", now=1) > 0
    assert attempts.wait_for("198.51.100.0", now=1) == 0  # forgotten first: memory stays bounded


@pytest.mark.gen_test
async def test_the_token_typed_once_gives_a_cookie_for_the_status_pages_only(api):
    cookie = await sign_in(api)
    page = await api.request("GET", "/status", headers={"Cookie": cookie})
    assert page.code == 200
    text = page.body.decode()
    assert text.count('<svg class="chart"') == 3 and "<form" not in text
    policy = page.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)  # type: ignore[union-attr]
    assert f'<script nonce="{nonce}">' in text and "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["Cache-Control"] == "no-store"
    data = await api.request("GET", "/status/data", headers={"Cookie": cookie})
    assert data.code == 200 and "series" in json.loads(data.body)
    assert (await api.request("GET", "/metrics", headers={"Cookie": cookie})).code == 401


@pytest.mark.gen_test
async def test_the_bearer_token_works_for_the_status_data_too(api):
    response = await api.request("GET", "/status/data", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.code == 200


@pytest.mark.gen_test
async def test_status_data_follows_streams_deliveries_and_lag(api, open_stream):
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    streams = [await open_stream("judy") for _ in range(3)]
    for stream in streams:
        await stream.next_event()

    async def report() -> dict:
        return json.loads((await api.request("GET", "/status/data", headers=headers)).body)

    first = await report()
    assert first["now"]["open_streams"] == 3
    assert first["now"]["open_streams_by_process"] == {"0": 3}
    assert first["interval"] == 0.1 and first["lag_window"] == 60
    for i in range(4):
        await api.create("judy", f"n{i}")
    for stream in streams:
        await stream.notifications(4)

    def delivered(series: dict) -> float:
        """Rates times the time between samples: every delivery seen by the samples."""
        intervals = [b - a for a, b in zip(series["time"], series["time"][1:], strict=False)]
        return sum(r * dt for r, dt in zip(series["deliveries_per_second"][1:], intervals, strict=True) if r)

    async def drawn() -> bool:
        series = (await report())["series"]
        return delivered(series) == pytest.approx(12, abs=0.5) and series["lag_p50"][-1] is not None

    await eventually(drawn)
    data = await report()
    now, series = data["now"], data["series"]
    assert now["entries_delivered"] == 12 and now["notifications_created"] == 4
    assert now["lag_count"] == 12
    assert 0 <= now["lag_p50"] <= now["lag_p99"] < 5
    assert len(series["time"]) == len(series["open_streams"]) == len(series["lag_p99"]) >= 2
    assert series["time"] == sorted(series["time"])
    assert max(series["open_streams"]) == 3


def test_status_cookies_expire_and_cannot_be_forged():
    now = time.time()
    value = status_cookie_value(METRICS_TOKEN, int(now) + 60)
    assert status_cookie_valid(METRICS_TOKEN, value, now)
    assert not status_cookie_valid(METRICS_TOKEN, value, now + 61)
    assert not status_cookie_valid("another-token-" + "x" * 10, value, now)
    expires, _, signature = value.partition(".")
    assert not status_cookie_valid(METRICS_TOKEN, f"{int(expires) + 3600}.{signature}", now)
    assert not status_cookie_valid(METRICS_TOKEN, None, now)
    assert not status_cookie_valid(METRICS_TOKEN, "garbage", now)


def _snapshot(buckets: list[tuple[float, float]]) -> Snapshot:
    return Snapshot(time=0.0, open_streams={}, delivered=0.0, created=0.0, lag_buckets=tuple(buckets))


def test_lag_quantiles_are_over_the_deliveries_between_two_samples():
    older = _snapshot([(0.01, 100.0), (0.1, 100.0), (float("inf"), 100.0)])
    newer = _snapshot([(0.01, 100.0), (0.1, 110.0), (float("inf"), 110.0)])
    p50, p99, count = lag_quantiles(newer, older)
    assert count == 10
    assert p50 == pytest.approx(0.055) and p99 == pytest.approx(0.0991)
    assert lag_quantiles(newer, newer) == (None, None, 0.0)
    assert lag_quantiles(newer, None)[2] == 110
