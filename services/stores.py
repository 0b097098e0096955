"""Clients of the two stores, created inside the running event loop."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

MONGO_DRIVERS = ("pymongo", "motor")
# Every store call is bounded (STORE_TIMEOUT), so that a store that vanishes gives errors rather than hung requests.
DEFAULT_STORE_TIMEOUT_SECONDS = 5.0


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


def connect_redis(url: str, timeout: float = DEFAULT_STORE_TIMEOUT_SECONDS) -> Redis:
    """A pooled asyncio Redis client whose calls fail after `timeout` seconds; hiredis parses replies when installed."""
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
