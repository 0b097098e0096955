"""What makes thousands of streams per process cheap: pipelined Redis commands and wake-up hints.

* `CommandBatcher` sends the Redis commands that streams issue during one event-loop
  iteration (scans, registrations, removals) in one pipeline: one round trip for many streams.
* `WakeupHub` holds this process's single pub/sub subscription. The cache observer publishes
  the user id of each new notification; the hub wakes the local streams of that user so they
  scan at once. Idle streams touch no network. Hints only make delivery fast: a stream also
  scans on its own now and then, and after the subscription was lost every stream scans.
  A notification Redis would not queue is announced on a second channel instead: its user's
  streams catch up from MongoDB.

In a Redis Cluster, a pipeline's commands go to the nodes of their keys (redis-py's cluster
pipeline splits it by node and sends the parts at once); no command names keys of two slots,
and none is MULTI/EXEC. Hints travel on sharded channels (SPUBLISH/SSUBSCRIBE) spread over the
slot space: a hint stays within one shard instead of being copied to every node as a classic
PUBLISH is, it goes out in the same pipeline as the entries it announces (a cluster pipeline
refuses PUBLISH), and the hub, subscribed on every primary, notices any of them going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.asyncio.connection import Connection
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, PubSubError, RedisClusterException, RedisError, ResponseError

from services.batching import IterationBatches
from services.errors import StoreUnavailable
from services.metrics import Metrics
from services.stores import DEFAULT_STORE_TIMEOUT_SECONDS, RedisClient, redis_unavailable

log = logging.getLogger("bellcast.delivery")

WAKEUP_CHANNEL = "bellcast:wakeups"
# Where an observer that could not queue a notification asks every process to have that user's
# streams catch up from MongoDB (see `WakeupHub.announce_recovery`). In a cluster it is one
# sharded channel: announcements are rare, and a hub that loses its node recovers every stream.
RECOVERY_CHANNEL = "bellcast:recoveries"
RECOVERY_CHANNEL_BYTES = RECOVERY_CHANNEL.encode()
# Sharded wake-up channels of a cluster, one per equal part of the slot space (256 slots):
# every primary serving 511 or more consecutive slots holds one (any of up to 32 primaries
# with evenly split slots), and so the hub's subscription watches it.
WAKEUP_SHARDS = 64
# The longest a pipeline grows; more commands in one loop iteration go in several.
MAX_PIPELINE_COMMANDS = 2000
SUBSCRIPTION_POLL_SECONDS = 1.0
RECONNECT_BACKOFF_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)


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


@dataclass(frozen=True)
class StreamTiming:
    """How often streams act: heartbeats, and scans with or without wake-up hints."""

    poll_interval: float
    heartbeat_interval: float
    safety_scan_interval: float
    wakeup_hints: bool

    @property
    def tick_interval(self) -> float:
        """A stream's PeriodicCallback period: every poll without hints; with them, the slow safety scan.

        Heartbeats are not ticks: the registry sends them for all streams in one sweep.
        """
        return self.safety_scan_interval if self.wakeup_hints else self.poll_interval


class CommandBatcher:
    """Queues Redis commands and sends those of one loop iteration together, without a transaction.

    `redis` should be a client of its own, `connect_redis(..., batches=True)`: each pipeline is
    bounded by `timeout` as a whole rather than each reply. On a single Redis the batcher keeps
    the connections it took from the client's pool and writes and reads on them itself
    (`_execute_on_connection`); a cluster's pipelines go through redis-py's cluster pipeline,
    which splits them by node.
    """

    def __init__(
        self, redis: RedisClient, timeout: float = DEFAULT_STORE_TIMEOUT_SECONDS, metrics: Metrics | None = None
    ) -> None:
        self._redis = redis
        self._timeout = timeout
        self._metrics = metrics
        self._batches: IterationBatches[Sequence[Sequence[Any]], list[Any]] = IterationBatches(self._send_queued)
        # A single Redis's connections between two pipelines: one each for the pipelines in flight at once.
        self._idle_connections: list[Connection] = []

    async def execute(self, *command: Any) -> Any:
        """Run one command in the next pipeline; RedisError becomes StoreUnavailable."""
        return (await self.execute_many([command]))[0]

    def execute_many(self, commands: Sequence[Sequence[Any]]) -> asyncio.Future[list[Any]]:
        """Run several commands, in order, in the next pipeline; the future has their replies."""
        return self._batches.add(commands)

    async def _send_queued(self, queued: list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]]) -> None:
        batches: list[list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]]] = [[]]
        size = 0
        for entry in queued:
            if size >= MAX_PIPELINE_COMMANDS:
                batches.append([])
                size = 0
            batches[-1].append(entry)
            size += len(entry[0])
        if len(batches) == 1:
            await self._send(batches[0])  # the usual case, without a task more
        else:
            await asyncio.gather(*(self._send(batch) for batch in batches))

    async def _send(self, batch: list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]]) -> None:
        if self._metrics is not None:
            self._metrics.redis_pipeline_commands.observe(sum(len(commands) for commands, _ in batch))
        flat = [command for commands, _ in batch for command in commands]
        try:
            async with asyncio.timeout(self._timeout):
                if isinstance(self._redis, RedisCluster):
                    results = await self._execute_pipeline(self._redis, flat)
                else:
                    results = await self._execute_on_connection(self._redis, flat)
        except (RedisError, RedisClusterException, OSError) as error:  # TimeoutError is an OSError
            results = [error] * len(flat)
            if self._metrics is not None:
                self._metrics.store_error("redis")
        position = 0
        for commands, future in batch:
            replies = results[position : position + len(commands)]
            position += len(commands)
            if future.done():
                continue
            failure = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if failure is not None and not redis_unavailable(failure):
                future.set_exception(failure)  # a bug, such as keys of two slots: let it surface
            elif failure is not None:
                unavailable = StoreUnavailable("the delivery cache is unavailable")
                unavailable.__cause__ = failure
                future.set_exception(unavailable)
            else:
                future.set_result(replies)

    @staticmethod
    async def _execute_pipeline(redis: RedisCluster, commands: list[Sequence[Any]]) -> list[Any]:
        async with redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))

    async def _execute_on_connection(
        self, redis: Redis, commands: list[Sequence[Any]], retry: bool = True
    ) -> list[Any]:
        """What redis-py's pipeline does on a single Redis, without what it costs around that.

        A Pipeline object, the pool's lock and its observability hooks at each use cost more than
        the commands: one HGETALL took 347 µs of CPU through the pipeline, 64 µs here (a pipeline
        of ten: 423 and 136 µs). hiredis packs the commands, byte for byte as redis-py's own Python
        packer does at a tenth of its cost (twenty: 87-124 µs, 8-17 µs). Replies are parsed by the
        client, as the pipeline's are, and a command's error reply is its result, as with
        `raise_on_error=False`.

        A connection goes back to the idle ones only once every reply was read. redis-py closes one
        that failed, or whose reading was cancelled (the batch timed out), so no late reply is ever
        read as another command's. A connection Redis closed (it restarted) is retried once on a
        new one, as the client's Retry does: every command the batcher sends may run twice.
        """
        try:
            packed = b"".join([hiredis.pack_command(tuple(command)) for command in commands])
        except TypeError as error:  # an argument of no Redis type: what redis-py's packer raises
            raise DataError(str(error)) from error
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
                return await self._execute_on_connection(redis, commands, retry=False)
            raise
        self._idle_connections.append(connection)
        return replies

    async def close(self) -> None:
        """Wait for the pipelines already sent; give the connections kept back to the client's pool."""
        await self._batches.wait_sent()
        if isinstance(self._redis, Redis):
            for connection in self._idle_connections:
                await self._redis.connection_pool.release(connection)
        self._idle_connections.clear()


class Wakeable(Protocol):
    """A stream that can be told its inbox has something, or may lack something."""

    def wake(self) -> None:
        """Scan the inbox soon."""

    def recover(self) -> None:
        """Something owed may be missing from the inbox: catch up from MongoDB with the next scan."""


class WakeupHub:
    """This process's one subscription to wake-up hints, fanned out to its local streams.

    It also notices when Redis goes away and comes back, with or without hints.
    """

    def __init__(self, redis: RedisClient, batcher: CommandBatcher) -> None:
        self._redis = redis
        self._batcher = batcher
        # A user's one stream is held as itself; only a user with several streams gets a set.
        self._listeners: dict[str, Wakeable | set[Wakeable]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._announcements: set[asyncio.Task[None]] = set()
        self._subscribed = asyncio.Event()
        self._failed_attempts = 0
        # The eviction settings last warned about, so that a Redis coming back warns only of a change.
        self._eviction_warned: frozenset[str] = frozenset()
        self.outages = 0
        # Moves on each time the subscription comes back after a loss: Redis may have restarted
        # or dropped what it queued meanwhile, so streams compare it to know they must recover.
        self.epoch = 0

    def listen(self, user_id: str, listener: Wakeable) -> None:
        """Wake `listener` whenever a notification for `user_id` is queued."""
        listening = self._listeners.get(user_id)
        if listening is None:
            self._listeners[user_id] = listener
        elif isinstance(listening, set):
            listening.add(listener)
        elif listening is not listener:
            self._listeners[user_id] = {listening, listener}

    def ignore(self, user_id: str, listener: Wakeable) -> None:
        """Stop waking `listener`."""
        listening = self._listeners.get(user_id)
        if listening is listener:
            del self._listeners[user_id]
        elif isinstance(listening, set):
            listening.discard(listener)
            if not listening:
                del self._listeners[user_id]

    def start(self) -> None:
        """Subscribe in the background (the task is kept and cancelled by `close`)."""
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read_forever())

    async def wait_subscribed(self) -> None:
        """Return once the subscription is in place (tests and start-up)."""
        await self._subscribed.wait()

    def announce_recovery(self, user_id: str) -> None:
        """A notification for `user_id` could not be queued: have that user's streams catch up from MongoDB.

        Redis answered with a refusal, or not in time, while the subscription stayed up: no stream
        would learn of the notification before it reconnects. The announcement goes to every
        process on RECOVERY_CHANNEL (in a cluster with SPUBLISH), through the batcher
        (announcements made together share a pipeline; a Redis that hangs is not sent a connection
        each); where Redis refuses that too, or no process heard it, only this process's streams
        recover. In the background: the create's answer does not wait for it.
        """
        task = asyncio.ensure_future(self._announce_recovery(user_id))
        self._announcements.add(task)
        task.add_done_callback(self._announcements.discard)

    async def _announce_recovery(self, user_id: str) -> None:
        publish = "SPUBLISH" if isinstance(self._redis, RedisCluster) else "PUBLISH"
        try:
            if await self._batcher.execute(publish, RECOVERY_CHANNEL, user_id):
                return  # heard, by this process's subscription too unless it is being replaced
        except StoreUnavailable as error:
            log.debug("recovery of %s's streams not announced (%s): this process's only", user_id, error.__cause__)
        self._recover(user_id)

    async def close(self) -> None:
        """Unsubscribe and stop."""
        for announcement in tuple(self._announcements):
            announcement.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    def _listening(self, user_id: str) -> tuple[Wakeable, ...]:
        listening = self._listeners.get(user_id)
        if isinstance(listening, set):
            return tuple(listening)
        return () if listening is None else (listening,)

    def _wake(self, user_id: str) -> None:
        for listener in self._listening(user_id):
            listener.wake()

    def _recover(self, user_id: str) -> None:
        for listener in self._listening(user_id):
            listener.recover()

    def _on_message(self, message: dict[str, Any]) -> None:
        if message["channel"] == RECOVERY_CHANNEL_BYTES:
            self._recover(message["data"].decode())
        else:
            self._wake(message["data"].decode())

    def _wake_everyone(self) -> None:
        for user_id in tuple(self._listeners):
            self._wake(user_id)

    async def _read_forever(self) -> None:
        while True:
            try:
                if isinstance(self._redis, RedisCluster):
                    await self._read_shards(self._redis)
                else:
                    await self._read(self._redis)
            except Exception as error:
                # Anything else is a client's bug met on the way (redis-py's connection losing its
                # writer while a cluster node restarts): ended by it, the hub would wake no stream
                # again and notice no outage, so it subscribes again as after an outage.
                self._subscribed.clear()
                if self._failed_attempts == 0:
                    self.outages += 1
                    if isinstance(error, RedisError | RedisClusterException | OSError):
                        log.warning("Redis unreachable (%s); streams stay open and recover when it is back", error)
                    else:
                        log.error("wake-up subscription failed; subscribing again", exc_info=error)
                delay = RECONNECT_BACKOFF_SECONDS[min(self._failed_attempts, len(RECONNECT_BACKOFF_SECONDS) - 1)]
                self._failed_attempts += 1
                await asyncio.sleep(delay)

    async def _on_subscribed(self) -> None:
        """The subscription is in place: check how Redis evicts, and after an outage have every stream recover."""
        await self._warn_if_evicting()
        if self._failed_attempts:
            log.warning("Redis is back after %d attempts; every stream recovers what it missed", self._failed_attempts)
            # Hints, registrations and queued entries may be lost: let every stream recover.
            self.epoch += 1
            self._wake_everyone()
        self._failed_attempts = 0
        self._subscribed.set()

    async def _warn_if_evicting(self) -> None:
        """Warn if Redis may evict keys: it would drop queued entries and registrations without an error.

        With `noeviction` (or no `maxmemory`), a full Redis refuses the observer's write with OOM and
        the user's streams recover from MongoDB (`announce_recovery`). An evicted entry is instead a
        live delivery lost (MongoDB, the list and a reconnect still have it), and an evicted
        registration one delayed until its renewal notices. Checked each time the subscription is
        made, so a Redis restarted with other settings is noticed.
        """
        try:
            if isinstance(self._redis, RedisCluster):
                replies = await self._redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
                memories = list(replies.values())
            else:
                memories = [await self._redis.info("memory")]
        except (RedisError, RedisClusterException) as error:  # INFO refused by an ACL, or Redis gone again
            log.debug("Redis's eviction policy not checked (%s)", error)
            return
        evicting = frozenset(
            f"{memory.get('maxmemory_policy')} (maxmemory {memory.get('maxmemory')})"
            for memory in memories
            if memory.get("maxmemory") and memory.get("maxmemory_policy") != "noeviction"
        )
        if evicting and evicting != self._eviction_warned:
            log.warning(
                "Redis may evict keys (maxmemory-policy %s): a notification whose queued entry is evicted "
                "reaches no open stream, and one created while its user's registration is gone arrives "
                "only once the registration's renewal notices (minutes later); set maxmemory-policy noeviction",
                ", ".join(sorted(evicting)),
            )
        self._eviction_warned = evicting

    async def _read(self, redis: Redis) -> None:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(WAKEUP_CHANNEL, RECOVERY_CHANNEL)
            await self._on_subscribed()
            while True:
                message = await pubsub.get_message(timeout=SUBSCRIPTION_POLL_SECONDS)
                if message is not None and message["type"] == "message":
                    self._on_message(message)
        finally:
            await pubsub.aclose()

    async def _read_shards(self, redis: RedisCluster) -> None:
        """Subscribe to every sharded channel, then read each node's part at once until one fails."""
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
            await self._on_subscribed()
            readers = [asyncio.ensure_future(self._read_shard(pubsub, node)) for node in nodes.values()]
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_EXCEPTION)
            for reader in done:
                reader.result()
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await pubsub.aclose()

    async def _read_shard(self, pubsub: ClusterPubSub, node: ClusterNode) -> None:
        while True:
            if node.name not in pubsub.node_pubsub_mapping:
                # redis-py moved the channels elsewhere after a change of the cluster's topology.
                raise PubSubError(f"the wake-up channels left {node.name}")
            message = await pubsub.get_sharded_message(
                ignore_subscribe_messages=True, timeout=SUBSCRIPTION_POLL_SECONDS, target_node=node
            )
            if message is not None and message["type"] == "smessage":
                self._on_message(message)
