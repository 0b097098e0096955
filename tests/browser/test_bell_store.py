"""The bell's store alone in a page: tabs, and the server's `changed` events applied without a request."""

from __future__ import annotations

import pytest

from tests.browser.harness import HostPages

# The store in a page of another origin, with an API that answers when the scenario says and
# counts what is asked; each scenario's body runs after this and returns what the test compares.
SETUP = """
  const { BellStore } = await import(storeUrl);
  const store = new BellStore(null, () => {});
  const pages = [];
  store.api = { list: (before, filter) => new Promise((resolve) => pages.push({ before, filter, resolve })) };
  store.key = "server|alice";
  const item = (id, fields = {}) => ({
    id, title: "n" + id, read_at: null, archived_at: null, tags: [], created_at: "2026-01-01T00:00:00Z", ...fields,
  });
  const A = "0000000000000000000000a1", B = "0000000000000000000000b2", C = "0000000000000000000000c3";
  const snapshot = () => ({
    ids: store.state.items.map((n) => n.id),
    read: store.state.items.filter((n) => n.read_at).map((n) => n.id),
    unread: store.state.unread,
    unseen: store.state.unseen,
  });
  const listed = async (tab, notifications, counts) => {
    const shown = tab === store.state.tab ? store.refresh() : store.selectTab(tab);
    pages[pages.length - 1].resolve({ notifications, next_before: null, ...counts });
    await shown;
  };
"""

SCENARIOS = {
    # A read on another device: the item and the counts follow the event; from the first event on the
    # counts are the server's alone, so a live notification does not count twice.
    "read_elsewhere": """{
      await listed("inbox", [item(B), item(A)], { unread_count: 2 });
      const before = snapshot();
      store.applyChange({ change: "counts", ids: [], unread_count: 2, unseen_count: 1 });
      store.applyChange({ change: "read", ids: [A], unread_count: 1, unseen_count: 1 });
      const afterRead = snapshot();
      store.receive(item(C));
      const afterLive = snapshot();
      store.applyChange({ change: "created", ids: [C], unread_count: 2, unseen_count: 2 });
      return { before, afterRead, afterLive, afterCreated: snapshot() };
    }""",
    # Archived leaves the inbox, deleted leaves for good, unarchived comes back without a request.
    "archived_deleted_unarchived": """{
      await listed("inbox", [item(C), item(B), item(A)], { unread_count: 3, unseen_count: 0 });
      store.applyChange({ change: "archived", ids: [B], unread_count: 2, unseen_count: 0 });
      const archived = snapshot();
      store.applyChange({ change: "deleted", ids: [A], unread_count: 1, unseen_count: 0 });
      const deleted = snapshot();
      store.applyChange({ change: "unarchived", ids: [B], unread_count: 2, unseen_count: 0 });
      return { archived, deleted, unarchived: snapshot(), requests: pages.length };
    }""",
    # An action that answers 404 finds its notification gone (expired, or deleted where this bell
    # missed the change): the entry leaves without a problem shown. Another failure keeps it and says so.
    "actions_on_what_is_gone": """{
      const { ApiError } = await import(storeUrl.replace("store.js", "api.js"));
      await listed("inbox", [item(C), item(B), item(A)], { unread_count: 3, unseen_count: 0 });
      const refuse = (status) => () => Promise.reject(new ApiError("HTTP " + status, status));
      const after = () => ({ ids: snapshot().ids, problem: store.state.problem });
      store.api.markRead = refuse(404);
      await store.markRead(store.known.get(A));
      const read = after();
      store.api.archive = refuse(404);
      await store.setArchived(store.known.get(B), true);
      const archived = after();
      store.api.remove = refuse(503);
      await store.remove(store.known.get(C));
      return { read, archived, removed: after() };
    }""",
    # A bulk read names no ids but its filter: only what the filter covers is read.
    "bulk_read_of_one_tag": """{
      await listed("inbox", [item(C, { tags: ["billing"] }), item(B, { tags: ["security"] }), item(A)], {
        unread_count: 3,
      });
      store.applyChange({ change: "read_all", ids: [], filter: { status: null, tag: "billing" }, unread_count: 2 });
      return snapshot();
    }""",
    # A bulk change without its filter: only the server knows which changed, so the shown tab is reloaded.
    "bulk_change_without_a_filter": """{
      await listed("tag:billing", [item(B, { tags: ["billing"] })], { unread_count: 2 });
      store.applyChange({ change: "read_all", ids: [], unread_count: 1, unseen_count: 0 });
      const asked = pages.length;
      pages[asked - 1].resolve({
        notifications: [item(B, { tags: ["billing"], read_at: "2026-01-01T00:00:01Z" })], unread_count: 1,
      });
      await new Promise((resolve) => setTimeout(resolve, 0));
      store.applyChange({ change: "seen", ids: [], unread_count: 1, unseen_count: 0 });
      return { ...snapshot(), filters: pages.map((p) => p.filter), askedAfterReadAll: asked };
    }""",
    # Each tab lists only what it shows, live notifications included, and asks with its own filter.
    "tabs_filter_what_they_list": """{
      await listed("unread", [item(A)], { unread_count: 1 });
      store.receive(item(B, { read_at: "2026-01-01T00:00:01Z" }));
      store.receive(item(C));
      const unread = snapshot();
      await listed("tag:billing", [], { unread_count: 2 });
      store.receive(item("0000000000000000000000d4", { tags: ["billing"] }));
      store.receive(item("0000000000000000000000e5", { tags: ["security"] }));
      const billing = snapshot();
      store.applyRead("0000000000000000000000d4", "2026-01-01T00:00:02Z", true);
      return { unread, billing, afterRead: snapshot(), filters: pages.map((p) => p.filter) };
    }""",
    # A read in the Unread tab takes the item out of it.
    "read_in_the_unread_tab": """{
      await listed("unread", [item(B), item(A)], { unread_count: 2 });
      store.applyChange({ change: "read", ids: [B], unread_count: 1, unseen_count: 0 });
      return snapshot();
    }""",
    # Counts the stream sent while a page was on its way are newer than the page's.
    "counts_during_a_load": """{
      const loading = store.refresh();
      store.applyChange({ change: "counts", ids: [], unread_count: 7, unseen_count: 4 });
      pages[0].resolve({ notifications: [item(A)], unread_count: 3, unseen_count: 3, next_before: null });
      await loading;
      return snapshot();
    }""",
    # Changes the stream sent while a page was on its way are newer than the page: the page does not undo them.
    "changes_during_a_load": """{
      await listed("inbox", [item(C), item(B), item(A)], { unread_count: 3 });
      const loading = store.refresh();
      store.applyChange({ change: "read", ids: [A], unread_count: 2, unseen_count: 0 });
      store.applyChange({ change: "expired", ids: [B], unread_count: 1, unseen_count: 0 });
      store.applyChange({ change: "archived", ids: [C], unread_count: 0, unseen_count: 0 });
      pages[1].resolve({ notifications: [item(C), item(B), item(A)], unread_count: 3, next_before: null });
      await loading;
      return snapshot();
    }""",
    # A mark's answer that comes after a `changed` event carries counts older than the event's: the event's stay
    # (the panel opened, so everything is seen; meanwhile another device read one, or this one read all).
    "counts_answered_after_a_change": """{
      const answers = [];
      store.api.markSeen = () => new Promise((resolve) => answers.push(resolve));
      store.api.markAllRead = () => new Promise((resolve) => answers.push(resolve));
      await listed("inbox", [item(C), item(B), item(A)], { unread_count: 3, unseen_count: 3 });
      const seeing = store.markSeen();
      store.applyChange({ change: "read", ids: [C], unread_count: 2, unseen_count: 0 });
      answers[0]({ unread_count: 3, unseen_count: 0 });
      await seeing;
      const afterSeen = snapshot();
      const readingAll = store.markAllRead();
      store.applyChange({ change: "archived", ids: [B], unread_count: 1, unseen_count: 0 });
      answers[1]({ unread_count: 2, unseen_count: 0 });
      await readingAll;
      return { afterSeen, afterReadAll: snapshot() };
    }""",
    # An answer for a tab left meanwhile is dropped: the newest request's wins.
    "answer_for_a_tab_left_meanwhile": """{
      const first = store.selectTab("archived");
      const second = store.selectTab("unread");
      pages[1].resolve({ notifications: [item(B)], unread_count: 1, next_before: null });
      pages[0].resolve({ notifications: [item(A, { archived_at: "2026-01-01T00:00:01Z" })], unread_count: 1 });
      await Promise.all([first, second]);
      return { ...snapshot(), tab: store.state.tab, loading: store.state.loading };
    }""",
}

EXPECTED = {
    "read_elsewhere": {
        "before": {
            "ids": ["0000000000000000000000b2", "0000000000000000000000a1"],
            "read": [],
            "unread": 2,
            "unseen": None,
        },
        "afterRead": {
            "ids": ["0000000000000000000000b2", "0000000000000000000000a1"],
            "read": ["0000000000000000000000a1"],
            "unread": 1,
            "unseen": 1,
        },
        "afterLive": {
            "ids": ["0000000000000000000000c3", "0000000000000000000000b2", "0000000000000000000000a1"],
            "read": ["0000000000000000000000a1"],
            "unread": 1,
            "unseen": 1,
        },
        "afterCreated": {
            "ids": ["0000000000000000000000c3", "0000000000000000000000b2", "0000000000000000000000a1"],
            "read": ["0000000000000000000000a1"],
            "unread": 2,
            "unseen": 2,
        },
    },
    "archived_deleted_unarchived": {
        "archived": {
            "ids": ["0000000000000000000000c3", "0000000000000000000000a1"],
            "read": [],
            "unread": 2,
            "unseen": 0,
        },
        "deleted": {"ids": ["0000000000000000000000c3"], "read": [], "unread": 1, "unseen": 0},
        "unarchived": {
            "ids": ["0000000000000000000000c3", "0000000000000000000000b2"],
            "read": [],
            "unread": 2,
            "unseen": 0,
        },
        "requests": 1,
    },
    "actions_on_what_is_gone": {
        "read": {"ids": ["0000000000000000000000c3", "0000000000000000000000b2"], "problem": None},
        "archived": {"ids": ["0000000000000000000000c3"], "problem": None},
        "removed": {
            "ids": ["0000000000000000000000c3"],
            "problem": {"key": "couldNotDelete", "error": "HTTP 503"},
        },
    },
    "bulk_read_of_one_tag": {
        "ids": ["0000000000000000000000c3", "0000000000000000000000b2", "0000000000000000000000a1"],
        "read": ["0000000000000000000000c3"],
        "unread": 2,
        "unseen": None,
    },
    "tabs_filter_what_they_list": {
        "unread": {
            "ids": ["0000000000000000000000c3", "0000000000000000000000a1"],
            "read": [],
            "unread": 2,
            "unseen": None,
        },
        "billing": {"ids": ["0000000000000000000000d4"], "read": [], "unread": 4, "unseen": None},
        "afterRead": {
            "ids": ["0000000000000000000000d4"],
            "read": ["0000000000000000000000d4"],
            "unread": 3,
            "unseen": None,
        },
        "filters": [{"status": "unread", "tag": None}, {"status": None, "tag": "billing"}],
    },
    "read_in_the_unread_tab": {"ids": ["0000000000000000000000a1"], "read": [], "unread": 1, "unseen": 0},
    "bulk_change_without_a_filter": {
        "ids": ["0000000000000000000000b2"],
        "read": ["0000000000000000000000b2"],
        "unread": 1,
        "unseen": 0,
        "filters": [{"status": None, "tag": "billing"}, {"status": None, "tag": "billing"}],
        "askedAfterReadAll": 2,
    },
    "changes_during_a_load": {
        "ids": ["0000000000000000000000a1"],
        "read": ["0000000000000000000000a1"],
        "unread": 0,
        "unseen": 0,
    },
    "counts_during_a_load": {"ids": ["0000000000000000000000a1"], "read": [], "unread": 7, "unseen": 4},
    "counts_answered_after_a_change": {
        "afterSeen": {
            "ids": ["0000000000000000000000c3", "0000000000000000000000b2", "0000000000000000000000a1"],
            "read": ["0000000000000000000000c3"],
            "unread": 2,
            "unseen": 0,
        },
        "afterReadAll": {
            "ids": ["0000000000000000000000c3", "0000000000000000000000a1"],
            "read": ["0000000000000000000000c3", "0000000000000000000000a1"],
            "unread": 1,
            "unseen": 0,
        },
    },
    "answer_for_a_tab_left_meanwhile": {
        "ids": ["0000000000000000000000b2"],
        "read": [],
        "unread": 1,
        "unseen": None,
        "tab": "unread",
        "loading": False,
    },
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_store_applies_tabs_and_the_servers_changes(bellcast, host_pages: HostPages, open_page, scenario):
    page = open_page(host_pages.serve("/store-changes.html", "<!doctype html><title>The bell's store</title>"))
    function = f"async (storeUrl) => {{ {SETUP} {SCENARIOS[scenario]} }}"
    assert page.evaluate(function, f"{bellcast.base_url}/static/bell/store.js") == EXPECTED[scenario]
