"""MongoDB unavailable: bounded 503s with the JSON error, streams stay open, /healthz names it, service resumes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import replace

import pytest

from services.embedded import EmbeddedMongo, free_port
from services.notifications import COLLECTION, Notification, NotificationService
from services.stores import MongoConnection
from tests.relay import StoreRelay

STORE_TIMEOUT = 1.0
# Liveness bounds, not speed claims: a request must end well before this, never hang...
ANSWER_BOUND = 10 * STORE_TIMEOUT
# ... and a heartbeat must come, whatever the stream waits for (room for a busy machine).
HEARTBEAT_SLACK = 4 * STORE_TIMEOUT
# How long a test counts the heartbeats of a stream waiting to catch up from MongoDB.
CATCH_UP_WINDOW = 6 * STORE_TIMEOUT


@pytest.fixture
def wakeup_hints() -> bool:
    """The outage is MongoDB's: how streams are woken does not change what is tested."""
    return True


@pytest.fixture
def private_mongo(tmp_path):
    """A MongoDB of this test's own, on a fixed port with its data on disk, that the test may stop and restart."""
    port = free_port()
    server = EmbeddedMongo(tmp_path, port=port).start()
    yield server
    server.stop()


@pytest.fixture
def store_urls(store_urls, private_mongo):
    """The private MongoDB, and the session's Redis."""
    return private_mongo.url, store_urls[1]


@pytest.fixture
def settings(settings):
    return replace(settings, store_timeout=STORE_TIMEOUT)


async def _timed(api, method: str, path: str, body: str | None = None, headers: dict | None = None):
    started = time.monotonic()
    response = await api.request(method, path, body, headers)
    return response, time.monotonic() - started


def _assert_store_unavailable(response, seconds: float) -> None:
    assert response.code == 503, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.body)["error"]["code"] == "store_unavailable"
    assert seconds < ANSWER_BOUND


async def _heartbeat(stream, within: float) -> None:
    """Wait for the stream's next heartbeat: it must stay open and alive."""
    deadline = time.monotonic() + within
    while (await stream.next_event(timeout=max(0.01, deadline - time.monotonic()))).comments != ["heartbeat"]:
        pass


async def _heartbeats_within(stream, seconds: float) -> int:
    """How many heartbeats the stream sends in the next `seconds`; a notification meanwhile fails the test.

    Each read waits for a whole event (a read cut off by a timeout would lose its bytes): the
    first event after the window ends the count, and a stream silent for a whole window fails.
    """
    count = 0
    deadline = time.monotonic() + seconds
    while True:
        event = await stream.next_event(timeout=seconds)
        if time.monotonic() > deadline:
            return count
        assert event.event != "notification", f"unexpected notification: {event.data}"
        if event.comments == ["heartbeat"]:
            count += 1


async def _create_until_stored(api, user_id: str, title: str, within: float = 30.0) -> dict:
    """Retry a create until MongoDB takes it, as a producer would after a 503."""
    deadline = time.monotonic() + within
    body = json.dumps({"user_id": user_id, "title": title})
    while True:
        response = await api.request("POST", "/api/notifications", body, {"X-API-Key": api.api_key})
        if response.code == 201:
            return json.loads(response.body)
        assert response.code == 503 and time.monotonic() < deadline, response.body


@pytest.mark.gen_test(timeout=120)
async def test_with_mongodb_down_requests_get_a_bounded_503_streams_stay_open_and_service_resumes(
    api, open_stream, private_mongo, settings
):
    before = await api.create("alice", "before the outage")
    stream = await open_stream("alice")
    await stream.next_event()
    token = {"Authorization": f"Bearer {api.token('alice')}"}

    await asyncio.to_thread(private_mongo.stop)  # the loop serves on meanwhile, as in production
    try:
        create, seconds = await _timed(
            api, "POST", "/api/notifications", '{"user_id": "alice", "title": "lost?"}', {"X-API-Key": api.api_key}
        )
        _assert_store_unavailable(create, seconds)
        for method, path in [
            ("GET", "/api/notifications"),
            ("POST", f"/api/notifications/{before['id']}/read"),
            ("POST", "/api/notifications/read-all"),
        ]:
            _assert_store_unavailable(*await _timed(api, method, path, None, token))
        health, seconds = await _timed(api, "GET", "/healthz")
        assert health.code == 503 and seconds < ANSWER_BOUND
        checks = json.loads(health.body)["checks"]
        assert checks["mongodb"] != "ok" and checks["redis"] == "ok"
        await _heartbeat(stream, within=settings.heartbeat_interval * 4 + HEARTBEAT_SLACK)
    finally:
        await asyncio.to_thread(private_mongo.start)  # the same port and data directory
    after = await _create_until_stored(api, "alice", "after the outage")
    [event] = await stream.notifications(1, timeout=10)
    assert event.id == after["id"]
    page = json.loads((await api.request("GET", "/api/notifications", None, token)).body)
    assert [n["id"] for n in page["notifications"]] == [after["id"], before["id"]]
    assert (await api.request("GET", "/healthz")).code == 200
    await stream.assert_silent(0.3)


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("wakeup_hints", [True, False], ids=["hints", "polling"])
async def test_a_stream_resuming_while_mongodb_is_down_keeps_its_heartbeats_and_catches_up_once_it_is_back(
    api, open_stream, private_mongo, settings
):
    first = await open_stream("alice")
    await first.next_event()
    seen = await api.create("alice", "seen before the tab closed")
    [event] = await first.notifications(1)
    assert event.id == seen["id"]
    first.close()
    missed = await api.create("alice", "created while the tab was closed")

    await asyncio.to_thread(private_mongo.stop)
    try:
        resumed = await open_stream("alice", last_event_id=seen["id"])
        assert resumed.status == 200
        # The catch-up from MongoDB (it comes first) fails meanwhile, each try after STORE_TIMEOUT.
        heartbeats = await _heartbeats_within(resumed, CATCH_UP_WINDOW)
        expected = CATCH_UP_WINDOW / settings.heartbeat_interval
        assert expected / 2 <= heartbeats <= expected + 2
    finally:
        await asyncio.to_thread(private_mongo.start)
    after = await _create_until_stored(api, "alice", "after the outage")
    # Without hints nothing says MongoDB is back: the catch-up waits for its retry's backoff (at most 10 s).
    events = await resumed.notifications(2, timeout=20)
    assert [e.id for e in events] == [missed["id"], after["id"]]
    await resumed.assert_silent(0.3)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("max_replay", [5])
async def test_a_stream_resuming_while_mongodb_is_down_gets_a_resync_once_it_is_back_if_the_gap_is_too_large(
    api, open_stream, private_mongo
):
    """The replay's bound holds when the replay has to wait for MongoDB: no gap is sent past MAX_REPLAY."""
    seen = await api.create("alice", "seen before the tab closed")
    missed = [await api.create("alice", f"missed {index}") for index in range(6)]
    await asyncio.to_thread(private_mongo.stop)
    try:
        resumed = await open_stream("alice", last_event_id=seen["id"])
        assert resumed.status == 200
        await _heartbeats_within(resumed, 2 * STORE_TIMEOUT)  # its first catch-up failed meanwhile
    finally:
        await asyncio.to_thread(private_mongo.start)
    after = await _create_until_stored(api, "alice", "after the outage")
    resync = await resumed.next_event(timeout=20)
    while resync.event is None:  # heartbeats
        resync = await resumed.next_event(timeout=20)
    # Its id is the user's newest when the replay was refused: the outage's last, or the one after it.
    assert resync.event == "resync" and resync.id in (missed[-1]["id"], after["id"])
    live = await api.create("alice", "live")
    # What the reload does not hold follows live: the one after the outage, unless the resync named it.
    owed = [after["id"], live["id"]] if resync.id == missed[-1]["id"] else [live["id"]]
    events = await resumed.notifications(len(owed), timeout=20)
    assert [event.id for event in events] == owed
    await resumed.assert_silent(0.3)
    assert b"event: notification" not in resumed.received.split(b"event: resync")[0]
    assert resumed.received.count(b"event: resync") == 1


@pytest.mark.gen_test(timeout=120)
async def test_a_hung_mongodb_gets_a_bounded_503_not_a_hung_request_and_service_resumes(
    api, open_stream, private_mongo, settings
):
    stream = await open_stream("alice")
    await stream.next_event()
    token = {"Authorization": f"Bearer {api.token('alice')}"}
    assert private_mongo.pid is not None
    os.kill(private_mongo.pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        create, seconds = await _timed(
            api, "POST", "/api/notifications", '{"user_id": "alice", "title": "t"}', {"X-API-Key": api.api_key}
        )
        _assert_store_unavailable(create, seconds)
        _assert_store_unavailable(*await _timed(api, "GET", "/api/notifications", None, token))
        health = await api.request("GET", "/healthz")
        assert health.code == 503 and json.loads(health.body)["checks"]["mongodb"] != "ok"
        await _heartbeat(stream, within=settings.heartbeat_interval * 4 + HEARTBEAT_SLACK)
    finally:
        os.kill(private_mongo.pid, signal.SIGCONT)
    after = await _create_until_stored(api, "alice", "after the pause")
    [event] = await stream.notifications(1, timeout=10)
    assert event.id == after["id"]


class _SeenNotifications:
    """An observer that records what it was told of."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def created(self, notification: Notification) -> None:
        self.ids.append(str(notification.id))


@pytest.mark.gen_test
@pytest.mark.parametrize("mongo_driver", ["pymongo", "motor"])
async def test_a_create_whose_answer_is_lost_stores_the_notification_once_without_retryable_writes(
    private_mongo, mongo_driver
):
    """The embedded SecantusDB runs without retryable writes (they cost it more per insert the
    more there were): a connection lost before MongoDB's answer must not fail the create, nor
    store it twice, nor tell the observers twice."""
    assert "retryWrites=false" in private_mongo.url
    relay = await StoreRelay("127.0.0.1", private_mongo.port).start()
    connection = MongoConnection(
        private_mongo.url.replace(str(private_mongo.port), str(relay.port)), "lost", mongo_driver
    )
    try:
        notifications = NotificationService(connection.database)
        seen = _SeenNotifications()
        notifications.register_observer(seen)
        await notifications.create({"user_id": "alice", "title": "before"})
        relay.lose_next_reply_to(b"\x02insert\x00")
        created = await notifications.create({"user_id": "alice", "title": "answer lost"})
        assert relay.replies_lost == 1
        stored = await connection.database[COLLECTION].find({"title": "answer lost"}).to_list(None)
        assert [document["_id"] for document in stored] == [created.id]
        assert seen.ids[1:] == [str(created.id)]
    finally:
        await connection.close()
        await relay.close()
