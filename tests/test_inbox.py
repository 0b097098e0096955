"""The full inbox: tags, actions, avatars and expiry on create; seen, archived and deleted; filters; and the
server's counts pushed to every open stream of the user as `changed` events."""

from __future__ import annotations

import asyncio
import json

import pytest
from bson import ObjectId

from services.notifications import COLLECTION
from tests.support import error_of, iso_in, metric_value


@pytest.fixture
def wakeup_hints() -> bool:
    """The inbox does not depend on how streams are woken; tests/test_stream.py covers both."""
    return True


async def _list(api, user: str, query: str = "") -> dict:
    response = await api.as_user(user, "GET", "/api/notifications" + query)
    assert response.code == 200, response.body
    return json.loads(response.body)


async def _post(api, user: str, path: str) -> dict:
    response = await api.as_user(user, "POST", path)
    assert response.code == 200, response.body
    return json.loads(response.body)


@pytest.mark.gen_test
async def test_tags_actions_an_avatar_and_an_expiry_are_stored_and_answered(api):
    created = await api.create(
        "alice",
        tags=["billing", "urgent", "billing"],
        actions=[{"label": "Pay", "url": "https://pay.example/1"}, {"label": "Later", "url": "/later"}],
        avatar_url="https://avatars.example/a.png",
        expires_at="2099-01-02T03:04:05.678+01:00",
    )
    assert created["tags"] == ["billing", "urgent"]
    assert created["actions"] == [{"label": "Pay", "url": "https://pay.example/1"}, {"label": "Later", "url": "/later"}]
    assert created["avatar_url"] == "https://avatars.example/a.png"
    assert created["expires_at"] == "2099-01-02T02:04:05.678Z"
    assert (created["seen_at"], created["archived_at"]) == (None, None)
    [listed] = (await _list(api, "alice"))["notifications"]
    assert listed == created


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tags": [f"t{i}" for i in range(9)]}, "tags must be a list of at most 8"),
        ({"tags": ["x" * 33]}, "tags must be at most 32"),
        ({"tags": [" "]}, "tags must not be empty"),
        ({"tags": "billing"}, "tags must be a list"),
        ({"actions": [{"label": "a", "url": "/a"}] * 3}, "actions must be a list of at most 2"),
        ({"actions": [{"label": "Open", "url": "//evil.example"}]}, "an action's url"),
        ({"actions": [{"label": "Open", "url": "/\\evil.example"}]}, "an action's url"),
        ({"actions": [{"label": "Open", "url": "javascript:alert(1)"}]}, "an action's url"),
        ({"actions": [{"label": "Open"}]}, "exactly a label and a url"),
        ({"actions": [{"label": "Open", "url": "/a", "style": "x"}]}, "exactly a label and a url"),
        ({"avatar_url": "http://avatars.example/a.png"}, "avatar_url must be an absolute https URL"),
        ({"avatar_url": "/a.png"}, "avatar_url must be an absolute https URL"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at must be in the future"),
        ({"expires_at": "2099-01-01T00:00:00"}, "expires_at must name its time zone"),
        ({"expires_at": "next tuesday"}, "expires_at must be an ISO 8601"),
        ({"expires_at": 4102444800}, "expires_at must be a string"),
    ],
)
async def test_bad_tags_actions_avatars_and_expiries_answer_400_and_store_nothing(api, runtime, fields, message):
    body = json.dumps({"user_id": "alice", "title": "t", **fields})
    response = await api.request("POST", "/api/notifications", body, {"X-API-Key": api.api_key})
    assert response.code == 400
    assert message in error_of(response)["message"]
    assert await runtime.mongo.database[COLLECTION].count_documents({}) == 0


@pytest.mark.gen_test
async def test_seen_archive_unarchive_and_delete_change_what_is_listed_and_counted(api):
    first, second, third = [await api.create("alice", f"n{i}") for i in range(3)]
    assert (await _list(api, "alice"))["unseen_count"] == 3
    assert await _post(api, "alice", "/api/notifications/seen") == {"updated": 3, "unread_count": 3, "unseen_count": 0}
    fourth = await api.create("alice", "after the panel was opened")
    page = await _list(api, "alice")
    assert (page["unread_count"], page["unseen_count"]) == (4, 1)

    archived = await _post(api, "alice", f"/api/notifications/{first['id']}/archive")
    again = await _post(api, "alice", f"/api/notifications/{first['id']}/archive")
    assert archived["archived_at"] is not None and again["archived_at"] == archived["archived_at"]
    page = await _list(api, "alice")
    assert [n["id"] for n in page["notifications"]] == [fourth["id"], third["id"], second["id"]]
    assert (page["unread_count"], page["unseen_count"]) == (3, 1)
    assert [n["id"] for n in (await _list(api, "alice", "?status=archived"))["notifications"]] == [first["id"]]

    restored = await _post(api, "alice", f"/api/notifications/{first['id']}/unarchive")
    assert restored["archived_at"] is None
    assert (await _list(api, "alice"))["unread_count"] == 4

    deleted = await api.as_user("alice", "DELETE", f"/api/notifications/{second['id']}")
    assert deleted.code == 204 and deleted.body == b""
    assert (await api.as_user("alice", "DELETE", f"/api/notifications/{second['id']}")).code == 404
    assert (await api.as_user("bob", "DELETE", f"/api/notifications/{third['id']}")).code == 404
    assert (await api.as_user("bob", "POST", f"/api/notifications/{third['id']}/archive")).code == 404
    page = await _list(api, "alice")
    assert [n["id"] for n in page["notifications"]] == [fourth["id"], third["id"], first["id"]]
    assert page["unread_count"] == 3


@pytest.mark.gen_test
async def test_status_and_tag_filter_the_list_read_all_and_archive_all(api):
    billing = [await api.create("alice", f"bill {i}", tags=["billing"]) for i in range(2)]
    security = await api.create("alice", "security", tags=["security"])
    await api.as_user("alice", "POST", f"/api/notifications/{billing[0]['id']}/read")

    def ids(page: dict) -> list[str]:
        return [n["id"] for n in page["notifications"]]

    assert ids(await _list(api, "alice", "?tag=billing")) == [billing[1]["id"], billing[0]["id"]]
    assert ids(await _list(api, "alice", "?status=unread")) == [security["id"], billing[1]["id"]]
    assert ids(await _list(api, "alice", "?status=read")) == [billing[0]["id"]]
    assert ids(await _list(api, "alice", "?status=unread&tag=billing")) == [billing[1]["id"]]

    read = await _post(api, "alice", "/api/notifications/read-all?tag=billing")
    assert (read["updated"], read["unread_count"]) == (1, 1)
    assert ids(await _list(api, "alice", "?status=unread")) == [security["id"]]
    archived = await _post(api, "alice", "/api/notifications/archive-all?status=read")
    assert (archived["updated"], archived["unread_count"]) == (2, 1)
    assert ids(await _list(api, "alice")) == [security["id"]]
    assert ids(await _list(api, "alice", "?status=archived")) == [billing[1]["id"], billing[0]["id"]]
    # Filters on what is already done change nothing.
    assert (await _post(api, "alice", "/api/notifications/read-all?status=read"))["updated"] == 0
    assert (await _post(api, "alice", "/api/notifications/archive-all?status=archived"))["updated"] == 0
    for bad in ("?status=all", "?tag=%20", "?tag=" + "x" * 33):
        response = await api.as_user("alice", "GET", "/api/notifications" + bad)
        assert response.code == 400, bad
        assert error_of(response)["code"] == "invalid"


@pytest.mark.gen_test(timeout=30)
async def test_an_expired_notification_is_gone_from_lists_counts_and_replays_at_once_though_mongodb_keeps_it(
    api, open_stream, runtime
):
    seen = await api.create("alice", "seen")
    expiring = await api.create("alice", "expiring", expires_at=iso_in(1.5))
    staying = await api.create("alice", "staying")
    page = await _list(api, "alice")
    assert [n["id"] for n in page["notifications"]] == [staying["id"], expiring["id"], seen["id"]]
    await asyncio.sleep(2.0)  # past its expiry; the expiry sweep deletes it an hour later
    page = await _list(api, "alice")
    assert [n["id"] for n in page["notifications"]] == [staying["id"], seen["id"]]
    assert (page["unread_count"], page["unseen_count"]) == (2, 2)
    resumed = await open_stream("alice", last_event_id=seen["id"])
    [event] = await resumed.notifications(1)
    assert event.id == staying["id"]
    await resumed.assert_silent(0.3)
    assert await runtime.mongo.database[COLLECTION].count_documents({"_id": ObjectId(expiring["id"])}) == 1


@pytest.mark.gen_test(timeout=30)
async def test_read_archive_unarchive_and_delete_of_an_expired_notification_answer_404_and_change_nothing(api, runtime):
    """Gone from lists and counts at its expiry, an expired notification is gone for the actions on it too, though
    MongoDB keeps it until the expiry sweep deletes it an hour later; the 404 is what tells a bell that missed the
    `expired` change to drop the entry."""
    inbox = await api.create("alice", "in the inbox", expires_at=iso_in(1.0))
    archived = await api.create("alice", "archived", expires_at=iso_in(1.0))
    await _post(api, "alice", f"/api/notifications/{archived['id']}/archive")
    await asyncio.sleep(1.5)
    for method, path in [
        ("POST", f"/api/notifications/{inbox['id']}/read"),
        ("POST", f"/api/notifications/{inbox['id']}/archive"),
        ("POST", f"/api/notifications/{archived['id']}/unarchive"),
        ("DELETE", f"/api/notifications/{inbox['id']}"),
        ("DELETE", f"/api/notifications/{archived['id']}"),
    ]:
        response = await api.as_user("alice", method, path)
        assert (response.code, error_of(response)["code"]) == (404, "not_found"), path
    kept = {str(document["_id"]): document async for document in runtime.mongo.database[COLLECTION].find()}
    assert sorted(kept) == sorted([inbox["id"], archived["id"]])
    assert (kept[inbox["id"]]["read_at"], kept[inbox["id"]]["archived_at"]) == (None, None)
    assert kept[archived["id"]]["archived_at"] is not None


@pytest.mark.gen_test(timeout=30)
async def test_every_change_reaches_every_open_stream_of_the_user_with_the_servers_counts(api, open_stream, runtime):
    """Two devices of one user: whatever one does, both are told, with the counts after it; others hear nothing."""
    phone, laptop = await open_stream("alice"), await open_stream("alice")
    bystander = await open_stream("bob")
    for stream in (phone, laptop, bystander):
        await stream.next_event()
    delivered_before = metric_value(runtime.metrics, "changes_delivered_total")

    async def both_told(expected: dict) -> None:
        for stream in (phone, laptop):
            assert await stream.next_change() == expected

    first = await api.create("alice", "first", tags=["billing"])
    await both_told({"change": "created", "ids": [first["id"]], "unread_count": 1, "unseen_count": 1})
    second = await api.create("alice", "second")
    await both_told({"change": "created", "ids": [second["id"]], "unread_count": 2, "unseen_count": 2})
    await api.as_user("alice", "POST", f"/api/notifications/{first['id']}/read")
    await both_told({"change": "read", "ids": [first["id"]], "unread_count": 1, "unseen_count": 2})
    await api.as_user("alice", "POST", "/api/notifications/seen")
    await both_told({"change": "seen", "ids": [], "unread_count": 1, "unseen_count": 0})
    await api.as_user("alice", "POST", f"/api/notifications/{second['id']}/archive")
    await both_told({"change": "archived", "ids": [second["id"]], "unread_count": 0, "unseen_count": 0})
    await api.as_user("alice", "POST", f"/api/notifications/{second['id']}/unarchive")
    await both_told({"change": "unarchived", "ids": [second["id"]], "unread_count": 1, "unseen_count": 0})
    await api.as_user("alice", "POST", "/api/notifications/read-all")
    await both_told({"change": "read_all", "ids": [], "filter": {}, "unread_count": 0, "unseen_count": 0})
    await api.as_user("alice", "POST", "/api/notifications/archive-all?tag=billing")
    archived_all = {"change": "archived_all", "ids": [], "filter": {"tag": "billing"}}
    await both_told({**archived_all, "unread_count": 0, "unseen_count": 0})
    await api.as_user("alice", "DELETE", f"/api/notifications/{second['id']}")
    await both_told({"change": "deleted", "ids": [second["id"]], "unread_count": 0, "unseen_count": 0})
    # A change that changes nothing is not announced.
    await api.as_user("alice", "POST", f"/api/notifications/{first['id']}/read")
    await api.as_user("alice", "POST", "/api/notifications/read-all")
    for stream in (phone, laptop):
        with pytest.raises(TimeoutError):
            await stream.next_change(timeout=0.5)
    with pytest.raises(TimeoutError):
        await bystander.next_change(timeout=0.1)
    assert metric_value(runtime.metrics, "changes_delivered_total") - delivered_before == 2 * 9
    assert phone.changes[-1].id == second["id"], "a change's id is the stream's newest notification"


@pytest.mark.gen_test(timeout=30)
async def test_a_stream_that_resumes_gets_the_current_counts_first(api, open_stream):
    seen = await api.create("alice", "seen")
    missed = await api.create("alice", "missed")
    await api.as_user("alice", "POST", f"/api/notifications/{seen['id']}/read")
    resumed = await open_stream("alice", last_event_id=seen["id"])
    [event] = await resumed.notifications(1)
    assert event.id == missed["id"]
    assert await resumed.next_change() == {"change": "counts", "ids": [], "unread_count": 1, "unseen_count": 2}


@pytest.mark.gen_test(timeout=30)
async def test_a_notification_that_expires_is_announced_once_to_the_users_streams(api, open_stream):
    stream = await open_stream("alice")
    await stream.next_event()
    kept = await api.create("alice", "kept")
    expiring = await api.create("alice", "expiring", expires_at=iso_in(1.0))
    assert [(await stream.next_change())["ids"] for _ in range(2)] == [[kept["id"]], [expiring["id"]]]
    expired = await stream.next_change(timeout=10)
    assert expired == {"change": "expired", "ids": [expiring["id"]], "unread_count": 1, "unseen_count": 1}
    with pytest.raises(TimeoutError):
        await stream.next_change(timeout=4)  # two sweeps later, not again
