"""The stream: what each connection receives, exactly once, and what it leaves behind."""

from __future__ import annotations

import asyncio
import time

import pytest

from server import Settings, SettingsError
from services import cache
from services.cache import INBOX_TTL, REGISTRATION_TTL, connections_key, inbox_key
from tests.support import SSEStream, cache_keys, command_calls, eventually, queue_created


@pytest.mark.gen_test
async def test_stream_answers_with_event_stream_headers_and_a_retry_hint(open_stream):
    stream = await open_stream("alice")
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in stream.headers
    first = await stream.next_event()
    assert first.retry is not None and first.retry > 0


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_created_notification_is_delivered_to_the_users_stream(api, open_stream):
    stream = await open_stream("alice")
    await stream.next_event()
    created = await api.create("alice", "Build finished", body="All green", url="https://ci.example/1")
    [event] = await stream.notifications(1)
    assert event.id == created["id"]
    assert event.event == "notification"
    assert event.json() == created


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_two_tabs_of_one_user_each_receive_a_notification_once(api, open_stream):
    first_tab = await open_stream("alice")
    second_tab = await open_stream("alice")
    created = await api.create("alice")
    for tab in (first_tab, second_tab):
        [event] = await tab.notifications(1)
        assert event.id == created["id"]
    for tab in (first_tab, second_tab):
        await tab.assert_silent(0.3)


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_a_create_reaches_each_tab_as_one_write_of_the_notification_and_the_counts_after_it(
    api, open_stream, runtime, settings, redis_cluster
):
    """The observer queues the notification and its `created` change in one command; each tab writes both events
    in one chunk, then deletes them from its inbox. On a single Redis the hint carries them, no tab reads its
    inbox, and one command removes them from both; in a cluster, or polling, each tab reads it once."""
    tabs = [await open_stream("alice") for _ in range(2)]
    for tab in tabs:
        await tab.next_event()
    await api.create("alice", "before")  # the first change of a user may come with counts read apart
    for tab in tabs:
        await tab.notifications(1)
        await tab.next_change()

    async def inboxes_emptied() -> bool:
        return not [key for key in await cache_keys(runtime.redis) if b":inbox:" in key]

    await eventually(inboxes_emptied)  # the removal rides with a later pipeline, or goes alone shortly
    scans_before = await command_calls(runtime.redis, "hgetall")
    scripts_before = await command_calls(runtime.redis, "eval")

    created = await api.create("alice", "Build finished")

    for tab in tabs:
        [event] = await tab.notifications(1)
        assert event.id == created["id"]
        change = await tab.next_change()
        assert change == {"change": "created", "ids": [created["id"]], "unread_count": 2, "unseen_count": 2}
        [written] = [chunk for chunk in tab.chunks if created["id"].encode() in chunk and b"event: changed" in chunk]
        assert written.index(b"event: notification") < written.index(b"event: changed")
    reads = 0 if settings.wakeup_hints and not redis_cluster else len(tabs)
    assert await command_calls(runtime.redis, "hgetall") - scans_before == reads
    await eventually(inboxes_emptied)
    if settings.wakeup_hints and not redis_cluster:
        # One script queued for both tabs, and one removed from both inboxes what they wrote.
        assert await command_calls(runtime.redis, "eval") - scripts_before == 2


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_another_user_receives_nothing(api, open_stream):
    alice = await open_stream("alice")
    bob = await open_stream("bob")
    created = await api.create("alice")
    [event] = await alice.notifications(1)
    assert event.id == created["id"]
    await bob.assert_silent(0.3)


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_notifications_arrive_in_creation_order(api, open_stream):
    stream = await open_stream("alice")
    created = [await api.create("alice", f"n{i}") for i in range(10)]
    events = await stream.notifications(10)
    assert [e.id for e in events] == [c["id"] for c in created]


@pytest.mark.gen_test
async def test_newlines_in_fields_cannot_break_the_event_framing(api, open_stream):
    stream = await open_stream("alice")
    created = await api.create("alice", "line one\n\nid: forged\nevent: x", body="a\r\nb\rc")
    [event] = await stream.notifications(1)
    assert event.id == created["id"]
    assert event.json()["title"] == "line one\n\nid: forged\nevent: x"
    assert event.json()["body"] == "a\r\nb\rc"


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_last_event_id_resumes_in_order_without_duplicates(api, open_stream):
    created = [await api.create("alice", f"n{i}") for i in range(5)]
    await api.create("bob", "not alice's")
    stream = await open_stream("alice", last_event_id=created[1]["id"])
    events = await stream.notifications(3)
    assert [e.id for e in events] == [c["id"] for c in created[2:]]
    live = await api.create("alice", "live")
    [event] = await stream.notifications(1)
    assert event.id == live["id"]
    await stream.assert_silent(0.3)


@pytest.mark.gen_test
async def test_last_event_id_may_come_as_a_query_parameter(api, base_url, open_stream):
    created = [await api.create("alice", f"n{i}") for i in range(3)]
    token = api.token("alice")
    stream = await open_stream(None, token=f"{token}&last_event_id={created[0]['id']}")
    events = await stream.notifications(2)
    assert [e.id for e in events] == [created[1]["id"], created[2]["id"]]


@pytest.mark.gen_test
async def test_catch_up_includes_an_older_id_created_after_the_last_seen_one(api, open_stream, runtime):
    """ObjectIds from two processes in one second are not ordered by creation: mind that window."""
    from bson import ObjectId

    from services.notifications import Notification, utc_now

    seen = await api.create("alice", "seen")
    seen_id = ObjectId(seen["id"])
    # Made by "another process": same second, smaller id, created later.
    older_id = ObjectId(seen_id.binary[:4] + b"\x00" * 8)
    late = Notification(older_id, "alice", "info", "late", "", "{}", None, utc_now(), None)
    await runtime.mongo.database["notifications"].insert_one(late.to_document())
    stream = await open_stream("alice", last_event_id=seen["id"])
    [event] = await stream.notifications(1)
    assert event.id == str(older_id)
    await stream.assert_silent(0.3)


@pytest.mark.gen_test
async def test_reconnect_with_unknown_or_malformed_last_event_id_still_streams(api, open_stream):
    for last_event_id in ("not-an-id", "ffffffffffffffffffffffff", "\u00e9"):
        stream = await open_stream("alice", last_event_id=last_event_id)
        assert stream.status == 200
    created = await api.create("alice")
    [event] = await stream.notifications(1)
    assert event.id == created["id"]


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_notification_created_during_catch_up_is_sent_once(api, open_stream, runtime):
    created = [await api.create("alice", f"n{i}") for i in range(3)]
    stream = await open_stream("alice", last_event_id=created[0]["id"])
    later = await api.create("alice", "during")
    events = await stream.notifications(3)
    assert [e.id for e in events] == [created[1]["id"], created[2]["id"], later["id"]]
    await stream.assert_silent(0.3)


@pytest.mark.gen_test
@pytest.mark.parametrize("max_replay", [5])
async def test_a_gap_longer_than_max_replay_gets_one_resync_event_then_live_notifications(api, open_stream):
    seen = await api.create("alice", "seen")
    missed = [await api.create("alice", f"missed {i}") for i in range(6)]
    stream = await open_stream("alice", last_event_id=seen["id"])
    resync = await stream.next_event()
    while resync.event is None:  # the retry hint and the "connected" comment
        resync = await stream.next_event()
    assert resync.event == "resync"
    assert resync.id == missed[-1]["id"]
    assert resync.json() == {"reason": "gap_too_large"}
    live = await api.create("alice", "live")
    [event] = await stream.notifications(1)
    assert event.id == live["id"]
    await stream.assert_silent(0.3)
    assert stream.received.count(b"event: resync") == 1


@pytest.mark.gen_test
@pytest.mark.parametrize("max_replay", [5])
async def test_a_gap_of_max_replay_is_replayed_in_full_in_order(api, open_stream):
    seen = await api.create("alice", "seen")
    missed = [await api.create("alice", f"missed {i}") for i in range(5)]
    stream = await open_stream("alice", last_event_id=seen["id"])
    events = await stream.notifications(5)
    assert [e.id for e in events] == [c["id"] for c in missed]
    live = await api.create("alice", "live")
    [event] = await stream.notifications(1)
    assert event.id == live["id"]
    await stream.assert_silent(0.3)
    assert b"event: resync" not in stream.received


@pytest.mark.gen_test
async def test_idle_stream_sends_heartbeat_comments(open_stream, settings):
    stream = await open_stream("alice")
    assert (await stream.next_event()).retry is not None
    assert (await stream.next_event()).comments == ["connected"]
    heartbeat = await stream.next_event(timeout=settings.heartbeat_interval * 4)
    assert heartbeat.comments == ["heartbeat"]
    assert heartbeat.event is None


@pytest.mark.gen_test
async def test_an_http_1_0_client_gets_heartbeats_and_events_unchunked(api, base_url):
    """Heartbeats bypass Tornado's write path, so they must frame themselves as Tornado would."""
    stream = await SSEStream.open(base_url, api.token("alice"), http_version="HTTP/1.0")
    try:
        assert stream.status == 200 and "transfer-encoding" not in stream.headers
        assert (await stream.next_event()).retry is not None
        assert (await stream.next_event()).comments == ["connected"]
        assert (await stream.next_event()).comments == ["heartbeat"]
        created = await api.create("alice")
        [event] = await stream.notifications(1)
        assert event.id == created["id"]
        assert b"\r" not in stream.received and stream.received.count(b": heartbeat\n\n") >= 1
    finally:
        stream.close()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("http_version", ["HTTP/1.1", "HTTP/1.0"])
async def test_events_more_than_the_socket_buffers_hold_reach_a_client_that_reads_late_whole_and_in_order(
    api, base_url, http_version
):
    """Events go straight to the socket when nothing is in flight: what the kernel cannot take follows
    through the IOStream, and the next events wait behind it."""
    stream = await SSEStream.open(base_url, api.token("alice"), http_version=http_version, receive_buffer=4096)
    try:
        assert (await stream.next_event()).retry is not None
        # About 3 MB left unread: more than the kernel buffers on both sides hold.
        created = [
            await api.create("alice", f"n{i}", data={"blob": chr(ord("a") + i % 26) * 30000}) for i in range(100)
        ]
        events = await stream.notifications(len(created), timeout=30)
        assert [event.id for event in events] == [notification["id"] for notification in created]
        assert [event.json()["data"] for event in events] == [notification["data"] for notification in created]
    finally:
        stream.close()


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_stream_registers_its_connection_with_a_ttl(open_stream, runtime):
    await open_stream("alice")
    key = connections_key("alice")

    async def registered() -> bool:
        return await runtime.redis.zcard(key) == 1

    await eventually(registered)
    assert 0 < await runtime.redis.ttl(key) <= REGISTRATION_TTL


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_cache_entries_carry_a_ttl(runtime):
    """An inbox whose connection died without deregistering expires on its own."""
    from services.notifications import utc_now, validate_new_notification

    inbox = runtime.delivery_cache.open_inbox("alice")
    await inbox.register()
    notification = validate_new_notification({"user_id": "alice", "title": "t"}, now=utc_now())
    assert await queue_created(runtime.delivery_cache, notification) == 1
    key = inbox_key("alice", inbox.connection_id)
    assert await runtime.redis.hexists(key, str(notification.id))
    assert 0 < await runtime.redis.ttl(key) <= INBOX_TTL
    assert 0 < await runtime.redis.ttl(connections_key("alice")) <= REGISTRATION_TTL
    # An entry whose hint was lost waits for the stream's safety scan, at the longest interval allowed.
    assert await runtime.redis.ttl(key) > Settings().safety_scan_interval
    with pytest.raises(SettingsError):
        Settings(safety_scan_interval=await runtime.redis.ttl(key))


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_a_safety_scan_finds_the_inboxes_holding_entries_and_renews_the_registrations_due(runtime, monkeypatch):
    """A registration is renewed when due, and never brought back once deregistered: a renewal that
    finds none marks the inbox `registration_lost` (a live stream then registers again)."""
    from services.notifications import utc_now, validate_new_notification

    delivery_cache = runtime.delivery_cache
    alice, alice_too, bob, carol = (delivery_cache.open_inbox(user) for user in ("alice", "alice", "bob", "carol"))
    await alice.register()
    await alice_too.register()
    monkeypatch.setattr(cache, "REGISTRATION_RENEWAL_INTERVAL", 0.0)
    await bob.register()  # renewals due at once from here on
    await carol.register()
    await bob.deregister()
    for inbox in (alice, alice_too, carol):  # as if registered long ago: little left of their TTL
        await runtime.redis.zadd(inbox.connections_key, {inbox.connection_id: time.time() + 5}, xx=True)
        await runtime.redis.expire(inbox.connections_key, 5)
    notification = validate_new_notification({"user_id": "alice", "title": "t"}, now=utc_now())
    assert await queue_created(delivery_cache, notification) == 2

    assert await delivery_cache.safety_scan([alice, bob, carol, alice_too]) == [True, True, False, True]
    assert [inbox.registration_lost for inbox in (alice, bob, carol, alice_too)] == [False, True, False, False]

    assert await runtime.redis.ttl(connections_key("alice")) <= 5  # not due
    assert await runtime.redis.ttl(connections_key("carol")) > REGISTRATION_TTL - 5
    expires = await runtime.redis.zscore(connections_key("carol"), carol.connection_id)
    assert expires > time.time() + REGISTRATION_TTL - 5
    assert not await runtime.redis.exists(connections_key("bob"))


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_a_create_queues_for_each_live_registration_and_drops_the_expired_ones(runtime):
    from services.notifications import utc_now, validate_new_notification

    live, also_live, expired = (runtime.delivery_cache.open_inbox("erin") for _ in range(3))
    for inbox in (live, also_live, expired):
        await inbox.register()
    # Its process died a TTL ago without deregistering.
    await runtime.redis.zadd(expired.connections_key, {expired.connection_id: time.time() - 1}, xx=True)
    notification = validate_new_notification({"user_id": "erin", "title": "t"}, now=utc_now())

    assert await queue_created(runtime.delivery_cache, notification) == 2

    assert [await inbox.pending() for inbox in (live, also_live)] == [
        [(str(notification.id), notification.to_json().encode())]
    ] * 2
    assert not await runtime.redis.exists(expired.key)
    registered = set(await runtime.redis.zrange(connections_key("erin"), 0, -1))
    assert registered == {inbox.connection_id.encode() for inbox in (live, also_live)}
    nobody = validate_new_notification({"user_id": "frank", "title": "t"}, now=utc_now())
    assert await queue_created(runtime.delivery_cache, nobody) == 0


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_a_safety_scan_of_thousands_of_inboxes_answers_for_each(runtime):
    inboxes = [runtime.delivery_cache.open_inbox("dave") for _ in range(2500)]
    await asyncio.gather(*(inbox.register() for inbox in inboxes))
    holding = {0, 1999, 2000, 2499}
    for position in holding:
        await runtime.redis.hset(inboxes[position].key, "id", "{}")
    assert await runtime.delivery_cache.safety_scan(inboxes) == [i in holding for i in range(2500)]
    assert await runtime.delivery_cache.safety_scan([]) == []


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_delivered_entries_are_removed_from_the_cache(api, open_stream, runtime):
    stream = await open_stream("alice")
    await api.create("alice")
    await stream.notifications(1)
    [connection_id] = await runtime.redis.zrange(connections_key("alice"), 0, -1)

    async def emptied() -> bool:
        return await runtime.redis.hlen(inbox_key("alice", connection_id.decode())) == 0

    await eventually(emptied)


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_an_entry_queued_again_for_what_a_stream_already_sent_is_deleted_not_sent(api, open_stream, runtime):
    """The connection's ledger: an inbox entry for an id it sent (queued late, or its deletion failed)
    never goes out a second time, and is deleted with the next delivery."""
    stream = await open_stream("alice")
    sent = await api.create("alice", "once")
    assert [event.id for event in await stream.notifications(1)] == [sent["id"]]
    [connection_id] = await runtime.redis.zrange(connections_key("alice"), 0, -1)
    inbox = inbox_key("alice", connection_id.decode())

    async def emptied() -> bool:
        return await runtime.redis.hlen(inbox) == 0

    await eventually(emptied)
    await runtime.redis.hset(inbox, sent["id"], "{}")
    later = await api.create("alice", "later")
    assert [event.id for event in await stream.notifications(1)] == [later["id"]]
    await eventually(emptied)
    await stream.assert_silent(0.3)


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_closed_connection_stops_its_scan_and_leaves_no_registration(api, open_stream, runtime):
    stream = await open_stream("alice")
    await stream.next_event()
    assert len(runtime.streams) == 1
    stream.close()

    async def released() -> bool:
        return len(runtime.streams) == 0 and await runtime.redis.exists(connections_key("alice")) == 0

    await eventually(released)
    # Nothing is queued for a connection that is gone.
    await api.create("alice")
    assert await cache_keys(runtime.redis) == []


@pytest.mark.gen_test
async def test_stream_without_token_is_refused_with_json_401(open_stream):
    stream = await open_stream(None)
    assert stream.status == 401
    assert stream.headers["content-type"].startswith("application/json")


@pytest.mark.gen_test
@pytest.mark.parametrize("mongo_driver", ["pymongo", "motor"])
async def test_delivery_and_catch_up_work_with_either_mongo_driver(api, open_stream, runtime, mongo_driver):
    assert runtime.mongo.driver == mongo_driver
    first = await api.create("alice", "first")
    stream = await open_stream("alice")
    second = await api.create("alice", "second")
    [event] = await stream.notifications(1)
    assert event.id == second["id"]
    resumed = await open_stream("alice", last_event_id=first["id"])
    [event] = await resumed.notifications(1)
    assert event.id == second["id"]
