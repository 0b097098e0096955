"""The watcher of a source collection: each document the app inserts is delivered as an API create is.

One process of the deployment watches at a time: it holds a lease in Redis (LEASE_SECONDS, renewed
every RENEW_SECONDS), so when it dies another takes over within a lease. Its resume point, the
change stream's resume token and the stream key of the last document it handled, is stored in
MongoDB after each batch it delivered, fenced by an epoch taken with the lease: a watcher that lost
its lease cannot move the point. A restart or a failover resumes there, so what was inserted
meanwhile is delivered once. Where the resume token is no longer served (the oplog rolled over), the
watcher opens a stream from now, first delivers what was created after the last document it handled
(by creation time), says so in a warning and `bellcast_source_catch_ups_total`, then follows the
stream. The first watcher of a collection starts from the moment it opens: what the app stored
before is history, shown by lists, not pushed.

A crash between delivering a batch and storing its resume point delivers that batch again on
takeover; each stream's ledger of what it sent leaves out what it already sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import OperationFailure, PyMongoError

from services.background import stop_task
from services.command_batcher import CommandBatcher
from services.errors import StoreUnavailable
from services.logs import OutageLog
from services.metrics import Metrics
from services.notifications import (
    Notification,
    NotificationService,
    Unmapped,
    all_of,
    find_in_order,
    stream_key,
    utc_now,
)
from services.settings import Settings
from services.sources import MappedSchema
from services.stores import MongoConnection

log = logging.getLogger("bellcast.watcher")

LEASE_SECONDS = 6.0
RENEW_SECONDS = 2.0
RETRY_SECONDS = 1.0
# How long closing waits for the watching to stop by itself before it cancels it.
CLOSE_GRACE_SECONDS = 3.0
# Each wait for changes lasts at most this long, well below STORE_TIMEOUT, so a quiet collection is no timeout.
AWAIT_CHANGES_MS = 500
# Changes delivered together at most; their resume point is stored once for all.
BATCH = 500
# A quiet collection's resume token is stored this often, so a restart after a quiet week resumes within the oplog.
IDLE_SAVE_SECONDS = 60.0
CATCH_UP_PAGE = 500
# A catch-up remembers what it delivered that the new stream may bring again: created this recently.
CATCH_UP_OVERLAP = datetime.timedelta(minutes=5)
# bellcast's collection (in MONGODB_DB) of each source collection's resume point.
POSITIONS = "bellcast_source_positions"
LEASE_PREFIX = "bellcast:source:"
# MongoDB's answers when a resume token is no longer served: ChangeStreamHistoryLost, ChangeStreamFatalError,
# InvalidResumeToken.
HISTORY_LOST = frozenset({286, 280, 260})

# Take the lease, or keep it: 1 if this process holds it now.
HOLD_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseLost(Exception):
    """Another process watches the source collection now."""


class SourceWatcher:
    """Watches `SOURCE_COLLECTION` while this process holds the deployment's lease; delivers what is inserted."""

    def __init__(
        self,
        database: Any,
        collection: str,
        schema: MappedSchema,
        notifications: NotificationService,
        batcher: CommandBatcher,
        metrics: Metrics,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._collection = database[collection]
        self._positions = database[POSITIONS]
        self._name = collection
        self._schema = schema
        self._notifications = notifications
        self._batcher = batcher
        self._metrics = metrics
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._renew_seconds = min(RENEW_SECONDS, lease_seconds / 3)
        self._holder = secrets.token_hex(8)
        self._lease_key = f"{LEASE_PREFIX}{quote(database.name, safe='')}:{quote(collection, safe='')}:lease"
        # Inserts, and updates of the read state (the app's `markAsRead()`, or bellcast's own marks).
        read_state = f"updateDescription.updatedFields.{schema.paths['read_at']}"
        self._pipeline = [
            {
                "$match": {
                    "$or": [
                        {"operationType": "insert", **in_full_document(schema.filter)},
                        {"operationType": "update", read_state: {"$exists": True}},
                    ]
                }
            }
        ]
        self._outage = OutageLog(log, "source watcher: a store is unavailable")
        self._skipped: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        # Watching stops between two waits for changes, never within one: a change stream whose wait was
        # cancelled may not close.
        self._stopping = asyncio.Event()
        self._lease_lost = False

    def start(self) -> None:
        """Watch in the background whenever this process holds the lease (the task is ended by `close`)."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop watching and hand the lease on at once."""
        if self._task is None:
            return
        self._stopping.set()
        # It stops once its wait for changes ends; a delivery under way (observers bounded by STORE_TIMEOUT) or a
        # store that does not answer may keep it longer: then it is cancelled.
        await asyncio.wait({self._task}, timeout=CLOSE_GRACE_SECONDS)
        await stop_task(self._task, "the source watcher")
        self._task = None
        with contextlib.suppress(StoreUnavailable):
            await self._batcher.execute("EVAL", RELEASE_LEASE, 1, self._lease_key, self._holder)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            pause = RETRY_SECONDS
            try:
                if await self._hold_lease():
                    await self._watch_while_leased()
                else:
                    pause = self._renew_seconds
            except LeaseLost:
                log.info("source watcher: another process watches %s now", self._name)
            except (StoreUnavailable, PyMongoError) as error:
                self._outage.failed("%s", error)
            except Exception:  # the watcher outlives a bug in one batch: it resumes from its stored point
                log.exception("source watcher failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)

    async def _hold_lease(self) -> bool:
        held = await self._batcher.execute("EVAL", HOLD_LEASE, 1, self._lease_key, self._holder, self._lease_ms)
        return bool(held)

    async def _renew_forever(self) -> None:
        """Renew the lease; once it could not be (another holds it, or Redis did not answer), the watching stops."""
        while True:
            await asyncio.sleep(self._renew_seconds)
            try:
                held = await self._hold_lease()
            except StoreUnavailable:
                held = False
            if not held:
                self._lease_lost = True
                return

    async def _watch_while_leased(self) -> None:
        """Watch until the lease is lost or a store fails; the lease is renewed meanwhile."""
        position = await self._positions.find_one_and_update(
            {"_id": self._name}, {"$inc": {"epoch": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        log.info("source watcher: watching %s", self._name)
        self._metrics.source_watching.set(1)
        self._lease_lost = False
        renewing = asyncio.ensure_future(self._renew_forever())
        try:
            await self._watch(position)
        finally:
            self._metrics.source_watching.set(0)
            await stop_task(renewing, "the source lease's renewal")

    async def _watch(self, position: Mapping[str, Any]) -> None:
        """Follow change streams from the stored point until stopped: reopened when the server closes one, and
        from now with a catch-up when the stored token is no longer served."""
        epoch = position["epoch"]
        while not self._stopping.is_set():
            token, last_key = position.get("resume_token"), position.get("last_key")
            try:
                # A point without a token but with a last key: a catch-up was under way.
                await self._follow(epoch, token, last_key, catch_up=token is None and last_key is not None)
            except OperationFailure as error:
                if token is None or error.code not in HISTORY_LOST:
                    raise
                log.warning(
                    "source watcher: the resume point of %s is gone (%s); catching up by creation time",
                    self._name,
                    error,
                )
                self._metrics.source_catch_ups.inc()
                await self._save(epoch, None, last_key)
            position = await self._positions.find_one({"_id": self._name}) or {}

    async def _follow(self, epoch: int, token: Any, last_key: str | None, catch_up: bool) -> None:
        """Open a change stream (after `token`, else from now) and deliver what it brings, batch by batch.

        A task reads the stream into a queue while this one delivers: a batch is whatever has arrived by the time
        the last one was delivered, so a change waits for no other (reading and delivering in turn, a batch would
        wait for the stream's next wait to end).
        """
        # An update's document as it is after it: whose notification it is, and whether it is read.
        options: dict[str, Any] = {"max_await_time_ms": AWAIT_CHANGES_MS, "full_document": "updateLookup"}
        if token is not None:
            options["resume_after"] = token
        stream = self._collection.watch(self._pipeline, **options)
        if asyncio.iscoroutine(stream):  # PyMongo's opens at once, Motor's on first use
            stream = await stream
        arrived: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue(maxsize=BATCH)
        reading: asyncio.Task[None] | None = None
        try:
            first = await stream.try_next()
            # The stream is open: what is inserted from now on, it brings.
            delivered_in_catch_up: set[str] = set()
            if catch_up:
                last_key, delivered_in_catch_up = await self._catch_up(epoch, last_key)
            if token is None:
                # From here on the stream has it all; a first watcher's catch-up would start at this second.
                await self._save(epoch, stream.resume_token, last_key or str(ObjectId.from_datetime(utc_now())))
            if first is not None:
                arrived.put_nowait(first)
            reading = asyncio.ensure_future(_read_changes(stream, arrived))
            saved_at = time.monotonic()
            while not self._stopping.is_set():
                if self._lease_lost:
                    raise LeaseLost()
                batch = await _next_batch(arrived, reading)
                if batch is None:  # closed by the server: another is opened from the stored point
                    log.info("source watcher: the server closed the change stream on %s; opening another", self._name)
                    return
                documents = _documents(batch, "insert")
                await self._announce_reads(_documents(batch, "update"))
                if delivered_in_catch_up:
                    documents = [d for d in documents if str(d["_id"]) not in delivered_in_catch_up]
                if documents:
                    last_key = max(last_key or "", await self._deliver(documents)) or None
                if batch:
                    await self._save(epoch, batch[-1]["_id"], last_key)  # a change's _id is its resume token
                    saved_at = time.monotonic()
                elif time.monotonic() - saved_at > IDLE_SAVE_SECONDS:
                    # Nothing arrived and all is delivered: the stream's token is at most what was.
                    await self._save(epoch, stream.resume_token, last_key)
                    saved_at = time.monotonic()
                self._outage.succeeded()
        finally:
            if reading is not None and not reading.done():
                await stop_task(reading, "the source watcher's reading")
            elif reading is not None and not reading.cancelled():
                reading.exception()  # raised above already, or ended with the stream
            await stream.close()

    async def _catch_up(self, epoch: int, last_key: str | None) -> tuple[str | None, set[str]]:
        """Deliver what was created after the document of `last_key`, a page at a time; the newest key, and the ids
        created within CATCH_UP_OVERLAP, which the stream just opened may bring again."""
        recent: set[str] = set()
        after = self._schema.after_key(last_key) if last_key else None
        if after is None:  # nothing handled yet: there is nothing to catch up with
            return last_key, recent
        # Stream keys sort by creation time: a key at or after this one was created within the overlap.
        overlap_floor = stream_key(utc_now() - CATCH_UP_OVERLAP, "")
        while True:
            queries = [all_of(self._schema.filter, query) for query in after]
            documents = await find_in_order(self._collection, queries, self._schema.oldest_first(), CATCH_UP_PAGE)
            if not documents:
                return last_key, recent
            last_key = max(last_key or "", await self._deliver(documents))
            await self._save(epoch, None, last_key)
            for document in documents:
                if (key := self._schema.key_of(document)) is not None and key >= overlap_floor:
                    recent.add(str(document["_id"]))
            if len(documents) < CATCH_UP_PAGE:
                return last_key, recent
            after = self._schema.after_key(last_key)
            assert after is not None

    async def _announce_reads(self, documents: list[Mapping[str, Any]]) -> None:
        """A `read` change for each user whose notifications were marked read, by the app or through bellcast: the
        badges on every device follow the app's reads too."""
        read_by_user: dict[str, list[str]] = {}
        for document in documents:
            try:
                notification = self._schema.from_document(document)
            except Unmapped:
                continue
            if notification.read_at is not None:
                read_by_user.setdefault(notification.user_id, []).append(str(notification.id))
        for user_id, ids in read_by_user.items():
            await self._notifications.publish_change(user_id, "read", tuple(ids))

    async def _deliver(self, documents: list[Mapping[str, Any]]) -> str:
        """Run the observers on each document that is a notification; the newest stream key among them all."""
        notifications: list[Notification] = []
        for document in documents:
            try:
                notifications.append(self._schema.from_document(document))
            except Unmapped as unmapped:
                self._metrics.source_skipped(unmapped.reason)
                if unmapped.reason not in self._skipped:  # once per kind: the app may write thousands alike
                    self._skipped.add(unmapped.reason)
                    log.warning(
                        "source watcher: %s: document %s has %s; such documents are skipped (counted in "
                        "bellcast_source_documents_skipped_total)",
                        self._name,
                        document.get("_id"),
                        unmapped.reason,
                    )
        await self._notifications.deliver(notifications)
        self._metrics.source_documents.inc(len(notifications))
        return max((key for d in documents if (key := self._schema.key_of(d)) is not None), default="")

    async def _save(self, epoch: int, token: Any, last_key: str | None) -> None:
        """Store the resume point, unless another watcher took over (its epoch is newer): then LeaseLost."""
        update = {"resume_token": token, "last_key": last_key, "saved_at": utc_now()}
        result = await self._positions.update_one({"_id": self._name, "epoch": epoch}, {"$set": update})
        if result.matched_count == 0:
            raise LeaseLost()


def in_full_document(query: Mapping[str, Any]) -> dict[str, Any]:
    """A query on documents as a `$match` on change events: each field path under `fullDocument`."""
    matched: dict[str, Any] = {}
    for key, value in query.items():
        if key in ("$and", "$or", "$nor"):
            matched[key] = [in_full_document(part) for part in value]
        elif key.startswith("$"):
            matched[key] = value
        else:
            matched[f"fullDocument.{key}"] = value
    return matched


async def change_streams_unavailable(settings: Settings) -> str | None:
    """Why no change stream on `SOURCE_COLLECTION` can be opened (MongoDB is no replica set, or does not answer);
    None when one can."""
    assert settings.mongodb_url is not None and settings.source_collection is not None
    mongo = MongoConnection(settings.mongodb_url, settings.mongodb_db, settings.mongo_driver, settings.store_timeout)
    try:
        stream = mongo.database[settings.source_collection].watch([], max_await_time_ms=1)
        if asyncio.iscoroutine(stream):
            stream = await stream
        try:
            await stream.try_next()
        finally:
            await stream.close()
    except PyMongoError as error:
        return str(error)
    finally:
        await mongo.close()
    return None


async def _read_changes(stream: Any, arrived: asyncio.Queue[Mapping[str, Any]]) -> None:
    """Read the change stream into `arrived` until the server closes it (each wait for changes is bounded)."""
    while stream.alive:
        change = await stream.try_next()
        if change is not None:
            await arrived.put(change)


async def _next_batch(
    arrived: asyncio.Queue[Mapping[str, Any]], reading: asyncio.Task[None]
) -> list[Mapping[str, Any]] | None:
    """What has arrived, up to BATCH, once something has (within AWAIT_CHANGES_MS, else nothing); None once the
    stream is closed and all of it was taken. Raises what ended the reading."""
    if arrived.empty():
        getting = asyncio.ensure_future(arrived.get())
        await asyncio.wait({getting, reading}, timeout=AWAIT_CHANGES_MS / 1000, return_when=asyncio.FIRST_COMPLETED)
        if not getting.done():
            getting.cancel()
            await asyncio.gather(getting, return_exceptions=True)
        if getting.cancelled():
            if reading.done():
                reading.result()
                return None
            return []
        batch = [getting.result()]
    else:
        batch = [arrived.get_nowait()]
    while len(batch) < BATCH and not arrived.empty():
        batch.append(arrived.get_nowait())
    return batch


def _documents(changes: list[Mapping[str, Any]], operation: str) -> list[Mapping[str, Any]]:
    """The documents of the changes of one kind (`insert`; `update`: as it is after the update)."""
    return [c["fullDocument"] for c in changes if c["operationType"] == operation and c.get("fullDocument")]
