"""Clients of the two stores, created inside the running event loop."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pymongo.errors import OperationFailure
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError

MONGO_DRIVERS = ("pymongo", "motor")
# Every store call is bounded (STORE_TIMEOUT), so that a store that vanishes gives errors rather than hung requests.
DEFAULT_STORE_TIMEOUT_SECONDS = 5.0
# MongoDB connections the driver keeps open even when idle: it otherwise opens them when requests
# first come together, two at a time, and those requests wait. Options in MONGODB_URL win.
DEFAULT_MONGODB_MIN_POOL_SIZE = 10
# ... replacing each once idle this long: servers, proxies and NATs close idle connections (the
# embedded SecantusDB after about five minutes), and the driver only finds out when it uses one:
# the request that does waits, or fails.
DEFAULT_MONGODB_MAX_IDLE_MS = 60_000
# Connections to one node of a Redis Cluster; redis-py's default of 100 is fewer than the
# pipelines a busy process may have in flight, and a single Redis's pool has no limit.
REDIS_CLUSTER_CONNECTIONS_PER_NODE = 10000

RedisClient = Redis | RedisCluster
# Earlier than any date bellcast stores: the lower bound of a range on a date field, so that a query planner walks
# its index from the first date rather than through the documents without one (SecantusDB: 12 ms instead of 1.5 s
# among 50,000 notifications without an expiry).
EARLIEST_DATE = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
# MongoDB's error code for dropping an index that is not there.
INDEX_NOT_FOUND = 27


class MongoConnection:
    """A MongoDB client of either driver, with the one database bellcast uses."""

    def __init__(self, url: str, database: str, driver: str, timeout: float = DEFAULT_STORE_TIMEOUT_SECONDS) -> None:
        """`timeout` bounds each operation in seconds, finding a server included."""
        timeout_ms = max(1, round(timeout * 1000))
        options: dict[str, Any] = {
            "tz_aware": True,
            "serverSelectionTimeoutMS": timeout_ms,
            "connectTimeoutMS": timeout_ms,
            "timeoutMS": timeout_ms,
            "appname": "bellcast",
        }
        in_url = {name.lower() for name in parse_qs(urlsplit(url).query)}
        if "minpoolsize" not in in_url:
            options["minPoolSize"] = DEFAULT_MONGODB_MIN_POOL_SIZE
        if "maxidletimems" not in in_url:
            options["maxIdleTimeMS"] = DEFAULT_MONGODB_MAX_IDLE_MS
        if driver == "pymongo":
            from pymongo import AsyncMongoClient

            self.client: Any = AsyncMongoClient(url, **options)
        elif driver == "motor":
            from motor.motor_asyncio import AsyncIOMotorClient

            self.client = AsyncIOMotorClient(url, **options)
        else:
            raise ValueError(f"unknown MongoDB driver {driver!r}; use one of {', '.join(MONGO_DRIVERS)}")
        self.driver = driver
        self.database = self.client[database]

    async def close(self) -> None:
        """Close the client's connections.

        PyMongo's close is a coroutine. Motor's blocks until its threads have ended their sessions
        with the server, so it runs in a worker thread rather than stall the event loop meanwhile.
        """
        if self.driver == "motor":
            await asyncio.to_thread(self.client.close)
        else:
            await self.client.close()


def connect_redis(
    url: str, cluster: bool = False, timeout: float = DEFAULT_STORE_TIMEOUT_SECONDS, batches: bool = False
) -> RedisClient:
    """A pooled asyncio Redis client; replies are parsed by hiredis when it is installed.

    With `cluster`, `url` names one node of a Redis Cluster: the client learns the others and
    which hash slots each serves on first use, and sends every command to the node of its key.

    `batches` makes the client the CommandBatcher's: no timeout per reply (the batcher bounds each
    pipeline as a whole; redis-py's timeout per reply costs more than the reply), and a command
    that meets a connection Redis closed (it restarted) is sent once more at once on a new one
    (on a single Redis the batcher does that itself, and this Retry covers the health-check PING
    of a connection idle for 30 s). Every command the batcher sends is idempotent, so it may run
    twice. The other client retries nothing, so that the wake-up subscription notices every loss
    of its connection.
    """
    options: dict[str, Any] = {
        "socket_timeout": None if batches else timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
    }
    if cluster:
        return RedisCluster.from_url(url, max_connections=REDIS_CLUSTER_CONNECTIONS_PER_NODE, **options)
    if batches:
        options["retry"] = Retry(NoBackoff(), 1, (RedisConnectionError,))
    return Redis.from_url(url, **options)


def redis_unavailable(error: BaseException) -> bool:
    """Whether `error` means Redis cannot answer now, rather than a bug in a command.

    A cluster client raises RedisClusterException, which is no RedisError, both when no node
    answers (caused by a connection error) and for a command it cannot route, such as one whose
    keys lie in different hash slots: the first is an outage, the second must not pass for one.
    """
    if isinstance(error, RedisError | OSError | SlotNotCoveredError):
        return True
    return isinstance(error, RedisClusterException) and isinstance(error.__cause__, RedisError | OSError)


async def delete_dated_before(collection: Any, field: str, before: datetime.datetime, at_most: int) -> int:
    """Delete the documents whose indexed date `field` is before `before`, oldest first: about `at_most` of them
    (those that share the last one's date go with it); how many went.

    bellcast deletes what has had its time itself, in bounded batches, rather than by a TTL index: SecantusDB's TTL
    monitor reads every document of the collection under its global lock once a minute (all writes waited 0.8 to
    1.2 s among 50,000 notifications).
    """
    dated = {"$gte": EARLIEST_DATE, "$lt": before}
    last = await collection.find({field: dated}, {field: 1}).sort(field, 1).skip(at_most - 1).limit(1).to_list(1)
    if last:
        dated = {"$gte": EARLIEST_DATE, "$lte": last[0][field]}
    result = await collection.delete_many({field: dated})
    return int(result.deleted_count)


async def ensure_date_index(collection: Any, field: str, existing: dict[str, Any], ttl_seconds: int) -> None:
    """An ascending index on `field`, for `delete_dated_before`. `existing`: the collection's `index_information()`.

    A TTL index an earlier version made there serves as well, and stays on a MongoDB, its delay set to
    `ttl_seconds` (the sweep's: some earlier versions deleted at once, before the sweep could announce): MongoDB's TTL
    monitor deletes through the index, and building another over a large collection could outlast the start-up's
    STORE_TIMEOUT. On SecantusDB, whose TTL pass reads the whole collection under its lock, it is dropped and made
    again plain (MongoDB refuses the same keys with other options).
    """
    for name, index in existing.items():
        if list(index["key"]) == [(field, 1)] and "expireAfterSeconds" in index:
            if await is_secantus(collection.database):
                await drop_index_if_there(collection, name)
                break
            if index["expireAfterSeconds"] != ttl_seconds:
                retuned = {"keyPattern": {field: 1}, "expireAfterSeconds": ttl_seconds}
                await collection.database.command("collMod", collection.name, index=retuned)
            return
    await collection.create_index(field)


async def is_secantus(database: Any) -> bool:
    """Whether the MongoDB server is SecantusDB (its `buildInfo` says so)."""
    return "secantusVersion" in await database.command("buildInfo")


async def drop_index_if_there(collection: Any, name: str) -> None:
    """Drop the index `name`; done already is fine (another process starting dropped it first)."""
    try:
        await collection.drop_index(name)
    except OperationFailure as error:
        if error.code != INDEX_NOT_FOUND:
            raise
