"""A source collection of any shape, mapped by SOURCE_FIELDS: a Node or Django app's own notifications."""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

import pytest
from bson import ObjectId

from server import Runtime, Settings
from tests.support import API
from tests.test_sources import watching

FIELDS = {
    "user_id": "userId",
    "title": "title",
    "body": "description",
    "url": "links.href",
    "created_at": "createdAt",
    "read_at": "isRead",
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, source_collection="alerts", source_fields=FIELDS)


def app_alert(user_id: str, title: str, is_read: Any = False, offset_ms: int = 0) -> dict[str, Any]:
    """A notification as the app writes it: its own field names, a boolean read flag, an ObjectId id."""
    now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(milliseconds=offset_ms)
    return {
        "_id": ObjectId(),
        "userId": user_id,
        "title": title,
        "description": f"about {title}",
        "links": {"href": f"/alerts/{title}"},
        "createdAt": now.replace(microsecond=now.microsecond // 1000 * 1000),
        "isRead": is_read,
    }


@pytest.mark.gen_test(timeout=30)
async def test_documents_of_any_shape_are_delivered_and_listed_through_the_mapped_paths(
    runtime: Runtime, open_stream: Any, api: API
) -> None:
    await watching(runtime, "alerts")
    stream = await open_stream("u1")
    alert = app_alert("u1", "disk")
    await runtime.mongo.database["alerts"].insert_one(alert)

    [event] = await stream.notifications(1)
    assert event.id == str(alert["_id"])
    notification = event.json()
    assert (notification["title"], notification["body"], notification["url"]) == (
        "disk",
        "about disk",
        "/alerts/disk",
    )
    assert notification["read_at"] is None
    listed = json.loads((await api.as_user("u1", "GET", "/api/notifications")).body)
    assert [n["id"] for n in listed["notifications"]] == [str(alert["_id"])]
    assert listed["unread_count"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_a_boolean_read_flag_is_written_true_and_a_missing_one_gets_the_time(runtime: Runtime, api: API) -> None:
    alerts = runtime.mongo.database["alerts"]
    flagged, unflagged, already = app_alert("u1", "a"), app_alert("u1", "b", offset_ms=1), app_alert("u1", "c", True, 2)
    del unflagged["isRead"]
    await alerts.insert_many([flagged, unflagged, already])
    listed = json.loads((await api.as_user("u1", "GET", "/api/notifications")).body)
    assert listed["unread_count"] == 2
    assert [n["read_at"] is not None for n in listed["notifications"]] == [True, False, False]

    response = await api.as_user("u1", "POST", f"/api/notifications/{flagged['_id']}/read")
    assert response.code == 200, response.body
    assert (await alerts.find_one({"_id": flagged["_id"]}))["isRead"] is True
    response = await api.as_user("u1", "POST", "/api/notifications/read-all")
    assert json.loads(response.body)["unread_count"] == 0
    assert isinstance((await alerts.find_one({"_id": unflagged["_id"]}))["isRead"], datetime.datetime)
    assert (await alerts.find_one({"_id": already["_id"]}))["isRead"] is True
