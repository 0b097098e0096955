"""One open event stream: its PeriodicCallback scans its inbox, writes what is owed, then deletes exactly that.

`LiveConnection` is everything a stream does once its handler has accepted it: it registers its
inbox in Redis, catches up from MongoDB after `Last-Event-ID`, scans the inbox when woken or on its
PeriodicCallback, writes each batch (straight to the socket), and deletes what it delivered. It keeps
the one ledger of what was sent on this connection, so nothing goes out twice, and is the one
writer of its socket: heartbeats go through it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bson import ObjectId
from tornado.ioloop import PeriodicCallback
from tornado.iostream import IOStream, StreamClosedError

from services.cache import OBSERVER_GRACE, ConnectionInbox
from services.errors import StoreUnavailable, TooMany
from services.logs import fields
from services.metrics import Metrics
from services.notifications import CATCH_UP_WINDOW, Change, GapTooLarge, Notification, event_id
from services.recovery import RecoveryReads
from services.redis_backend import split_changes
from services.sse import encode_comment, encode_event, encode_retry

if TYPE_CHECKING:
    from services.streams import StreamRegistry
    from services.wakeups import Delivery, WakeupHub

log = logging.getLogger("bellcast.stream")

NOTIFICATION_EVENT = "notification"
# Sent instead of a replay longer than MAX_REPLAY: the client reloads its list rather than receive the gap.
RESYNC_EVENT = "resync"
RESYNC_DATA = json.dumps({"reason": "gap_too_large"}, separators=(",", ":"))
# A change to the user's notifications, with the user's counts after it (services/notifications.py `Change`).
CHANGED_EVENT = "changed"
# What browsers wait before reconnecting after the stream drops.
RECONNECT_DELAY_MS = 2000
# Spread the ticks of streams opened together, so they do not all fall due at once.
TICK_JITTER = 0.1
# Ticks fall on the multiples of this many seconds, so that streams share wake-ups instead of one each.
TICK_ALIGNMENT = 0.1
HEARTBEAT = encode_comment("heartbeat")
# After a failed scan (a store unreachable), scan again after this long, doubling up to the maximum.
SCAN_RETRY_FIRST_SECONDS = 0.5
SCAN_RETRY_MAX_SECONDS = 10.0
# The most entries one scan sends, so that one write stays small however much is queued.
MAX_ENTRIES_PER_SEND = 100
CATCH_UP_WINDOW_SECONDS = int(CATCH_UP_WINDOW.total_seconds())
# TCP_USER_TIMEOUT is a C int of milliseconds: a longer STREAM_WRITE_TIMEOUT is cut to this (24 days).
MAX_USER_TIMEOUT_MS = 2**31 - 1

Entry = tuple[str, bytes | str]


def chunk_of(data: bytes) -> bytes:
    """`data` as Tornado frames it on a chunked response (HTTP/1.1): its length in hex, CRLF, itself, CRLF.

    Nothing for no data: an empty chunk would end the response.
    """
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


# The heartbeat framed once for all streams, ready for the socket.
HEARTBEAT_CHUNK = chunk_of(HEARTBEAT)


@dataclass(frozen=True)
class StreamTiming:
    """How often streams act: heartbeats, and scans with or without wake-up hints."""

    poll_interval: float
    heartbeat_interval: float
    safety_scan_interval: float
    wakeup_hints: bool

    @property
    def tick_interval(self) -> float:
        """A stream's PeriodicCallback period: every poll without hints; with them, the slow safety scan.

        Heartbeats are not ticks: the registry sends them for all streams in one sweep.
        """
        return self.safety_scan_interval if self.wakeup_hints else self.poll_interval


class EventStreamResponse(Protocol):
    """The HTTP response a connection writes its events to (the stream's RequestHandler)."""

    def write(self, chunk: bytes) -> None:
        """Buffer `chunk` for the next flush."""

    def flush(self) -> asyncio.Future[None]:
        """Send what was buffered; done once the socket took it."""

    def finish(self) -> Awaitable[None]:
        """End the response."""

    def log_fields(self) -> dict[str, Any]:
        """What this request's log lines carry."""


class AlignedPeriodicCallback(PeriodicCallback):
    """A PeriodicCallback whose runs fall on the multiples of `alignment` seconds (of its clock, `IOLoop.time`).

    Thousands of streams' timers then fall due together, once per alignment step, instead of each
    waking the event loop on its own millisecond, which costs context switches and CPU at idle.
    Jitter still spreads the runs, in whole steps, and a step is short enough that none of them
    runs many. Rounding moves a run by at most half a step.
    """

    def __init__(
        self, callback: Callable[[], Awaitable[None] | None], callback_time: float, jitter: float, alignment: float
    ) -> None:
        super().__init__(callback, callback_time, jitter)
        self._alignment = alignment

    def _update_next(self, current_time: float) -> None:
        super()._update_next(current_time)
        aligned = round(self._next_timeout / self._alignment) * self._alignment
        self._next_timeout = aligned if aligned > current_time else aligned + self._alignment


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


class LiveConnection:
    """One browser's open stream: catch-up from MongoDB, then whatever its inbox in Redis receives.

    Its PeriodicCallback scans the inbox every POLL_INTERVAL when wake-up hints are off; with
    hints, the hub wakes it the moment something is queued and the PeriodicCallback only runs
    the slow safety scan, so an idle stream costs almost no Redis traffic. Heartbeats come from
    the registry's sweep, one timer for all streams, and go out through `heartbeat`.

    After the cache was unreachable or restarted (the hub's epoch moved on), or a notification
    could not be queued (`recover`), it registers again and first sends from MongoDB what the
    stream missed meanwhile: MongoDB, not the cache, is the source of truth.
    """

    __slots__ = (
        "__weakref__",  # so that a test can tell a closed stream was freed
        "_changes_removing",
        "_chunked",
        "_closed",
        "_counts_owed",
        "_ended_by",
        "_ending",
        "_epoch_seen",
        "_events_sent",
        "_failed_scans",
        "_headers_sent",
        "_inbox",
        "_last_write",
        "_max_replay",
        "_max_streams_per_user",
        "_metrics",
        "_newest_sent",
        "_opened_at",
        "_pending_write",
        "_reads",
        "_recovering",
        "_recovery_cursor",
        "_registered",
        "_registry",
        "_replay_owed",
        "_response",
        "_resume_from",
        "_retry",
        "_scanning",
        "_sent",
        "_socket",
        "_wake_scan",
        "_wakeups",
        "_woken",
        "_write_started",
        "user_id",
    )

    def __init__(
        self,
        response: EventStreamResponse,
        socket_stream: IOStream,
        chunked: bool,
        inbox: ConnectionInbox,
        reads: RecoveryReads,
        wakeups: WakeupHub,
        registry: StreamRegistry,
        metrics: Metrics,
        last_event_id: str | None,
    ) -> None:
        self._response = response
        self._socket = socket_stream
        # Whether Tornado chunks this response (HTTP/1.1): writes that bypass it must frame themselves alike.
        self._chunked = chunked
        # Until the first write, which carries the headers and so goes through Tornado, nothing bypasses it.
        self._headers_sent = False
        self._inbox = inbox
        self._reads = reads
        self._wakeups = wakeups
        self._registry = registry
        self._metrics = metrics
        self.user_id = inbox.user_id
        self._epoch_seen = wakeups.epoch
        self._opened_at = time.time()
        # The key (`Notification.key`) of the newest notification sent, once the replay has found where a
        # Last-Event-ID stands (`_resume_from`, until then).
        self._newest_sent: str | None = None
        self._resume_from = last_event_id or None
        # The one ledger of what went out on this connection and could come back: id → whether its
        # inbox entry may still exist (the observer queued it too, or its deletion failed). An id
        # leaves once its entry is gone and it is older than CATCH_UP_WINDOW before the newest sent,
        # the furthest back a catch-up looks. Made on first use: most streams never need it.
        self._sent: dict[str, bool] | None = None
        # The `changed` events written straight from a hint whose inbox entries may still exist (their removal
        # rides with a later pipeline, or failed): a scan deletes them instead of sending them again.
        self._changes_removing: set[str] | None = None
        # Owed from MongoDB: the replay after Last-Event-ID (`_replay_owed`, until it is sent or refused), and
        # what an outage or a lost registration kept from the inbox (`_recovering`, a page at a time from
        # `_recovery_cursor`, the last id of the page before).
        self._replay_owed = self._resume_from is not None
        # Changes queued while the inbox could not take them are lost: once a stream resumes or recovers, it
        # sends the user's counts as they are.
        self._counts_owed = False
        self._max_replay = 0
        self._recovering = False
        self._recovery_cursor: str | None = None
        self._registered = False
        # Done once the stream is over: a bare future costs less memory than an asyncio.Event.
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ending = False
        self._ended_by = "client"
        self._events_sent = 0
        self._last_write = 0.0
        self._write_started: float | None = None
        self._pending_write: asyncio.Future[None] | None = None
        # A scan is running (or the catch-up is): wakes are folded into it rather than started anew.
        self._scanning = True
        self._woken = False
        self._wake_scan: asyncio.Future[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._failed_scans = 0

    # -- opening and closing ------------------------------------------------------------------------

    async def open(self, max_streams_per_user: int) -> None:
        """Register the stream; TooMany past the user's limit. With the cache down it opens and recovers later."""
        # Listen before registering: whatever is queued once the registration is visible comes with
        # a hint that wakes this stream, so a new stream needs no scan of its own to start with.
        self._wakeups.listen(self.user_id, self)
        self._max_streams_per_user = max_streams_per_user
        try:
            streams_of_user = await self._inbox.register()
        except StoreUnavailable:
            self._recovering = True
        else:
            if streams_of_user > max_streams_per_user:
                await self._inbox.deregister()
                raise TooMany(f"at most {max_streams_per_user} streams per user")
        self._registered = True
        self._registry.add(self)

    async def serve(self, timing: StreamTiming, max_replay: int) -> None:
        """Send the catch-up (at most `max_replay` notifications, else a `resync` event), then scan on every
        wake and tick until the client leaves or shutdown ends it."""
        tick = self._queue_safety_scan if timing.wakeup_hints else self._poll
        ticker = AlignedPeriodicCallback(
            tick, timing.tick_interval * 1000, TICK_JITTER, min(TICK_ALIGNMENT, timing.tick_interval / 10)
        )
        self._max_replay = max_replay
        try:
            if await self.send(encode_retry(RECONNECT_DELAY_MS) + encode_comment("connected")):
                await self._catch_up()
            ticker.start()
            if self._retry is None:  # else the catch-up failed, and its retry comes after a backoff
                # Hints that came during the catch-up; a stream that could not register recovers now.
                self._woken = self._woken or self._recovering
                await self._drain()
            self._scanning = False
            await self._closed
            if self._ending and await self.send(encode_retry(RECONNECT_DELAY_MS) + encode_comment("server restarting")):
                # End the response ourselves, so its last chunk is sent before shutdown closes the connection.
                with contextlib.suppress(StreamClosedError):
                    await self._response.finish()
        finally:
            ticker.stop()

    async def release(self) -> None:
        """Stop everything under way and deregister; shutdown waits for this before it closes the stores."""
        self.close()
        self._count_if_unacknowledged()
        if self._wake_scan is not None:
            self._wake_scan.cancel()
        if self._retry is not None:
            self._retry.cancel()
        self._wakeups.ignore(self.user_id, self)
        if not self._registered:  # refused, or never opened
            return
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Cancelled at exit, past shutdown's grace: the stores are closed, the registration expires by its TTL.
            self._registry.discard(self)
            return
        try:
            async with self._registry.releasing(self):
                await self._inbox.deregister()
        except StoreUnavailable:
            log.debug(
                "could not deregister a stream; its registration expires by itself",
                extra=fields(**self._response.log_fields()),
            )

    def close(self) -> None:
        """The client went away: wake `serve` so that everything is released now."""
        if not self._closed.done():
            self._closed.set_result(None)

    def end(self) -> None:
        """Shutdown: tell the client to reconnect (elsewhere), then close the stream."""
        self._ending = True
        self._ended_by = "shutdown"
        self.close()

    def drop(self) -> None:
        """The client stopped reading: close the connection; it will reconnect and catch up."""
        log.info("dropping a stream whose client has not read for a while", extra=fields(**self._response.log_fields()))
        self._ended_by = "slow_client"
        self.close()
        self._socket.close()

    def _count_if_unacknowledged(self) -> None:
        """If the kernel gave up on the connection, count it as a dropped slow client, as the sweep would have.

        What was sent stayed unacknowledged for STREAM_WRITE_TIMEOUT (TCP_USER_TIMEOUT): the client
        stopped reading, or vanished without FIN or RST. Whichever notices first, it counts once.
        """
        if self._ended_by == "client" and isinstance(self._socket.error, TimeoutError):
            self._ended_by = "slow_client"
            self._registry.count_slow_client()
            log.info(
                "a stream's client left its data unacknowledged: closed", extra=fields(**self._response.log_fields())
            )

    @property
    def connection_id(self) -> str:
        """The connection's id in Redis (its inbox's key ends with it)."""
        return self._inbox.connection_id

    @property
    def inbox(self) -> ConnectionInbox | None:
        """The stream's inbox in Redis, once registered (the registry's safety scans look into it)."""
        return self._inbox if self._registered else None

    def log_fields(self) -> dict[str, Any]:
        """What the stream's log lines add once it is open: its connection, what it sent and why it ended."""
        if not self._registered:
            return {}
        return {"connection": self._inbox.connection_id, "events_sent": self._events_sent, "ended_by": self._ended_by}

    # -- the one writer of the socket ------------------------------------------------------------

    async def send(self, chunk: bytes) -> bool:
        """Write and flush, after any write under way; False once the client has gone.

        Like heartbeats, events go straight to the socket when nothing is in flight (`_send_now`):
        Tornado's write path costs more than the send itself. Tornado writes the first chunk, which
        carries the headers, and any chunk that finds bytes still queued (a heartbeat's rest, begun
        while this waited), behind them.
        """
        if self._closed.done() and not self._ending:
            return False
        if self._pending_write is not None:
            await asyncio.wait([self._pending_write])
        if self._closed.done() and not self._ending:
            return False
        stream = self._socket
        try:
            if not self._headers_sent or self._pending_write is not None or stream.writing():
                self._headers_sent = True
                self._response.write(chunk)
                await self.flush()
            elif stream.closed():
                return False
            else:
                rest = self._send_now(chunk_of(chunk) if self._chunked else chunk, time.monotonic())
                if rest is not None:
                    await rest
        except StreamClosedError:
            return False
        return True

    def flush(self) -> asyncio.Future[None]:
        """Flush what was written, as the write under way (the sweep and `heartbeat` look at it)."""
        return self._track_write(self._response.flush())

    def heartbeat(self, now: float) -> None:
        """A comment, so that proxies do not close an idle stream; the registry's sweep calls it.

        At thousands of idle streams heartbeats are most of the work: they go straight to the
        socket (`_send_now`), and only with nothing in flight, so that bytes never interleave.
        """
        stream = self._socket
        if (
            self._closed.done()
            or not self._headers_sent
            or self._pending_write is not None
            or stream.closed()
            or stream.writing()
        ):
            return  # gone, or bytes still queued: the sweep tries again a heartbeat interval later
        with contextlib.suppress(StreamClosedError):
            self._send_now(HEARTBEAT_CHUNK if self._chunked else HEARTBEAT, now)

    def _send_now(self, framed: bytes, now: float) -> asyncio.Future[None] | None:
        """Hand `framed`, bytes as Tornado would put them on the wire, to the socket; nothing may be in flight.

        What the kernel does not take now goes to the IOStream as the write under way, returned to
        be awaited; the sweep drops the client if it stays there past STREAM_WRITE_TIMEOUT. None when
        all went out. StreamClosedError, as Tornado would raise it, when the connection failed: then
        it is closed.
        """
        stream = self._socket
        try:
            sent = stream.socket.send(framed)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            # Reset, closed under us or given up by the kernel: the client has gone. Close with the
            # error, as Tornado would, so that the stream's end says why (`_count_if_unacknowledged`).
            stream.close(exc_info=error)
            self.close()
            raise StreamClosedError(real_error=error) from error
        if sent == len(framed):
            self._last_write = now
            return None
        return self._track_write(stream.write(framed[sent:]))

    def stalled_since(self) -> float | None:
        """When the write under way began (time.monotonic()), if one is."""
        return self._write_started

    @property
    def last_write(self) -> float:
        """When the last write completed (time.monotonic()): the registry's sweep heartbeats after silence."""
        return self._last_write

    def _track_write(self, future: asyncio.Future[None]) -> asyncio.Future[None]:
        self._pending_write = future
        self._write_started = time.monotonic()
        future.add_done_callback(self._write_done)
        return future

    def _write_done(self, future: asyncio.Future[None]) -> None:
        if self._pending_write is future:
            self._pending_write = None
            self._write_started = None
        if future.cancelled() or future.exception() is not None:
            self.close()  # the client has gone (StreamClosedError)
        else:
            self._last_write = time.monotonic()

    async def _send_entries(self, entries: list[Entry], live: bool, changes: Sequence[bytes | str] = ()) -> bool:
        """Write notification events, then `changed` events, in one write; False once the client has gone."""
        if not await self.send(self._encode(entries, changes)):
            return False
        self._count_sent(entries, live, len(changes))
        return True

    def _encode(self, entries: list[Entry], changes: Sequence[bytes | str]) -> bytes:
        """Notification events, then `changed` events, as one chunk.

        The changes' id is the newest notification sent (these included), so that a reconnect resumes there.
        """
        chunk = b"".join(encode_event(event_id(key), NOTIFICATION_EVENT, data) for key, data in entries)
        if changes:
            newest = event_id(self._newest_after(entries))
            chunk += b"".join(encode_event(newest, CHANGED_EVENT, data) for data in changes)
        return chunk

    def _newest_after(self, entries: list[Entry]) -> str:
        """The newest notification sent once `entries` are."""
        return max([key for key, _ in entries] + ([self._newest_sent] if self._newest_sent else []), default="")

    def _count_sent(self, entries: list[Entry], live: bool, changes: int) -> None:
        """Note what a write sent: in the ledger, the metrics and the count its log line reports."""
        self._events_sent += len(entries) + changes
        if entries:
            self._metrics.delivered(entries, live)
            self._note_sent([notification_id for notification_id, _ in entries])
        if changes:
            self._metrics.changes_delivered.inc(changes)

    # -- wakes, ticks and scans ------------------------------------------------------------------

    def wake(self, hinted: Sequence[Entry] | None = None) -> None:
        """Something was queued for this stream: scan now, or right after the scan under way (which drops
        `hinted`: the next scan reads the inbox). A scan started here takes `hinted`, what the hint carried,
        in place of reading the inbox, unless it recovers (`_take`)."""
        self._woken = True
        if not self._scanning and not self._closed.done():
            self._scanning = True
            self._wake_scan = asyncio.ensure_future(self._scan_on_wake(hinted))

    def deliver(self, delivery: Delivery) -> None:
        """These entries were just queued in this stream's inbox (the hint carried them).

        An idle stream writes them at once, without reading its inbox or starting a task, and joins
        `delivery.written`: the hub removes exactly them from the inboxes of all who wrote them in one
        command, and tells the stream once done (`acknowledged`). Removed once the socket took them: only
        this stream reads its inbox, and a connection that fails meanwhile drops the inbox anyway (its
        client resumes from MongoDB). The stream stays idle meanwhile: until then the ledger (and
        `_changes_removing`) has a scan delete the entries instead of sending them again. Any other stream
        scans, taking the entries in place of reading its inbox unless it is resuming, backing off or
        recovering (`_take`); the inbox has them too.
        """
        notifications: list[Entry] = delivery.notifications
        if not self._writes_now(notifications):
            self.wake(None if self._replay_owed or self._retry is not None else delivery.entries)
            return
        change_count = len(delivery.changes)
        # Every stream of the user writes the same bytes, but for the changes' id (its newest notification sent).
        shape = (self._newest_after(notifications) if change_count else None, self._chunked)
        framed = delivery.encoded.get(shape)
        if framed is None:
            chunk = self._encode(notifications, [data for _, data in delivery.changes])
            framed = delivery.encoded[shape] = chunk_of(chunk) if self._chunked else chunk
        try:
            self._send_now(framed, time.monotonic())
        except StreamClosedError:
            return
        self._count_sent(notifications, True, change_count)
        self._note_queued(delivery.notification_ids, True)
        if change_count:
            removing = self._changes_removing = self._changes_removing or set()
            removing.update(field for field, _ in delivery.changes)
        delivery.written.append((self, self._inbox.key))

    def _writes_now(self, notifications: list[Entry]) -> bool:
        """Whether a hint's entries may go straight to the socket: the stream is idle and owes nothing before them."""
        stream = self._socket
        return not (
            self._scanning
            or self._closed.done()
            or not self._registered
            or self._retry is not None
            or self._replay_owed
            or self._recovering
            or self._counts_owed
            or self._wakeups.epoch != self._epoch_seen
            or self._inbox.registration_lost
            or self._inbox.renewal_pending
            or not self._headers_sent
            or self._pending_write is not None
            or stream.closed()
            or stream.writing()
            or len(notifications) >= MAX_ENTRIES_PER_SEND
            or (self._sent is not None and any(key in self._sent for key, _ in notifications))
        )

    def acknowledged(self, delivery: Delivery, left: int | None) -> None:
        """What this stream wrote of `delivery` left its inbox, which still holds `left` entries: with any, it
        scans now. None: Redis did not answer; the ledger keeps the entries as queued, and the next scan deletes
        them without sending them again."""
        if left is None:
            return
        self._note_queued(delivery.notification_ids, False)
        self._forget_changes_removed([field for field, _ in delivery.changes])
        if left:
            self.wake()

    def recover(self) -> None:
        """A notification for this user could not be queued: catch up from MongoDB, then scan as usual.

        A stream backing off after a failed scan recovers with its next try; one still registering,
        once it is registered.
        """
        self._start_recovery()
        if self._registered and self._retry is None:
            self.wake()

    async def _scan_on_wake(self, hinted: Sequence[Entry] | None = None) -> None:
        try:
            await self._drain(hinted)
        finally:
            self._scanning = False
            self._wake_scan = None

    def _queue_safety_scan(self) -> None:
        """The PeriodicCallback with hints: its slow safety scan, at the registry's next sweep.

        The scans that fall due within a sweep period then go to Redis in one pipeline instead of
        one round trip each, which is most of what thousands of idle streams cost.
        """
        # After a failed scan its backoff says when to try the stores again (as in `_poll`).
        if not self._closed.done() and self._retry is None:
            self._registry.scan_soon(self)

    async def _poll(self) -> None:
        """The PeriodicCallback without hints: scan the inbox every POLL_INTERVAL."""
        # After a failed scan its backoff says when to try the stores again, not every poll.
        if self._scanning or self._retry is not None or self._closed.done():
            return
        self._scanning = True
        try:
            self._woken = True
            await self._drain()
        finally:
            self._scanning = False

    def _retry_later(self) -> None:
        """A store did not answer: scan again soon, backing off, rather than wait for the next tick."""
        self._woken = True
        if self._retry is None and not self._closed.done():
            delay = min(SCAN_RETRY_MAX_SECONDS, SCAN_RETRY_FIRST_SECONDS * 2**self._failed_scans)
            self._failed_scans += 1
            self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.wake()

    async def _catch_up(self) -> bool:
        """What a client resuming after its Last-Event-ID lacks, a page at a time; nothing for a new client.

        A gap of more than MAX_REPLAY is not replayed: one `resync` event tells the client to reload its
        list instead, so that a reconnect costs bounded time and bytes however long the client was away.
        False when MongoDB did not answer: the replay is still owed, and a scan after a backoff tries
        again (with the bound again) before it sends anything from the inbox.
        """
        if not self._replay_owed:
            return True
        try:
            if self._newest_sent is None and self._resume_from is not None:
                self._newest_sent = await self._reads.resume_key(self.user_id, self._resume_from)
                self._resume_from = None
            after = self._newest_sent
            if after is None:  # the Last-Event-ID names no notification: nothing to replay
                self._replay_owed = False
                return True
            page, next_after = await self._reads.missed(self.user_id, after, look_back=True, at_most=self._max_replay)
            while True:
                entries = self._unsent(page)
                if entries and not await self._send_entries(entries, live=False):
                    break  # the client has gone
                if next_after is None:
                    break
                after = max(after, next_after)
                page, next_after = await self._reads.missed(self.user_id, after, look_back=False)
        except GapTooLarge as gap:
            await self._send_resync(gap.newest_key)
        except StoreUnavailable:
            log.debug("catch-up postponed: MongoDB unavailable", extra=fields(**self._response.log_fields()))
            self._retry_later()
            return False
        self._replay_owed = False
        self._counts_owed = self._woken = True
        return True

    async def _send_resync(self, newest: str | None) -> None:
        """Tell the client to reload its list; the event's id, the user's newest notification, becomes its
        Last-Event-ID, so a reconnect resumes from there. What is queued meanwhile follows live, but not that
        newest one: the reloaded list has it."""
        if newest is None:  # deleted meanwhile: nothing to replay either
            return
        if await self.send(encode_event(event_id(newest), RESYNC_EVENT, RESYNC_DATA)):
            self._events_sent += 1
            self._note_sent([newest])

    async def _send_counts(self) -> bool:
        """The user's counts as they are, as a `changed` event of kind `counts`; False if the stream ended."""
        try:
            counts = await self._reads.counts(self.user_id)
        except StoreUnavailable:
            self._retry_later()
            return False
        self._counts_owed = False
        return await self._send_entries([], live=True, changes=[Change(self.user_id, "counts", (), counts).to_json()])

    async def _drain(self, hinted: Sequence[Entry] | None = None) -> None:
        """While woken: send what is owed in id order, then delete exactly that from the inbox. The first scan takes
        what a hint carried (`hinted`) in place of reading the inbox."""
        while self._woken and not self._closed.done() and self._registered:
            self._woken = False
            if self._replay_owed and not await self._catch_up():
                return
            try:
                await self._inbox.renew_if_due()
                scan_started = time.perf_counter()
                entries, delivered_before, changes = await self._take(hinted)
            except StoreUnavailable:
                self._retry_later()
                return
            self._failed_scans = 0
            if entries:
                self._metrics.cache_scan.observe(time.perf_counter() - scan_started)
                if len(entries) >= MAX_ENTRIES_PER_SEND:
                    self._woken = True  # more is queued than one send takes
            # A create's notification and the change that carries the counts after it go out in one write.
            unsent_changes = [data for field, data in changes if field not in (self._changes_removing or ())]
            if (entries or unsent_changes) and not await self._send_entries(entries, True, unsent_changes):
                return
            delivered = [*delivered_before, *(notification_id for notification_id, _ in entries)]
            with contextlib.suppress(StoreUnavailable):
                await self._delete(delivered, [field for field, _ in changes], hinted is not None)
            hinted = None
            if self._counts_owed and not self._recovering and not await self._send_counts():
                return

    async def _take(self, hinted: Sequence[Entry] | None = None) -> tuple[list[Entry], list[str], list[Entry]]:
        """What to send now, in id order (after an outage first MongoDB's catch-up, then the inbox, or what a hint
        carried), the inbox's entries that were already sent on this connection, to delete, and the changes
        queued.

        Raises StoreUnavailable while a store is unreachable; what is owed is kept for later.
        """
        if self._wakeups.epoch != self._epoch_seen:
            self._epoch_seen = self._wakeups.epoch
            self._start_recovery()
        if self._inbox.registration_lost:
            self._start_recovery()
        owed: dict[str, bytes | str] = {}
        # While MongoDB may owe more than one page: the highest id it has given so far.
        recovered_up_to: str | None = None
        if self._recovering:
            hinted = None  # a recovery reads the inbox, whatever a hint carried
            # A recovery starts by registering again: from then on the inbox receives what is created.
            if self._recovery_cursor is None and await self._inbox.register() > self._max_streams_per_user:
                # Opened while Redis could not count it, or Redis forgot the user's streams: the cap holds now.
                await self._end_over_user_limit()
                return [], [], []
            recovered, recovered_up_to = await self._recovery_page()
            owed.update(recovered)
            if recovered_up_to is not None:
                self._woken = True  # the next scan goes on from the last id of this page
        try:
            queued = list(hinted) if hinted is not None else await self._inbox.pending()
            if self._inbox.overflowed:
                # Redis held MAX_QUEUED_PER_STREAM and dropped the rest: MongoDB has them. Sent now, the inbox's
                # newer entries would move the resume point past them: recover first, from the newest sent.
                await self._inbox.clear_overflow()
                self._start_recovery()
                self._woken = True
                return [], [], []
        except StoreUnavailable:
            self._start_recovery()
            raise
        # Changes wait while a recovery is under way: the counts sent after it supersede them.
        queued, changes = split_changes(queued)
        if recovered_up_to is not None:
            changes = []
        sent = self._sent or {}
        delivered_before = [notification_id for notification_id, _ in queued if notification_id in sent]
        for notification_id, data in queued:
            # An entry newer than what the recovery has reached waits for it: sent now, it would move the
            # resume point past notifications MongoDB has not given yet.
            if notification_id not in sent and (recovered_up_to is None or notification_id <= recovered_up_to):
                owed.setdefault(notification_id, data)
        return sorted(owed.items())[:MAX_ENTRIES_PER_SEND], delivered_before, changes

    def _start_recovery(self) -> None:
        """The inbox may have missed notifications: register again and catch up from MongoDB, from the start."""
        self._recovering = True
        self._recovery_cursor = None

    async def _end_over_user_limit(self) -> None:
        """Registering again, the stream found its user past MAX_STREAMS_PER_USER: it ends, and a reconnect is
        refused (429) while the user's other streams hold the places."""
        log.info(
            "stream ended: its user holds MAX_STREAMS_PER_USER streams", extra=fields(**self._response.log_fields())
        )
        self._ended_by = "user_limit"
        with contextlib.suppress(StoreUnavailable):
            await self._inbox.deregister()
        self.close()

    async def _recovery_page(self) -> tuple[dict[str, bytes | str], str | None]:
        """What a page of MongoDB's notifications holds that this connection has not sent, and the page's last
        id while MongoDB may hold more (None once all is read).

        A page at a time, so that a gap of any size costs one page of memory; read once for all the tabs
        of the user that ask the same (`RecoveryReads`).
        """
        floor: str | None = None
        if self._recovery_cursor is not None:
            after, look_back = self._recovery_cursor, False
        elif self._newest_sent is not None:
            after, look_back = self._newest_sent, True
        else:
            # Nothing sent yet: owed is what was created since shortly before the stream opened. Read from
            # the start of that minute, so that the user's tabs opened within it share one read.
            floor = _id_at(self._opened_at - 1)
            after, look_back = _id_at((self._opened_at - 1) // 60 * 60), False
        page, next_after = await self._reads.missed(self.user_id, after, look_back)
        if floor is not None:
            page = [notification for notification in page if notification.key > floor]
        owed = dict(self._unsent(page))
        if next_after is not None:
            self._recovery_cursor = max(after, next_after)
            return owed, self._recovery_cursor
        self._recovering = False
        self._recovery_cursor = None
        self._counts_owed = True
        return owed, None

    # -- the ledger of what was sent -------------------------------------------------------------

    def _unsent(self, batch: list[Notification]) -> list[Entry]:
        """The notifications of a catch-up this connection has not sent yet.

        One the observer may also have queued (created since shortly before the registration) is
        noted in the ledger as having an inbox entry, so that the inbox's copy is deleted, not sent.
        """
        sent = self._sent
        fresh: list[Entry] = []
        queued_since = self._inbox.registered_at - OBSERVER_GRACE
        for notification in batch:
            key = notification.key
            if sent is not None and key in sent:
                continue
            fresh.append((key, notification.to_json()))
            if notification.created_at.timestamp() >= queued_since:
                sent = self._sent = sent if sent is not None else {}
                sent[key] = True
        return fresh

    def _note_sent(self, notification_ids: list[str]) -> None:
        """Note what went out, so that no catch-up and no inbox sends it again."""
        newest = max(notification_ids, default=None)
        if newest is not None and (self._newest_sent is None or newest > self._newest_sent):
            self._newest_sent = newest
        sent = self._sent if self._sent is not None else {}
        for notification_id in notification_ids:
            sent.setdefault(notification_id, False)
        self._sent = sent
        self._forget_old()

    async def _delete(
        self, notification_ids: list[str], change_fields: Sequence[str] = (), hinted: bool = False
    ) -> None:
        """Delete exactly these entries (and the changes sent with them) from the inbox once they were sent, in one
        command; the ledger keeps the notifications until done. After sending what a hint carried, also ask what
        the inbox still holds: anything (an entry left from before) has the stream read it."""
        if not notification_ids and not change_fields:
            return
        self._note_queued(notification_ids, True)
        if hinted:
            if await self._inbox.remove_and_count([*notification_ids, *change_fields]):
                self._woken = True
        else:
            await self._inbox.remove([*notification_ids, *change_fields])
        self._note_queued(notification_ids, False)
        self._forget_changes_removed(change_fields)

    def _forget_changes_removed(self, change_fields: Sequence[str]) -> None:
        """These `changed` events are gone from the inbox: no scan can find them again."""
        if self._changes_removing and change_fields:
            self._changes_removing.difference_update(change_fields)
            if not self._changes_removing:
                self._changes_removing = None

    def _note_queued(self, notification_ids: list[str], queued: bool) -> None:
        """Note in the ledger whether these sent notifications may still have an inbox entry: until its removal is
        done, an id stays; after it, the next send forgets it once it is out of the window."""
        if not notification_ids:
            return
        sent = self._sent = self._sent if self._sent is not None else {}
        for notification_id in notification_ids:
            sent[notification_id] = queued

    def _forget_old(self) -> None:
        """Drop from the ledger what neither the inbox nor a catch-up can return any more."""
        if self._sent is None or self._newest_sent is None:
            return
        # An ObjectId's hex starts with its creation second: the smallest id of that second less the window.
        floor_second = max(0, int(self._newest_sent[:8], 16) - CATCH_UP_WINDOW_SECONDS)
        floor = f"{floor_second:08x}{'0' * 16}"
        kept = {i: queued for i, queued in self._sent.items() if queued or i >= floor}
        self._sent = kept or None


def _id_at(timestamp: float) -> str:
    """The smallest ObjectId of the second `timestamp` falls in: ids greater than it were made from then on."""
    return str(ObjectId.from_datetime(datetime.datetime.fromtimestamp(timestamp, datetime.UTC)))
