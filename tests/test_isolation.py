"""A user never reads, streams, marks or counts another user's notifications, over every endpoint."""

from __future__ import annotations

import json

import pytest

# Users whose ids look like bob's, or like parts of the keys that hold bob's stream state in Redis.
LOOK_ALIKES = ["Bob", "bob ", "bo", "bobb", "{u:bob}", "bob}:connections", "bob}:inbox:x", "%62ob", "bob\x00", "bob\n"]


async def _page(api, user_id: str, query: str = "") -> dict:
    response = await api.as_user(user_id, "GET", f"/api/notifications{query}")
    assert response.code == 200, response.body
    return json.loads(response.body)


@pytest.mark.gen_test(timeout=30)
async def test_a_user_never_lists_counts_marks_or_streams_another_users_notifications(api, open_stream):
    own = await api.create("alice", "alice's")
    bobs = [await api.create("bob", f"bob's {i}") for i in range(3)]

    page = await _page(api, "alice")
    assert [n["id"] for n in page["notifications"]] == [own["id"]]
    assert page["unread_count"] == 1
    # Paging from bob's newest id still lists only alice's own, older notifications.
    page = await _page(api, "alice", f"?before={bobs[-1]['id']}&limit=100")
    assert [n["id"] for n in page["notifications"]] == [own["id"]]
    assert page["unread_count"] == 1

    response = await api.as_user("alice", "POST", f"/api/notifications/{bobs[0]['id']}/read")
    assert response.code == 404
    assert json.loads(response.body)["error"]["code"] == "not_found"
    response = await api.as_user("alice", "POST", "/api/notifications/read-all")
    assert json.loads(response.body) == {"updated": 1, "unread_count": 0, "unseen_count": 1}
    bob_page = await _page(api, "bob")
    assert bob_page["unread_count"] == 3
    assert all(n["read_at"] is None for n in bob_page["notifications"])

    # Resuming from bob's ids, by header or query parameter, catches up on nothing of bob's.
    by_header = await open_stream("alice", last_event_id=bobs[0]["id"])
    by_query = await open_stream(None, token=f"{api.token('alice')}&last_event_id={bobs[0]['id']}")
    bob_stream = await open_stream("bob")
    for stream in (by_header, by_query, bob_stream):
        assert stream.status == 200
        await stream.next_event()
    later = await api.create("bob", "bob's, while alice is connected")
    mine = await api.create("alice", "alice's, while connected")
    for stream in (by_header, by_query):
        [event] = await stream.notifications(1)
        assert event.id == mine["id"]
        await stream.assert_silent(0.3)
    [event] = await bob_stream.notifications(1)
    assert event.id == later["id"]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("intruder", LOOK_ALIKES)
async def test_a_user_whose_id_looks_like_anothers_sees_nothing_of_theirs(api, open_stream, intruder):
    stream = await open_stream(intruder)
    await stream.next_event()
    bobs = await api.create("bob", "bob's")
    page = await _page(api, intruder, f"?before={'f' * 24}")
    assert page == {"notifications": [], "unread_count": 0, "unseen_count": 0, "next_before": None}
    assert (await api.as_user(intruder, "POST", f"/api/notifications/{bobs['id']}/read")).code == 404
    read_all = json.loads((await api.as_user(intruder, "POST", "/api/notifications/read-all")).body)
    assert read_all == {"updated": 0, "unread_count": 0, "unseen_count": 0}
    own = await api.create(intruder, "the intruder's own")
    [event] = await stream.notifications(1)
    assert event.id == own["id"]
    # The changes it is told of are its own: its one notification created, none of bob's.
    assert await stream.next_change() == {"change": "created", "ids": [own["id"]], "unread_count": 1, "unseen_count": 1}
    assert (await _page(api, "bob"))["unread_count"] == 1
