"""What the MongoDB driver costs bellcast's process per insert: `python -m bench.driver_overhead`.

A create's one MongoDB command is its insert. This times the client side of `insert_one` alone (the
process's CPU, not the server's) against the embedded SecantusDB, with PyMongo's `AsyncMongoClient`
(the default) and Motor, on uvloop as the server runs, a few inserts in flight at once as under load:
the share of a create's CPU in the server process that any server storing notifications in MongoDB
through these drivers pays, and the minimal Tornado server of `make bench` does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import uvloop
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import AsyncMongoClient

from services.embedded import EmbeddedMongo
from services.notifications import utc_now, validate_new_notification

INSERTS = 2000
IN_FLIGHT = 4
DRIVERS: dict[str, Any] = {"AsyncMongoClient": AsyncMongoClient, "Motor": AsyncIOMotorClient}


async def client_cpu_per_insert(driver: Any, url: str) -> float:
    """The client process's CPU per `insert_one` of a notification document, in µs."""
    client = driver(url, timeoutMS=5000)
    collection = client["bench"][f"notifications_{time.time_ns()}"]
    fields = {"user_id": "alice", "title": "Build #128 passed", "body": "All 412 tests green on main."}
    documents = [validate_new_notification(fields, utc_now()).to_document() for _ in range(INSERTS + 100)]

    async def insert(document: dict[str, Any], slots: asyncio.Semaphore) -> None:
        async with slots:
            await collection.insert_one(document)

    try:
        warm = asyncio.Semaphore(1)  # the connections and the pool's
        await asyncio.gather(*(insert(document, warm) for document in documents[INSERTS:]))
        slots = asyncio.Semaphore(IN_FLIGHT)
        started = time.process_time()
        await asyncio.gather(*(insert(document, slots) for document in documents[:INSERTS]))
        return (time.process_time() - started) / INSERTS * 1e6
    finally:
        closed = client.close()
        if asyncio.iscoroutine(closed):
            await closed


async def measure(rounds: int, url: str | None, as_json: bool) -> None:
    """Print each driver's client CPU per insert, each round and the median, the drivers in turn; against `url`, or
    an embedded SecantusDB of its own; `as_json`: only the medians, as JSON (`make bench` reads them)."""
    mongo = EmbeddedMongo(None).start() if url is None else None
    target = mongo.url if mongo is not None else str(url)
    try:
        figures: dict[str, list[float]] = {name: [] for name in DRIVERS}
        for _ in range(rounds):
            for name, driver in DRIVERS.items():
                figures[name].append(await client_cpu_per_insert(driver, target))
    finally:
        if mongo is not None:
            mongo.stop()
    if as_json:
        print(json.dumps({name: statistics.median(values) for name, values in figures.items()}))
        return
    for name, values in figures.items():
        each = ", ".join(f"{value:.0f}" for value in values)
        median = statistics.median(values)
        print(f"{name:>16}: {median:4.0f} µs of the client's CPU per insert_one (rounds: {each})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--url", help="a MongoDB to insert into (default: an embedded SecantusDB of its own)")
    parser.add_argument("--json", action="store_true", help="print only each driver's median, as JSON")
    args = parser.parse_args()
    uvloop.run(measure(args.rounds, args.url, args.json))
