"""The store clients: what bellcast asks of the MongoDB drivers beyond their defaults."""

from __future__ import annotations

import pytest

from services.embedded import EmbeddedMongo
from services.stores import (
    DEFAULT_MONGODB_MAX_IDLE_MS,
    DEFAULT_MONGODB_MIN_POOL_SIZE,
    MONGO_DRIVERS,
    MongoConnection,
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
