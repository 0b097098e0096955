"""A source collection: bellcast watches the app's own notifications and serves them as the app stores them.

The documents are written straight into MongoDB, as the app (Laravel with laravel-mongodb here) writes
them; nothing goes through bellcast's create unless a test says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId

from server import Runtime, Settings, start_runtime
from services.embedded import EmbeddedMongo
from services.watcher import POSITIONS
from tests.support import API, eventually, metric_value

SOURCE = "notifications"  # Laravel's table name, as laravel-mongodb keeps it
USER_MODEL = "App\\Models\\User"


@pytest.fixture
def source_filter() -> dict[str, Any] | None:
    return None


@pytest.fixture
def settings(settings: Settings, source_filter: dict[str, Any] | None) -> Settings:
    return dataclasses.replace(settings, source_collection=SOURCE, source_schema="laravel", source_filter=source_filter)


@pytest.fixture
def source(runtime: Runtime) -> Any:
    """The app's collection, as the app's driver sees it."""
    return runtime.mongo.database[SOURCE]


async def _async(value: bool) -> bool:
    return value


async def watching(runtime: Runtime, collection: str = SOURCE) -> None:
    """Wait until the watcher holds its lease and has opened its change stream (it starts from then on)."""

    async def stream_open() -> bool:
        position = await runtime.mongo.database[POSITIONS].find_one({"_id": collection})
        return position is not None and position.get("resume_token") is not None

    await eventually(stream_open, timeout=10)


def in_order(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents created a millisecond apart, in list order (else their random ids order them)."""
    for index, document in enumerate(documents):
        document["created_at"] = document["updated_at"] = documents[0]["created_at"] + datetime.timedelta(
            milliseconds=index
        )
    return documents


def laravel_notification(user_id: Any, **data: Any) -> dict[str, Any]:
    """A database notification as an app's own notification model without the `array` cast stores it: `data` as a
    document, BSON dates (stock Laravel's text shapes: `stock_laravel_notification`, tests/test_laravel_example.py)."""
    now = datetime.datetime.now(datetime.UTC)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # BSON dates keep milliseconds
    return {
        "_id": str(uuid.uuid4()),
        "type": "App\\Notifications\\InvoicePaid",
        "notifiable_type": USER_MODEL,
        "notifiable_id": user_id,
        "data": data or {"title": "Invoice paid", "body": "Invoice 42 was paid.", "url": "/invoices/42"},
        "read_at": None,
        "created_at": now,
        "updated_at": now,
    }


@pytest.mark.parametrize("mongo_driver", ["pymongo", "motor"])
@pytest.mark.gen_test(timeout=30)
async def test_a_document_the_app_inserts_reaches_its_users_streams_with_its_own_id(
    source: Any, open_stream: Any, runtime: Runtime
) -> None:
    await watching(runtime)
    tab, other_tab, bystander = await open_stream("7"), await open_stream("7"), await open_stream("8")
    document = laravel_notification("7")
    await source.insert_one(document)

    for stream in (tab, other_tab):
        [event] = await stream.notifications(1)
        assert event.id == document["_id"]
        notification = event.json()
        assert notification["id"] == document["_id"]
        assert (notification["title"], notification["body"], notification["url"]) == (
            "Invoice paid",
            "Invoice 42 was paid.",
            "/invoices/42",
        )
        assert notification["type"] == "InvoicePaid"
        assert notification["data"] == document["data"]
    await bystander.assert_silent(0.5)


@pytest.mark.gen_test(timeout=30)
async def test_laravel_fallbacks_map_subject_message_action_url_and_the_class_name(
    source: Any, open_stream: Any, runtime: Runtime
) -> None:
    await watching(runtime)
    stream = await open_stream("7")
    user = ObjectId()
    stream_of_object_id_user = await open_stream(str(user))
    await source.insert_one(laravel_notification("7", subject="Welcome", message="Hi there", action_url="/start"))
    await source.insert_one(laravel_notification("7", amount=3))  # no title: the class's short name
    await source.insert_one(laravel_notification(user, title="Keyed by ObjectId"))

    by_title = {event.json()["title"]: event.json() for event in await stream.notifications(2)}
    assert (by_title["Welcome"]["body"], by_title["Welcome"]["url"]) == ("Hi there", "/start")
    assert (by_title["InvoicePaid"]["body"], by_title["InvoicePaid"]["data"]) == ("", {"amount": 3})
    [keyed] = await stream_of_object_id_user.notifications(1)
    assert keyed.json()["title"] == "Keyed by ObjectId"
    assert keyed.json()["user_id"] == str(user)


@pytest.mark.gen_test(timeout=30)
async def test_a_link_the_bell_must_not_open_is_dropped_and_documents_without_user_or_title_are_skipped_and_counted(
    source: Any, open_stream: Any, runtime: Runtime
) -> None:
    await watching(runtime)
    stream = await open_stream("7")
    no_user = laravel_notification("7")
    del no_user["notifiable_id"]
    no_title = laravel_notification("7")
    no_title["type"] = ""
    no_title["data"] = {"body": "?"}
    await source.insert_many([no_user, no_title, laravel_notification("7", title="Hostile", url="javascript:alert(1)")])
    await source.insert_one(laravel_notification("7", title="After them"))

    by_title = {event.json()["title"]: event.json() for event in await stream.notifications(2)}
    assert by_title.keys() == {"Hostile", "After them"}
    assert by_title["Hostile"]["url"] is None
    assert metric_value(runtime.metrics, "source_documents_skipped_total", reason="no user") == 1
    assert metric_value(runtime.metrics, "source_documents_skipped_total", reason="no title") == 1
    # Counted once the batch's observers have run, which may be after the stream has the notifications:
    await eventually(lambda: _async(metric_value(runtime.metrics, "source_documents_total") == 2))


@pytest.mark.parametrize("source_filter", [{"notifiable_type": USER_MODEL}])
@pytest.mark.gen_test(timeout=30)
async def test_documents_outside_source_filter_are_neither_delivered_nor_listed(
    runtime: Runtime, source: Any, open_stream: Any, api: API
) -> None:
    await watching(runtime)
    stream = await open_stream("7")
    team = laravel_notification("7", title="For a team")
    team["notifiable_type"] = "App\\Models\\Team"
    await source.insert_one(team)
    await source.insert_one(laravel_notification("7", title="For the user"))

    [event] = await stream.notifications(1)
    assert event.json()["title"] == "For the user"
    await stream.assert_silent(0.5)
    listed = json.loads((await api.as_user("7", "GET", "/api/notifications")).body)
    assert [n["title"] for n in listed["notifications"]] == ["For the user"]
    assert listed["unread_count"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_the_list_and_read_state_are_the_apps_documents(
    source: Any, api: API, open_stream: Any, runtime: Runtime
) -> None:
    await watching(runtime)
    older, newer = laravel_notification("7", title="Older"), laravel_notification("7", title="Newer")
    newer["created_at"] = older["created_at"] + datetime.timedelta(seconds=1)
    await source.insert_many([older, newer, laravel_notification("8", title="Someone else's")])

    listed = json.loads((await api.as_user("7", "GET", "/api/notifications")).body)
    assert [n["id"] for n in listed["notifications"]] == [newer["_id"], older["_id"]]
    assert listed["unread_count"] == 2

    response = await api.as_user("7", "POST", f"/api/notifications/{older['_id']}/read")
    assert response.code == 200, response.body
    stored = await source.find_one({"_id": older["_id"]})
    assert isinstance(stored["read_at"], datetime.datetime)
    # Laravel's $user->unreadNotifications:
    unread = await source.count_documents({"notifiable_type": USER_MODEL, "notifiable_id": "7", "read_at": None})
    assert unread == 1

    # The app marks the other read itself ($notification->markAsRead()):
    await source.update_one({"_id": newer["_id"]}, {"$set": {"read_at": datetime.datetime.now(datetime.UTC)}})
    listed = json.loads((await api.as_user("7", "GET", "/api/notifications")).body)
    assert listed["unread_count"] == 0
    assert all(n["read_at"] is not None for n in listed["notifications"])

    # Paging follows creation time, with the app's ids:
    page = json.loads((await api.as_user("7", "GET", "/api/notifications?limit=1")).body)
    assert page["next_before"] == newer["_id"]
    rest = json.loads((await api.as_user("7", "GET", f"/api/notifications?limit=1&before={newer['_id']}")).body)
    assert [n["id"] for n in rest["notifications"]] == [older["_id"]]
    # Someone else's id reads as no notification:
    other = await source.find_one({"notifiable_id": "8"})
    assert (await api.as_user("7", "POST", f"/api/notifications/{other['_id']}/read")).code == 404
    assert (await api.as_user("7", "GET", f"/api/notifications?before={other['_id']}")).code == 400


@pytest.mark.parametrize("mongo_driver", ["pymongo", "motor"])
@pytest.mark.gen_test(timeout=30)
async def test_a_stream_resumes_after_a_uuid_last_event_id_in_order_without_loss_or_duplicates(
    source: Any, open_stream: Any, runtime: Runtime
) -> None:
    await watching(runtime)
    first_tab = await open_stream("7")
    base = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    documents = [laravel_notification("7", title=f"n{index}") for index in range(6)]
    for index, document in enumerate(documents):
        # Two share a millisecond: their ids order them.
        document["created_at"] = base + datetime.timedelta(milliseconds=index // 2 * 10)
    documents.sort(key=lambda d: (d["created_at"], d["_id"]))
    await source.insert_many(documents[:2])
    seen = await first_tab.notifications(2)
    assert [event.id for event in seen] == [d["_id"] for d in documents[:2]]
    first_tab.close()

    await source.insert_many(documents[2:])
    # Delivered to no stream (none is open): the resumed one must find them in MongoDB.
    await eventually(lambda: _async(metric_value(runtime.metrics, "source_documents_total") == 6))
    resumed = await open_stream("7", last_event_id=seen[-1].id)
    replayed = await resumed.notifications(4)
    assert [event.id for event in replayed] == [d["_id"] for d in documents[2:]]
    await resumed.assert_silent(0.5)


@pytest.mark.gen_test(timeout=30)
async def test_an_unknown_last_event_id_gets_a_resync_naming_the_newest(
    source: Any, open_stream: Any, runtime: Runtime
) -> None:
    await watching(runtime)
    document = laravel_notification("7")
    await source.insert_one(document)
    stream = await open_stream("7", last_event_id=str(uuid.uuid4()))
    event = await stream.next_event()
    while event.event != "resync":
        event = await stream.next_event()
    assert event.id == document["_id"]


@pytest.mark.gen_test(timeout=30)
async def test_a_create_through_the_api_lands_in_the_apps_collection_and_is_delivered_once(
    source: Any, api: API, open_stream: Any, runtime: Runtime
) -> None:
    await watching(runtime)
    stream = await open_stream("7")
    created = await api.create("7", "Via the API", body="b", url="/x", data={"k": 1})
    stored = await source.find_one({"_id": created["id"]})
    assert uuid.UUID(created["id"])
    assert stored["notifiable_type"] == USER_MODEL
    assert stored["notifiable_id"] == "7"
    # As stock Laravel stores it: `data` as JSON text, the dates as text to the second.
    assert json.loads(stored["data"]) == {"k": 1, "title": "Via the API", "body": "b", "url": "/x"}
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", stored["created_at"])
    assert stored["read_at"] is None
    [event] = await stream.notifications(1)
    assert event.id == created["id"]
    await stream.assert_silent(0.5)

    refused = await api.request(
        "POST",
        "/api/notifications",
        json.dumps({"user_id": "7", "title": "t", "avatar_url": "https://example.com/a.png"}),
        {"X-API-Key": api.api_key, "Content-Type": "application/json"},
    )
    assert refused.code == 400, refused.body
    assert "avatar_url" in json.loads(refused.body)["error"]["message"]


@pytest.mark.gen_test(timeout=40)
async def test_a_restarted_watcher_delivers_what_was_inserted_while_it_was_away_once(
    runtime: Runtime, source: Any, open_stream: Any
) -> None:
    await watching(runtime)
    assert runtime.watcher is not None
    stream = await open_stream("7")
    await source.insert_one(laravel_notification("7", title="before"))
    await stream.notifications(1)
    await runtime.watcher.close()
    await source.insert_many(in_order([laravel_notification("7", title=f"away {index}") for index in range(3)]))
    runtime.watcher.start()

    titles = [event.json()["title"] for event in await stream.notifications(3, timeout=10)]
    assert titles == ["away 0", "away 1", "away 2"]
    await stream.assert_silent(1.0)


@pytest.fixture
def short_oplog_mongo() -> Iterator[EmbeddedMongo]:
    """A MongoDB of this test's own whose oplog keeps 50 entries: a resume token soon falls out of it."""
    server = EmbeddedMongo(None, options=["--oplog-max-entries", "50"]).start()
    yield server
    server.stop()


@pytest.mark.gen_test(timeout=60)
async def test_a_resume_point_the_oplog_lost_is_caught_up_by_creation_time_logged_and_counted(
    short_oplog_mongo: EmbeddedMongo,
    settings: Settings,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = await start_runtime(settings, short_oplog_mongo.url, redis_url)
    try:
        assert runtime.watcher is not None
        await watching(runtime)
        source = runtime.mongo.database[SOURCE]
        await source.insert_one(laravel_notification("7", title="before"))
        await eventually(lambda: _async(metric_value(runtime.metrics, "source_documents_total") == 1))
        await runtime.watcher.close()
        away = in_order([laravel_notification("7", title=f"away {index}") for index in range(3)])
        await source.insert_many(away)
        # The app writes on: the oplog rolls past the watcher's resume token.
        await runtime.mongo.database["elsewhere"].insert_many([{"n": n} for n in range(1200)])
        delivered: list[str] = []

        class Recorder:
            async def created(self, notification: Any) -> None:
                delivered.append(notification.title)

        runtime.notifications.register_observer(Recorder())
        runtime.watcher.start()
        await eventually(lambda: _async(len(delivered) >= 3), timeout=15)
        await source.insert_one(laravel_notification("7", title="after"))
        await eventually(lambda: _async(len(delivered) >= 4), timeout=15)
        await asyncio.sleep(1)
        assert delivered == ["away 0", "away 1", "away 2", "after"]
        assert metric_value(runtime.metrics, "source_catch_ups_total") == 1
        assert "catching up by creation time" in caplog.text
    finally:
        await runtime.close()


def stock_laravel_notification(user_id: Any, title: str, at: datetime.datetime) -> dict[str, Any]:
    """What stock Laravel stores through laravel-mongodb 5: `data` as JSON text, dates as `Y-m-d H:i:s` text."""
    stamp = at.strftime("%Y-%m-%d %H:%M:%S")
    return {
        "_id": str(uuid.uuid4()),
        "type": "App\\Notifications\\InvoicePaid",
        # PHP's json_encode escapes each slash.
        "data": json.dumps({"title": title, "body": "b", "url": "https://app.example/invoices/1"}).replace("/", "\\/"),
        "read_at": None,
        "notifiable_id": user_id,
        "notifiable_type": USER_MODEL,
        "updated_at": stamp,
        "created_at": stamp,
    }


@pytest.mark.gen_test(timeout=30)
async def test_stock_laravel_documents_with_text_dates_are_delivered_listed_and_marked_read_as_laravel_does(
    source: Any, api: API, open_stream: Any, runtime: Runtime
) -> None:
    await watching(runtime)
    stream = await open_stream("42")
    now = datetime.datetime.now(datetime.UTC)
    first = stock_laravel_notification(42, "From SQL user 42", now)  # a user in SQL: an int
    await source.insert_one(first)
    [event] = await stream.notifications(1)
    assert event.id == first["_id"]
    assert event.json()["title"] == "From SQL user 42"
    assert event.json()["url"] == "https://app.example/invoices/1"

    assert (await api.as_user("42", "POST", f"/api/notifications/{first['_id']}/read")).code == 200
    stored = await source.find_one({"_id": first["_id"]})
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", stored["read_at"])
    assert stored["updated_at"] == stored["read_at"]
    assert await source.count_documents({"notifiable_id": 42, "read_at": None}) == 0
    listed = json.loads((await api.as_user("42", "GET", "/api/notifications")).body)
    assert listed["unread_count"] == 0
    assert listed["notifications"][0]["read_at"] is not None


@pytest.mark.gen_test(timeout=30)
async def test_a_resume_within_a_second_of_text_dates_loses_nothing_created_later_in_that_second(
    source: Any, open_stream: Any, runtime: Runtime
) -> None:
    await watching(runtime)
    second = datetime.datetime.now(datetime.UTC)
    earlier = stock_laravel_notification("7", "earlier", second)
    later = stock_laravel_notification("7", "later", second)
    # The later one's random UUID sorts first, as it does half of the time.
    earlier["_id"], later["_id"] = "f" + earlier["_id"][1:], "0" + later["_id"][1:]
    tab = await open_stream("7")
    await source.insert_one(earlier)
    [seen] = await tab.notifications(1)
    tab.close()
    await source.insert_one(later)
    # Delivered to no stream (none is open): the resumed one must find it in MongoDB.
    await eventually(lambda: _async(metric_value(runtime.metrics, "source_documents_total") == 2))

    resumed = await open_stream("7", last_event_id=seen.id)
    [replayed] = await resumed.notifications(1)
    assert replayed.id == later["_id"]
    await resumed.assert_silent(0.5)


@pytest.mark.gen_test(timeout=30)
async def test_a_read_the_app_makes_itself_reaches_every_open_stream_with_the_counts_and_the_bells_own_read_once(
    source: Any, api: API, open_stream: Any, runtime: Runtime
) -> None:
    await watching(runtime)
    phone, laptop = await open_stream("7"), await open_stream("7")
    documents = in_order([laravel_notification("7", title=f"n{index}") for index in range(3)])
    await source.insert_many(documents)
    for stream in (phone, laptop):
        await stream.notifications(3)
        while (await stream.next_change())["unread_count"] != 3:
            pass

    # The app: $notification->markAsRead()
    moment = datetime.datetime.now(datetime.UTC)
    await source.update_one({"_id": documents[0]["_id"]}, {"$set": {"read_at": moment, "updated_at": moment}})
    # The bell, through bellcast:
    assert (await api.as_user("7", "POST", f"/api/notifications/{documents[1]['_id']}/read")).code == 200
    for stream in (phone, laptop):
        first, second = await stream.next_change(), await stream.next_change()
        assert [(first["change"], first["ids"]), (second["change"], second["ids"])] == [
            ("read", [documents[0]["_id"]]),
            ("read", [documents[1]["_id"]]),
        ]
        # Each carries the counts when it was announced: both reads may be in by the first.
        assert first["unread_count"] in (1, 2)
        assert second["unread_count"] == 1
        with pytest.raises(TimeoutError):
            await stream.next_change(timeout=1.0)
