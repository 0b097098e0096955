"""The bell's inbox in headless Chromium: tabs, archive, delete, actions, avatars, seen, every device in step."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterator

import pymongo
import pytest
import redis
from bson import ObjectId
from playwright._impl._api_structures import FloatRect
from playwright.sync_api import Browser, BrowserContext, LocatorAssertions, Page, Request, Route, expect

from services.cache import connections_key
from services.notifications import COLLECTION, utc_now, validate_new_notification
from tests.browser.harness import ARTIFACTS, BellcastProcess, HostPages
from tests.browser.pages import (
    LIVE_MS,
    badge,
    bell,
    blocking_accessibility_violations,
    expect_live,
    items,
    serve_bell,
    tabs,
    wait_until,
)

# The promise: a change on one device shows on the others within a second.
SYNC_MS = 1_000
# An expiry is announced by the server's next sweep (every 2 s), a few seconds after it.
EXPIRY_MS = 10_000
AVATARS = "https://avatars.example"
# What the routed avatar URLs answer: a coloured disc with an initial.
AVATAR_SVG = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">
<circle cx="16" cy="16" r="16" fill="{colour}"/>
<text x="16" y="21" style="font: 700 15px sans-serif" fill="#fff" text-anchor="middle">{initial}</text>
</svg>"""
AVATAR_COLOURS = {"alice": "#7c3aed", "bob": "#0e7490", "ci": "#15803d"}


def serve_avatars(route: Route) -> None:
    name = route.request.url.rsplit("/", 1)[-1].removesuffix(".svg")
    colour = AVATAR_COLOURS.get(name, "#6b7280")
    route.fulfill(body=AVATAR_SVG.format(colour=colour, initial=name[:1].upper()), content_type="image/svg+xml")


def open_bell(page: Page) -> None:
    bell(page).click()
    expect(page.locator("notification-bell [role=dialog]")).to_be_visible()


def shown_titles(page: Page) -> LocatorAssertions:
    """Assertions on the titles the shown tab lists, in order."""
    return expect(items(page).locator(".title"))


@pytest.fixture
def devices(browser: Browser) -> Iterator[list[BrowserContext]]:
    """Two browser profiles: two devices of one user, sharing no lock, channel or storage."""
    created = [browser.new_context(viewport={"width": 1280, "height": 720}) for _ in range(2)]
    yield created
    for context in created:
        context.close()


def test_tabs_list_what_they_name_and_mark_all_as_read_acts_on_the_shown_tab(
    bellcast: BellcastProcess, host_pages: HostPages, open_page, user
):
    bellcast.create(user, "Invoice 12 paid", tags=["billing"])
    bellcast.create(user, "New sign-in", tags=["security"])
    welcome = bellcast.create(user, "Welcome")
    bellcast.request("POST", f"/api/notifications/{welcome['id']}/read", user)
    old = bellcast.create(user, "Old news", tags=["billing"])
    bellcast.request("POST", f"/api/notifications/{old['id']}/archive", user)
    page = open_page(serve_bell(bellcast, host_pages, user, 'tabs="billing,security"'))
    expect(badge(page)).to_have_text("2")
    open_bell(page)
    expect(tabs(page)).to_have_text(["Inbox", "Unread", "Archived", "billing", "security"])
    shown_titles(page).to_have_text(["Welcome", "New sign-in", "Invoice 12 paid"])
    tabs(page).nth(1).click()
    shown_titles(page).to_have_text(["New sign-in", "Invoice 12 paid"])
    tabs(page).nth(2).click()
    shown_titles(page).to_have_text(["Old news"])
    tabs(page).nth(3).click()
    shown_titles(page).to_have_text(["Invoice 12 paid"])
    page.locator("notification-bell").get_by_role("button", name="Mark all as read").click()
    expect(badge(page)).to_have_text("1")
    expect(page.locator("notification-bell li.unread")).to_have_count(0)
    tabs(page).nth(4).click()
    shown_titles(page).to_have_text(["New sign-in"])
    expect(page.locator("notification-bell li.unread")).to_have_count(1)
    answer = bellcast.request("GET", "/api/notifications?status=unread", user)
    assert [n["title"] for n in answer["notifications"]] == ["New sign-in"]
    assert answer["unread_count"] == 1
    # An empty tab says so, and is as accessible as a full one.
    tabs(page).nth(1).click()
    shown_titles(page).to_have_text(["New sign-in"])
    items(page).first.locator("button.mark-read").click()
    expect(page.locator("notification-bell .empty")).to_have_text("You have no unread notifications.")
    expect(badge(page)).to_have_count(0)
    assert blocking_accessibility_violations(page) == []


def test_archive_move_to_inbox_and_delete_from_the_panel_persist(
    bellcast: BellcastProcess, host_pages: HostPages, open_page, user
):
    for title in ("Keep me", "Archive me", "Delete me"):
        bellcast.create(user, title)
    page = open_page(serve_bell(bellcast, host_pages, user))
    expect(badge(page)).to_have_text("3")
    open_bell(page)
    shown_titles(page).to_have_text(["Delete me", "Archive me", "Keep me"])
    bell_element = page.locator("notification-bell")
    bell_element.get_by_role("button", name="Archive: Archive me").click()
    shown_titles(page).to_have_text(["Delete me", "Keep me"])
    expect(badge(page)).to_have_text("2")  # archived ones are not counted
    # Focus stays in the list, on the entry now where the archived one was.
    expect(items(page).nth(1)).to_be_focused()
    tabs(page).nth(2).click()
    shown_titles(page).to_have_text(["Archive me"])
    bell_element.get_by_role("button", name="Move to inbox: Archive me").click()
    expect(bell_element.locator(".empty")).to_have_text("You have no archived notifications.")
    tabs(page).nth(0).click()
    shown_titles(page).to_have_text(["Delete me", "Archive me", "Keep me"])
    bell_element.get_by_role("button", name="Delete: Delete me").click()
    shown_titles(page).to_have_text(["Archive me", "Keep me"])
    expect(badge(page)).to_have_text("2")

    page.reload()
    open_bell(page)
    shown_titles(page).to_have_text(["Archive me", "Keep me"])
    listed = bellcast.request("GET", "/api/notifications", user)
    assert [n["title"] for n in listed["notifications"]] == ["Archive me", "Keep me"]
    assert bellcast.request("GET", "/api/notifications?status=archived", user)["notifications"] == []


def test_an_entry_gone_from_the_server_leaves_the_bell_when_acted_on_without_an_error(
    bellcast: BellcastProcess, host_pages: HostPages, open_page, user, store_urls
):
    """Deleted behind the bell's back (straight from MongoDB here; a bell whose stream was down misses a `deleted`
    change, and an expired one answers the same until the server's sweep announces it), a notification's archive
    answers 404: the bell drops the entry instead of showing an error."""
    bellcast.create(user, "Keep me")
    gone = bellcast.create(user, "Gone already")
    page = open_page(serve_bell(bellcast, host_pages, user))
    expect(badge(page)).to_have_text("2")
    open_bell(page)
    shown_titles(page).to_have_text(["Gone already", "Keep me"])
    client: pymongo.MongoClient = pymongo.MongoClient(store_urls[0])
    try:
        client[bellcast.environ["MONGODB_DB"]][COLLECTION].delete_one({"_id": ObjectId(gone["id"])})
    finally:
        client.close()
    page.locator("notification-bell").get_by_role("button", name="Archive: Gone already").click()
    shown_titles(page).to_have_text(["Keep me"])
    expect(page.locator("notification-bell [role=alert]")).to_have_count(0)


def test_action_buttons_and_avatars_show_and_unsafe_ones_do_not(
    bellcast: BellcastProcess, host_pages: HostPages, context: BrowserContext, open_page, user, store_urls
):
    context.route(f"{AVATARS}/**", serve_avatars)
    landing = host_pages.serve(f"/{user}/access/7", "<!doctype html><title>Access</title><h1>Request 7</h1>")
    bellcast.create(
        user,
        "Alice asked for access",
        body="To the billing project.",
        avatar_url=f"{AVATARS}/alice.svg",
        actions=[
            {"label": "Approve", "url": f"/{user}/access/7"},
            {"label": "Details", "url": "https://example.com/r/7"},
        ],
    )
    # Stored before bellcast checked them, or by another writer: the bell checks them too.
    client: pymongo.MongoClient = pymongo.MongoClient(store_urls[0])
    try:
        document = validate_new_notification({"user_id": user, "title": "Unsafe"}, utc_now()).to_document()
        unsafe_actions = [
            {"label": "Evil", "url": "/\\evil.example"},
            {"label": "Script", "url": "javascript:alert(1)"},
        ]
        document.update(actions=unsafe_actions, avatar_url="http://avatars.example/plain.svg")
        client[bellcast.environ["MONGODB_DB"]][COLLECTION].insert_one(document)
    finally:
        client.close()
    page = open_page(serve_bell(bellcast, host_pages, user))
    expect(badge(page)).to_have_text("2")
    open_bell(page)
    alice = items(page).filter(has_text="Alice asked for access")
    approve = alice.get_by_role("link", name="Approve: Alice asked for access")
    expect(approve).to_have_attribute("href", f"/{user}/access/7")
    expect(alice.get_by_role("link", name="Details: Alice asked for access")).to_have_attribute(
        "href", "https://example.com/r/7"
    )
    avatar = alice.locator("img.avatar")
    expect(avatar).to_have_attribute("src", f"{AVATARS}/alice.svg")
    expect(avatar).to_have_attribute("alt", "")
    page.wait_for_function(
        "() => document.querySelector('notification-bell').shadowRoot.querySelector('img.avatar').naturalWidth > 0"
    )
    unsafe = items(page).filter(has_text="Unsafe")
    expect(unsafe.get_by_role("link")).to_have_count(0)
    expect(unsafe.locator("img")).to_have_count(0)
    # Following an action leaves the page and marks the notification read on the way.
    approve.click()
    page.wait_for_url(landing)
    wait_until(lambda: bellcast.request("GET", "/api/notifications", user)["unread_count"] == 1)


def test_opening_the_panel_marks_everything_seen_and_badge_unseen_counts_only_what_is_new(
    bellcast: BellcastProcess, host_pages: HostPages, open_page, user
):
    bellcast.create(user, "First")
    bellcast.create(user, "Second")
    unseen_page = open_page(serve_bell(bellcast, host_pages, user, 'badge="unseen"'))
    unread_page = open_page(serve_bell(bellcast, host_pages, user))
    expect(badge(unseen_page)).to_have_text("2")
    expect(bell(unseen_page)).to_have_accessible_name("Notifications, 2 new")
    expect(badge(unread_page)).to_have_text("2")
    open_bell(unseen_page)
    expect(badge(unseen_page)).to_have_count(0)
    expect(bell(unseen_page)).to_have_accessible_name("Notifications, nothing new")
    # Seen is not read: the unread badge stays, and the other page hears of it through the stream.
    expect(badge(unread_page)).to_have_text("2")
    counts = bellcast.request("GET", "/api/notifications", user)
    assert (counts["unread_count"], counts["unseen_count"]) == (2, 0)
    unseen_page.keyboard.press("Escape")
    bellcast.create(user, "Third")
    expect(badge(unseen_page)).to_have_text("1", timeout=LIVE_MS)
    expect(badge(unread_page)).to_have_text("3", timeout=LIVE_MS)


def test_a_change_on_one_device_shows_on_the_others_within_a_second_without_a_request(
    bellcast: BellcastProcess, host_pages: HostPages, devices: list[BrowserContext], user, store_urls, shot
):
    for title in ("One", "Two", "Three", "Four"):
        bellcast.create(user, title)
    url = serve_bell(bellcast, host_pages, user)
    phone = devices[0].new_page()
    phone.goto(url)
    # The laptop has two tabs of the page: they share one stream, and both follow.
    laptop = [devices[1].new_page(), devices[1].new_page()]
    laptop_requests: list[str] = []

    def count(request: Request) -> None:
        if "/api/notifications" in request.url:
            laptop_requests.append(f"{request.method} {request.url}")

    devices[1].on("request", count)
    for page in (phone, *laptop):
        if page is not phone:
            page.goto(url)
        expect_live(page)
        expect(badge(page)).to_have_text("4")
        open_bell(page)
        shown_titles(page).to_have_text(["Four", "Three", "Two", "One"])
    connections = redis.Redis.from_url(store_urls[1])
    try:
        assert connections.zcard(connections_key(user)) == 2  # one stream per device
    finally:
        connections.close()
    asked = len(laptop_requests)

    phone_bell = phone.locator("notification-bell")
    phone_bell.get_by_role("button", name="Mark as read: One").click()
    for tab in laptop:
        expect(items(tab).filter(has_text="One")).not_to_have_class(re.compile(r"\bunread\b"), timeout=SYNC_MS)
        expect(badge(tab)).to_have_text("3", timeout=SYNC_MS)
    phone_bell.get_by_role("button", name="Archive: Two").click()
    for tab in laptop:
        shown_titles(tab).to_have_text(["Four", "Three", "One"], timeout=SYNC_MS)
        expect(badge(tab)).to_have_text("2", timeout=SYNC_MS)
    phone_bell.get_by_role("button", name="Delete: Three").click()
    for tab in laptop:
        shown_titles(tab).to_have_text(["Four", "One"], timeout=SYNC_MS)
        expect(badge(tab)).to_have_text("1", timeout=SYNC_MS)
    # All of it came through the stream: the laptop asked the API nothing more.
    assert laptop_requests[asked:] == []

    # A third device, through the API, reads all of one tag: a bulk change, which names no ids.
    bellcast.create(user, "Invoice paid", tags=["billing"])
    bellcast.create(user, "Password changed", tags=["security"])
    for page in (phone, *laptop):
        expect(badge(page)).to_have_text("3", timeout=LIVE_MS)
    bellcast.request("POST", "/api/notifications/read-all?tag=billing", user)
    for page in (phone, *laptop):
        expect(badge(page)).to_have_text("2", timeout=SYNC_MS)
        expect(items(page).filter(has_text="Invoice paid")).not_to_have_class(re.compile(r"\bunread\b"))
        expect(items(page).filter(has_text="Password changed")).to_have_class(re.compile(r"\bunread\b"))
    bellcast.request("POST", "/api/notifications/read-all", user)
    for page in (phone, *laptop):
        expect(badge(page)).to_have_count(0, timeout=SYNC_MS)
        expect(page.locator("notification-bell li.unread")).to_have_count(0, timeout=SYNC_MS)
    shot(laptop[1], "second-device")


def test_screenshots_of_the_bell_light_dark_and_german(
    bellcast: BellcastProcess, host_pages: HostPages, context: BrowserContext, open_page, user
):
    """Makes test-artifacts/bell-{light,dark,de}.png, which docs/bell.md shows (copied to docs/)."""
    context.route(f"{AVATARS}/**", serve_avatars)
    bellcast.store_quietly(user, "Weekly report is ready", age=datetime.timedelta(hours=2))
    (report,) = bellcast.request("GET", "/api/notifications", user)["notifications"]
    bellcast.request("POST", f"/api/notifications/{report['id']}/read", user)
    # ObjectIds of two processes order by second only: the server's own from the next one on.
    time.sleep(1.01 - time.time() % 1)
    bellcast.create(
        user,
        "Build #128 passed",
        body="All 412 tests green on main.",
        avatar_url=f"{AVATARS}/ci.svg",
        url="/builds/128",
        tags=["builds"],
    )
    bellcast.create(
        user,
        "Bob commented on “Q3 roadmap”",
        body="Could we move the launch a week later?",
        avatar_url=f"{AVATARS}/bob.svg",
        actions=[{"label": "Reply", "url": "/roadmap#reply"}],
    )
    bellcast.create(
        user,
        "Alice asked for access",
        body="To the billing project.",
        avatar_url=f"{AVATARS}/alice.svg",
        actions=[{"label": "Approve", "url": "/access/7"}, {"label": "Details", "url": "/access/7/details"}],
        tags=["billing"],
    )
    style = "@media (prefers-color-scheme: dark) { body { background: #111827; color: #e5e7eb; } }"
    for name, scheme, attributes in (("light", "light", ""), ("dark", "dark", ""), ("de", "light", 'locale="de"')):
        page = open_page(serve_bell(bellcast, host_pages, user, f'tabs="billing" {attributes}', style=style))
        page.emulate_media(color_scheme=scheme)
        expect(badge(page)).to_have_text("3")
        open_bell(page)
        expect(items(page)).to_have_count(4)
        page.wait_for_function(
            "() => Array.from(document.querySelector('notification-bell').shadowRoot.querySelectorAll('img'))"
            ".every((img) => img.complete && img.naturalWidth > 0)"
        )
        panel = page.locator("notification-bell .panel").bounding_box()
        assert panel is not None
        clip = FloatRect(x=panel["x"] - 24, y=0, width=panel["width"] + 48, height=panel["y"] + panel["height"] + 24)
        page.screenshot(path=str(ARTIFACTS / f"bell-{name}.png"), clip=clip, animations="disabled")


def test_an_expired_notification_leaves_the_open_bell_without_a_reload(
    bellcast: BellcastProcess, host_pages: HostPages, context: BrowserContext, open_page, user
):
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=3)
    bellcast.create(user, "Lasting")
    bellcast.create(user, "Flash sale", expires_at=soon.isoformat().replace("+00:00", "Z"))
    page = open_page(serve_bell(bellcast, host_pages, user))
    expect(badge(page)).to_have_text("2")
    open_bell(page)
    shown_titles(page).to_have_text(["Flash sale", "Lasting"])
    listed: list[str] = []
    context.on("request", lambda request: listed.append(request.url) if "/api/notifications" in request.url else None)
    # The server announces expiries every couple of seconds.
    shown_titles(page).to_have_text(["Lasting"], timeout=EXPIRY_MS)
    expect(badge(page)).to_have_text("1")
    assert listed == []
