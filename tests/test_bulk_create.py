"""`POST /api/notifications` with `user_ids`: one notification per user, stored together, each delivered to its
user's streams."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.notifications import MAX_USERS_PER_CREATE
from tests.support import API, error_of

PATH = "/api/notifications"


async def _post(api: API, fields: Any):
    headers = {"X-API-Key": api.api_key, "Content-Type": "application/json"}
    return await api.request("POST", PATH, json.dumps(fields), headers)


async def _stored(runtime) -> int:
    return int(await runtime.mongo.database["notifications"].count_documents({}))


@pytest.mark.gen_test
async def test_a_create_for_several_users_answers_each_ones_notification_and_each_users_streams_get_theirs(
    api, runtime, open_stream
):
    tabs = {"alice": [await open_stream("alice")], "bob": [await open_stream("bob"), await open_stream("bob")]}
    tabs["carol"] = [await open_stream("carol")]
    bystander = await open_stream("dave")
    response = await _post(api, {"user_ids": ["carol", "alice", "bob"], "title": "Release 2.0", "url": "/r/2"})
    assert response.code == 201
    created = json.loads(response.body)["notifications"]
    assert [n["user_id"] for n in created] == ["carol", "alice", "bob"]
    assert len({n["id"] for n in created}) == 3
    assert all(n["title"] == "Release 2.0" and n["url"] == "/r/2" and n["read_at"] is None for n in created)
    for notification in created:
        for tab in tabs[notification["user_id"]]:
            [delivered] = await tab.notifications(1)
            assert delivered.json() == notification
    await bystander.assert_silent(0.5)
    for user in tabs:
        listed = json.loads((await api.as_user(user, "GET", PATH)).body)["notifications"]
        assert listed == [n for n in created if n["user_id"] == user]
    assert await _stored(runtime) == 3


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("wakeup_hints", [True], ids=["hints"])
async def test_a_create_for_the_most_users_it_takes_stores_and_answers_them_all(api, runtime, open_stream):
    users = [f"user{i}" for i in range(MAX_USERS_PER_CREATE)]
    last = await open_stream(users[-1])
    response = await _post(api, {"user_ids": users, "title": "Everyone"})
    assert response.code == 201
    created = json.loads(response.body)["notifications"]
    assert [n["user_id"] for n in created] == users
    assert (await last.notifications(1))[0].json() == created[-1]
    assert await _stored(runtime) == MAX_USERS_PER_CREATE


@pytest.mark.gen_test
@pytest.mark.parametrize("wakeup_hints", [True], ids=["hints"])
@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"user_id": "alice", "user_ids": ["bob"], "title": "t"}, "user_id or user_ids, not both"),
        ({"user_ids": [], "title": "t"}, f"user_ids must list 1 to {MAX_USERS_PER_CREATE}"),
        ({"user_ids": [f"u{i}" for i in range(MAX_USERS_PER_CREATE + 1)], "title": "t"}, "user_ids must list 1 to"),
        ({"user_ids": ["alice", "bob", "alice"], "title": "t"}, "user_ids[2] repeats user_ids[0]"),
        ({"user_ids": "alice", "title": "t"}, "user_ids must be a list"),
        ({"user_ids": {"alice": 1}, "title": "t"}, "user_ids must be a list"),
        ({"user_ids": ["alice", 7], "title": "t"}, "user_ids[1]"),
        ({"user_ids": ["alice", ""], "title": "t"}, "user_ids[1]"),
        ({"user_ids": ["   "], "title": "t"}, "user_ids[0]"),
        ({"user_ids": ["x" * 201], "title": "t"}, "user_ids[0]"),
        ({"user_ids": ["alice", None], "title": "t"}, "user_ids[1]"),
        ({"user_ids": ["alice", "\ud800"], "title": "t"}, "user_ids[1]"),
        ({"user_ids": ["alice"]}, "title"),
        ({"user_ids": ["alice"], "title": "t", "data": []}, "data"),
    ],
)
async def test_a_bad_list_of_users_is_a_json_400_naming_the_field_and_nothing_is_stored(api, runtime, fields, named):
    response = await _post(api, fields)
    assert response.code == 400
    error = error_of(response)
    assert error["code"] == "invalid" and named in error["message"]
    assert await _stored(runtime) == 0


@pytest.mark.gen_test(timeout=30)
async def test_each_user_of_a_bulk_create_is_told_once_with_their_own_counts(api, runtime, open_stream):
    await api.create("bob", "earlier, unread")
    await api.create("bob", "earlier, read")
    read = json.loads((await api.as_user("bob", "GET", PATH)).body)["notifications"][0]
    assert (await api.as_user("bob", "POST", f"{PATH}/{read['id']}/read")).code == 200
    alice, bob = await open_stream("alice"), await open_stream("bob")
    response = await _post(api, {"user_ids": ["alice", "bob"], "title": "Both"})
    created = {n["user_id"]: n["id"] for n in json.loads(response.body)["notifications"]}

    alice_change, bob_change = await alice.next_change(), await bob.next_change()
    assert (alice_change["change"], alice_change["ids"]) == ("created", [created["alice"]])
    assert (alice_change["unread_count"], alice_change["unseen_count"]) == (1, 1)
    assert (bob_change["change"], bob_change["ids"]) == ("created", [created["bob"]])
    assert (bob_change["unread_count"], bob_change["unseen_count"]) == (2, 3)
    for stream in (alice, bob):
        with pytest.raises(TimeoutError):
            await stream.next_change(timeout=0.5)
