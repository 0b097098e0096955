"""The store clients: what bellcast asks of the MongoDB drivers beyond their defaults."""

from __future__ import annotations

import pytest

from services.embedded import EmbeddedMongo
from services.stores import DEFAULT_MONGODB_MIN_POOL_SIZE, MONGO_DRIVERS, MongoConnection
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
def test_a_min_pool_size_in_the_url_wins(driver):
    connection = MongoConnection("mongodb://127.0.0.1:1/?minPoolSize=3", "bellcast", driver)
    assert connection.client.options.pool_options.min_pool_size == 3
