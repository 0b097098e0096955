"""The worked Laravel example of docs/coming-from-polling.md, end to end.

bellcast runs as a process with `SOURCE_COLLECTION=notifications`, `SOURCE_SCHEMA=laravel` and a
`SOURCE_FILTER` on the user model, on the session's MongoDB; the test plays the Laravel app, writing with
PyMongo exactly what `$user->notify(new InvoicePaid($invoice))` makes laravel-mongodb write (a
`database` channel notification), and what `$notification->markAsRead()` then changes.

With the stock `Notifiable` trait, Laravel's own `Illuminate\\Notifications\\DatabaseNotification` (a plain
Eloquent model) writes through laravel-mongodb's query builder: `data` is JSON text (its `array` cast) and
the dates are text, `Y-m-d H:i:s` in the app's timezone (UTC by default), as Eloquent formats them for
the connection's grammar. laravel-mongodb 5 stores the notification's UUID as `_id`; 4 keeps it in `id`
beside an ObjectId `_id`, and stores the user's ObjectId itself as `notifiable_id`, where 5 stores its
hex string. An app that gives its users a `DatabaseNotification` of its own, extending laravel-mongodb's
model (the usual advice), stores the dates as BSON dates instead. The details and sources are in
docs/coming-from-polling.md.
"""

from __future__ import annotations

import datetime
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pymongo
import pytest
from bson import ObjectId
from pymongo.collection import Collection

from services.watcher import POSITIONS
from tests.support import API, ServerProcess, SSEStream, eventually

JWT_SECRET = "laravel-secret-" + "x" * 24
API_KEY = "laravel-api-key-" + "y" * 10
COLLECTION = "notifications"
USER_MODEL = "App\\Models\\User"
INVOICE_PAID = "App\\Notifications\\InvoicePaid"
# Eloquent's date format for laravel-mongodb's grammar (Laravel's base Grammar::getDateFormat()).
LARAVEL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")

# How the documents are stored, by who stores them: laravel-mongodb 5 or 4 with Laravel's own
# DatabaseNotification, or 5 with an app's DatabaseNotification extending laravel-mongodb's Model.
STOCK_5 = "laravel-mongodb5"
STOCK_4 = "laravel-mongodb4"
OWN_MODEL = "laravel-mongodb5-own-model"
SHAPES = [STOCK_5, STOCK_4, OWN_MODEL]
# What the app writes and reads besides `read_at` (and `updated_at`, which a read may touch as Laravel's does).
LARAVEL_FIELDS = ("type", "data", "notifiable_id", "notifiable_type", "created_at")


class LaravelApp:
    """The Laravel app's side: its `notifications` collection, written as laravel-mongodb writes it."""

    def __init__(self, collection: Collection[dict[str, Any]], shape: str = STOCK_5) -> None:
        self.collection = collection
        self.shape = shape

    def new_user(self) -> tuple[str, Any]:
        """A new user: the `sub` of their token (the user's key as a string, `$user->getKey()` in 5) and the
        `notifiable_id` laravel-mongodb stores for them."""
        key = ObjectId()
        return str(key), key if self.shape == STOCK_4 else str(key)

    def date(self, moment: datetime.datetime) -> Any:
        """A date as this shape stores it: Eloquent's text for Laravel's model, a BSON date for a MongoDB model."""
        if self.shape == OWN_MODEL:  # a UTCDateTime: milliseconds
            return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        return moment.strftime("%Y-%m-%d %H:%M:%S")

    def is_date(self, value: Any) -> bool:
        """True if `value` is a date as this shape keeps them (so the app's own writes and bellcast's sort alike)."""
        if self.shape == OWN_MODEL:
            return isinstance(value, datetime.datetime)
        return isinstance(value, str) and bool(LARAVEL_DATE.match(value))

    def notify(
        self,
        notifiable_id: Any,
        data: dict[str, Any],
        *,
        created_at: datetime.datetime | None = None,
        notification_id: str | None = None,
        notifiable_type: str = USER_MODEL,
    ) -> dict[str, Any]:
        """What `$user->notify(new InvoicePaid(...))` inserts (the `database` channel's payload, the morph keys,
        the timestamps), returned as inserted."""
        moment = created_at or datetime.datetime.now(datetime.UTC)
        notification_id = notification_id or str(uuid.uuid4())  # Str::uuid(): a random, version 4 UUID
        document: dict[str, Any] = {"_id": notification_id}
        if self.shape == STOCK_4:  # no `id` alias in 4: the UUID is a field, the server makes the _id
            document = {"_id": ObjectId(), "id": notification_id}
        document |= {
            "type": INVOICE_PAID,
            "data": php_json_encode(data),  # the `array` cast
            "read_at": None,
            "notifiable_id": notifiable_id,
            "notifiable_type": notifiable_type,
            "updated_at": self.date(moment),
            "created_at": self.date(moment),
        }
        self.collection.insert_one(document)
        return document

    def mark_as_read(self, document: dict[str, Any]) -> None:
        """`$notification->markAsRead()`: `read_at` and `updated_at` set to now, matched by the model's key."""
        now = self.date(datetime.datetime.now(datetime.UTC))
        self.collection.update_one({"_id": document["_id"]}, {"$set": {"read_at": now, "updated_at": now}})

    def unread_ids(self, notifiable_id: Any) -> list[Any]:
        """`$user->unreadNotifications`: the user's notifications whose `read_at` is null (or missing)."""
        query = {"notifiable_type": USER_MODEL, "notifiable_id": notifiable_id, "read_at": None}
        return [document["_id"] for document in self.collection.find(query)]


def php_json_encode(value: Any) -> str:
    """PHP's `json_encode` without flags, as Eloquent's `array` cast calls it: compact, `/` escaped."""
    return json.dumps(value, separators=(",", ":")).replace("/", "\\/")


def invoice_paid(number: int) -> dict[str, Any]:
    """`InvoicePaid::toArray()` of the worked example."""
    return {
        "title": "Invoice paid",
        "body": f"Invoice #{number} was paid.",
        "url": f"https://app.example/invoices/{number}",
        "invoice_id": number,
    }


def bell_id(document: dict[str, Any]) -> str:
    """The notification's id at bellcast: the document's `_id` as a string."""
    return str(document["_id"])


def app_token(user_key: str) -> str:
    """The token the example's `/bellcast-token` route mints (firebase/php-jwt, HS256): `sub`, `iat`, `exp`."""
    now = int(time.time())
    return jwt.encode({"sub": user_key, "iat": now, "exp": now + 3600}, JWT_SECRET, algorithm="HS256")


@pytest.fixture(scope="module", params=["pymongo", "motor"])
def laravel_bellcast(request, store_urls, tmp_path_factory) -> Iterator[ServerProcess]:
    """bellcast watching the Laravel app's `notifications` collection, on either driver, for the module."""
    server = ServerProcess(
        store_urls,
        tmp_path_factory.mktemp("laravel") / "bellcast.log",
        JWT_SECRET=JWT_SECRET,
        API_KEY=API_KEY,
        MONGO_DRIVER=request.param,
        SOURCE_COLLECTION=COLLECTION,
        SOURCE_SCHEMA="laravel",
        SOURCE_FILTER=json.dumps({"notifiable_type": USER_MODEL}),
    )
    server.wait_until_ready()
    try:
        wait_until_watching(server)
    except BaseException:
        server.kill()
        raise
    yield server
    try:
        assert server.stop() == 0, server.output()[-3000:]
    finally:
        server.drop_database()


def wait_until_watching(server: ServerProcess, timeout: float = 30) -> None:
    """Wait until bellcast has opened its change stream: the first watcher of a collection pushes what is
    inserted from then on (what came before is history, which lists show)."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.environ["MONGODB_URL"])
    with client:
        positions = client[server.database][POSITIONS]
        deadline = time.monotonic() + timeout
        while positions.find_one({"_id": COLLECTION, "resume_token": {"$ne": None}}) is None:
            assert time.monotonic() < deadline, "bellcast never watched:\n" + server.output()[-3000:]
            time.sleep(0.05)


@pytest.fixture(params=SHAPES)
def laravel(request, laravel_bellcast: ServerProcess) -> Iterator[LaravelApp]:
    """The app's side, storing its documents in one of the shapes laravel-mongodb gives them."""
    url = laravel_bellcast.environ["MONGODB_URL"]
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url, tz_aware=True)
    with client:
        yield LaravelApp(client[laravel_bellcast.database][COLLECTION], request.param)


async def open_bell(server: ServerProcess, user_key: str, last_event_id: str | None = None) -> SSEStream:
    """The user's stream, opened as the bell opens it: a stream ticket asked for with the app's token."""
    api = server.api()
    response = await api.request(
        "POST", "/notifications/stream-ticket", headers={"Authorization": f"Bearer {app_token(user_key)}"}
    )
    assert response.code == 200, response.body
    stream = await SSEStream.open(server.base_url, None, last_event_id, ticket=json.loads(response.body)["ticket"])
    assert stream.status == 200
    await stream.next_event()  # `: connected`: the stream is registered before the app writes
    return stream


async def list_of(api: API, user_key: str, query: str = "") -> dict[str, Any]:
    """The user's `GET /api/notifications` answer."""
    response = await api.as_user(user_key, "GET", "/api/notifications" + query)
    assert response.code == 200, response.body
    return dict(json.loads(response.body))


@pytest.mark.gen_test(timeout=60)
async def test_a_notification_laravel_writes_reaches_the_users_bell_with_its_id_title_body_and_link(
    laravel_bellcast, laravel
):
    api = laravel_bellcast.api()
    user_key, notifiable_id = laravel.new_user()
    stream = await open_bell(laravel_bellcast, user_key)
    try:
        document = laravel.notify(notifiable_id, invoice_paid(1042))

        [event] = await stream.notifications(1, timeout=5)
        received = event.json()
        assert event.id == received["id"] == bell_id(document)
        assert received["user_id"] == user_key
        assert (received["title"], received["body"], received["url"]) == (
            "Invoice paid",
            "Invoice #1042 was paid.",
            "https://app.example/invoices/1042",
        )
        assert received["read_at"] is None

        page = await list_of(api, user_key)
        assert [n["id"] for n in page["notifications"]] == [bell_id(document)]
        assert page["notifications"][0]["title"] == "Invoice paid"
        assert page["unread_count"] == 1
    finally:
        stream.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_bell_marking_one_read_sets_read_at_as_the_app_keeps_dates_so_laravel_no_longer_counts_it_unread(
    laravel_bellcast, laravel
):
    api = laravel_bellcast.api()
    user_key, notifiable_id = laravel.new_user()
    document = laravel.notify(notifiable_id, invoice_paid(7))
    kept = laravel.notify(notifiable_id, invoice_paid(8))
    await eventually(lambda: _listed(api, user_key, 2), timeout=5)

    response = await api.as_user(user_key, "POST", f"/api/notifications/{bell_id(document)}/read")
    assert response.code == 200, response.body
    assert json.loads(response.body)["read_at"] is not None

    stored = laravel.collection.find_one({"_id": document["_id"]})
    assert stored is not None
    assert laravel.is_date(stored["read_at"]), stored["read_at"]
    # What Laravel wrote is still as it wrote it, so Eloquent reads the notification as before.
    assert {key: stored[key] for key in LARAVEL_FIELDS} == {key: document[key] for key in LARAVEL_FIELDS}
    assert laravel.unread_ids(notifiable_id) == [kept["_id"]]
    assert laravel.collection.count_documents({"notifiable_id": notifiable_id}) == 2


@pytest.mark.gen_test(timeout=60)
async def test_a_notification_the_app_marks_read_itself_is_listed_as_read(laravel_bellcast, laravel):
    api = laravel_bellcast.api()
    user_key, notifiable_id = laravel.new_user()
    document = laravel.notify(notifiable_id, invoice_paid(12))
    await eventually(lambda: _listed(api, user_key, 1), timeout=5)

    laravel.mark_as_read(document)

    page = await list_of(api, user_key)
    [listed] = page["notifications"]
    assert listed["id"] == bell_id(document)
    assert listed["read_at"] is not None
    assert page["unread_count"] == 0
    assert (await list_of(api, user_key, "?status=unread"))["notifications"] == []


@pytest.mark.gen_test(timeout=60)
async def test_only_the_users_own_notifications_of_the_filtered_model_reach_their_bell(laravel_bellcast, laravel):
    user_key, notifiable_id = laravel.new_user()
    _, someone_else = laravel.new_user()
    stream = await open_bell(laravel_bellcast, user_key)
    try:
        laravel.notify(notifiable_id, invoice_paid(1), notifiable_type="App\\Models\\Team")  # a team, same key
        laravel.notify(someone_else, invoice_paid(2))
        own = laravel.notify(notifiable_id, invoice_paid(3))

        [event] = await stream.notifications(1, timeout=5)
        assert event.id == bell_id(own)
        await stream.assert_silent(0.5)
        page = await list_of(laravel_bellcast.api(), user_key)
        assert [n["id"] for n in page["notifications"]] == [bell_id(own)]
    finally:
        stream.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_bell_that_reconnects_gets_once_what_laravel_wrote_meanwhile_even_within_the_same_second(
    laravel_bellcast, laravel
):
    """Laravel's dates have whole seconds and its UUIDs are random, so a notification written while the bell
    was away may share the second of the last one the bell saw and sort before it by id."""
    user_key, notifiable_id = laravel.new_user()
    second = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    stream = await open_bell(laravel_bellcast, user_key)
    try:
        seen = laravel.notify(notifiable_id, invoice_paid(1), created_at=second, notification_id=f"f{uuid4()[1:]}")
        [event] = await stream.notifications(1, timeout=5)
        assert event.id == bell_id(seen)
    finally:
        stream.close()

    # Within the same second: for Eloquent's text the same date; for a MongoDB model's milliseconds a later one
    # (within one millisecond the id orders two notifications, a documented limit of resuming).
    later = second if laravel.shape != OWN_MODEL else second + datetime.timedelta(milliseconds=5)
    same_second = laravel.notify(notifiable_id, invoice_paid(2), created_at=later, notification_id=f"0{uuid4()[1:]}")
    next_second = laravel.notify(notifiable_id, invoice_paid(3), created_at=second + datetime.timedelta(seconds=1))
    resumed = await open_bell(laravel_bellcast, user_key, last_event_id=event.id)
    try:
        events = await resumed.notifications(2, timeout=5)
        assert sorted(e.id for e in events if e.id) == sorted([bell_id(same_second), bell_id(next_second)])
        await resumed.assert_silent(0.5)
    finally:
        resumed.close()


def uuid4() -> str:
    """A random UUID's text, as Laravel's `Str::uuid()` makes them."""
    return str(uuid.uuid4())


async def _listed(api: API, user_key: str, count: int) -> bool:
    """True once the user's list holds `count` notifications."""
    return len((await list_of(api, user_key))["notifications"]) == count
