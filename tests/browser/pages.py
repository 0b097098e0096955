"""What the browser tests share: finding the bell's parts in a page, and the pages that embed it."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from playwright.sync_api import Locator, Page, expect

from tests.browser.harness import ROOT, BellcastProcess, HostPages

# "Appears within a few seconds": the server scans every 0.1 s here.
LIVE_MS = 5_000
# EventSource retries every 2 s (the server's retry hint) while bellcast restarts.
RECONNECT_MS = 20_000

PLAIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Plain host page</title>
<style>
  /* A host's own CSS, which must not reach into the bell. */
  body {{ font: 16px/2 Georgia, serif; }}
  li {{ color: rgb(255, 0, 0); }}
  button {{ text-transform: uppercase; }}
</style>
{head}
<script src="{server}/static/notification-bell.js"></script>
</head><body>
<h1>A page with no Vue of its own</h1>
<p>Served from another origin than bellcast.
  <notification-bell server="{server}" token="{token}"></notification-bell></p>
{body}
</body></html>
"""


def bell_button(page: Page) -> Locator:
    return page.locator("notification-bell").get_by_role("button", name=re.compile(r"^Notifications"))


def badge(page: Page) -> Locator:
    return page.locator("notification-bell .badge")


def items(page: Page) -> Locator:
    return page.locator("notification-bell li")


def state(page: Page) -> Locator:
    return page.locator("notification-bell [role=dialog]").get_by_role("status")


def open_panel(page: Page) -> Locator:
    panel = page.locator("notification-bell [role=dialog]")
    if not panel.is_visible():
        bell_button(page).click()
    expect(panel).to_be_visible()
    return panel


def expect_live(page: Page, timeout: float = 10_000) -> None:
    expect(bell_button(page)).to_have_attribute("title", "Notifications (Live)", timeout=timeout)


def titles(page: Page) -> list[str]:
    return items(page).locator(".title").all_inner_texts()


def demo_url(server: BellcastProcess, user: str) -> str:
    return f"{server.base_url}/?user={user}"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# A host page of another origin with one bell in its top bar, its attributes as the test says.
BELL_PAGE = """<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Host page</title>
<style>
  body {{ margin: 0; font: 16px/1.5 system-ui, sans-serif; }}
  .topbar {{ display: flex; justify-content: flex-end; padding: 8px 24px; }}
  {style}
</style>
<script src="{server}/static/notification-bell.js"></script>
</head><body>
<header class="topbar"><notification-bell server="{server}" token="{token}" {attributes}></notification-bell></header>
<main><h1>Host page</h1></main>
{body}
</body></html>
"""

AXE_SCRIPT = ROOT / "node_modules" / "axe-core" / "axe.min.js"
# Violations that fail a test; "minor" and "moderate" ones are reported by axe but not held against the bell.
BLOCKING_IMPACTS = ("serious", "critical")


def serve_bell(
    server: BellcastProcess,
    host_pages: HostPages,
    user: str,
    attributes: str = "",
    *,
    lang: str = "en",
    style: str = "",
    body: str = "",
) -> str:
    """Publish a host page with the user's bell (`attributes` added to the element); returns its URL."""
    html = BELL_PAGE.format(
        server=server.base_url, token=server.token(user), attributes=attributes, lang=lang, style=style, body=body
    )
    return host_pages.serve(f"/{user}-{uuid.uuid4().hex[:8]}.html", html)


def bell(page: Page) -> Locator:
    """The bell's button, whatever its language."""
    return page.locator("notification-bell button.bell")


def tabs(page: Page) -> Locator:
    return page.locator("notification-bell [role=tab]")


def blocking_accessibility_violations(page: Page) -> list[dict[str, object]]:
    """axe-core's serious and critical violations in the bell (its shadow tree included)."""
    assert AXE_SCRIPT.exists(), f"{AXE_SCRIPT} is missing: run `npm ci` (make test does)"
    page.add_script_tag(path=str(AXE_SCRIPT))
    violations: list[dict[str, object]] = page.evaluate(
        """async () => {
          const results = await axe.run(document.querySelector("notification-bell"), { resultTypes: ["violations"] });
          return results.violations.map((v) => ({
            id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")),
          }));
        }"""
    )
    return [violation for violation in violations if violation["impact"] in BLOCKING_IMPACTS]
