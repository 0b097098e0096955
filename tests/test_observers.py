"""Observers: told of every stored notification; a failing one never loses the insert."""

from __future__ import annotations

import json

import pytest

from services.notifications import Notification


class FailingObserver:
    async def created(self, notification: Notification) -> None:
        raise RuntimeError("mail server down")


class RecordingObserver:
    def __init__(self) -> None:
        self.seen: list[Notification] = []

    async def created(self, notification: Notification) -> None:
        self.seen.append(notification)


@pytest.mark.gen_test
async def test_observer_that_raises_does_not_lose_the_insert_or_stop_the_others(api, runtime, open_stream):
    recorder = RecordingObserver()
    runtime.notifications.register_observer(FailingObserver())
    runtime.notifications.register_observer(recorder)
    stream = await open_stream("alice")
    created = await api.create("alice", "still here")
    assert runtime.notifications.observer_failures == 1
    assert [str(n.id) for n in recorder.seen] == [created["id"]]
    stored = await runtime.mongo.database["notifications"].find_one({"user_id": "alice"})
    assert str(stored["_id"]) == created["id"]
    [event] = await stream.notifications(1)
    assert event.id == created["id"]
    listed = json.loads((await api.as_user("alice", "GET", "/api/notifications")).body)
    assert [n["id"] for n in listed["notifications"]] == [created["id"]]


@pytest.mark.gen_test
async def test_service_layer_creates_without_http(runtime):
    recorder = RecordingObserver()
    runtime.notifications.register_observer(recorder)
    notification = await runtime.notifications.create({"user_id": "alice", "title": "From a worker"})
    assert recorder.seen == [notification]
    page = await runtime.notifications.list_recent("alice", limit=10)
    assert page.notifications == [notification]
