"""Open event streams: what each has to send, and the registry of this process's streams."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from bson import ObjectId
from bson.errors import InvalidId

from services.cache import ConnectionInbox
from services.errors import StoreUnavailable, TooMany
from services.notifications import CATCH_UP_WINDOW, Notification, NotificationService

# The most entries one scan sends, so that one write stays small however much is queued.
MAX_ENTRIES_PER_SEND = 100

Entry = tuple[str, bytes | str]


@dataclass(frozen=True)
class StreamLimits:
    """How many streams a process and a user may hold, and how long a client may leave a write unread."""

    max_streams: int
    max_streams_per_user: int
    write_timeout: float


class CacheWatch(Protocol):
    """Knows when the cache came back after it was unreachable."""

    @property
    def epoch(self) -> int:
        """Moves on each time the cache comes back."""


def _parse_id(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(ObjectId(value))
    except (InvalidId, TypeError):
        return None


class StreamSession:
    """One stream's delivery: the catch-up from MongoDB, the inbox in Redis, and recovery after a cache outage.

    It never hands out the same id twice. After the cache was unreachable or restarted (the
    process's cache epoch moved on), it registers again and first sends from MongoDB what the
    stream missed meanwhile, since MongoDB, not the cache, is the source of truth.
    """

    __slots__ = (
        "_cache",
        "_epoch_seen",
        "_inbox",
        "_newest_sent",
        "_notifications",
        "_opened_at",
        "_recent",
        "_recovering",
        "user_id",
    )

    def __init__(
        self,
        inbox: ConnectionInbox,
        notifications: NotificationService,
        cache: CacheWatch,
        last_event_id: str | None,
    ) -> None:
        self._inbox = inbox
        self._notifications = notifications
        self._cache = cache
        self._epoch_seen = cache.epoch
        self.user_id = inbox.user_id
        self._newest_sent = _parse_id(last_event_id)
        # Ids sent that a catch-up might return again: those within CATCH_UP_WINDOW of the newest.
        self._recent: frozenset[str] | None = None
        self._recovering = False
        self._opened_at = time.time()

    async def open(self, max_streams_per_user: int) -> None:
        """Register the stream; TooMany past the user's limit. With the cache down it opens and recovers later."""
        try:
            streams_of_user = await self._inbox.register()
        except StoreUnavailable:
            self._recovering = True
            return
        if streams_of_user > max_streams_per_user:
            await self._inbox.deregister()
            raise TooMany(f"at most {max_streams_per_user} streams per user")

    async def catch_up(self) -> AsyncIterator[list[Entry]]:
        """What a client resuming after its Last-Event-ID lacks, in batches; nothing for a new client."""
        if self._newest_sent is None:
            return
        try:
            async for batch in self._notifications.since(self.user_id, self._newest_sent):
                yield self._unsent(batch)
        except StoreUnavailable:
            # MongoDB is down: the scans catch up from the newest id sent once it is back.
            self._recovering = True
            raise

    async def take(self) -> list[Entry]:
        """What to send now, in id order: after an outage first MongoDB's catch-up, then the inbox.

        Raises StoreUnavailable while a store is unreachable; what is owed is kept for later.
        """
        if self._cache.epoch != self._epoch_seen:
            self._epoch_seen = self._cache.epoch
            self._recovering = True
        entries: list[Entry] = []
        if self._recovering:
            await self._inbox.register()
            resume_from = self._newest_sent or str(ObjectId.from_datetime(_utc(self._opened_at - 1)))
            async for batch in self._notifications.since(self.user_id, resume_from):
                entries.extend(self._unsent(batch))
            self._recovering = False
        try:
            queued = await self._inbox.pending()
        except StoreUnavailable:
            self._recovering = True
            raise
        seen = {notification_id for notification_id, _ in entries}
        recent = self._recent or frozenset()
        entries.extend(entry for entry in queued if entry[0] not in recent and entry[0] not in seen)
        entries.sort(key=lambda entry: entry[0])
        return entries[:MAX_ENTRIES_PER_SEND]

    def sent(self, notification_ids: list[str]) -> None:
        """Remember what went out, so that no catch-up sends it again."""
        newest = max(notification_ids, default=None)
        if newest is not None and (self._newest_sent is None or newest > self._newest_sent):
            self._newest_sent = newest
        if self._newest_sent is not None:
            floor = str(ObjectId.from_datetime(ObjectId(self._newest_sent).generation_time - CATCH_UP_WINDOW))
            self._recent = frozenset(i for i in (*(self._recent or ()), *notification_ids) if i >= floor) or None

    async def refresh_if_due(self) -> None:
        """Renew the registration's TTL when due."""
        await self._inbox.refresh_if_due()

    async def acknowledge(self, notification_ids: list[str]) -> None:
        """Remove sent entries from the inbox; if that fails they are still never sent again."""
        await self._inbox.remove(notification_ids)

    async def close(self) -> None:
        """Deregister; with the cache down the registration expires on its own."""
        await self._inbox.deregister()

    def _unsent(self, batch: list[Notification]) -> list[Entry]:
        fresh: list[Entry] = []
        for notification in batch:
            self._inbox.note_caught_up(notification)
            notification_id = str(notification.id)
            if not self._recent or notification_id not in self._recent:
                fresh.append((notification_id, notification.to_json()))
        return fresh


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


class EndableStream(Protocol):
    """A stream that shutdown can end and the watchdog can drop."""

    def end(self) -> None:
        """Tell the client to reconnect later, then close."""

    def stalled_since(self) -> float | None:
        """When the write under way began, if one is (time.monotonic())."""

    def drop(self) -> None:
        """Close the connection now; the client reconnects and catches up."""


class StreamRegistry:
    """Tracks the open streams of this process; one instance per Application."""

    def __init__(self, write_timeout: float) -> None:
        self._streams: set[EndableStream] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._write_timeout = write_timeout
        self._watchdog: asyncio.Task[None] | None = None
        self.slow_clients_dropped = 0

    def start_watchdog(self) -> None:
        """Check for stalled clients in the background (the task is kept and cancelled by `close`)."""
        if self._watchdog is None:
            self._watchdog = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        """Stop the watchdog."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self._write_timeout / 4))
            self.drop_stalled(time.monotonic(), self._write_timeout)

    def add(self, stream: EndableStream) -> None:
        """Track an opened stream."""
        self._streams.add(stream)
        self._empty.clear()

    def discard(self, stream: EndableStream) -> None:
        """Forget a closed stream."""
        self._streams.discard(stream)
        if not self._streams:
            self._empty.set()

    async def wait_until_empty(self) -> None:
        """Return once no stream is open."""
        await self._empty.wait()

    def __len__(self) -> int:
        return len(self._streams)

    def end_all(self) -> None:
        """Ask every open stream to end; each discards itself when it has."""
        for stream in list(self._streams):
            stream.end()

    def drop_stalled(self, now: float, timeout: float) -> int:
        """Drop the streams whose client has not taken a write for `timeout` seconds; returns how many."""
        dropped = 0
        for stream in list(self._streams):
            started = stream.stalled_since()
            if started is not None and now - started > timeout:
                stream.drop()
                dropped += 1
        self.slow_clients_dropped += dropped
        return dropped
