"""Clients of the two stores, created inside the running event loop."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

MONGO_DRIVERS = ("pymongo", "motor")
# Bound every store call, so that a store that vanishes gives errors rather than hung requests.
MONGO_TIMEOUT_MS = 5000
REDIS_TIMEOUT_SECONDS = 5.0


class MongoConnection:
    """A MongoDB client of either driver, with the one database bellcast uses."""

    def __init__(self, url: str, database: str, driver: str) -> None:
        options: dict[str, Any] = {
            "tz_aware": True,
            "serverSelectionTimeoutMS": MONGO_TIMEOUT_MS,
            "connectTimeoutMS": MONGO_TIMEOUT_MS,
            "timeoutMS": MONGO_TIMEOUT_MS,
            "appname": "bellcast",
        }
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
        """Close the client's connections (PyMongo's close is a coroutine, Motor's is not)."""
        result = self.client.close()
        if result is not None:
            await result


def connect_redis(url: str) -> Redis:
    """A pooled asyncio Redis client; replies are parsed by hiredis when it is installed."""
    return Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        health_check_interval=30,
    )
