"""Wake-up hints: idle streams cost no Redis traffic, and delivery never depends on a hint arriving."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from services import cache, command_batcher
from services.cache import ConnectionInbox, DeliveryCache
from services.command_batcher import CommandBatcher
from services.notifications import utc_now, validate_new_notification
from services.redis_backend import WAKEUP_CHANNEL, SingleRedis, connect_redis_backend
from services.stores import connect_redis
from services.wakeups import Delivery, WakeupHub
from tests.support import cache_keys, command_calls, eventually, metric_value, on_every_node, queue_created


async def _hgetall_calls(redis) -> int:
    return await command_calls(redis, "hgetall")


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
@pytest.mark.parametrize("wakeup_hints", [True], ids=["hints"])
async def test_idle_streams_with_hints_send_no_scans_to_redis(open_stream, runtime, settings):
    streams = [await open_stream(f"user{i}") for i in range(20)]
    for stream in streams:
        await stream.next_event()
    await asyncio.sleep(settings.heartbeat_interval)
    before = await _hgetall_calls(runtime.redis)
    await asyncio.sleep(settings.heartbeat_interval * 3)
    assert await _hgetall_calls(runtime.redis) == before


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
@pytest.mark.parametrize("wakeup_hints", [False], ids=["polling"])
async def test_without_hints_streams_poll_their_inbox_every_tick(open_stream, runtime, settings):
    """The counterpart of the test above, so that it cannot pass by measuring nothing."""
    await (await open_stream("alice")).next_event()
    before = await _hgetall_calls(runtime.redis)
    await asyncio.sleep(settings.poll_interval * 10)
    assert await _hgetall_calls(runtime.redis) > before


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
@pytest.mark.parametrize("wakeup_hints", [True], ids=["hints"])
async def test_a_hint_wakes_only_the_streams_of_its_user(api, open_stream, runtime):
    alice = await open_stream("alice")
    await alice.next_event()
    bob = await open_stream("bob")
    await bob.next_event()
    created = await api.create("alice")
    [event] = await alice.notifications(1)
    assert event.id == created["id"]
    await bob.assert_silent(0.3)


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
@pytest.mark.parametrize("wakeup_hints", [True], ids=["hints"])
async def test_notifications_still_arrive_when_the_hint_subscription_is_cut(api, open_stream, runtime):
    stream = await open_stream("alice")
    await stream.next_event()
    outages = runtime.wakeups.outages
    await runtime.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub", **on_every_node(runtime.redis))
    created = await api.create("alice", "while the subscription is down")
    [event] = await stream.notifications(1)
    assert event.id == created["id"]
    await runtime.wakeups.wait_subscribed()
    assert runtime.wakeups.outages == outages + 1
    after = await api.create("alice", "after it is back")
    [event] = await stream.notifications(1)
    assert event.id == after["id"]


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
@pytest.mark.parametrize("wakeup_hints", [True], ids=["hints"])
async def test_a_lost_hint_is_made_good_by_the_safety_scan(api, open_stream, runtime, settings, app):
    """A notification queued without its hint still arrives, by the stream's own scan."""
    app.settings["stream_timing"] = replace(settings.stream_timing, safety_scan_interval=0.2)
    stream = await open_stream("alice")
    await stream.next_event()
    # Queue directly in the cache without publishing, as if the hint had been lost.
    silent_cache = DeliveryCache(runtime.redis_backend, runtime.batcher, publish_hints=False)
    notification = validate_new_notification({"user_id": "alice", "title": "no hint"}, now=utc_now())
    assert await queue_created(silent_cache, notification) == 1
    [event] = await stream.notifications(1, timeout=5)
    assert event.id == str(notification.id)
    assert metric_value(runtime.metrics, "safety_scans_total", found="entries") >= 1


@pytest.mark.gen_test
@pytest.mark.parametrize("wakeup_hints", [True], ids=["hints"])
async def test_an_entry_left_in_the_inbox_goes_out_right_after_a_hinted_delivery(api, open_stream, runtime):
    """Tabs that write what a hint carried ask, as they remove it, what their inboxes still hold: an entry whose own
    hint was lost goes out at once, not at the safety scan (30 s here)."""
    tabs = [await open_stream("alice") for _ in range(2)]
    for tab in tabs:
        await tab.next_event()
    silent_cache = DeliveryCache(runtime.redis_backend, runtime.batcher, publish_hints=False)
    unannounced = validate_new_notification({"user_id": "alice", "title": "hint lost"}, now=utc_now())
    assert await queue_created(silent_cache, unannounced) == 2

    created = await api.create("alice", "announced")

    for tab in tabs:
        events = await tab.notifications(2, timeout=5)
        assert [event.id for event in events] == [created["id"], str(unannounced.id)]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("wakeup_hints", [True], ids=["hints"])
@pytest.mark.parametrize("heartbeat_interval", [3.0])
async def test_safety_scans_that_fall_due_within_a_sweep_share_one_pipeline(open_stream, runtime, settings, app):
    """Idle streams' own scans are queued for the registry's sweep (every second), not sent one by one.

    Empty inboxes cost one EXISTS for all of them (a single Redis), in a shared pipeline; only a
    stream whose inbox holds entries reads it.
    """
    app.settings["stream_timing"] = replace(settings.stream_timing, safety_scan_interval=0.3)
    streams = [await open_stream(f"user{i}") for i in range(40)]
    for stream in streams:
        await stream.next_event()
    scans_before, pipelines_before = (
        metric_value(runtime.metrics, "safety_scans_total", found="nothing"),
        metric_value(runtime.metrics, "redis_pipeline_commands_count"),
    )
    exists_before, reads_before = await command_calls(runtime.redis, "exists"), await _hgetall_calls(runtime.redis)
    await asyncio.sleep(3.5)
    scans = metric_value(runtime.metrics, "safety_scans_total", found="nothing") - scans_before
    assert scans >= 2 * len(streams), "the streams did not scan on their own"
    assert metric_value(runtime.metrics, "redis_pipeline_commands_count") - pipelines_before <= scans / 10
    assert await command_calls(runtime.redis, "exists") - exists_before <= scans / 10
    assert await _hgetall_calls(runtime.redis) == reads_before
    assert metric_value(runtime.metrics, "safety_scans_total", found="entries") == 0


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("wakeup_hints", [True], ids=["hints"])
async def test_renewals_queued_before_streams_close_do_not_register_them_again(
    open_stream, runtime, settings, app, monkeypatch
):
    """A stream's safety scan goes out with the next sweep and renews its registration if due; the
    stream may have closed and deregistered by then. The renewal must not bring it back (it did:
    Redis kept writing notifications for such connections until the registration expired)."""
    monkeypatch.setattr(cache, "REGISTRATION_RENEWAL_INTERVAL", 0.0)  # every scan renews
    app.settings["stream_timing"] = replace(settings.stream_timing, safety_scan_interval=0.1)
    streams = [await open_stream(f"user{i}") for i in range(40)]
    for stream in streams:
        await stream.next_event()
    await asyncio.sleep(0.5)  # scans and renewals under way
    # Renewals of open streams, several in one scan at times, find every registration there.
    assert metric_value(runtime.metrics, "safety_scans_total", found="no_registration") == 0
    for stream in streams:
        stream.close()

    async def released() -> bool:
        return len(runtime.streams) == 0

    await eventually(released)
    await asyncio.sleep(0.5)  # the sweeps after the closes
    assert await cache_keys(runtime.redis) == []


class _AnsweringWhenTold:
    """A batcher that records the commands it is given and answers only when the test says."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []
        self.replies: list[asyncio.Future[list[Any]]] = []

    def execute_many(self, commands: list[tuple[Any, ...]]) -> asyncio.Future[list[Any]]:
        self.sent.append([command[0] for command in commands])
        self.replies.append(asyncio.get_running_loop().create_future())
        return self.replies[-1]


@pytest.mark.gen_test
async def test_a_deregistration_goes_out_only_once_a_registration_under_way_has_answered():
    """A stream's task cancelled during its registration (a recovery's) leaves the commands on their
    way; sent at once, the deregistration could overtake them on another connection."""
    batcher = _AnsweringWhenTold()
    inbox = ConnectionInbox(batcher, "alice", "connection-1")  # type: ignore[arg-type]
    registering = asyncio.ensure_future(inbox.register())
    await asyncio.sleep(0)
    registering.cancel()
    deregistering = asyncio.ensure_future(inbox.deregister())
    await asyncio.sleep(0.05)
    assert batcher.sent == [["ZADD", "EXPIRE", "ZCOUNT"]]
    batcher.replies[0].set_result([1, 1, 1])
    await asyncio.sleep(0.01)
    assert batcher.sent[1:] == [["ZREM", "DEL"]]
    batcher.replies[1].set_result([1, 0])
    await deregistering


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_a_command_that_may_wait_rides_with_the_next_pipeline_or_goes_alone_once_its_wait_is_over(
    redis_url, redis_cluster, monkeypatch
):
    """What streams wrote from a hint is removed by a command that waits for the next pipeline (the next create's,
    under load), ahead of that pipeline's own commands; with none coming, it goes on its own after a short wait."""
    backend = connect_redis_backend(redis_url, redis_cluster)
    batcher = CommandBatcher(backend)
    redis = backend.client
    try:
        await redis.hset("{rider}:inbox", mapping={"a": "1", "b": "2"})
        monkeypatch.setattr(command_batcher, "RIDE_WAIT_SECONDS", 60)
        removal = batcher.execute_with_next([("HDEL", "{rider}:inbox", "a"), ("HLEN", "{rider}:inbox")])
        await asyncio.sleep(0.2)
        assert not removal.done()
        assert await redis.hlen("{rider}:inbox") == 2
        # Ahead of the pipeline's own commands: the HLEN below counts the inbox without "a".
        assert await batcher.execute("HLEN", "{rider}:inbox") == 1
        assert (await removal)[1] == 1

        monkeypatch.setattr(command_batcher, "RIDE_WAIT_SECONDS", 0.05)
        alone = batcher.execute_with_next([("HDEL", "{rider}:inbox", "b")])
        assert await asyncio.wait_for(alone, 5) == [1]
        assert await redis.exists("{rider}:inbox") == 0
    finally:
        await redis.delete("{rider}:inbox")
        await batcher.close()
        await backend.aclose()


class RecordingStream:
    """Counts what a hub asks of it."""

    def __init__(self) -> None:
        self.woken = 0
        self.recovered = 0
        self.delivered: list[list[tuple[str, str]]] = []

    def wake(self) -> None:
        self.woken += 1

    def deliver(self, delivery: Delivery) -> None:
        self.delivered.append(list(delivery.entries))

    def acknowledged(self, delivery: Delivery, left: int | None) -> None:
        raise AssertionError("a stream that wrote nothing is not told of a removal")

    def recover(self) -> None:
        self.recovered += 1


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_a_recovery_announced_by_one_process_reaches_the_streams_of_every_process_once(redis_url, redis_cluster):
    """What an observer that could not queue a notification announces: each process's hub, its own
    included, has that user's streams recover, once, and wakes no one else."""
    backends = [connect_redis_backend(redis_url, redis_cluster) for _ in range(2)]
    batchers = [CommandBatcher(backend) for backend in backends]
    hubs = [WakeupHub(backend, batcher) for backend, batcher in zip(backends, batchers, strict=True)]
    alice, bob = [RecordingStream(), RecordingStream()], RecordingStream()
    try:
        for hub, stream in zip(hubs, alice, strict=True):
            hub.listen("alice", stream)
            hub.start()
        hubs[1].listen("bob", bob)
        for hub in hubs:
            await hub.wait_subscribed()
        hubs[0].announce_recovery("alice")

        async def recovered() -> bool:
            return [stream.recovered for stream in alice] == [1, 1]

        await eventually(recovered)
        await asyncio.sleep(0.2)  # time for a second, local recovery, which must not come
        assert [stream.recovered for stream in alice] == [1, 1]
        assert (bob.recovered, bob.woken, *(stream.woken for stream in alice)) == (0, 0, 0, 0)
    finally:
        for hub, batcher in zip(hubs, batchers, strict=True):
            await hub.close()
            await batcher.close()
        for backend in backends:
            await backend.aclose()


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_the_hub_warns_when_redis_may_evict_what_it_queues_and_only_then(redis_url, redis_cluster, caplog):
    """An evicted inbox or registration loses a live delivery without an error, unlike a full Redis
    that refuses (and so has the streams recover): bellcast says so when it subscribes."""
    admin = connect_redis(redis_url, redis_cluster)
    every_node = on_every_node(admin)

    async def warnings_of_a_new_hub() -> list[str]:
        caplog.clear()
        backend = connect_redis_backend(redis_url, redis_cluster)
        batcher = CommandBatcher(backend)
        hub = WakeupHub(backend, batcher)
        hub.start()
        try:
            await hub.wait_subscribed()
        finally:
            await hub.close()
            await batcher.close()
            await backend.aclose()
        return [r.message for r in caplog.records if r.name == "bellcast.wakeups" and r.levelname == "WARNING"]

    try:
        assert await warnings_of_a_new_hub() == []  # noeviction, the default
        await admin.config_set("maxmemory-policy", "volatile-lru", **every_node)
        assert await warnings_of_a_new_hub() == []  # without a maxmemory, nothing is evicted
        await admin.config_set("maxmemory", "1gb", **every_node)
        [warning] = await warnings_of_a_new_hub()
        assert "maxmemory-policy volatile-lru (maxmemory 1073741824)" in warning
        await admin.config_set("maxmemory-policy", "noeviction", **every_node)
        assert await warnings_of_a_new_hub() == []  # a limit, but a full Redis refuses rather than evicts
    finally:
        try:
            await admin.config_set("maxmemory", "0", "maxmemory-policy", "noeviction", **every_node)
        finally:
            await admin.aclose()


@pytest.mark.gen_test
async def test_the_hub_subscribes_again_after_an_unexpected_error_and_wakes_streams(redis_url, caplog, monkeypatch):
    """An error no outage explains (a client's bug, such as the AttributeError redis-py raised once in
    a CI run when its connection lost its writer during a resubscription) must not end the hub."""
    backend = SingleRedis(redis_url)
    client = backend.client
    batcher = CommandBatcher(backend)
    hub = WakeupHub(backend, batcher)
    subscribe = SingleRedis.read_hints
    failures: list[int] = []

    async def fails_once(self, on_subscribed, on_message):
        if not failures:
            failures.append(1)
            raise AttributeError("'NoneType' object has no attribute 'writelines'")
        await subscribe(self, on_subscribed, on_message)

    monkeypatch.setattr(SingleRedis, "read_hints", fails_once)
    alice = RecordingStream()
    hub.listen("alice", alice)
    hub.start()
    try:
        await hub.wait_subscribed()
        await client.publish(WAKEUP_CHANNEL, "alice")

        async def woken() -> bool:
            return alice.woken == 1

        await eventually(woken)
        [error] = [r for r in caplog.records if r.name == "bellcast.wakeups" and r.levelname == "ERROR"]
        assert "subscribing again" in error.message and error.exc_info is not None
    finally:
        await hub.close()
        await batcher.close()
        await backend.aclose()


@pytest.mark.gen_test
async def test_on_a_single_redis_a_hint_carries_what_it_announces_unless_an_inbox_was_full(redis_url):
    """The streams of every process get the entries with the hint, and send them without reading their inbox; a
    hint for an inbox that could not take them (full: the overflow mark instead) only wakes, and the stream reads
    its inbox, where the mark has it recover from MongoDB."""
    backend = SingleRedis(redis_url)
    batcher = CommandBatcher(backend)
    hubs = [WakeupHub(backend, batcher) for _ in range(2)]
    alice = [RecordingStream(), RecordingStream()]
    delivery_cache = DeliveryCache(backend, batcher, inbox_cap=2)
    try:
        for hub, stream in zip(hubs, alice, strict=True):
            hub.listen("alice", stream)
            hub.start()
            await hub.wait_subscribed()
        inbox = delivery_cache.open_inbox("alice")
        await inbox.register()
        first = validate_new_notification({"user_id": "alice", "title": "one"}, now=utc_now())
        await queue_created(delivery_cache, first)

        async def delivered() -> bool:
            return all(stream.delivered for stream in alice)

        await eventually(delivered)
        assert [stream.delivered for stream in alice] == [[[(str(first.id), first.to_json())]]] * 2
        assert [stream.woken for stream in alice] == [0, 0]

        second = validate_new_notification({"user_id": "alice", "title": "two"}, now=utc_now())
        await queue_created(delivery_cache, second)
        third = validate_new_notification({"user_id": "alice", "title": "three"}, now=utc_now())
        await queue_created(delivery_cache, third)  # the inbox holds two: full

        async def woken() -> bool:
            return all(stream.woken == 1 for stream in alice)

        await eventually(woken)
        assert [len(stream.delivered) for stream in alice] == [2, 2]
    finally:
        for hub in hubs:
            await hub.close()
        await batcher.close()
        await backend.aclose()
