"""The status page in headless Chromium: sign in with the metrics token once, watch streams and deliveries move."""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser.harness import BellcastProcess

METRICS_TOKEN = "browser-metrics-token-" + "z" * 10
# The page polls once a sample: numbers move within a few of them.
SAMPLE_SECONDS = 0.5
MOVES_MS = 10_000


@pytest.fixture(scope="module")
def metered_bellcast(browser: Browser, tmp_path_factory: pytest.TempPathFactory, store_urls: tuple[str, str]):
    process = BellcastProcess(
        tmp_path_factory.mktemp("metered"),
        store_urls,
        "",
        ["--metrics-token", METRICS_TOKEN, "--status-interval", str(SAMPLE_SECONDS)],
    )
    process.wait_until_ready()
    yield process
    process.stop()
    process.drop_database()


@pytest.fixture
def status_page(context: BrowserContext, metered_bellcast: BellcastProcess) -> Iterator[Page]:
    """A tab on /status; at the end, fails the test on any script error or CSP violation.

    The sign-in form itself answers 401, which Chromium reports on the console too: that one is expected.
    """
    problems: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    yield page
    assert [problem for problem in problems if "status of 401" not in problem] == []


def metric(page: Page, name: str):
    return page.locator(f"[data-metric={name}]")


class Streams:
    """EventSource connections opened outside the browser (other users' tabs), closed at the end."""

    def __init__(self, server: BellcastProcess) -> None:
        self._server = server
        self._connections: list[http.client.HTTPConnection] = []

    def open(self, user: str) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self._server.port, timeout=10)
        connection.request("GET", f"/notifications/stream?access_token={self._server.token(user)}")
        assert connection.getresponse().status == 200
        self._connections.append(connection)

    def close_all(self) -> None:
        for connection in self._connections:
            connection.close()
        self._connections.clear()


@pytest.fixture
def streams(metered_bellcast: BellcastProcess) -> Iterator[Streams]:
    opened = Streams(metered_bellcast)
    yield opened
    opened.close_all()


def test_the_status_page_asks_for_the_token_then_draws_streams_deliveries_and_lag(
    metered_bellcast, status_page, streams, user, shot
):
    page = status_page
    page.goto(metered_bellcast.base_url + "/status")
    page.get_by_label("Metrics token").fill("not the token")
    page.get_by_role("button", name="Show the status").click()
    expect(page.get_by_role("alert")).to_have_text("That is not the metrics token.")
    page.get_by_label("Metrics token").fill(METRICS_TOKEN)
    page.get_by_role("button", name="Show the status").click()
    expect(page).to_have_url(metered_bellcast.base_url + "/status")
    expect(metric(page, "open_streams")).to_have_text("0", timeout=MOVES_MS)
    expect(page.get_by_role("heading", name="Delivery lag")).to_be_visible()

    for _ in range(3):
        streams.open(user)
    expect(metric(page, "open_streams")).to_have_text("3", timeout=MOVES_MS)
    expect(page.locator("#processes")).to_contain_text("process 0")

    for index in range(6):
        metered_bellcast.create(user, f"Build #{index} passed")
        page.wait_for_timeout(300)
    expect(metric(page, "entries_delivered")).to_have_text("18", timeout=MOVES_MS)
    expect(metric(page, "notifications_created")).to_have_text("6")
    expect(metric(page, "lag_p50")).to_have_text(re.compile(r"^\d+(\.\d+)? (ms|s)$"), timeout=MOVES_MS)
    expect(metric(page, "lag_p99")).to_have_text(re.compile(r"^\d+(\.\d+)? (ms|s)$"))
    # Every chart is drawn with a line through several samples; the rate's went above zero.
    for chart in ("#chart-open", "#chart-rate", "#chart-lag"):
        expect(page.locator(f"{chart} path.line").first).to_have_attribute("d", re.compile(r"^M[\d.,]+(L[\d.,]+){2,}"))
    expect(page.locator("#chart-lag path.line")).to_have_count(2)
    expect(page.locator("#chart-rate")).to_have_attribute("aria-label", re.compile(r"now rate"))
    rate_peak = page.locator("#chart-rate text").first
    expect(rate_peak).not_to_have_text("0", timeout=MOVES_MS)
    shot(page, "status-page")

    streams.close_all()
    expect(metric(page, "open_streams")).to_have_text("0", timeout=MOVES_MS)
    # Signed in for a while: a reload needs no token.
    page.reload()
    expect(metric(page, "open_streams")).to_have_text("0", timeout=MOVES_MS)
