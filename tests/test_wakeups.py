"""Wake-up hints: idle streams cost no Redis traffic, and delivery never depends on a hint arriving."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from services.cache import DeliveryCache
from services.notifications import utc_now, validate_new_notification
from tests.support import command_calls, on_every_node


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
    silent_cache = DeliveryCache(runtime.redis, runtime.batcher, publish_hints=False)
    notification = validate_new_notification({"user_id": "alice", "title": "no hint"}, now=utc_now())
    assert await silent_cache.enqueue(notification) == 1
    [event] = await stream.notifications(1, timeout=5)
    assert event.id == str(notification.id)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("wakeup_hints", [True], ids=["hints"])
@pytest.mark.parametrize("heartbeat_interval", [3.0])
async def test_safety_scans_that_fall_due_within_a_sweep_share_one_pipeline(open_stream, runtime, settings, app):
    """Idle streams' own scans are queued for the registry's sweep (every second), not sent one by one.

    An empty inbox costs one EXISTS in a shared pipeline; only a stream whose inbox holds entries reads it.
    """
    app.settings["stream_timing"] = replace(settings.stream_timing, safety_scan_interval=0.3)
    streams = [await open_stream(f"user{i}") for i in range(40)]
    for stream in streams:
        await stream.next_event()
    scans_before, pipelines_before = await command_calls(runtime.redis, "exists"), _pipelines(runtime)
    reads_before = await _hgetall_calls(runtime.redis)
    await asyncio.sleep(3.5)
    scans = await command_calls(runtime.redis, "exists") - scans_before
    assert scans >= 2 * len(streams), "the streams did not scan on their own"
    assert _pipelines(runtime) - pipelines_before <= scans / 10
    assert await _hgetall_calls(runtime.redis) == reads_before


def _pipelines(runtime) -> float:
    return runtime.metrics.registry.get_sample_value("bellcast_redis_pipeline_commands_count", {"process": "0"})
