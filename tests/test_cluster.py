"""Redis Cluster: every command stays within one hash slot, and delivery spans the nodes.

The delivery tests marked ``also_on_cluster`` run on the session's three-node cluster too;
these pin down what only a cluster has: slots, nodes and sharded wake-up channels.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import RedisClusterException

from services.cache import DeliveryCache, connections_key, inbox_key, user_tag
from services.command_batcher import CommandBatcher
from services.embedded import free_port
from services.errors import StoreUnavailable
from services.redis_backend import WAKEUP_SHARD_CHANNELS, WAKEUP_SHARDS, ClusterRedis, wakeup_shard_channel
from tests.support import users_by_node


@pytest.fixture
def redis_cluster() -> bool:
    return True


@pytest.fixture
def wakeup_hints() -> bool:
    """Hints on: sharded pub/sub is what differs in a cluster; polling runs in the marked delivery tests."""
    return True


def _slot(key: str) -> int:
    return key_slot(key.encode())


@pytest.mark.parametrize(
    "user_id", ["alice", "a{b}c", "{", "}", "{}", "}{", "u:1}:{x", "%7B", "ü ñ 🙂", "x" * 200, "bellcast:{u:bob}"]
)
def test_every_key_of_a_user_lies_in_the_slot_of_its_hash_tag(user_id):
    tag = user_tag(user_id)
    assert tag.count("{") == 1 and tag.count("}") == 1, "braces in the id must not move the tag"
    keys = [connections_key(user_id), inbox_key(user_id, uuid.uuid4().hex), inbox_key(user_id, "c")]
    assert {_slot(key) for key in keys} == {_slot(tag)}


def test_users_whose_ids_differ_only_in_braces_have_different_keys():
    assert len({connections_key(user_id) for user_id in ["ab", "{ab}", "a{b", "a}b", "a%7Bb"]}) == 5


def test_wakeup_channels_cover_each_part_of_the_slot_space_and_a_user_gets_the_one_of_its_part():
    parts = [_slot(channel) * WAKEUP_SHARDS // REDIS_CLUSTER_HASH_SLOTS for channel in WAKEUP_SHARD_CHANNELS]
    assert parts == list(range(WAKEUP_SHARDS))
    for user_id in ("alice", "bob", "user42"):
        key = connections_key(user_id)
        part = _slot(key) * WAKEUP_SHARDS // REDIS_CLUSTER_HASH_SLOTS
        assert wakeup_shard_channel(key) == WAKEUP_SHARD_CHANNELS[part]


@pytest.mark.gen_test
async def test_every_primary_holds_wakeup_channels_so_the_hub_watches_each(runtime):
    await runtime.wakeups.wait_subscribed()
    holders = {runtime.redis.get_node_from_key(channel).name for channel in WAKEUP_SHARD_CHANNELS}
    assert holders == {node.name for node in runtime.redis.get_primaries()}
    assert len(holders) == 3


@pytest.mark.gen_test
async def test_one_batch_of_commands_for_users_on_every_node_is_answered_for_each(runtime):
    users = [user for users in users_by_node(runtime.redis, 2).values() for user in users]
    inboxes = [runtime.delivery_cache.open_inbox(user) for user in users]
    # Issued in one loop iteration: one pipeline, which redis-py splits between the three nodes.
    assert await asyncio.gather(*(inbox.register() for inbox in inboxes)) == [1] * len(users)
    for inbox in inboxes:
        assert await runtime.redis.zcard(connections_key(inbox.user_id)) == 1
    await asyncio.gather(*(inbox.deregister() for inbox in inboxes))
    for inbox in inboxes:
        assert await runtime.redis.exists(connections_key(inbox.user_id)) == 0


@pytest.mark.gen_test
async def test_streams_of_users_on_every_node_each_receive_only_their_own(api, open_stream, runtime):
    users = [user for users in users_by_node(runtime.redis, 2).values() for user in users]
    streams = {user: await open_stream(user) for user in users}
    for stream in streams.values():
        await stream.next_event()
    created = await asyncio.gather(*(api.create(user, f"for {user}") for user in users))
    for user, notification in zip(users, created, strict=True):
        [event] = await streams[user].notifications(1)
        assert event.json() == notification
    for stream in streams.values():
        await stream.assert_silent(0.2)


@pytest.mark.gen_test
async def test_a_command_with_keys_in_two_slots_is_a_bug_that_surfaces_not_an_outage(runtime):
    """Otherwise streams would take it for an unreachable Redis, recover from MongoDB, and hide it."""
    alice, bob = connections_key("alice"), connections_key("bob")
    assert _slot(alice) != _slot(bob)
    with pytest.raises(RedisClusterException, match="same key slot"):
        await runtime.batcher.execute("DEL", alice, bob)


@pytest.mark.gen_test
async def test_an_unreachable_cluster_is_an_outage_for_the_streams_and_the_health_check():
    redis = ClusterRedis(f"redis://127.0.0.1:{free_port()}")
    cache = DeliveryCache(redis, CommandBatcher(redis))
    try:
        with pytest.raises(StoreUnavailable):
            await cache.ping()
        with pytest.raises(StoreUnavailable):
            await cache.open_inbox("alice").register()
    finally:
        await redis.aclose()
