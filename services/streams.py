"""Open event streams: what each has to send, and the registry of this process's streams."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import math
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from bson import ObjectId
from bson.errors import InvalidId

from services.cache import ConnectionInbox
from services.errors import StoreUnavailable, TooMany
from services.metrics import Metrics
from services.notifications import CATCH_UP_WINDOW, Notification, NotificationService

CATCH_UP_WINDOW_SECONDS = int(CATCH_UP_WINDOW.total_seconds())

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

    @property
    def recovering(self) -> bool:
        """True while the stream owes a recovery from MongoDB (it could not register, or a store failed)."""
        return self._recovering

    def recover(self) -> None:
        """Something may have been created and not queued: the next `take` catches up from MongoDB first."""
        self._recovering = True

    @property
    def inbox(self) -> ConnectionInbox:
        """The stream's inbox in Redis."""
        return self._inbox

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
        if self._recovering or self._inbox.registration_lost:
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
            # An ObjectId's hex starts with its creation second: the smallest id of that second less the window.
            floor_second = max(0, int(self._newest_sent[:8], 16) - CATCH_UP_WINDOW_SECONDS)
            floor = f"{floor_second:08x}{'0' * 16}"
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


# TCP_USER_TIMEOUT is a C int of milliseconds: a longer STREAM_WRITE_TIMEOUT is cut to this (24 days).
MAX_USER_TIMEOUT_MS = 2**31 - 1


def abort_when_unacknowledged(sock: socket.socket | None, seconds: float) -> None:
    """Have the kernel abort the connection once data it sent stays unacknowledged for `seconds`.

    A client that vanished without FIN or RST (its host gone, the network cut) would otherwise
    hold its stream until TCP gives up retransmitting, about 15 minutes later. Heartbeats keep
    data in flight, so such a client is noticed within about the heartbeat interval plus
    `seconds`. Linux's TCP_USER_TIMEOUT; elsewhere, and for a connection already closed (no
    socket), nothing changes.
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    milliseconds = min(max(1, round(seconds * 1000)), MAX_USER_TIMEOUT_MS)
    # A connection the client reset meanwhile may refuse options; it is ending anyway.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, milliseconds)


class OpenStream(Protocol):
    """A stream as the registry sees it: shutdown ends it, the sweep keeps it alive or drops it."""

    def end(self) -> None:
        """Tell the client to reconnect later, then close."""

    def stalled_since(self) -> float | None:
        """When the write under way began (time.monotonic()), if one is."""

    @property
    def last_write(self) -> float:
        """When the last write completed (time.monotonic())."""

    def drop(self) -> None:
        """Close the connection now; the client reconnects and catches up."""

    def heartbeat(self, now: float) -> None:
        """Send a heartbeat, unless the stream has ended."""

    def wake(self) -> None:
        """Scan the inbox now."""

    @property
    def inbox(self) -> ConnectionInbox | None:
        """The stream's inbox, once it is registered."""


class InboxScanner(Protocol):
    """Tells which inboxes hold entries, many in one round trip."""

    async def safety_scan(self, inboxes: Sequence[ConnectionInbox]) -> list[bool]:
        """For each inbox, whether it holds entries; renews the registrations due on the way."""


# How many closed streams release their registration per loop iteration. Thousands of clients that
# leave at once (a proxy restarting, a network cut) each deregister and write an access line, which
# in one iteration stalled the event loop (18,000 closes: one iteration of 0.9 s; Tornado's handling
# of their end-of-file, before this, still takes 0.4-0.8 s iterations).
RELEASES_PER_ITERATION = 100

# The sweep runs every SWEEP_PERIOD, and at least SWEEPS_PER_HEARTBEAT times per heartbeat interval
# (short intervals, in tests).
SWEEP_PERIOD = 1.0
SWEEPS_PER_HEARTBEAT = 3


class StreamRegistry:
    """The open streams of this process: one sweep sends their heartbeats and drops stalled clients.

    One process-wide timer instead of a timer per stream: at thousands of idle streams the
    heartbeats are most of the work, and batching them into one loop iteration a second keeps
    the event loop from waking for each. Each stream waits in the sweep's bucket of the moment
    it next owes something (a heartbeat, or the end of its write timeout), so a sweep looks at
    the streams due and at no other: an idle stream costs one visit per heartbeat.
    """

    def __init__(
        self,
        heartbeat_interval: float,
        write_timeout: float,
        scanner: InboxScanner,
        metrics: Metrics | None = None,
    ) -> None:
        self._scanner = scanner
        self._metrics = metrics
        self._safety_scans: set[asyncio.Task[None]] = set()
        # Set while no stream is open and none is releasing: shutdown closes the stores only then.
        self._all_released = asyncio.Event()
        self._all_released.set()
        self._releases_under_way = 0
        self._heartbeat_interval = heartbeat_interval
        self._write_timeout = write_timeout
        self._period = min(SWEEP_PERIOD, heartbeat_interval / SWEEPS_PER_HEARTBEAT)
        # Each open stream and the sweep (a count of periods) that next visits it; the streams by that
        # sweep. A closed stream leaves both at once: nothing here holds it, to be freed later in bulk.
        self._visit_of: dict[OpenStream, int] = {}
        self._visits: dict[int, set[OpenStream]] = {}
        self._swept = self._sweep_number(time.monotonic())
        self._sweeper: asyncio.Task[None] | None = None
        self._scans_due: list[OpenStream] = []
        self._releases_left = RELEASES_PER_ITERATION
        self._waiting_to_release: collections.deque[asyncio.Future[None]] = collections.deque()
        self._releases_renewed = False
        self._ending = False

    def add(self, stream: OpenStream) -> None:
        """Track an opened stream; its first heartbeat is due a heartbeat interval from now.

        Once shutdown has begun (`end_all`), the stream is told to end at once: it was registering
        when the others were told, or its request came on a connection accepted before.
        """
        self._schedule(stream, time.monotonic() + self._heartbeat_interval)
        self._all_released.clear()
        if self._metrics is not None:
            self._metrics.streams_opened.inc()
            self._metrics.streams_open.inc()
        if self._ending:
            stream.end()

    def discard(self, stream: OpenStream) -> None:
        """Forget a closed stream that holds nothing to release (else `releasing`)."""
        visit = self._visit_of.pop(stream, None)
        if visit is None:
            return
        if (waiting := self._visits.get(visit)) is not None:
            waiting.discard(stream)
        if self._metrics is not None:
            self._metrics.streams_closed.inc()
            self._metrics.streams_open.dec()
        self._note_if_all_released()

    @contextlib.asynccontextmanager
    async def releasing(self, stream: OpenStream) -> AsyncIterator[None]:
        """Forget a closed stream, and enter once it may release what it holds (its registration).

        At most RELEASES_PER_ITERATION enter per loop iteration, in the order they came, so that a
        mass disconnect does not stall the other streams. The stream counts as releasing from the
        moment it is forgotten until it leaves, so `wait_until_all_released` waits for it.
        """
        # Counted before it is forgotten: the registry must not look released in between.
        self._releases_under_way += 1
        self.discard(stream)
        try:
            await self._release_turn()
            yield
        finally:
            self._releases_under_way -= 1
            self._note_if_all_released()

    def _note_if_all_released(self) -> None:
        if not self._visit_of and not self._releases_under_way:
            self._all_released.set()

    async def _release_turn(self) -> None:
        """Return in the stream's turn: at once, unless this iteration's allowance is spent or others wait."""
        if self._releases_left > 0 and not self._waiting_to_release:
            self._releases_left -= 1
            self._renew_releases_soon()
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting_to_release.append(turn)
        self._renew_releases_soon()
        await turn

    def _renew_releases_soon(self) -> None:
        if not self._releases_renewed:
            self._releases_renewed = True
            asyncio.get_running_loop().call_soon(self._renew_releases)

    def _renew_releases(self) -> None:
        """Once per loop iteration while closes come: a new allowance, first for those waiting."""
        self._releases_renewed = False
        self._releases_left = RELEASES_PER_ITERATION
        while self._waiting_to_release and self._releases_left > 0:
            turn = self._waiting_to_release.popleft()
            if not turn.done():  # else its stream's task was cancelled meanwhile
                turn.set_result(None)
                self._releases_left -= 1
        if self._waiting_to_release or self._releases_left < RELEASES_PER_ITERATION:
            self._renew_releases_soon()

    def __len__(self) -> int:
        return len(self._visit_of)

    def __iter__(self) -> Iterator[OpenStream]:
        return iter(list(self._visit_of))

    def count_slow_client(self) -> None:
        """Count a stream closed because its client left a write unread or unacknowledged for the write timeout."""
        if self._metrics is not None:
            self._metrics.slow_clients_dropped.inc()

    async def wait_until_all_released(self) -> None:
        """Return once no stream is open and none is still releasing what it held."""
        await self._all_released.wait()

    def end_all(self) -> None:
        """Ask every open stream, and any opened from now on, to end; each releases what it holds when it has
        (`releasing`)."""
        self._ending = True
        for stream in list(self._visit_of):
            stream.end()

    def start(self) -> None:
        """Start the sweep (the task is kept and cancelled by `close`)."""
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def close(self) -> None:
        """Stop the sweep and the safety scans under way."""
        for scan in list(self._safety_scans):
            scan.cancel()
        await asyncio.gather(*self._safety_scans, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def scan_soon(self, stream: OpenStream) -> None:
        """Have `stream`'s inbox looked at by the next sweep, together with the others due by then."""
        self._scans_due.append(stream)

    async def _safety_scan(self, due: list[OpenStream]) -> None:
        """Ask Redis about all the due inboxes at once; wake the streams whose inbox holds entries."""
        registered = [(stream, inbox) for stream in due if (inbox := stream.inbox) is not None]
        try:
            found = await self._scanner.safety_scan([inbox for _, inbox in registered])
        except StoreUnavailable:
            found = [True] * len(registered)  # each stream's own scan meets the outage and backs off
        else:
            if self._metrics is not None:
                unregistered = sum(inbox.registration_lost for _, inbox in registered)
                holding = sum(found) - unregistered
                self._metrics.safety_scans_unregistered.inc(unregistered)
                self._metrics.safety_scans_found.inc(holding)
                self._metrics.safety_scans_empty.inc(len(found) - holding - unregistered)
        for (stream, _), holds_entries in zip(registered, found, strict=True):
            if holds_entries:
                stream.wake()

    def sweep(self, now: float) -> None:
        """Start the scans due, and visit the streams due: heartbeat the silent, drop the stalled."""
        if self._scans_due:
            due, self._scans_due = self._scans_due, []
            scan = asyncio.ensure_future(self._safety_scan(due))
            self._safety_scans.add(scan)
            scan.add_done_callback(self._safety_scans.discard)
        swept = self._swept = max(self._swept, self._sweep_number(now))
        for number in sorted(number for number in self._visits if number <= swept):
            for stream in self._visits.pop(number):
                next_visit = self._visit(stream, now)
                if stream in self._visit_of:  # else it was discarded on the way
                    self._schedule(stream, next_visit)

    def _visit(self, stream: OpenStream, now: float) -> float:
        """Heartbeat or drop `stream` if due; when it will next be due."""
        started = stream.stalled_since()
        if started is not None:
            if now - started > self._write_timeout:
                self.count_slow_client()
                stream.drop()
                return now + self._write_timeout  # it discards itself meanwhile
            return started + self._write_timeout + self._period  # the first sweep past the timeout
        heartbeat_due = stream.last_write + self._heartbeat_interval
        if now >= heartbeat_due - self._period / 2:
            stream.heartbeat(now)
            return now + self._heartbeat_interval
        return heartbeat_due

    def _schedule(self, stream: OpenStream, when: float) -> None:
        # The sweep of the period `when` falls in, never one already made: sweeps keep their phase, so a
        # stream comes back on time after a heartbeat, and otherwise within a period of `when`.
        number = max(self._swept + 1, self._sweep_number(when))
        self._visit_of[stream] = number
        if (waiting := self._visits.get(number)) is None:
            waiting = self._visits[number] = set()
        waiting.add(stream)

    def _sweep_number(self, now: float) -> int:
        return math.floor(now / self._period)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            self.sweep(time.monotonic())
