"""A Redis Cluster losing a primary, or refusing to queue: its users' streams recover from MongoDB."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from services.cache import connections_key
from services.embedded import EmbeddedRedisCluster
from tests.support import users_by_node


@pytest.fixture
def private_cluster():
    """A cluster of this test's own, whose nodes the test may stop and start again."""
    cluster = EmbeddedRedisCluster(None, nodes=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster() -> bool:
    return True


@pytest.fixture
def redis_url(private_cluster) -> str:
    return private_cluster.url


@pytest.fixture
def wakeup_hints() -> bool:
    return True


@pytest.mark.gen_test(timeout=60)
async def test_a_primary_restarting_empty_costs_no_notification_nor_sends_one_twice(
    api, open_stream, runtime, private_cluster, http_client, base_url
):
    by_node = users_by_node(runtime.redis, 1)
    alice = runtime.redis.get_node_from_key(connections_key("alice"))
    [bob] = next(users for name, users in by_node.items() if name != alice.name)
    [index] = [i for i, node in enumerate(private_cluster.nodes) if node.port == alice.port]
    streams = {user: await open_stream(user) for user in ("alice", bob)}
    for stream in streams.values():
        await stream.next_event()

    private_cluster.stop_node(index)
    response = await http_client.fetch(f"{base_url}/healthz", raise_error=False)
    assert response.code == 503
    assert json.loads(response.body)["checks"]["redis"] != "ok"
    during = {user: await api.create(user, "while a primary is down") for user in streams}  # MongoDB has them

    private_cluster.start_node(index)  # same slots, but its registrations and inboxes are gone
    for user, stream in streams.items():
        [event] = await stream.notifications(1, timeout=20)
        assert event.id == during[user]["id"]
    after = {user: await api.create(user, "after") for user in streams}
    for user, stream in streams.items():
        [event] = await stream.notifications(1, timeout=5)
        assert event.id == after[user]["id"]
        await stream.assert_silent(0.3)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("refused", [("-@scripting",), ("-@scripting", "-spublish")], ids=["scripts", "and-spublish"])
async def test_a_notification_the_cluster_refused_to_queue_reaches_the_open_stream_from_mongodb_once(
    api, open_stream, private_cluster, refused
):
    """The cluster's counterpart of the single Redis's test (test_faults.py): every primary refuses
    the observer's script, and in the second case the announcement on the sharded recovery channel too."""
    stream = await open_stream("alice")
    await stream.next_event()
    admins = [Redis(host="127.0.0.1", port=node.port) for node in private_cluster.nodes]
    try:
        for admin in admins:
            await admin.execute_command("ACL", "SETUSER", "default", *refused)
        try:
            unqueued = await api.create("alice", "queued nowhere")  # MongoDB has it: 201 all the same
            [event] = await stream.notifications(1, timeout=10)
            assert event.id == unqueued["id"]
        finally:
            for admin in admins:
                await admin.execute_command("ACL", "SETUSER", "default", "+@all")
        queued = await api.create("alice", "queued again")
        [event] = await stream.notifications(1)
        assert event.id == queued["id"], "the recovered notification came twice"
    finally:
        for admin in admins:
            await admin.aclose()
