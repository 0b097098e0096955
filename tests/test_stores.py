"""The store clients: what bellcast asks of the MongoDB drivers beyond their defaults, and how it batches its writes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import DuplicateKeyError
from redis.exceptions import DataError, ResponseError

from services import idempotency
from services.command_batcher import CommandBatcher
from services.embedded import EmbeddedMongo
from services.errors import StoreUnavailable
from services.notifications import (
    COLLECTION,
    EXPIRED_KEPT_SECONDS,
    INSERT_PATIENCE_SECONDS,
    RETIRED_INDEXES,
    InsertBatcher,
    Notification,
    NotificationService,
)
from services.redis_backend import SingleRedis, connect_redis_backend
from services.sources import make_schema
from services.stores import (
    DEFAULT_MONGODB_MAX_IDLE_MS,
    DEFAULT_MONGODB_MIN_POOL_SIZE,
    MONGO_DRIVERS,
    MongoConnection,
    is_secantus,
)
from tests.support import eventually


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("driver", MONGO_DRIVERS)
async def test_the_mongodb_client_opens_its_pool_before_requests_need_it(driver, tmp_path):
    """Opened only when creates first came together, two at a time, the connections made the first
    creates after start-up wait for them."""
    server = EmbeddedMongo(tmp_path).start()
    connection = MongoConnection(server.url, "bellcast_pool", driver)
    try:

        async def pool_open() -> bool:
            status = await connection.database.command("serverStatus")
            return status["connections"]["current"] >= DEFAULT_MONGODB_MIN_POOL_SIZE

        await eventually(pool_open, timeout=10, interval=0.2)
    finally:
        await connection.close()
        server.stop()


@pytest.mark.parametrize("driver", MONGO_DRIVERS)
def test_idle_connections_are_replaced_before_a_server_would_close_them(driver):
    """The embedded SecantusDB closes a connection idle for about five minutes; the driver found
    out only when it used one (the first creates after a long idle waited 250-450 ms, a read failed)."""
    pool = MongoConnection("mongodb://127.0.0.1:1/", "bellcast", driver).client.options.pool_options
    assert pool.max_idle_time_seconds == DEFAULT_MONGODB_MAX_IDLE_MS / 1000


@pytest.mark.parametrize("driver", MONGO_DRIVERS)
def test_pool_options_in_the_url_win(driver):
    url = "mongodb://127.0.0.1:1/?minPoolSize=3&maxIdleTimeMS=5000"
    pool = MongoConnection(url, "bellcast", driver).client.options.pool_options
    assert (pool.min_pool_size, pool.max_idle_time_seconds) == (3, 5.0)


@pytest.mark.gen_test(timeout=30)
async def test_a_pipeline_cut_short_by_a_hung_redis_fails_in_time_and_leaves_no_late_reply_to_the_next(
    private_redis,
):
    """The batcher keeps its connections between pipelines: one whose replies never came must not be
    used again as it is, or the next pipeline would read the late reply as its own."""
    redis = SingleRedis(private_redis.url)
    batcher = CommandBatcher(redis, timeout=0.5)
    try:
        assert await batcher.execute_many([("SET", "first", "1"), ("SET", "second", "2")]) == [True, True]
        private_redis.pause()
        try:
            with pytest.raises(StoreUnavailable):
                await batcher.execute("GET", "first")
        finally:
            private_redis.resume()
        assert await batcher.execute("GET", "second") == b"2"
        # An error reply in the middle: the replies after it are still read, each as its own command's.
        with pytest.raises(StoreUnavailable) as failed:
            await batcher.execute_many([("HGETALL", "first"), ("GET", "first")])
        assert isinstance(failed.value.__cause__, ResponseError)
        assert await batcher.execute("GET", "second") == b"2"
    finally:
        await batcher.close()
        await redis.aclose()


@pytest.mark.gen_test(timeout=30)
async def test_the_batcher_sends_every_argument_type_as_the_client_would_and_refuses_others(redis_url):
    """Its commands are packed by hiredis, not by the client: text, bytes, ints and floats must reach
    Redis as the client's own commands send them, and an argument of no Redis type must fail its
    pipeline as the client's DataError, before anything is written, leaving the batcher usable."""
    backend = SingleRedis(redis_url)
    redis = backend.client
    batcher = CommandBatcher(backend)
    key = f"bellcast-test:{uuid.uuid4().hex}"
    values = {"text": "caf\u00e9 {u:1}", "bytes": b"\x00\xff\r\n", "int": 12, "float": 1764643000.1234567}
    try:
        await batcher.execute("HSET", key, *(item for pair in values.items() for item in pair))
        assert await redis.hgetall(key) == {
            b"text": "caf\u00e9 {u:1}".encode(),
            b"bytes": b"\x00\xff\r\n",
            b"int": b"12",
            b"float": repr(1764643000.1234567).encode(),
        }
        with pytest.raises(StoreUnavailable) as refused:
            await batcher.execute("HSET", key, "none", None)
        assert isinstance(refused.value.__cause__, DataError)
        assert await batcher.execute("HGET", key, "int") == b"12"
    finally:
        await redis.delete(key)
        await batcher.close()
        await backend.aclose()


def _open_connections() -> set[tuple[Any, Any]]:
    """This process's TCP connections, open on its side: (local address, remote address)."""
    return {(c.laddr, c.raddr) for c in psutil.Process().net_connections("tcp") if c.raddr}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.also_on_cluster
async def test_a_pipeline_sent_as_or_after_the_backend_closes_fails_and_leaves_no_connection_open(
    redis_url, redis_cluster
):
    """Shutdown closes the batcher, then Redis; a stream that ends meanwhile still sends its release.
    That pipeline must fail as an outage: redis-py's pools connect again after their disconnect, and a
    connection opened then is closed by nothing (a ResourceWarning once it is collected, tests later)."""
    before = _open_connections()
    backend = connect_redis_backend(redis_url, redis_cluster)
    batcher = CommandBatcher(backend)
    key = f"bellcast-test:{uuid.uuid4().hex}"
    await batcher.execute("SET", key, "1")
    await batcher.close()
    late = batcher.execute("BLPOP", f"{key}:never", 1)
    await asyncio.sleep(0.1)  # usually under way by now, Redis holding it; else sent after the close
    await backend.aclose()
    with pytest.raises(StoreUnavailable):
        await late
    with pytest.raises(StoreUnavailable):
        await batcher.execute("GET", key)
    assert _open_connections() - before == set()


class InsertCommands(monitoring.CommandListener):
    """How many documents each `insert` command the driver sent carried, and the most under way at once."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.under_way: set[int] = set()
        self.most_under_way = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "insert":
            self.sizes.append(len(event.command["documents"]))
            self.under_way.add(event.request_id)
            self.most_under_way = max(self.most_under_way, len(self.under_way))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.under_way.discard(event.request_id)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.under_way.discard(event.request_id)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("driver", MONGO_DRIVERS)
async def test_start_up_brings_an_earlier_versions_indexes_up_to_date_on_its_own_collection_only(store_urls, driver):
    """Earlier versions indexed `read_at` and `seen_at`, which every insert paid for and no query needs, and
    deleted expired notifications and outdated Idempotency-Key claims by TTL indexes: start-up drops the first and,
    on SecantusDB, makes the TTL indexes plain ones (the expiry sweep deletes instead; a MongoDB keeps them at the
    sweep's delays), from two processes starting at once too, and leaves the indexes that others made (an
    operator's on bellcast's collection, an app's on its own) alone."""
    connection = MongoConnection(store_urls[0], f"bellcast_indexes_{uuid.uuid4().hex[:8]}", driver)
    own, apps = connection.database[COLLECTION], connection.database["app_notifications"]
    retired = [[("user_id", 1), ("read_at", 1)], [("user_id", 1), ("seen_at", 1)]]
    try:
        for collection in (own, apps):
            for keys in retired:
                await collection.create_index(keys)
        await own.create_index("expires_at", expireAfterSeconds=0)
        claims = connection.database[idempotency.COLLECTION]
        await claims.create_index("created_at", expireAfterSeconds=int(idempotency.IDEMPOTENCY_WINDOW.total_seconds()))
        await own.create_index("title", name="operators_own")
        assert set(RETIRED_INDEXES) <= set(await own.index_information())

        # Both see the retired indexes, then each drops them: the second finds them gone.
        await asyncio.gather(*(NotificationService(connection.database).ensure_indexes() for _ in range(2)))
        await NotificationService(connection.database).ensure_indexes()  # and later starts find nothing to drop
        await NotificationService(
            connection.database, collection="app_notifications", schema=make_schema("laravel", {}, None)
        ).ensure_indexes()

        indexes = await own.index_information()
        assert set(indexes) == {"_id_", "user_id_1__id_-1", "user_id_1_tags_1__id_-1", "expires_at_1", "operators_own"}
        claims_index = (await claims.index_information())["created_at_1"]
        if await is_secantus(connection.database):  # its TTL pass reads the whole collection: the sweep deletes
            assert "expireAfterSeconds" not in indexes["expires_at_1"]
            assert "expireAfterSeconds" not in claims_index
        else:  # a MongoDB keeps them, at the sweep's delays (the first was made to delete at once)
            assert indexes["expires_at_1"]["expireAfterSeconds"] == EXPIRED_KEPT_SECONDS
            assert claims_index["expireAfterSeconds"] == int(idempotency.IDEMPOTENCY_WINDOW.total_seconds())
        assert set(RETIRED_INDEXES) <= set(await apps.index_information())
    finally:
        await connection.client.drop_database(connection.database.name)
        await connection.close()


@contextlib.asynccontextmanager
async def service_watched_by(
    url: str, listener: monitoring.CommandListener
) -> AsyncIterator[tuple[NotificationService, Any]]:
    """A NotificationService on a database of its own (and that database), whose driver tells `listener` of every
    command; dropped after."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True, event_listeners=[listener])
    database = client[f"bellcast_inserts_{uuid.uuid4().hex[:8]}"]
    try:
        yield NotificationService(database), database
    finally:
        await client.drop_database(database.name)
        await client.close()


@pytest.mark.gen_test(timeout=30)
async def test_creates_that_come_together_share_one_insert_and_each_is_stored_once(store_urls):
    inserts = InsertCommands()
    async with service_watched_by(store_urls[0], inserts) as (service, database):
        lone = await service.create({"user_id": "alice", "title": "alone"})
        together = await asyncio.gather(*(service.create({"user_id": "alice", "title": f"{i}"}) for i in range(20)))

        assert inserts.sizes == [1, 20]
        stored = [document["_id"] async for document in database[COLLECTION].find({}, {"_id": 1}).sort("_id", 1)]
        assert stored == sorted(notification.id for notification in [lone, *together])


@pytest.mark.gen_test(timeout=30)
async def test_creates_made_while_an_insert_is_under_way_wait_for_it_and_share_the_next(store_urls):
    inserts = InsertCommands()
    async with service_watched_by(store_urls[0], inserts) as (service, database):
        await service.create({"user_id": "alice", "title": "warm-up"})
        creates = []
        for index in range(40):  # one create per loop iteration, as requests arrive under load
            creates.append(asyncio.ensure_future(service.create({"user_id": "alice", "title": f"{index}"})))
            await asyncio.sleep(0)
        created = await asyncio.gather(*creates)

        assert inserts.most_under_way == 1
        assert sum(inserts.sizes[1:]) == 40 and len(inserts.sizes[1:]) < 40
        stored = await database[COLLECTION].distinct("_id", {"title": {"$ne": "warm-up"}})
        assert sorted(stored) == sorted(notification.id for notification in created)


class EventOrder(monitoring.CommandListener):
    """The order in which inserts were sent and observers told of notifications, as one list of labels."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.inserting = asyncio.Event()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "insert":
            titles = ",".join(document["title"] for document in event.command["documents"])
            self.events.append(f"insert {titles}")
            self.inserting.set()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    async def created(self, notification: Notification) -> None:
        self.events.append(f"told {notification.title}")


@pytest.mark.gen_test(timeout=30)
async def test_the_next_insert_is_sent_before_the_creates_of_the_one_before_go_on(store_urls):
    # Under load the creates an insert settles have their notifications to queue: that work must not delay
    # the insert of the creates that came meanwhile, the one command at a time that all creates wait for.
    order = EventOrder()
    async with service_watched_by(store_urls[0], order) as (service, _):
        service.register_observer(order)
        await service.create({"user_id": "alice", "title": "warm-up"})
        order.inserting.clear()
        first = asyncio.ensure_future(service.create({"user_id": "alice", "title": "first"}))
        await order.inserting.wait()  # under way: the next create waits for it
        second = asyncio.ensure_future(service.create({"user_id": "alice", "title": "second"}))
        await asyncio.gather(first, second)

        assert order.events[2:] == ["insert first", "insert second", "told first", "told second"]


class PoolConnections(monitoring.ConnectionPoolListener):
    """How many of the pool's connections are ready for commands (the monitors' are not in the pool)."""

    def __init__(self) -> None:
        self.ready = 0

    def connection_ready(self, event: monitoring.ConnectionReadyEvent) -> None:
        self.ready += 1

    def connection_closed(self, event: monitoring.ConnectionClosedEvent) -> None:
        self.ready -= 1

    def pool_created(self, event: monitoring.PoolCreatedEvent) -> None:
        pass

    def pool_ready(self, event: monitoring.PoolReadyEvent) -> None:
        pass

    def pool_cleared(self, event: monitoring.PoolClearedEvent) -> None:
        pass

    def pool_closed(self, event: monitoring.PoolClosedEvent) -> None:
        pass

    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:
        pass

    def connection_check_out_started(self, event: monitoring.ConnectionCheckOutStartedEvent) -> None:
        pass

    def connection_check_out_failed(self, event: monitoring.ConnectionCheckOutFailedEvent) -> None:
        pass

    def connection_checked_out(self, event: monitoring.ConnectionCheckedOutEvent) -> None:
        pass

    def connection_checked_in(self, event: monitoring.ConnectionCheckedInEvent) -> None:
        pass


@pytest.mark.gen_test(timeout=60)
async def test_an_insert_that_hangs_holds_the_next_creates_back_only_for_a_moment(tmp_path):
    """A create must not wait for another's insert to time out before its own is sent."""
    server = EmbeddedMongo(tmp_path).start()
    assert server.pid is not None
    inserts, pool = InsertCommands(), PoolConnections()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        server.url, tz_aware=True, minPoolSize=4, timeoutMS=20_000, event_listeners=[inserts, pool]
    )
    service = NotificationService(client.bellcast_hung)
    creates: list[asyncio.Future[Any]] = []
    try:
        await service.create({"user_id": "alice", "title": "before"})

        async def pool_open() -> bool:  # a connection opened after the freeze would hang before its command
            return pool.ready >= 4

        async def inserts_sent(count: int) -> bool:
            return len(inserts.sizes) == count

        await eventually(pool_open, timeout=10, interval=0.1)
        os.kill(server.pid, signal.SIGSTOP)  # answers nothing, as a hung MongoDB
        creates.append(asyncio.ensure_future(service.create({"user_id": "alice", "title": "hung"})))
        await eventually(lambda: inserts_sent(2))
        creates.append(asyncio.ensure_future(service.create({"user_id": "alice", "title": "after"})))

        await eventually(lambda: inserts_sent(3), timeout=5 * INSERT_PATIENCE_SECONDS + 5)
        assert not any(create.done() for create in creates)
    finally:
        os.kill(server.pid, signal.SIGCONT)
        await asyncio.gather(*creates, return_exceptions=True)
        await client.close()
        server.stop()


@pytest.mark.gen_test(timeout=30)
async def test_a_document_refused_within_a_shared_insert_fails_only_its_own_create(store_urls):
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store_urls[0], tz_aware=True)
    database = client[f"bellcast_inserts_{uuid.uuid4().hex[:8]}"]
    inserts = InsertBatcher(database[COLLECTION])
    try:
        await inserts.insert({"_id": "taken"})
        outcomes = await asyncio.gather(
            *(inserts.insert({"_id": key}) for key in ("before", "taken", "after")), return_exceptions=True
        )

        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], DuplicateKeyError)
        assert sorted(await database[COLLECTION].distinct("_id")) == ["after", "before", "taken"]
    finally:
        await client.drop_database(database.name)
        await client.close()
