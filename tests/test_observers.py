"""Observers: told of every stored notification; a failing one never loses the insert."""

from __future__ import annotations

import json

import pytest

from server import start_runtime
from services.errors import StoreUnavailable
from services.notifications import Notification
from tests.support import FailingObserver, metric_value


class UnavailableStoreObserver:
    async def created(self, notification: Notification) -> None:
        raise StoreUnavailable("redis")


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
    assert metric_value(runtime.metrics, "observer_failures_total", observer="FailingObserver") == 1
    assert [str(n.id) for n in recorder.seen] == [created["id"]]
    stored = await runtime.mongo.database["notifications"].find_one({"user_id": "alice"})
    assert str(stored["_id"]) == created["id"]
    [event] = await stream.notifications(1)
    assert event.id == created["id"]
    listed = json.loads((await api.as_user("alice", "GET", "/api/notifications")).body)
    assert [n["id"] for n in listed["notifications"]] == [created["id"]]


@pytest.mark.gen_test
async def test_an_observer_failing_for_want_of_its_store_is_counted_in_the_metric_too(api, runtime):
    """A store outage is logged without a traceback, yet it is a failure like any other for the metric."""
    runtime.notifications.register_observer(UnavailableStoreObserver())
    runtime.notifications.register_observer(FailingObserver())
    await api.create("alice", "one")
    await api.create("alice", "two")
    assert metric_value(runtime.metrics, "observer_failures_total", observer="UnavailableStoreObserver") == 2
    assert metric_value(runtime.metrics, "observer_failures_total", observer="FailingObserver") == 2


@pytest.mark.gen_test
async def test_service_layer_creates_without_http(runtime):
    recorder = RecordingObserver()
    runtime.notifications.register_observer(recorder)
    notification = await runtime.notifications.create({"user_id": "alice", "title": "From a worker"})
    assert recorder.seen == [notification]
    page = await runtime.notifications.list_recent("alice", limit=10)
    assert page.notifications == [notification]


class EmailObserver:
    """The example observer of docs/api.md: mails each notification of type "billing"."""

    def __init__(self, send_mail) -> None:
        self._send_mail = send_mail

    async def created(self, notification: Notification) -> None:
        if notification.type == "billing":
            await self._send_mail(
                to=f"{notification.user_id}@example.com", subject=notification.title, body=notification.body
            )


@pytest.mark.gen_test
async def test_a_producers_own_service_with_an_email_observer_reaches_the_open_streams(
    settings, store_urls, open_stream
):
    """As docs/api.md shows: a worker wires its own services on bellcast's stores, registers an observer, creates."""
    sent: list[dict[str, str]] = []

    async def send_mail(**message: str) -> None:
        sent.append(message)

    stream = await open_stream("alice")
    producer = await start_runtime(settings, *store_urls)
    producer.notifications.register_observer(EmailObserver(send_mail))
    try:
        invoice = await producer.notifications.create(
            {"user_id": "alice", "title": "Invoice 42 is ready", "type": "billing", "url": "/invoices/42"}
        )
        await producer.notifications.create({"user_id": "alice", "title": "Not mailed"})
    finally:
        await producer.close()
    events = await stream.notifications(2)
    assert events[0].id == str(invoice.id) and events[0].json() == invoice.to_dict()
    assert sent == [{"to": "alice@example.com", "subject": "Invoice 42 is ready", "body": ""}]
