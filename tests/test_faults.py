"""What production does to a stream server: Redis restarts, clients that stop reading, churn, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import psutil
import pytest
from redis.asyncio import Redis
from tornado.iostream import IOStream, StreamClosedError

from services import cache, command_batcher
from services.cache import connections_key
from services.notifications import COLLECTION, Counts, utc_now, validate_new_notification
from services.redis_backend import WAKEUP_CHANNEL
from tests.support import (
    RestartableRedis,
    SSEStream,
    cache_keys,
    counts_of,
    created_change,
    eventually,
    metric_value,
)


@pytest.fixture
def store_urls(store_urls, private_redis):
    """The session's MongoDB, and the private Redis."""
    mongodb_url, _ = store_urls
    return mongodb_url, private_redis.url


@contextlib.asynccontextmanager
async def _redis_back(private_redis: RestartableRedis, stream: SSEStream) -> AsyncIterator[None]:
    """Start the private Redis again for the block; then close the stream and let it deregister before the
    fixture stops Redis."""
    private_redis.start()
    try:
        yield
    finally:
        stream.close()
        await asyncio.sleep(0.1)


@pytest.mark.gen_test(timeout=60)
async def test_streams_survive_a_redis_restart_and_receive_what_was_created_meanwhile_once(
    api, open_stream, private_redis, settings
):
    stream = await open_stream("alice")
    await stream.next_event()
    before = await api.create("alice", "before the outage")
    [event] = await stream.notifications(1)
    assert event.id == before["id"]

    private_redis.stop()
    during = await api.create("alice", "while Redis is down")  # MongoDB has it: 201 all the same
    heartbeat = await stream.next_event(timeout=settings.heartbeat_interval * 4)
    assert heartbeat.comments == ["heartbeat"], "the stream went quiet during the outage"

    async with _redis_back(private_redis, stream):  # an empty Redis: registrations and inboxes are gone
        [event] = await stream.notifications(1, timeout=15)
        assert event.id == during["id"]
        after = await api.create("alice", "after the outage")
        [event] = await stream.notifications(1, timeout=5)
        assert event.id == after["id"]
        await stream.assert_silent(0.5)


@pytest.mark.gen_test(timeout=60)
async def test_a_stream_opened_while_redis_is_down_receives_everything_once_it_is_back(api, open_stream, private_redis):
    private_redis.stop()
    stream = await open_stream("alice")
    assert stream.status == 200
    await stream.next_event()
    during = await api.create("alice", "while Redis is down")
    async with _redis_back(private_redis, stream):
        [event] = await stream.notifications(1, timeout=15)
        assert event.id == during["id"]
        await stream.assert_silent(0.5)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("wakeup_hints", [False], ids=["polling"])
async def test_while_redis_is_down_a_polling_stream_retries_with_backoff_not_at_every_poll(
    api, open_stream, private_redis, runtime, settings
):
    stream = await open_stream("alice")
    await stream.next_event()
    private_redis.stop()
    failed_before = metric_value(runtime.metrics, "store_errors_total", store="redis")
    await asyncio.sleep(3.0)
    # A try at every poll (POLL_INTERVAL, 50 ms here) would be about 60; the backoff (0.5 s, doubling) makes 4.
    assert metric_value(runtime.metrics, "store_errors_total", store="redis") - failed_before <= 6
    async with _redis_back(private_redis, stream):
        after = await api.create("alice", "after the outage")
        [event] = await stream.notifications(1, timeout=15)
        assert event.id == after["id"]
        await stream.assert_silent(0.5)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("stream_write_timeout", [0.5])
async def test_a_client_that_stops_reading_is_dropped_and_counted(api, base_url, runtime):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = IOStream(sock)
    await stream.connect(("127.0.0.1", int(base_url.rsplit(":", 1)[1])))
    token = api.token("sleepy")
    await stream.write(f"GET /notifications/stream?access_token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await stream.read_until(b"\r\n\r\n")
    payload = {"blob": "x" * 30000}
    for i in range(250):  # about 7.5 MB, more than the kernel buffers on both sides
        await api.create("sleepy", f"n{i}", data=payload)
        if metric_value(runtime.metrics, "slow_clients_dropped_total"):
            break

    async def dropped() -> bool:
        return metric_value(runtime.metrics, "slow_clients_dropped_total") == 1 and len(runtime.streams) == 0

    await eventually(dropped, timeout=15)
    assert metric_value(runtime.metrics, "slow_clients_dropped_total") == 1
    stream.close()


@pytest.mark.gen_test(timeout=60)
async def test_churn_leaves_no_streams_registrations_entries_or_descriptors(api, base_url, runtime):
    port = int(base_url.rsplit(":", 1)[1])

    def server_side_sockets() -> int:
        # This process is client and server: count the sockets the server accepted.
        return sum(1 for c in psutil.Process().net_connections("tcp") if c.laddr.port == port and c.raddr)

    tasks_before = asyncio.all_tasks()
    for round_ in range(5):
        streams = [await SSEStream.open(base_url, api.token(f"churn{i}")) for i in range(40)]
        for stream in streams:
            await stream.next_event()
        await api.create("churn0", f"round {round_}")
        for index, stream in enumerate(streams):
            if index % 2:
                sock = stream._stream.socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            stream.close()

    async def released() -> bool:
        keys = await cache_keys(runtime.redis)
        return len(runtime.streams) == 0 and keys == []

    async def no_tasks_left() -> bool:
        # Waited for, not sampled: the drivers' own short tasks (PyMongo opening a pool connection
        # under `wait_for`) may be running at any instant; a task a stream left behind never ends.
        return not asyncio.all_tasks() - tasks_before

    await eventually(released, timeout=10)
    await asyncio.sleep(0.2)
    assert server_side_sockets() == 0
    await eventually(no_tasks_left, timeout=10)


@pytest.mark.gen_test
async def test_a_user_past_the_stream_limit_gets_a_json_429(api, open_stream, settings, runtime):
    limit = settings.max_streams_per_user
    streams = [await open_stream("greedy") for _ in range(limit)]
    assert all(s.status == 200 for s in streams)
    refused = await open_stream("greedy")
    assert refused.status == 429
    assert refused.headers["content-type"].startswith("application/json")
    assert refused.headers["retry-after"] == "5"
    streams[0].close()

    async def admitted() -> bool:
        return (await open_stream("greedy")).status == 200

    await eventually(admitted)


@pytest.mark.gen_test
@pytest.mark.parametrize("max_streams", [2])
async def test_a_full_server_answers_503_with_retry_after(open_stream):
    first, second = await open_stream("a"), await open_stream("b")
    assert (first.status, second.status) == (200, 200)
    third = await open_stream("c")
    assert third.status == 503
    assert third.headers["retry-after"] == "5"


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("max_streams", [5])
async def test_streams_opened_all_at_once_never_pass_max_streams(open_stream, runtime):
    """Each stream awaits its registration in Redis: the limit must count the ones still registering."""
    streams = await asyncio.gather(*(open_stream(f"crowd-{index}") for index in range(50)))
    statuses = [stream.status for stream in streams]
    assert statuses.count(200) == 5 and statuses.count(503) == 45
    assert len(runtime.streams) == 5


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("refused", [("-@scripting",), ("-@scripting", "-publish")], ids=["scripts", "and-publish"])
async def test_a_notification_redis_refused_to_queue_reaches_the_open_streams_from_mongodb_once(
    api, open_stream, private_redis, refused, caplog
):
    """Redis up but refusing (here an ACL; a failover's READONLY or a full memory's OOM would take the
    same path): the observer cannot queue, no hint goes out and the subscription stays up, so
    nothing would tell the stream.
    It catches up from MongoDB: announced to every process where Redis takes the announcement,
    else by this process to its own streams."""
    stream = await open_stream("alice")
    await stream.next_event()
    admin = Redis.from_url(private_redis.url)
    try:
        await admin.execute_command("ACL", "SETUSER", "default", *refused)
        try:
            unqueued = await api.create("alice", "queued nowhere")  # MongoDB has it: 201 all the same
            [event] = await stream.notifications(1, timeout=10)
            assert event.id == unqueued["id"]
            [warning] = [
                r for r in caplog.records if r.name == "bellcast.notifications" and unqueued["id"] in r.message
            ]
            assert "NoPermissionError" in warning.message, "the warning does not say what Redis answered"
        finally:
            await admin.execute_command("ACL", "SETUSER", "default", "+@all")
        queued = await api.create("alice", "queued again")
        [event] = await stream.notifications(1)
        assert event.id == queued["id"], "the recovered notification came twice"
    finally:
        await admin.aclose()


@pytest.mark.gen_test(timeout=90)
async def test_after_an_outage_thousands_of_missed_counts_are_dropped_without_a_pipeline_over_the_batchers_bound(
    api, private_redis, runtime
):
    """Creates for 3,000 users while Redis is down: each user's kept counts missed a change, and once Redis is back
    all are dropped, a thousand at a time beside the other commands, never one pipeline of 3,000 (the batcher joins
    the commands of a loop iteration up to MAX_PIPELINE_COMMANDS, but never splits one caller's)."""

    def pipelines_over_the_bound() -> float:
        bound = str(float(command_batcher.MAX_PIPELINE_COMMANDS))
        every = metric_value(runtime.metrics, "redis_pipeline_commands_bucket", le="+Inf")
        return every - metric_value(runtime.metrics, "redis_pipeline_commands_bucket", le=bound)

    private_redis.stop()
    for first in range(0, 3000, 1000):
        response = await api.request(
            "POST",
            "/api/notifications",
            json.dumps({"user_ids": [f"user-{n}" for n in range(first, first + 1000)], "title": "during the outage"}),
            {"X-API-Key": api.api_key, "Content-Type": "application/json"},
        )
        assert response.code == 201, response.body  # MongoDB has them
    before = pipelines_over_the_bound()
    private_redis.start()
    admin = Redis.from_url(private_redis.url)
    try:

        async def dropped() -> bool:
            stats = await admin.info("commandstats")
            return int(stats.get("cmdstat_del", {}).get("calls", 0)) >= 3000

        await eventually(dropped, timeout=30)
    finally:
        await admin.aclose()
    assert pipelines_over_the_bound() == before, "a pipeline of more than MAX_PIPELINE_COMMANDS"


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("change", ["create", "read"])
async def test_counts_kept_in_redis_that_missed_a_change_redis_refused_are_counted_again(
    api, open_stream, private_redis, runtime, change
):
    """A create or a read that Redis refused to queue (an ACL here; a full memory's OOM or a failover's READONLY
    the same) was not added to the kept counts: they are dropped once Redis takes a command, and the next
    change carries MongoDB's counts, not counts one short (or one over)."""
    stream = await open_stream("alice")
    await stream.next_event()
    kept = [await api.create("alice", title) for title in ("first", "second")]
    await stream.notifications(2)
    admin = Redis.from_url(private_redis.url)
    try:
        assert await admin.hmget(cache.counts_key("alice"), "unread", "unseen") == [b"2", b"2"]
        await admin.execute_command("ACL", "SETUSER", "default", "-@scripting")
        try:
            if change == "create":
                await api.create("alice", "refused")  # MongoDB has it: 201 all the same
            else:
                read = await api.as_user("alice", "POST", f"/api/notifications/{kept[0]['id']}/read", b"")
                assert read.code == 200, read.body

            async def dropped() -> bool:
                return not await admin.exists(cache.counts_key("alice"))

            await eventually(dropped)
        finally:
            await admin.execute_command("ACL", "SETUSER", "default", "+@all")
    finally:
        await admin.aclose()

    after = await api.create("alice", "after")
    counts = await runtime.notifications.counts("alice")
    assert counts_of(await created_change(stream, after["id"])) == counts
    assert counts == (Counts(4, 4) if change == "create" else Counts(2, 3))


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("wakeup_hints", [True], ids=["hints"])
async def test_what_a_stream_wrote_whose_removal_redis_refused_is_deleted_by_its_next_scan_not_sent_again(
    api, open_stream, private_redis, runtime, monkeypatch
):
    """A stream writes what a hint carried and does not wait for its removal, which rides with a later pipeline.
    Refused there (an ACL here; a timeout the same), the notification and the `changed` event written with it
    stay in the inbox: the stream's next scan deletes both instead of sending either again."""
    monkeypatch.setattr(command_batcher, "RIDE_WAIT_SECONDS", 60)  # the removal waits for the next pipeline
    stream = await open_stream("alice")
    await stream.next_event()
    # The second create's notification and change go in one delivery: the first's counted in MongoDB.
    for title in ("first", "second"):
        created = await api.create("alice", title)
        [event] = await stream.notifications(1)
        assert event.id == created["id"]
        await created_change(stream, created["id"])
    [connection_id] = await runtime.redis.zrange(connections_key("alice"), 0, -1)
    inbox = cache.inbox_key("alice", connection_id.decode())
    admin = Redis.from_url(private_redis.url)
    try:
        # The notification and its change are queued until removed.
        assert await admin.hexists(inbox, created["id"]) and await admin.hlen(inbox) == 2
        await admin.execute_command("ACL", "SETUSER", "default", "-@scripting")
        try:
            await runtime.batcher.execute("PING")  # the pipeline the removal rides with
        finally:
            await admin.execute_command("ACL", "SETUSER", "default", "+@all")
        assert await admin.hlen(inbox) == 2, "the removal was not refused"
        changes_before = len(stream.changes)

        await admin.publish(WAKEUP_CHANNEL, "alice")  # the stream scans its inbox

        async def emptied() -> bool:
            return not await admin.exists(inbox)

        await eventually(emptied)
    finally:
        await admin.aclose()
    await stream.assert_silent(0.5)
    assert len(stream.changes) == changes_before, "the change came twice"


@pytest.mark.gen_test(timeout=60)
async def test_a_stream_whose_registration_redis_lost_registers_again_and_misses_nothing(
    api, open_stream, runtime, settings, app, monkeypatch
):
    """Redis dropped the stream's registration (an evicting `maxmemory-policy`; FLUSHALL does the
    same) while answering everything: observers then queue nothing for it, and no error says so.
    The registration's next renewal finds it gone: the stream registers again and catches up
    from MongoDB. (Without that, it received nothing until it reconnected: its heartbeats went on.)"""
    monkeypatch.setattr(cache, "REGISTRATION_RENEWAL_INTERVAL", 0.5)
    app.settings["stream_timing"] = replace(settings.stream_timing, safety_scan_interval=0.2)
    stream = await open_stream("alice")
    await stream.next_event()
    assert await runtime.redis.delete(connections_key("alice")) == 1
    unqueued = await api.create("alice", "queued nowhere")
    [event] = await stream.notifications(1, timeout=10)
    assert event.id == unqueued["id"]
    assert await runtime.redis.exists(connections_key("alice")), "the stream did not register again"
    queued = await api.create("alice", "queued again")
    [event] = await stream.notifications(1)
    assert event.id == queued["id"], "the recovered notification came twice"
    await stream.assert_silent(0.3)


OWED = 2500


@pytest.mark.gen_test(timeout=120)
async def test_a_recovery_owing_thousands_sends_every_one_to_every_tab_in_order_and_once(api, open_stream, runtime):
    """More is owed than one send takes (100): the recovery goes on, a send at a time, until MongoDB has no
    more; newer live entries wait for it, and nothing it owes is skipped when they move the stream on."""
    tabs = [await open_stream("alice") for _ in range(2)]
    for tab in tabs:
        await tab.next_event()  # registered
    owed = [validate_new_notification({"user_id": "alice", "title": f"owed {i}"}, utc_now()) for i in range(OWED)]
    # Stored, but queued nowhere: as when Redis refused the observer, which then announces a recovery.
    await runtime.mongo.database[COLLECTION].insert_many([notification.to_document() for notification in owed])
    runtime.wakeups.announce_recovery("alice")
    live = await api.create("alice", "queued while the recovery goes on")
    expected = [str(notification.id) for notification in owed] + [live["id"]]
    for tab in tabs:
        events = await tab.notifications(OWED + 1, timeout=90)
        assert [event.id for event in events] == expected
    after = await api.create("alice", "after the recovery")
    for tab in tabs:
        [event] = await tab.notifications(1)
        assert event.id == after["id"]
        await tab.assert_silent(0.3)


@pytest.mark.gen_test(timeout=90)
async def test_streams_opened_while_redis_was_down_count_against_the_users_limit_once_it_is_back(
    api, open_stream, private_redis, runtime, settings
):
    """Redis could not count them when they opened: when it is back they register again, and the user holds
    MAX_STREAMS_PER_USER of them, not more; the others end, and a new one is refused."""
    limit = settings.max_streams_per_user
    private_redis.stop()
    streams = [await open_stream("alice") for _ in range(limit + 3)]
    assert [stream.status for stream in streams] == [200] * (limit + 3)
    private_redis.start()

    async def registered() -> bool:
        return await runtime.redis.zcard(connections_key("alice")) == limit

    await eventually(registered, timeout=30)
    ended = await asyncio.gather(*(_falls_silent(stream) for stream in streams))
    assert sum(ended) == 3, ended
    assert (await open_stream("alice")).status == 429
    created = await api.create("alice", "to the streams that stayed")
    for stream, stream_ended in zip(streams, ended, strict=True):
        if not stream_ended:
            [event] = await stream.notifications(1, timeout=10)
            assert event.id == created["id"]
        stream.close()
    await asyncio.sleep(0.1)


async def _falls_silent(stream: SSEStream, silence: float = 3.0, within: float = 10.0) -> bool:
    """True if the stream ends or sends nothing for `silence` seconds (an open one heartbeats every 0.5 s)."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        try:
            await stream.next_event(timeout=silence)
        except (TimeoutError, StreamClosedError):
            return True
    return False
