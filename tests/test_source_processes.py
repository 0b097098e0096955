"""A source collection watched by a deployment of several bellcast processes: one watches, another takes over."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from tests.support import ServerProcess, SSEStream
from tests.test_sources import in_order, laravel_notification

JWT_SECRET = "source-processes-secret-" + "x" * 16
API_KEY = "source-processes-api-key-" + "y" * 8
WATCHING = "source watcher: watching notifications"


def start(store_urls: tuple[str, str], log: Path, database: str) -> ServerProcess:
    server = ServerProcess(
        store_urls,
        log,
        MONGODB_DB=database,
        JWT_SECRET=JWT_SECRET,
        API_KEY=API_KEY,
        SOURCE_COLLECTION="notifications",
        SOURCE_SCHEMA="laravel",
    )
    server.wait_until_ready()
    return server


@pytest.mark.gen_test(timeout=90)
async def test_when_the_watching_process_dies_another_takes_over_and_every_document_reaches_the_stream_once(
    store_urls: tuple[str, str], tmp_path: Path
) -> None:
    database = f"bellcast_test_{uuid.uuid4().hex[:12]}"
    first = start(store_urls, tmp_path / "first.log", database)
    second = start(store_urls, tmp_path / "second.log", database)
    mongo: AsyncMongoClient = AsyncMongoClient(store_urls[0], tz_aware=True)
    stream: SSEStream | None = None
    try:
        for _ in range(100):
            if WATCHING in first.output() or WATCHING in second.output():
                break
            await asyncio.sleep(0.1)
        watcher, other = (first, second) if WATCHING in first.output() else (second, first)
        await asyncio.sleep(0.5)  # its change stream opens right after the lease is taken
        stream = await SSEStream.open(other.base_url, other.api().token("7"))
        source = mongo[database]["notifications"]
        documents = in_order([laravel_notification("7", title=f"n{index}") for index in range(40)])

        for document in documents[:10]:
            await source.insert_one(document)
            await asyncio.sleep(0.05)
        received = await stream.notifications(10, timeout=10)
        watcher.kill()  # no goodbye: its lease runs out
        for document in documents[10:]:
            await source.insert_one(document)
            await asyncio.sleep(0.05)
        received += await stream.notifications(30, timeout=30)

        assert [event.id for event in received] == [document["_id"] for document in documents]
        await stream.assert_silent(2.0)
        assert WATCHING in other.output()
    finally:
        if stream is not None:
            stream.close()
        await mongo.drop_database(database)
        await mongo.close()
        second.stop()
        first.stop()
