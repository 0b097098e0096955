"""One Redis server or a Redis Cluster: what differs between them, chosen once at start-up.

`RedisBackend` is what the delivery cache, the command batcher and the wake-up hub ask of Redis;
`SingleRedis` and `ClusterRedis` answer it, each with its own scripts, publish command and
subscription. `connect_redis_backend` picks one from the settings.

In a cluster every command names keys of one user only, so none spans hash slots, and a
pipeline of many users' commands is split by node (redis-py's cluster pipeline sends the parts at
once; none is MULTI/EXEC). Hints travel on sharded channels (SPUBLISH/SSUBSCRIBE) spread over the
slot space: a hint stays within one shard instead of being copied to every node as a classic
PUBLISH is, it goes out in the same pipeline as the entries it announces (a cluster pipeline
refuses PUBLISH), and the hub, subscribed on every primary, notices any of them going away.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.asyncio.connection import Connection
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, PubSubError, ResponseError

from services.stores import DEFAULT_STORE_TIMEOUT_SECONDS, connect_redis

if TYPE_CHECKING:
    from services.cache import ConnectionInbox

log = logging.getLogger("bellcast.wakeups")

WAKEUP_CHANNEL = "bellcast:wakeups"
# On a single Redis, a hint that carries what it announces: `[user id, [field, value, ...]]` in JSON, the entries
# the observer queued in every inbox of the user, so that an idle stream sends them without reading its inbox
# (it still deletes exactly what it sent). One whose inboxes did not all take the entries (a full one got the
# overflow mark) is a plain hint on WAKEUP_CHANNEL: its streams read their inboxes.
DELIVERY_CHANNEL = "bellcast:deliveries"
# Removes the entries of a delivery (ARGV) from the inboxes (KEYS) of the streams that wrote them; answers how many
# entries each inbox still holds (queued since, or left from before: its stream then reads it).
REMOVE_DELIVERED = """
local left = {}
for i, inbox in ipairs(KEYS) do
  redis.call('HDEL', inbox, unpack(ARGV))
  left[i] = redis.call('HLEN', inbox)
end
return left
"""
# Where an observer that could not queue a notification asks every process to have that user's
# streams catch up from MongoDB (see `WakeupHub.announce_recovery`). In a cluster it is one
# sharded channel: announcements are rare, and a hub that loses its node recovers every stream.
RECOVERY_CHANNEL = "bellcast:recoveries"
# The field an inbox gets in place of what comes once it is full: no notification has an empty id.
OVERFLOW_MARK = ""
# Inbox fields of `changed` events start with this: '~' sorts after every character of a notification id, so a
# scan sends the notifications it found before the changes queued with them, each kind in the order queued.
CHANGE_FIELD_PREFIX = "~change:"


def split_changes(entries: Sequence[tuple[str, Any]]) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """An inbox's entries (field, JSON) as its notifications and its `changed` events, each in the order given."""
    notifications = [entry for entry in entries if not entry[0].startswith(CHANGE_FIELD_PREFIX)]
    if len(notifications) == len(entries):
        return notifications, []
    return notifications, [entry for entry in entries if entry[0].startswith(CHANGE_FIELD_PREFIX)]


# Sharded wake-up channels of a cluster, one per equal part of the slot space (256 slots):
# every primary serving 511 or more consecutive slots holds one (any of up to 32 primaries
# with evenly split slots), and so the hub's subscription watches it.
WAKEUP_SHARDS = 64
# How long one read of the subscription waits for a message before it looks again.
SUBSCRIPTION_POLL_SECONDS = 1.0

# Completes the change to queue (its inbox `field`, its JSON up to the counts) with the user's counts kept in
# `key`, and appends it to `entries`; answers the counts it was given. A change that adds to the counts (a
# create's notifications, a read's -1 unread: `unread_added`, `unseen_added`) adds to the kept ones first; where
# none are kept, marks them (`mark`, for COUNTS_TTL `ttl`) so that a count under way keeps nothing
# (services/cache.py, CountsCache), and queues no change. Counts kept by a recount that read MongoDB after the
# change was made (`counted`, in ms, not before `since`) may include it: those are dropped and marked the same
# way, as are counts the change would take below zero (MongoDB changed behind bellcast's back), and the service
# recounts. A change that carries counts of its own (`unread`, `unseen`: read in MongoDB at some moment) takes
# the kept ones instead where there are: they are as new or newer, so that a change announced late never takes
# a badge back. Answers {-1, -1} when no change was queued. The scripts that queue begin with it, so that
# counting and queueing are one command.
ADD_TO_COUNTS = """
local function add_to_counts(
  key, unread_added, unseen_added, since, mark, ttl, entries, field, json_before_counts, unread, unseen
)
  if field == '' then
    return {-1, -1}
  end
  local adding = unread_added ~= '0' or unseen_added ~= '0'
  local kept = redis.call('HMGET', key, 'unread', 'unseen', 'counted')
  if kept[1] and adding then
    if kept[3] and tonumber(kept[3]) >= tonumber(since) then
      kept[1] = false
    else
      unread = redis.call('HINCRBY', key, 'unread', unread_added)
      unseen = redis.call('HINCRBY', key, 'unseen', unseen_added)
      if unread < 0 or unseen < 0 then
        kept[1] = false
      end
    end
  elseif kept[1] then
    unread, unseen = kept[1], kept[2]
  end
  if not kept[1] and adding then
    redis.call('HDEL', key, 'unread', 'unseen', 'counted')
    redis.call('HSET', key, 'recount', mark)
    redis.call('EXPIRE', key, ttl)
    return {-1, -1}
  end
  entries[#entries + 1] = field
  entries[#entries + 1] = json_before_counts .. '"unread_count":' .. unread .. ',"unseen_count":' .. unseen .. '}'
  return {tonumber(unread), tonumber(unseen)}
end
"""


@dataclass(frozen=True, slots=True)
class CountsToAdd:
    """What a change adds to the user's kept counts, and the `changed` event to queue with them."""

    key: str
    unread_added: int
    unseen_added: int
    # When the change was made, in ms since the epoch (`add_to_counts`'s `since`).
    since: int
    mark: str
    ttl: int
    # The change's inbox field, and its JSON up to the counts, which the script completes.
    field: str
    json_before_counts: str
    # The counts a change carries of its own (not a create's), used where none are kept.
    unread: int = -1
    unseen: int = -1

    def arguments(self) -> tuple[object, ...]:
        """The arguments `add_to_counts` takes after the key, in the order the queueing scripts pass them."""
        return (
            self.unread_added,
            self.unseen_added,
            self.since,
            self.mark,
            self.ttl,
            self.field,
            self.json_before_counts,
            self.unread,
            self.unseen,
        )


# Commands the batcher runs on behalf of one caller; the future has their replies.
ExecuteMany = Callable[[Sequence[Sequence[Any]]], Awaitable[list[Any]]]
# A hint or recovery message as redis-py hands it over.
OnMessage = Callable[[dict[str, Any]], None]


def _spread_channels(count: int) -> tuple[str, ...]:
    channels = []
    for part in range(count):
        tag = 0
        while key_slot(f"{{w{tag}}}".encode()) * count // REDIS_CLUSTER_HASH_SLOTS != part:
            tag += 1
        channels.append(f"{WAKEUP_CHANNEL}:{{w{tag}}}")
    return tuple(channels)


WAKEUP_SHARD_CHANNELS = _spread_channels(WAKEUP_SHARDS)


def wakeup_shard_channel(key: str) -> str:
    """The sharded channel for hints about the owner of `key`: the one in the same part of the
    slot space, so usually on the same node, and the hint rides along with the entries."""
    return WAKEUP_SHARD_CHANNELS[key_slot(key.encode()) * WAKEUP_SHARDS // REDIS_CLUSTER_HASH_SLOTS]


class RedisBackend(Protocol):
    """What bellcast asks of Redis where one server and a cluster differ."""

    @property
    def client(self) -> Redis | RedisCluster:
        """The client for everything but the batcher's pipelines (subscription, INFO, rate limits)."""

    # PUBLISH on one server; SPUBLISH, which stays within a shard, on a cluster.
    publish_command: str
    # Whether a pipeline of one key's commands may run as a MULTI/EXEC transaction.
    transactions: bool

    async def execute_pipeline(self, commands: list[Sequence[Any]]) -> list[Any]:
        """Run `commands` in one round trip, without a transaction; a command's error reply is its result."""

    async def queue_for_live_connections(
        self,
        execute_many: ExecuteMany,
        connections_key: str,
        inbox_prefix: str,
        entries: Sequence[tuple[str, str]],
        inbox_ttl: int,
        inbox_cap: int,
        hint: str | None,
        counting: CountsToAdd | None = None,
    ) -> tuple[int, tuple[int, int] | None]:
        """Queue `entries` (field, JSON) in the inbox of each live connection in `connections_key`, publish `hint`
        (a user id) if any was; how many were, and with `counting` the counts after it, if kept (then the change
        was queued after the entries). An inbox holding `inbox_cap` fields gets the OVERFLOW_MARK instead of the
        entries: its stream then catches up from MongoDB."""

    async def safety_scan(
        self, execute_many: ExecuteMany, inboxes: Sequence[ConnectionInbox], registration_ttl: int
    ) -> list[bool]:
        """Which inboxes hold entries, asked together with renewing the registrations due."""

    async def ping(self) -> None:
        """Raise unless Redis answers: in a cluster, every primary."""

    async def memory_infos(self) -> list[dict[str, Any]]:
        """INFO memory of every server that holds data."""

    async def read_hints(self, on_subscribed: Callable[[], Awaitable[None]], on_message: OnMessage) -> None:
        """Subscribe to the hint and recovery channels and hand each message on, until the subscription fails."""

    async def aclose(self) -> None:
        """Close the clients' connections."""


class SingleRedis:
    """One Redis server: the observer and the safety scan each run as one script, hints go by PUBLISH.

    The batcher's pipelines have a client of their own, bounded per pipeline, not per reply
    (`connect_redis(..., batches=True)`); they are written and read on connections kept between
    pipelines (`execute_pipeline`).
    """

    publish_command = "PUBLISH"
    transactions = True

    # The observer's one command: completes the change (field ARGV[14], its JSON ARGV[15]) with the user's
    # kept counts (KEYS[2]), ARGV[9] and ARGV[10] added to them (by a change made at ARGV[11]; ARGV[12] the mark
    # and ARGV[13] the TTL if none are kept), or else ARGV[16] and ARGV[17], and appends it to the entries
    # (`add_to_counts`); drops the user's expired registrations (KEYS[1]), queues the entries (from ARGV[18] on) in the
    # inbox of each live one (ARGV[2] and the connection id), or the overflow mark (ARGV[5]) in one that
    # holds ARGV[4] fields already, renews the inboxes' TTL (ARGV[3]) and, if any was written, publishes
    # the hint (none if ARGV[6] is empty): the user and the entries as JSON on ARGV[8] if every inbox
    # took them, else the user id alone (ARGV[7] on ARGV[6]). Answers the connections and the counts.
    # One round trip and one command per create where a cluster's observer needs two pipelines: the
    # inboxes' names are made here, which only a single Redis allows (a cluster must be told every key a
    # script touches, to route it). Sent with EVAL, not EVALSHA:
    # Redis caches the script by its digest, and a restarted Redis needs nothing loaded again.
    QUEUE_FOR_LIVE_CONNECTIONS = (
        ADD_TO_COUNTS
        + """
local entries = {unpack(ARGV, 18)}
local counts = add_to_counts(
  KEYS[2], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], entries, ARGV[14], ARGV[15], ARGV[16], ARGV[17]
)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local connections = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local overflowed = false
for _, connection in ipairs(connections) do
  local inbox = ARGV[2] .. connection
  if redis.call('HLEN', inbox) < tonumber(ARGV[4]) then
    redis.call('HSET', inbox, unpack(entries))
  else
    redis.call('HSET', inbox, ARGV[5], '')
    overflowed = true
  end
  redis.call('EXPIRE', inbox, ARGV[3])
end
if #connections > 0 and ARGV[6] ~= '' then
  if overflowed then
    redis.call('PUBLISH', ARGV[6], ARGV[7])
  else
    redis.call('PUBLISH', ARGV[8], cjson.encode({ARGV[7], entries}))
  end
end
return {#connections, counts[1], counts[2]}
"""
    )

    # A safety scan, one command however many streams it covers: renews the due registrations (the
    # KEYS after the ARGV[1] inboxes; their connection ids from ARGV[4]), then answers which inboxes
    # hold entries, by position. One EXISTS per thousand inboxes settles the usual answer, none; only
    # a thousand of which some hold entries is asked key by key. (Thousands: Lua's unpack returns no
    # more than about 8,000 values.)
    SAFETY_SCAN = """
local inboxes = tonumber(ARGV[1])
local holding = {}
for i = inboxes + 1, #KEYS do
  local connection = ARGV[3 + i - inboxes]
  if redis.call('ZSCORE', KEYS[i], connection) then
    redis.call('ZADD', KEYS[i], 'XX', ARGV[2], connection)
    redis.call('EXPIRE', KEYS[i], ARGV[3])
  else
    holding[#holding + 1] = i  -- no registration to renew
  end
end
for first = 1, inboxes, 1000 do
  local last = math.min(first + 999, inboxes)
  if redis.call('EXISTS', unpack(KEYS, first, last)) > 0 then
    for i = first, last do
      if redis.call('EXISTS', KEYS[i]) == 1 then holding[#holding + 1] = i end
    end
  end
end
return holding
"""

    def __init__(self, url: str, timeout: float = DEFAULT_STORE_TIMEOUT_SECONDS) -> None:
        self._client: Redis = connect_redis(url, timeout=timeout)  # type: ignore[assignment]
        self._batch_client: Redis = connect_redis(url, timeout=timeout, batches=True)  # type: ignore[assignment]
        # Connections between two pipelines: one each for the pipelines in flight at once.
        self._idle_connections: list[Connection] = []
        self._closed = False

    @property
    def client(self) -> Redis:
        """The client for everything but the batcher's pipelines."""
        return self._client

    async def execute_pipeline(self, commands: list[Sequence[Any]], retry: bool = True) -> list[Any]:
        """What redis-py's pipeline does, without what it costs around that.

        A Pipeline object, the pool's lock and its observability hooks at each use cost more than
        the commands. hiredis packs the commands, byte for byte as redis-py's own Python packer does
        at a fraction of its cost. Replies are parsed by the client, as the pipeline's are, and a
        command's error reply is its result, as with `raise_on_error=False`.

        A connection goes back to the idle ones only once every reply was read. redis-py closes one
        that failed, or whose reading was cancelled (the batch timed out), so no late reply is ever
        read as another command's. A connection Redis closed (it restarted) is retried once on a
        new one, as the client's Retry does: every command the batcher sends may run twice.

        Once `aclose` has begun, a pipeline fails as if Redis were gone, and is not retried: redis-py's
        pool opens new connections after its disconnect, and nothing would close those.
        """
        if self._closed:
            raise RedisConnectionError("the Redis backend is closed")
        try:
            packed = b"".join([hiredis.pack_command(tuple(command)) for command in commands])
        except TypeError as error:  # an argument of no Redis type: what redis-py's packer raises
            raise DataError(str(error)) from error
        redis = self._batch_client
        pool = redis.connection_pool
        connection = self._idle_connections.pop() if self._idle_connections else await pool.get_connection()
        try:
            await connection.send_packed_command(packed)
            replies: list[Any] = []
            for command in commands:
                try:
                    replies.append(await redis.parse_response(connection, command[0]))
                except ResponseError as error:
                    replies.append(error)
        except BaseException as error:
            await connection.disconnect(nowait=True)
            await pool.release(connection)
            if retry and isinstance(error, RedisConnectionError):
                return await self.execute_pipeline(commands, retry=False)
            raise
        if self._closed:  # `aclose` began meanwhile, and missed this connection if it was still opening
            await connection.disconnect()
            await pool.release(connection)
        else:
            self._idle_connections.append(connection)
        return replies

    async def queue_for_live_connections(
        self,
        execute_many: ExecuteMany,
        connections_key: str,
        inbox_prefix: str,
        entries: Sequence[tuple[str, str]],
        inbox_ttl: int,
        inbox_cap: int,
        hint: str | None,
        counting: CountsToAdd | None = None,
    ) -> tuple[int, tuple[int, int] | None]:
        """One script counts, queues the entries for every live connection and publishes the hint, with them."""
        add = counting or CountsToAdd(connections_key, 0, 0, 0, "", 0, "", "")
        [(queued, unread, unseen)] = await execute_many(
            [
                (
                    "EVAL",
                    self.QUEUE_FOR_LIVE_CONNECTIONS,
                    2,
                    connections_key,
                    add.key,
                    time.time(),
                    inbox_prefix,
                    inbox_ttl,
                    inbox_cap,
                    OVERFLOW_MARK,
                    WAKEUP_CHANNEL if hint is not None else "",
                    hint or "",
                    DELIVERY_CHANNEL,
                    *add.arguments(),
                    *itertools.chain.from_iterable(entries),
                )
            ]
        )
        return int(queued), (int(unread), int(unseen)) if unread >= 0 else None

    async def safety_scan(
        self, execute_many: ExecuteMany, inboxes: Sequence[ConnectionInbox], registration_ttl: int
    ) -> list[bool]:
        """One script for all the inboxes and the registrations due."""
        keys = [inbox.key for inbox in inboxes]
        due = [inbox for inbox in inboxes if inbox.renewal_due()]
        [holding] = await execute_many(
            [
                (
                    "EVAL",
                    self.SAFETY_SCAN,
                    len(keys) + len(due),
                    *keys,
                    *(inbox.connections_key for inbox in due),
                    len(keys),
                    time.time() + registration_ttl,
                    registration_ttl,
                    *(inbox.connection_id for inbox in due),
                )
            ]
        )
        found = [False] * len(keys)
        for position in holding:
            if position <= len(keys):
                found[position - 1] = True
            else:  # a renewal with no registration to renew
                due[position - len(keys) - 1].registration_lost = True
        return found

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self._client.ping()

    async def memory_infos(self) -> list[dict[str, Any]]:
        """INFO memory of the server."""
        return [await self._client.info("memory")]

    async def read_hints(self, on_subscribed: Callable[[], Awaitable[None]], on_message: OnMessage) -> None:
        """One subscription to both channels."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(WAKEUP_CHANNEL, DELIVERY_CHANNEL, RECOVERY_CHANNEL)
            await on_subscribed()
            while True:
                message = await pubsub.get_message(timeout=SUBSCRIPTION_POLL_SECONDS)
                if message is not None and message["type"] == "message":
                    on_message(message)
        finally:
            await pubsub.aclose()

    async def aclose(self) -> None:
        """Give the batcher's kept connections back to their pool, then close both clients."""
        self._closed = True
        for connection in self._idle_connections:
            await self._batch_client.connection_pool.release(connection)
        self._idle_connections.clear()
        await self._batch_client.aclose()
        await self._client.aclose()


class ClusterRedis:
    """A Redis Cluster: every command names one user's keys, pipelines are split by node, hints go by SPUBLISH."""

    publish_command = "SPUBLISH"
    transactions = False

    # Completes the change (field ARGV[9], its JSON ARGV[10]) with the user's kept counts (the last key),
    # ARGV[4] and ARGV[5] added to them (by a change made at ARGV[6]; ARGV[7] the mark and ARGV[8] the TTL if
    # none are kept), or else ARGV[11] and ARGV[12], and appends it to the entries (`add_to_counts`); queues the
    # entries (from ARGV[13] on) in each inbox named (the other KEYS), or the overflow mark (ARGV[3]) in one that holds
    # ARGV[2] fields already, and renews their TTL (ARGV[1]): one command for all of a user's connections
    # instead of two per connection. The keys share the user's hash tag, so the cluster runs it on one node.
    # Answers the counts.
    QUEUE_IN_INBOXES = (
        ADD_TO_COUNTS
        + """
local entries = {unpack(ARGV, 13)}
local counts = add_to_counts(
  KEYS[#KEYS], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], entries, ARGV[9], ARGV[10], ARGV[11], ARGV[12]
)
for i = 1, #KEYS - 1 do
  local inbox = KEYS[i]
  if redis.call('HLEN', inbox) < tonumber(ARGV[2]) then
    redis.call('HSET', inbox, unpack(entries))
  else
    redis.call('HSET', inbox, ARGV[3], '')
  end
  redis.call('EXPIRE', inbox, ARGV[1])
end
return counts
"""
    )

    def __init__(self, url: str, timeout: float = DEFAULT_STORE_TIMEOUT_SECONDS) -> None:
        self._client: RedisCluster = connect_redis(url, cluster=True, timeout=timeout)  # type: ignore[assignment]
        self._batch_client: RedisCluster = connect_redis(url, cluster=True, timeout=timeout, batches=True)  # type: ignore[assignment]
        self._closed = False

    @property
    def client(self) -> RedisCluster:
        """The client for everything but the batcher's pipelines."""
        return self._client

    async def execute_pipeline(self, commands: list[Sequence[Any]]) -> list[Any]:
        """redis-py's cluster pipeline, which sends each node its part at once.

        After `aclose` it fails as if Redis were gone: the client would connect to every node again, and
        nothing would close those connections. (One in flight meanwhile gets a ConnectionError reply.)
        """
        if self._closed:
            raise RedisConnectionError("the Redis backend is closed")
        async with self._batch_client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))

    async def queue_for_live_connections(
        self,
        execute_many: ExecuteMany,
        connections_key: str,
        inbox_prefix: str,
        entries: Sequence[tuple[str, str]],
        inbox_ttl: int,
        inbox_cap: int,
        hint: str | None,
        counting: CountsToAdd | None = None,
    ) -> tuple[int, tuple[int, int] | None]:
        """Two pipelines: which connections are live, then the counts, the entries in each inbox and the hint."""
        now = time.time()
        _, connection_ids = await execute_many(
            [("ZREMRANGEBYSCORE", connections_key, "-inf", now), ("ZRANGEBYSCORE", connections_key, now, "+inf")]
        )
        if not connection_ids and counting is None:
            return 0, None
        add = counting or CountsToAdd(connections_key, 0, 0, 0, "", 0, "", "")
        inboxes = [inbox_prefix + connection_id.decode() for connection_id in connection_ids]
        commands: list[tuple[object, ...]] = [
            (
                "EVAL",
                self.QUEUE_IN_INBOXES,
                len(inboxes) + 1,
                *inboxes,
                add.key,
                inbox_ttl,
                inbox_cap,
                OVERFLOW_MARK,
                *add.arguments(),
                *itertools.chain.from_iterable(entries),
            )
        ]
        if hint is not None and connection_ids:
            commands.append(("SPUBLISH", wakeup_shard_channel(connections_key), hint))
        [(unread, unseen), *_] = await execute_many(commands)
        return len(connection_ids), (int(unread), int(unseen)) if unread >= 0 else None

    async def safety_scan(
        self, execute_many: ExecuteMany, inboxes: Sequence[ConnectionInbox], registration_ttl: int
    ) -> list[bool]:
        """One pipeline of an EXISTS per inbox and the renewals due: the keys lie in many slots."""
        keys = [inbox.key for inbox in inboxes]
        renewing = [(inbox, inbox.renewal_commands_if_due()) for inbox in inboxes]
        renewing = [(inbox, commands) for inbox, commands in renewing if commands]
        renewals = [command for _, commands in renewing for command in commands]
        replies = await execute_many([*(("EXISTS", key) for key in keys), *renewals])
        position = len(keys)
        for inbox, commands in renewing:
            inbox.note_renewal(replies[position : position + len(commands)])
            position += len(commands)
        return [bool(reply) for reply in replies[: len(keys)]]

    async def ping(self) -> None:
        """Raise unless every primary answers."""
        await self._client.ping(target_nodes=RedisCluster.PRIMARIES)

    async def memory_infos(self) -> list[dict[str, Any]]:
        """INFO memory of every primary."""
        replies = await self._client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        return list(replies.values())

    async def read_hints(self, on_subscribed: Callable[[], Awaitable[None]], on_message: OnMessage) -> None:
        """Subscribe to every sharded channel, then read each node's part at once until one fails."""
        redis = self._client
        await redis.initialize()
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        readers: list[asyncio.Task[None]] = []
        channels = (*WAKEUP_SHARD_CHANNELS, RECOVERY_CHANNEL)
        try:
            await pubsub.ssubscribe(*channels)
            nodes = {node.name: node for node in map(redis.get_node_from_key, channels) if node}
            unwatched = [node.name for node in redis.get_primaries() if node.name not in nodes]
            if unwatched:
                log.warning("no wake-up channel on %s: streams notice its restart only by their own scans", unwatched)
            await on_subscribed()
            readers = [asyncio.ensure_future(self._read_shard(pubsub, node, on_message)) for node in nodes.values()]
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_EXCEPTION)
            for reader in done:
                reader.result()
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await pubsub.aclose()

    @staticmethod
    async def _read_shard(pubsub: ClusterPubSub, node: ClusterNode, on_message: OnMessage) -> None:
        while True:
            if node.name not in pubsub.node_pubsub_mapping:
                # redis-py moved the channels elsewhere after a change of the cluster's topology.
                raise PubSubError(f"the wake-up channels left {node.name}")
            message = await pubsub.get_sharded_message(
                ignore_subscribe_messages=True, timeout=SUBSCRIPTION_POLL_SECONDS, target_node=node
            )
            if message is not None and message["type"] == "smessage":
                on_message(message)

    async def aclose(self) -> None:
        """Close both clients."""
        self._closed = True
        await self._batch_client.aclose()
        await self._client.aclose()


def connect_redis_backend(url: str, cluster: bool, timeout: float = DEFAULT_STORE_TIMEOUT_SECONDS) -> RedisBackend:
    """The backend for one Redis server, or with `cluster` for the Redis Cluster `url` names a node of."""
    return ClusterRedis(url, timeout) if cluster else SingleRedis(url, timeout)
