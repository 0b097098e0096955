"""The notification bell in headless Chromium: what a user sees, across tabs, restarts and origins."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pymongo
import pytest
import redis
from playwright.sync_api import Browser, expect

from services.cache import connections_key
from services.notifications import COLLECTION, utc_now, validate_new_notification
from tests.browser.harness import ROOT, BellcastProcess, HostPages
from tests.browser.pages import (
    LIVE_MS,
    PLAIN_PAGE,
    RECONNECT_MS,
    badge,
    bell_button,
    demo_url,
    expect_live,
    items,
    open_panel,
    state,
    titles,
    wait_until,
)


def test_the_bell_renders_on_the_demo_page(bellcast, open_page, user, shot):
    page = open_page(demo_url(bellcast, user))
    expect(page.locator("#signed-in")).to_have_text(f"Signed in as {user}")
    expect_live(page)
    expect(bell_button(page)).to_have_accessible_name("Notifications, no unread")
    expect(badge(page)).to_have_count(0)
    panel = open_panel(page)
    expect(state(page)).to_have_text("Live")
    expect(panel).to_contain_text("You have no notifications.")
    expect(panel.get_by_role("button", name="Mark all as read")).to_be_disabled()
    shot(page, "empty")


def test_a_notification_created_through_the_api_appears_live_with_the_badge_incremented(bellcast, open_page, shot):
    # The demo's own user (this run's database is new), so that the screenshot reads as the README shows it.
    user = "demo"
    page = open_page(demo_url(bellcast, user))
    expect_live(page)
    bellcast.create(user, "Build #128 passed", body="All 412 tests green on main.", url="/builds/128")
    expect(badge(page)).to_have_text("1", timeout=LIVE_MS)
    expect(bell_button(page)).to_have_accessible_name("Notifications, 1 unread")
    bellcast.create(user, "Alice commented on “Q3 roadmap”", body="Could we move the launch a week later?")
    bellcast.create(user, "Deploy finished", body="v2.14.0 is live in production.", url="https://example.com/d/214")
    expect(badge(page)).to_have_text("3", timeout=LIVE_MS)
    open_panel(page)
    expect(items(page)).to_have_count(3)
    assert titles(page) == ["Deploy finished", "Alice commented on “Q3 roadmap”", "Build #128 passed"]
    expect(items(page).nth(2).get_by_role("link")).to_have_attribute("href", "/builds/128")
    expect(items(page).nth(1).get_by_role("link")).to_have_count(0)
    expect(items(page).first.locator("time")).to_have_text("now")
    shot(page, "demo-page")
    # Fields are text, never markup.
    markup = '<img src="x" onerror="window.owned = 1">'
    bellcast.create(user, markup, body="<b>bold?</b>")
    expect(items(page).first.locator(".title")).to_have_text(markup, timeout=LIVE_MS)
    expect(items(page).first.locator(".body")).to_have_text("<b>bold?</b>")
    assert items(page).first.locator("img, b").count() == 0
    assert page.evaluate("window.owned") is None


def test_refresh_replaces_the_list_from_the_server_and_load_more_pages_back(bellcast, open_page, user, shot):
    bellcast.create(user, "Seen live")
    page = open_page(demo_url(bellcast, user))
    expect(badge(page)).to_have_text("1")
    # Another device reads everything, and 100 notifications are stored that no stream heard of:
    # only Refresh can tell.
    bellcast.request("POST", "/api/notifications/read-all", user)
    # ObjectIds of two processes order by second only: store the rest from the next one on.
    time.sleep(1.01 - time.time() % 1)
    bellcast.store_quietly(user, *(f"Quiet {i}" for i in range(100)))
    panel = open_panel(page)
    expect(items(page)).to_have_count(1)
    panel.get_by_role("button", name="Refresh").click()
    expect(badge(page)).to_have_text("99+")
    expect(bell_button(page)).to_have_accessible_name("Notifications, 100 unread")
    expect(items(page)).to_have_count(20)
    assert titles(page)[:2] == ["Quiet 99", "Quiet 98"]
    shot(page, "refreshed")
    for count in (40, 60, 80, 100, 101):
        panel.get_by_role("button", name="Load more").click()
        expect(items(page)).to_have_count(count)
    expect(panel.get_by_role("button", name="Load more")).to_have_count(0)
    assert titles(page)[-2:] == ["Quiet 0", "Seen live"]
    expect(page.locator("notification-bell li.unread")).to_have_count(100)


def test_mark_read_and_mark_all_read_change_the_badge_and_persist(bellcast, open_page, user):
    for title in ("One", "Two", "Three"):
        bellcast.create(user, title)
    page = open_page(demo_url(bellcast, user))
    expect(badge(page)).to_have_text("3")
    open_panel(page)
    two = items(page).filter(has_text="Two")
    two.get_by_role("button", name="Mark as read: Two").click()
    expect(badge(page)).to_have_text("2")
    expect(bell_button(page)).to_have_accessible_name("Notifications, 2 unread")
    expect(two).not_to_have_class(re.compile(r"\bunread\b"))

    page.reload()
    expect(badge(page)).to_have_text("2")
    panel = open_panel(page)
    expect(page.locator("notification-bell li.unread")).to_have_count(2)
    expect(items(page).filter(has_text="Two")).not_to_have_class(re.compile(r"\bunread\b"))
    panel.get_by_role("button", name="Mark all as read").click()
    expect(badge(page)).to_have_count(0)
    expect(bell_button(page)).to_have_accessible_name("Notifications, no unread")

    page.reload()
    open_panel(page)
    expect(items(page)).to_have_count(3)
    expect(page.locator("notification-bell li.unread")).to_have_count(0)
    expect(badge(page)).to_have_count(0)
    assert bellcast.request("GET", "/api/notifications", user)["unread_count"] == 0


def test_after_a_server_restart_the_bell_reconnects_and_shows_what_was_created_meanwhile_once(
    restartable_bellcast, open_page, user, shot
):
    server = restartable_bellcast
    page = open_page(demo_url(server, user))
    expect_live(page)
    server.create(user, "Before the restart")
    expect(badge(page)).to_have_text("1", timeout=LIVE_MS)
    open_panel(page)

    server.kill()
    expect(state(page)).to_have_text(re.compile(r"Reconnecting…|Offline"))
    shot(page, "reconnecting")
    server.store_quietly(user, "While down 1", "While down 2")
    stored_in = int(time.time())
    server.restart()
    server.wait_until_ready()

    expect(state(page)).to_have_text("Live", timeout=RECONNECT_MS)
    expect(items(page)).to_have_count(3, timeout=LIVE_MS)
    # Each once. (Within one second, ObjectIds of two processes are not in creation order, nor the list.)
    assert sorted(titles(page)) == ["Before the restart", "While down 1", "While down 2"]
    expect(badge(page)).to_have_text("3")
    # A second later than those stored while down, so that its ObjectId sorts first whatever process made it.
    time.sleep(max(0.0, stored_in + 1 - time.time()))
    server.create(user, "After the restart")
    expect(items(page)).to_have_count(4, timeout=LIVE_MS)
    assert titles(page)[0] == "After the restart"
    assert sorted(titles(page)) == ["After the restart", "Before the restart", "While down 1", "While down 2"]
    shot(page, "reconnected")


def test_the_bells_streams_open_with_single_use_tickets_never_a_token_and_resume_after_the_server_ends_them(
    restartable_bellcast, context, open_page, user
):
    server = restartable_bellcast
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    page = open_page(demo_url(server, user))
    expect_live(page)
    live = server.create(user, "Live through a ticket")
    expect(badge(page)).to_have_text("1", timeout=LIVE_MS)

    server.stop()  # SIGTERM: the server ends the stream
    server.store_quietly(user, "While the server was away")
    server.restart()
    server.wait_until_ready()
    expect(badge(page)).to_have_text("2", timeout=RECONNECT_MS)
    expect_live(page)

    streams = [parse_qs(urlsplit(url).query) for url in requested if urlsplit(url).path == "/notifications/stream"]
    assert len(streams) >= 2
    assert not [url for url in requested if "access_token" in url or "eyJ" in url]  # no token in any URL
    tickets = [query["ticket"][0] for query in streams]
    assert len(set(tickets)) == len(tickets)  # each ticket used once: EventSource never reconnected by itself
    # The first stream reloads the list; the reopened one resumes after the last notification it saw.
    assert "last_event_id" not in streams[0]
    assert streams[-1]["last_event_id"] == [live["id"]]


def test_a_resync_from_the_server_makes_every_tab_refetch_the_list(
    browser, tmp_path, store_urls, host_pages: HostPages, open_page, user, shot
):
    # More is stored while the server is down than it replays (MAX_REPLAY 2): the stream that resumes
    # with Last-Event-ID gets one `resync` event instead, and only a refetch of the list shows the rest.
    server = BellcastProcess(tmp_path, store_urls, host_pages.origin, ["--max-replay", "2"])
    try:
        server.wait_until_ready()
        first = open_page(demo_url(server, user))
        expect_live(first)
        second = open_page(demo_url(server, user))
        expect_live(second)
        server.create(user, "Before the gap")
        for tab in (first, second):
            expect(badge(tab)).to_have_text("1", timeout=LIVE_MS)
            open_panel(tab)

        server.kill()
        server.store_quietly(user, "Missed 1", "Missed 2", "Missed 3")
        server.restart()
        server.wait_until_ready()

        for tab in (first, second):
            expect(state(tab)).to_have_text("Live", timeout=RECONNECT_MS)
            expect(items(tab)).to_have_count(4, timeout=LIVE_MS)
            assert sorted(titles(tab)) == ["Before the gap", "Missed 1", "Missed 2", "Missed 3"]
            expect(badge(tab)).to_have_text("4")
        shot(first, "resynced")
        server.create(user, "After the resync")
        for tab in (first, second):
            expect(items(tab)).to_have_count(5, timeout=LIVE_MS)
            assert titles(tab)[0] == "After the resync"
    finally:
        server.stop()
        server.drop_database()


def test_the_bell_shows_when_the_browser_is_offline_and_catches_up_when_back(bellcast, context, open_page, user, shot):
    page = open_page(demo_url(bellcast, user))
    expect_live(page)
    bellcast.create(user, "Before going offline")
    expect(badge(page)).to_have_text("1", timeout=LIVE_MS)
    open_panel(page)
    context.set_offline(True)
    expect(state(page)).to_have_text("Offline")
    shot(page, "offline")
    bellcast.create(user, "While offline")
    context.set_offline(False)
    expect(state(page)).to_have_text("Live", timeout=RECONNECT_MS)
    expect(items(page)).to_have_count(2, timeout=LIVE_MS)
    assert titles(page) == ["While offline", "Before going offline"]
    expect(badge(page)).to_have_text("2")


def test_two_tabs_of_one_user_share_one_stream_and_reading_in_one_updates_the_other(
    bellcast, open_page, user, store_urls, shot
):
    connections = redis.Redis.from_url(store_urls[1])
    key = connections_key(user)
    try:
        first = open_page(demo_url(bellcast, user))
        expect_live(first)
        second = open_page(demo_url(bellcast, user))
        expect_live(second)
        for _ in range(10):  # one stream for both tabs, for a while
            assert connections.zcard(key) == 1
            time.sleep(0.1)

        bellcast.create(user, "For both tabs")
        expect(badge(first)).to_have_text("1", timeout=LIVE_MS)
        expect(badge(second)).to_have_text("1", timeout=LIVE_MS)
        open_panel(second).get_by_role("button", name="Mark as read: For both tabs").click()
        expect(badge(second)).to_have_count(0)
        expect(badge(first)).to_have_count(0)
        expect(bell_button(first)).to_have_accessible_name("Notifications, no unread")

        bellcast.create(user, "Second one")
        bellcast.create(user, "Third one")
        expect(badge(second)).to_have_text("2", timeout=LIVE_MS)
        expect(badge(first)).to_have_text("2", timeout=LIVE_MS)
        open_panel(first).get_by_role("button", name="Mark all as read").click()
        expect(badge(first)).to_have_count(0)
        expect(badge(second)).to_have_count(0)
        open_panel(second)
        expect(second.locator("notification-bell li.unread")).to_have_count(0)
        shot(second, "second-tab")

        # The tab holding the stream closes: the other takes the lock and opens the one stream.
        first.close()
        expect_live(second)
        bellcast.create(user, "After the first tab closed")
        expect(badge(second)).to_have_text("1", timeout=LIVE_MS)
        wait_until(lambda: connections.zcard(key) == 1)
    finally:
        connections.close()


def test_the_bell_works_on_a_plain_page_of_another_origin_without_vue(
    bellcast, host_pages: HostPages, open_page, user, shot
):
    bellcast.create(user, "Waiting for you")
    url = host_pages.serve(
        f"/{user}.html", PLAIN_PAGE.format(server=bellcast.base_url, token=bellcast.token(user), head="", body="")
    )
    page = open_page(url)
    assert not page.url.startswith(bellcast.base_url)
    page.wait_for_function("customElements.get('notification-bell') !== undefined")
    assert page.evaluate("typeof window.Vue") == "undefined"
    expect(badge(page)).to_have_text("1")
    expect_live(page)
    bellcast.create(user, "Across origins")
    expect(badge(page)).to_have_text("2", timeout=LIVE_MS)
    open_panel(page)
    # The host's CSS stops at the shadow root.
    assert items(page).first.evaluate("li => getComputedStyle(li).color") != "rgb(255, 0, 0)"
    refresh = page.locator("notification-bell").get_by_role("button", name="Refresh")
    assert refresh.evaluate("b => getComputedStyle(b).textTransform") == "none"
    shot(page, "plain-page")
    items(page).first.get_by_role("button", name="Mark as read: Across origins").click()
    expect(badge(page)).to_have_text("1")
    assert bellcast.request("GET", "/api/notifications", user)["unread_count"] == 1
    assert page.evaluate("typeof window.Vue") == "undefined"

    # A link is the host app's: following it leaves the page, and marks the notification read on the way.
    landing = host_pages.serve(f"/{user}/orders/7", "<!doctype html><title>Order 7</title><h1>Order 7</h1>")
    bellcast.create(user, "Order 7 shipped", url=f"/{user}/orders/7")
    expect(badge(page)).to_have_text("2", timeout=LIVE_MS)
    items(page).first.get_by_role("link", name="Open").click()
    page.wait_for_url(landing)
    wait_until(lambda: bellcast.request("GET", "/api/notifications", user)["unread_count"] == 1)


def test_the_bell_leaves_the_host_pages_own_vue_alone(bellcast, host_pages: HostPages, open_page, user):
    own_vue = '<script>window.Vue = { version: "the host\'s own" };</script>'
    url = host_pages.serve(
        f"/{user}-vue.html",
        PLAIN_PAGE.format(server=bellcast.base_url, token=bellcast.token(user), head=own_vue, body=""),
    )
    page = open_page(url)
    expect_live(page)
    assert page.evaluate("window.Vue.version") == "the host's own"


def test_an_expired_token_is_renewed_through_the_token_provider(bellcast, host_pages: HostPages, open_page, user):
    bellcast.create(user, "Behind a renewed token")
    renew = f"""<script>
      window.renewals = 0;
      document.querySelector("notification-bell").tokenProvider = async () => {{
        window.renewals += 1;
        return {json.dumps(bellcast.token(user))};
      }};
    </script>"""
    url = host_pages.serve(
        f"/{user}-renew.html",
        PLAIN_PAGE.format(server=bellcast.base_url, token=bellcast.token(user, lifetime=-60), head="", body=renew),
    )
    page = open_page(url)
    expect_live(page)
    expect(badge(page)).to_have_text("1")
    assert page.evaluate("window.renewals") >= 1


def test_keyboard_focus_and_reduced_motion(bellcast, browser: Browser, user):
    for title in ("First", "Second", "Third"):
        bellcast.create(user, title)
    context = browser.new_context(reduced_motion="reduce")
    try:
        page = context.new_page()
        page.goto(demo_url(bellcast, user))
        expect(badge(page)).to_have_text("3")
        assert badge(page).evaluate("b => getComputedStyle(b).animationName") == "none"
        bell_button(page).focus()
        page.keyboard.press("Enter")
        panel = page.locator("notification-bell [role=dialog]")
        expect(panel).to_be_visible()
        expect(items(page).nth(0)).to_be_focused()
        page.keyboard.press("ArrowDown")
        expect(items(page).nth(1)).to_be_focused()
        page.keyboard.press("End")
        expect(items(page).nth(2)).to_be_focused()
        page.keyboard.press("ArrowUp")
        expect(items(page).nth(1)).to_be_focused()
        page.keyboard.press("Home")
        expect(items(page).nth(0)).to_be_focused()
        page.keyboard.press("Tab")
        expect(items(page).nth(0).get_by_role("button", name="Mark as read: Third")).to_be_focused()
        page.keyboard.press("Enter")
        expect(badge(page)).to_have_text("2")
        page.keyboard.press("Escape")
        expect(panel).to_have_count(0)
        expect(bell_button(page)).to_be_focused()
        page.keyboard.press("Space")
        expect(panel).to_be_visible()
        page.mouse.click(20, 400)
        expect(panel).to_have_count(0)
    finally:
        context.close()


def test_the_bells_modules_are_served_to_any_origin_and_revalidated(bellcast):
    # The loader imports its modules from beside itself; without ?v=, browsers must ask again after a deploy.
    modules = sorted(path.relative_to(ROOT / "static").as_posix() for path in (ROOT / "static" / "bell").glob("*.js"))
    assert {"bell/api.js", "bell/store.js", "bell/stream.js", "bell/view.js"} <= set(modules)
    for path in ("notification-bell.js", *modules):
        request = urllib.request.Request(
            f"{bellcast.base_url}/static/{path}", headers={"Origin": "https://host.example"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.headers["Content-Type"] in ("application/javascript", "text/javascript"), path
            assert answer.headers["Access-Control-Allow-Origin"] == "*", path
            assert answer.headers["Cache-Control"] == "no-cache", path


# The store alone, in a page of another origin, with an API that answers when the scenario says;
# each scenario's body runs after this and returns what the test compares.
STORE_SETUP = """
  const { BellStore } = await import(storeUrl);
  const announced = [];
  const store = new BellStore(null, (notification) => announced.push(notification.id));
  const pages = [];
  store.api = { list: (before) => new Promise((resolve) => pages.push({ before, resolve })) };
  store.key = "server|alice";
  const item = (id, read_at = null) => ({ id, title: "n" + id, read_at, created_at: "2026-01-01T00:00:00Z" });
  const snapshot = () => ({
    ids: store.state.items.map((n) => n.id),
    unread: store.state.unread,
    nextBefore: store.state.nextBefore,
    announced: announced.slice(),
  });
"""

STORE_SCENARIOS = {
    # A live event that the page predates stays; one the page has is listed once.
    "live_during_refresh": """{
      const refreshed = store.refresh();
      store.receive(item("0000000000000000000000c3"));
      store.receive(item("0000000000000000000000b2"));
      pages[0].resolve({
        notifications: [item("0000000000000000000000b2"), item("0000000000000000000000a1", "2026-01-01T00:00:01Z")],
        unread_count: 1,
        next_before: "0000000000000000000000a1",
      });
      await refreshed;
      return snapshot();
    }""",
    # Each id once, however many times (and from however many tabs) it arrives.
    "duplicates": """{
      store.receive(item("0000000000000000000000a1"));
      store.receive(item("0000000000000000000000a1"));
      store.receive({ title: "no id" });
      store.receive(null);
      return snapshot();
    }""",
    # Reads from another tab: a listed item once, an unlisted unread one counted, a read one not.
    "reads_from_another_tab": """{
      store.receive(item("0000000000000000000000a1"));
      store.receive(item("0000000000000000000000b2"));
      store.state.unread = 5;
      store.applyRead("0000000000000000000000a1", "2026-01-01T00:00:02Z", true);
      store.applyRead("0000000000000000000000a1", "2026-01-01T00:00:02Z", true);
      store.applyRead("0000000000000000000000ff", "2026-01-01T00:00:02Z", true);
      store.applyRead("0000000000000000000000fe", "2026-01-01T00:00:02Z", false);
      const afterReads = snapshot();
      store.applyReadAll("2026-01-01T00:00:03Z");
      return { afterReads, afterAll: snapshot(), readAt: store.state.items.map((n) => n.read_at) };
    }""",
    # A page asked for one user and answered after the bell switched to another is dropped.
    "answer_for_a_previous_user": """{
      const refreshed = store.refresh();
      store.key = "server|bob";
      pages[0].resolve({ notifications: [item("0000000000000000000000a1")], unread_count: 1, next_before: null });
      await refreshed;
      return { ...snapshot(), loading: store.state.loading };
    }""",
    # Load more appends the older page, skipping what is listed already, and follows its cursor.
    "load_more": """{
      store.state.nextBefore = "0000000000000000000000b2";
      store.receive(item("0000000000000000000000b2"));
      const more = store.loadMore();
      store.loadMore(); // a second click while the first is loading asks nothing more
      pages[0].resolve({
        notifications: [item("0000000000000000000000b2"), item("0000000000000000000000a1")],
        unread_count: 9,
        next_before: null,
      });
      await more;
      return { ...snapshot(), requests: pages.map((p) => p.before) };
    }""",
}

STORE_EXPECTED = {
    "live_during_refresh": {
        "ids": ["0000000000000000000000c3", "0000000000000000000000b2", "0000000000000000000000a1"],
        "unread": 2,
        "nextBefore": "0000000000000000000000a1",
        "announced": ["0000000000000000000000c3", "0000000000000000000000b2"],
    },
    "duplicates": {
        "ids": ["0000000000000000000000a1"],
        "unread": 1,
        "nextBefore": None,
        "announced": ["0000000000000000000000a1"],
    },
    "reads_from_another_tab": {
        "afterReads": {
            "ids": ["0000000000000000000000b2", "0000000000000000000000a1"],
            "unread": 3,
            "nextBefore": None,
            "announced": ["0000000000000000000000a1", "0000000000000000000000b2"],
        },
        "afterAll": {
            "ids": ["0000000000000000000000b2", "0000000000000000000000a1"],
            "unread": 0,
            "nextBefore": None,
            "announced": ["0000000000000000000000a1", "0000000000000000000000b2"],
        },
        "readAt": ["2026-01-01T00:00:03Z", "2026-01-01T00:00:02Z"],
    },
    "answer_for_a_previous_user": {
        "ids": [],
        "unread": 0,
        "nextBefore": None,
        "announced": [],
        "loading": False,
    },
    "load_more": {
        "ids": ["0000000000000000000000b2", "0000000000000000000000a1"],
        "unread": 1,
        "nextBefore": None,
        "announced": ["0000000000000000000000b2"],
        "requests": ["0000000000000000000000b2"],
    },
}


@pytest.mark.parametrize("scenario", sorted(STORE_SCENARIOS))
def test_the_store_merges_live_events_pages_and_reads(bellcast, host_pages: HostPages, open_page, scenario):
    page = open_page(host_pages.serve("/store.html", "<!doctype html><title>The bell's store</title>"))
    function = f"async (storeUrl) => {{ {STORE_SETUP} {STORE_SCENARIOS[scenario]} }}"
    assert page.evaluate(function, f"{bellcast.base_url}/static/bell/store.js") == STORE_EXPECTED[scenario]


def test_a_stored_link_a_browser_would_open_as_another_site_is_shown_without_a_link(
    bellcast, open_page, user, store_urls
):
    """Stored before bellcast refused such links, or by another writer: the bell checks them too."""
    unsafe = ["/\\evil.example", "//evil.example", "/\t/evil.example", "https:///evil.example", "javascript:alert(1)"]
    client: pymongo.MongoClient = pymongo.MongoClient(store_urls[0])
    try:
        collection = client[bellcast.environ["MONGODB_DB"]][COLLECTION]
        for index, url in enumerate(unsafe):
            document = validate_new_notification({"user_id": user, "title": f"link {index}"}, utc_now()).to_document()
            collection.insert_one({**document, "url": url})
    finally:
        client.close()
    bellcast.create(user, "a safe link", url="/builds/1")
    page = open_page(demo_url(bellcast, user))
    expect_live(page)
    open_panel(page)
    expect(items(page)).to_have_count(len(unsafe) + 1)
    # Ids made in the test and in the server within one second sort in no set order: find the item by its title.
    safe = items(page).filter(has_text="a safe link")
    expect(safe.get_by_role("link")).to_have_attribute("href", "/builds/1")
    expect(page.get_by_role("link", name=re.compile("^Open: link"))).to_have_count(0)
