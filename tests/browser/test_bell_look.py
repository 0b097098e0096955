"""The bell's looks and words in headless Chromium: themes, ::part(), locales, the keyboard, screen readers."""

from __future__ import annotations

import dataclasses
import datetime
import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.harness import BellcastProcess, HostPages
from tests.browser.pages import (
    LIVE_MS,
    badge,
    bell,
    blocking_accessibility_violations,
    expect_live,
    items,
    serve_bell,
    tabs,
)

LIGHT_BACKGROUND = "rgb(255, 255, 255)"
DARK_BACKGROUND = "rgb(31, 41, 55)"


def open_bell(page: Page) -> None:
    """Open the panel, whatever the bell's language."""
    bell(page).click()
    expect(page.locator("notification-bell [role=dialog]")).to_be_visible()


def panel_background(page: Page) -> str:
    return str(page.locator("notification-bell .panel").evaluate("panel => getComputedStyle(panel).backgroundColor"))


@pytest.mark.parametrize(
    ("scheme", "theme", "background"),
    [
        ("light", None, LIGHT_BACKGROUND),
        ("dark", None, DARK_BACKGROUND),
        ("dark", "light", LIGHT_BACKGROUND),
        ("light", "dark", DARK_BACKGROUND),
    ],
)
def test_the_bell_follows_the_systems_colour_scheme_unless_its_theme_attribute_forces_one(
    bellcast: BellcastProcess, host_pages: HostPages, open_page, user, scheme, theme, background
):
    bellcast.create(user, "Themed")
    page = open_page(serve_bell(bellcast, host_pages, user, f'theme="{theme}"' if theme else ""))
    page.emulate_media(color_scheme=scheme)
    expect(badge(page)).to_have_text("1")
    open_bell(page)
    assert panel_background(page) == background


def test_the_hosts_custom_properties_and_parts_style_the_bell_in_either_theme(
    bellcast: BellcastProcess, host_pages: HostPages, open_page, user
):
    bellcast.create(user, "Styled by the host")
    style = """
      notification-bell { --bellcast-accent: rgb(124, 58, 237); --bellcast-background: rgb(250, 245, 255); }
      notification-bell::part(panel) { border-radius: 3px; }
      notification-bell::part(badge) { background: rgb(0, 128, 0); }
      notification-bell::part(title) { letter-spacing: 1px; }
    """
    page = open_page(serve_bell(bellcast, host_pages, user, style=style))
    expect(badge(page)).to_have_text("1")
    assert badge(page).evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(0, 128, 0)"
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        if not page.locator("notification-bell .panel").is_visible():
            open_bell(page)
        assert panel_background(page) == "rgb(250, 245, 255)"
        panel = page.locator("notification-bell .panel")
        assert panel.evaluate("p => getComputedStyle(p).borderTopLeftRadius") == "3px"
        selected = page.locator("notification-bell [role=tab][aria-selected=true]")
        assert selected.evaluate("t => getComputedStyle(t).borderBottomColor") == "rgb(124, 58, 237)"
        title = items(page).first.locator(".title")
        assert title.evaluate("t => getComputedStyle(t).letterSpacing") == "1px"


@dataclasses.dataclass(frozen=True)
class Words:
    """What the bell says in one language."""

    bell: str
    tabs: list[str]
    mark_all: str
    times: list[str]
    live: str
    announced: str


LOCALES = {
    "en": Words(
        bell="Notifications, 2 unread",
        tabs=["Inbox", "Unread", "Archived"],
        mark_all="Mark all as read",
        times=["3 minutes ago", "3 days ago"],
        live="Live",
        announced="New notification: Just now",
    ),
    "de": Words(
        bell="Benachrichtigungen, 2 ungelesen",
        tabs=["Eingang", "Ungelesen", "Archiv"],
        mark_all="Alle als gelesen markieren",
        times=["vor 3 Minuten", "vor 3 Tagen"],
        live="Live",
        announced="Neue Benachrichtigung: Just now",
    ),
    "fr": Words(
        bell="Notifications, 2 non lues",
        tabs=["Boîte de réception", "Non lues", "Archivées"],
        mark_all="Tout marquer comme lu",
        times=["il y a 3 minutes", "il y a 3 jours"],
        live="En direct",
        announced="Nouvelle notification : Just now",
    ),
}


@pytest.mark.parametrize("locale", sorted(LOCALES))
def test_the_bell_speaks_its_locale_with_relative_times_in_that_language(
    bellcast: BellcastProcess, host_pages: HostPages, open_page, user, locale
):
    words = LOCALES[locale]
    bellcast.store_quietly(user, "Three days old", age=datetime.timedelta(days=3, minutes=5))
    bellcast.store_quietly(user, "Three minutes old", age=datetime.timedelta(minutes=3, seconds=10))
    page = open_page(serve_bell(bellcast, host_pages, user, f'locale="{locale}"'))
    expect(bell(page)).to_have_accessible_name(words.bell)
    open_bell(page)
    expect(tabs(page)).to_have_text(words.tabs)
    expect(page.locator("notification-bell").get_by_role("button", name=words.mark_all)).to_be_enabled()
    expect(items(page).locator("time")).to_have_text(words.times)
    expect(page.locator("notification-bell [role=dialog]").get_by_role("status")).to_have_text(words.live)
    # New notifications are announced politely, in the same language.
    bellcast.create(user, "Just now")
    expect(page.locator("notification-bell [aria-live=polite]")).to_have_text(words.announced, timeout=LIVE_MS)


def test_without_a_locale_the_bell_speaks_the_pages_language_and_messages_override_any_string(
    bellcast: BellcastProcess, host_pages: HostPages, open_page, user
):
    bellcast.create(user, "Bonjour")
    page = open_page(serve_bell(bellcast, host_pages, user, lang="fr-CA"))
    expect(bell(page)).to_have_accessible_name("Notifications, 1 non lue")
    page.evaluate(
        """() => {
          document.querySelector("notification-bell").messages = {
            markAllRead: "Tout est lu", bellLabelUnread: "Cloche, {count} à lire",
          };
        }"""
    )
    expect(bell(page)).to_have_accessible_name("Cloche, 1 à lire")
    open_bell(page)
    bell_element = page.locator("notification-bell")
    expect(bell_element.get_by_role("button", name="Tout est lu")).to_be_visible()
    expect(bell_element.get_by_role("button", name="Actualiser")).to_be_visible()
    # A language the bell does not ship: English, the overrides still on top.
    page.evaluate("""() => { document.querySelector("notification-bell").locale = "es"; }""")
    expect(bell_element.get_by_role("button", name="Refresh")).to_be_visible()
    expect(bell_element.get_by_role("button", name="Tout est lu")).to_be_visible()
    expect(items(page).first.locator("time")).to_have_text("now")


def test_the_keyboard_reaches_the_tabs_and_the_entries_and_escape_gives_focus_back_to_the_bell(
    bellcast: BellcastProcess, host_pages: HostPages, open_page, user
):
    for title in ("First", "Second"):
        bellcast.create(user, title)
    page = open_page(serve_bell(bellcast, host_pages, user, 'tabs="billing, security"'))
    expect(badge(page)).to_have_text("2")
    expect_live(page)
    bell(page).focus()
    page.keyboard.press("Enter")
    expect(items(page).first).to_be_focused()
    expect(tabs(page)).to_have_text(["Inbox", "Unread", "Archived", "billing", "security"])
    # Back past "Mark all as read" and "Refresh" to the selected tab, the only one in the tab order.
    for _ in range(3):
        page.keyboard.press("Shift+Tab")
    inbox = tabs(page).nth(0)
    expect(inbox).to_be_focused()
    expect(inbox).to_have_attribute("aria-selected", "true")
    page.keyboard.press("ArrowRight")
    expect(tabs(page).nth(1)).to_be_focused()
    expect(tabs(page).nth(1)).to_have_attribute("aria-selected", "true")
    expect(inbox).to_have_attribute("aria-selected", "false")
    page.keyboard.press("End")
    expect(tabs(page).nth(4)).to_be_focused()
    page.keyboard.press("ArrowRight")  # round to the first
    expect(inbox).to_be_focused()
    page.keyboard.press("ArrowLeft")
    expect(tabs(page).nth(4)).to_be_focused()
    page.keyboard.press("Home")
    expect(inbox).to_be_focused()
    expect(items(page)).to_have_count(2)
    page.keyboard.press("ArrowDown")  # from the tabs into the list
    expect(items(page).first).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(items(page).nth(1)).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("notification-bell [role=dialog]")).to_have_count(0)
    expect(bell(page)).to_be_focused()


@pytest.mark.parametrize(
    ("scheme", "attributes"),
    [("light", ""), ("dark", ""), ("light", 'locale="de" theme="dark"'), ("light", 'locale="fr"')],
)
def test_axe_finds_no_serious_or_critical_violation_in_the_open_bell(
    bellcast: BellcastProcess, host_pages: HostPages, open_page, user, scheme, attributes
):
    bellcast.create(user, "Read one", body="Already seen.", url="/read")
    bellcast.create(user, "Unread with a link", body="Open it.", url="https://example.com/x")
    bellcast.create(user, "Plain unread", body="Nothing to follow.")
    page = open_page(serve_bell(bellcast, host_pages, user, f'tabs="billing" {attributes}'))
    page.emulate_media(color_scheme=scheme)
    expect(badge(page)).to_have_text("3")
    open_bell(page)
    items(page).nth(2).locator("button.mark-read").click()
    expect(badge(page)).to_have_text("2")
    assert blocking_accessibility_violations(page) == []


def test_the_bells_accessible_name_counts_unread_and_the_tabs_announce_their_list(
    bellcast: BellcastProcess, host_pages: HostPages, open_page, user
):
    bellcast.create(user, "Counted")
    page = open_page(serve_bell(bellcast, host_pages, user))
    expect(bell(page)).to_have_accessible_name("Notifications, 1 unread")
    open_bell(page)
    tabpanel = page.locator("notification-bell [role=tabpanel]")
    expect(tabpanel).to_have_accessible_name("Inbox")
    expect(tabpanel.get_by_role("list")).to_have_accessible_name(re.compile("newest first"))
