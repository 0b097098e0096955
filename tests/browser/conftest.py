"""Fixtures of the tests in a real browser: headless Debian Chromium driven by Playwright.

* ``chromium`` (package): the Chromium executable; without one the tests are skipped with a
  loud message, except with ``CI=true``, where they fail.
* ``browser`` (package): Chromium launched once for these tests.
* ``host_pages`` (package): a plain web server on another origin, for host pages without Vue.
* ``bellcast`` (package): ``python server.py`` in development mode on the session's stores,
  allowing the host pages' origin in CORS_ORIGINS.
* ``restartable_bellcast``: a bellcast of the test's own, to kill and restart.
* ``context``: a fresh browser profile per test (its own Web Locks and BroadcastChannels).
* ``open_page``: opens a tab of ``context``; fails the test if any page threw an uncaught error.
* ``user``: a user id no other test uses.
* ``shot``: saves a screenshot of a page into test-artifacts/.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from services.embedded import free_port
from tests.browser.harness import ARTIFACTS, CHROMIUM_ARGS, BellcastProcess, HostPages, find_chromium

NO_CHROMIUM = "no Chromium found (apt-get install chromium, or set BELLCAST_CHROMIUM)"
_SKIPPED = pytest.StashKey[bool]()


@pytest.fixture(scope="package")
def chromium(pytestconfig: pytest.Config) -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{NO_CHROMIUM}; with CI=true the browser tests must run")
        pytestconfig.stash[_SKIPPED] = True
        pytest.skip(f"BROWSER TESTS SKIPPED: {NO_CHROMIUM}")
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    """Say it loudly when the browser tests did not run."""
    if config.stash.get(_SKIPPED, False):
        terminalreporter.section("BROWSER TESTS SKIPPED", sep="!", red=True, bold=True)
        terminalreporter.write_line(f"The bell was not tested in a browser: {NO_CHROMIUM}.", red=True, bold=True)


@pytest.fixture(scope="package")
def browser(chromium: str) -> Iterator[Browser]:
    ARTIFACTS.mkdir(exist_ok=True)
    # Room for a busy CI machine; the tests that pin "within a few seconds" pass their own timeout.
    expect.set_options(timeout=10_000)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="package")
def host_pages() -> Iterator[HostPages]:
    pages = HostPages(free_port()).start()
    yield pages
    pages.stop()


def _bellcast(directory: Path, store_urls: tuple[str, str], cors: str) -> BellcastProcess:
    process = BellcastProcess(directory, store_urls, cors)
    process.wait_until_ready()
    return process


@pytest.fixture(scope="package")
def bellcast(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory, store_urls: tuple[str, str], host_pages: HostPages
) -> Iterator[BellcastProcess]:
    process = _bellcast(tmp_path_factory.mktemp("bellcast"), store_urls, host_pages.origin)
    yield process
    process.stop()
    process.drop_database()


@pytest.fixture
def restartable_bellcast(
    browser: Browser, tmp_path: Path, store_urls: tuple[str, str], host_pages: HostPages
) -> Iterator[BellcastProcess]:
    process = _bellcast(tmp_path, store_urls, host_pages.origin)
    yield process
    process.stop()
    process.drop_database()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    created = browser.new_context(viewport={"width": 1280, "height": 720})
    created.set_default_timeout(10_000)
    yield created
    created.close()


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[Page, str], Path]:
    def save(page: Page, state: str) -> Path:
        path = ARTIFACTS / f"{request.node.name}-{state}.png"
        page.screenshot(path=str(path), animations="disabled")
        return path

    return save


@pytest.fixture
def open_page(context: BrowserContext) -> Iterator[Callable[[str], Page]]:
    """Opens a tab; at the end, fails the test if any page threw an uncaught error."""
    errors: list[str] = []

    def open_(url: str) -> Page:
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        return page

    yield open_
    assert errors == []
