"""`GET /notifications/stream`: each user's notifications as Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.ioloop import PeriodicCallback
from tornado.iostream import StreamClosedError

from handlers.base import APIError, BaseHandler
from handlers.sse import encode_comment, encode_event, encode_retry
from services.cache import ConnectionInbox
from services.errors import StoreUnavailable
from services.logs import fields
from services.streams import MAX_ENTRIES_PER_SEND, Entry, StreamSession, abort_when_unacknowledged

log = logging.getLogger("bellcast.stream")

NOTIFICATION_EVENT = "notification"
# What browsers wait before reconnecting after the stream drops.
RECONNECT_DELAY_MS = 2000
# Spread the ticks of streams opened together, so they do not all fall due at once.
TICK_JITTER = 0.1
# Ticks fall on the multiples of this many seconds, so streams share wake-ups instead of one each (18,000
# streams' safety scans: 21-42 context switches a second where there were 420-510).
TICK_ALIGNMENT = 0.1
SERVER_BUSY_RETRY_SECONDS = 5
HEARTBEAT = encode_comment("heartbeat")
# The heartbeat as Tornado frames it on an HTTP/1.1 response (chunked), ready for the socket.
HEARTBEAT_CHUNK = b"%x\r\n%s\r\n" % (len(HEARTBEAT), HEARTBEAT)
# After a failed scan (a store unreachable), scan again after this long, doubling up to the maximum.
SCAN_RETRY_FIRST_SECONDS = 0.5
SCAN_RETRY_MAX_SECONDS = 10.0


class AlignedPeriodicCallback(PeriodicCallback):
    """A PeriodicCallback whose runs fall on the multiples of `alignment` seconds (of its clock, `IOLoop.time`).

    Thousands of streams' timers then fall due together, once per alignment step, instead of each
    waking the event loop on its own millisecond: while the safety scans of 18,000 streams opened
    within seconds fell due, the process made 420-510 context switches a second and took 7.8-11.3 %
    of a core; aligned, 21-42 and 5.1-6.4 %. Jitter still spreads the runs, in whole steps, and a step
    is short enough that none of them runs many. Rounding moves a run by at most half a step.
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


class EventStreamHandler(BaseHandler):
    """One browser's stream: catch-up from MongoDB, then whatever its inbox in Redis receives.

    Its PeriodicCallback scans the inbox every POLL_INTERVAL when wake-up hints are off; with
    hints, the hub wakes it the moment something is queued and the PeriodicCallback only runs
    the slow safety scan, so an idle stream costs almost no Redis traffic. Heartbeats come from
    the registry's sweep, one timer for all streams.
    """

    # Class-level defaults, so that an idle stream carries no per-instance copy of them.
    _events_sent = 0
    _ended_by = "client"
    # A recovery asked for while the stream was still registering, applied once it is registered.
    _recover_when_registered = False

    def initialize(self) -> None:
        """Per-stream state; the timing comes from the Application's settings."""
        # Done once the stream is over: a bare future costs less memory than an asyncio.Event.
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ending = False
        self._last_write = 0.0
        self._write_started: float | None = None
        self._pending_write: asyncio.Future[None] | None = None
        self._session: StreamSession | None = None
        # A scan is running (or the catch-up is): wakes are folded into it rather than started anew.
        self._scanning = True
        self._woken = False
        self._wake_scan: asyncio.Future[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._failed_scans = 0

    async def get(self) -> None:
        """Stream the user's notifications: `Last-Event-ID` (or `?last_event_id=`) first resumes from MongoDB."""
        try:
            await self._stream()
        except asyncio.CancelledError:
            # Only the process's exit cancels a stream: asyncio.run cancels what is left once shutdown's
            # grace has run out. That is no error (the client reconnects; the registration expires by its
            # TTL), but Tornado answers a cancelled handler with send_error(500), which once the headers
            # are sent can only log an ERROR ("Cannot send error response after headers written"):
            # end the response first.
            if not self._finished:
                self.finish()
            raise

    async def _stream(self) -> None:
        user_id = self.current_user_id()
        limits = self.stream_limits
        if len(self.streams) >= limits.max_streams:
            raise APIError(
                503, "server_busy", "this server holds as many streams as it may", retry_after=SERVER_BUSY_RETRY_SECONDS
            )
        session = StreamSession(
            self.delivery_cache.open_inbox(user_id),
            self.notifications,
            self.wakeups,
            # A new EventSource cannot set the header: a page resuming with one passes the id in the query.
            self.request.headers.get("Last-Event-ID") or self.get_query_argument("last_event_id", None),
        )
        # Listen before registering: whatever is queued once the registration is visible comes with
        # a hint that wakes this stream, so a new stream needs no scan of its own to start with.
        self.wakeups.listen(user_id, self)
        timing = self.stream_timing
        tick = self._queue_safety_scan if timing.wakeup_hints else self._poll
        ticker = AlignedPeriodicCallback(
            tick, timing.tick_interval * 1000, TICK_JITTER, min(TICK_ALIGNMENT, timing.tick_interval / 10)
        )
        try:
            await session.open(limits.max_streams_per_user)
            log.info(
                "stream opened",
                extra=fields(
                    **self.log_fields(), connection=session.inbox.connection_id, remote_ip=self.request.remote_ip
                ),
            )
            self._session = session  # registered: from here on, its log lines also count what it sent
            if self._recover_when_registered:
                session.recover()
            self.streams.add(self)
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")
            connection = self.request.connection.stream  # type: ignore[union-attr]
            # Each event is complete when written: send it now rather than wait to fill a packet (Nagle).
            connection.set_nodelay(True)
            abort_when_unacknowledged(connection.socket, limits.write_timeout)
            # A stream may stay open for hours: drop the parsed query (two copies, the token in both).
            self.request.arguments = self.request.query_arguments = {}
            if await self.send(encode_retry(RECONNECT_DELAY_MS) + encode_comment("connected")):
                await self._catch_up(session)
            ticker.start()
            if self._retry is None:  # else the catch-up failed, and its retry comes after a backoff
                # Hints that came during the catch-up; a session that could not register recovers now.
                self._woken = self._woken or session.recovering
                await self._drain()
            self._scanning = False
            await self._closed
            if self._ending and await self.send(encode_retry(RECONNECT_DELAY_MS) + encode_comment("server restarting")):
                # End the response ourselves, so its last chunk is sent before shutdown closes the connection.
                with contextlib.suppress(StreamClosedError):
                    await self.finish()
        finally:
            ticker.stop()
            self._close()
            self._count_if_unacknowledged()
            if self._wake_scan is not None:
                self._wake_scan.cancel()
            if self._retry is not None:
                self._retry.cancel()
            self.wakeups.ignore(user_id, self)
            if self._session is not None:  # it was registered (and added), not refused
                await self._release(session)

    async def _release(self, session: StreamSession) -> None:
        """Deregister the closed stream, in its turn; shutdown waits for this before it closes the stores."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Cancelled at exit, past shutdown's grace: the stores are closed, the registration expires by its TTL.
            self.streams.discard(self)
            return
        try:
            async with self.streams.releasing(self):
                await session.close()
        except StoreUnavailable:
            log.debug(
                "could not deregister a stream; its registration expires by itself", extra=fields(**self.log_fields())
            )

    def _close(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    def _count_if_unacknowledged(self) -> None:
        """If the kernel gave up on the connection, count it as a dropped slow client, as the sweep would have.

        What was sent stayed unacknowledged for STREAM_WRITE_TIMEOUT (TCP_USER_TIMEOUT): the client
        stopped reading, or vanished without FIN or RST. Whichever notices first, it counts once.
        """
        stream = getattr(self.request.connection, "stream", None)
        if self._ended_by == "client" and isinstance(getattr(stream, "error", None), TimeoutError):
            self._ended_by = "slow_client"
            self.streams.count_slow_client()
            log.info("a stream's client left its data unacknowledged: closed", extra=fields(**self.log_fields()))

    def on_connection_close(self) -> None:
        """The client went away: wake `get()` so that it releases everything now."""
        self._close()

    def end(self) -> None:
        """Shutdown: tell the client to reconnect (elsewhere), then close the stream."""
        self._ending = True
        self._ended_by = "shutdown"
        self._close()

    @property
    def inbox(self) -> ConnectionInbox | None:
        """The stream's inbox in Redis, once registered (the registry's safety scans look into it)."""
        return self._session.inbox if self._session is not None else None

    def stalled_since(self) -> float | None:
        """When the write under way began (time.monotonic()), if one is."""
        return self._write_started

    def drop(self) -> None:
        """The client stopped reading: close the connection; it will reconnect and catch up."""
        log.info("dropping a stream whose client has not read for a while", extra=fields(**self.log_fields()))
        self._ended_by = "slow_client"
        self._close()
        if self.request.connection is not None:
            self.request.connection.stream.close()  # type: ignore[attr-defined]

    @property
    def last_write(self) -> float:
        """When the last write completed (time.monotonic()): the registry's sweep heartbeats after silence."""
        return self._last_write

    def heartbeat(self, now: float) -> None:
        """Called by the registry's sweep, which heartbeats only streams without a write under way
        (`stalled_since`): a comment, so that proxies do not close an idle stream."""
        if not self._closed.done():
            self._write_heartbeat(now)

    def _write_heartbeat(self, now: float) -> None:
        """Hand the heartbeat, framed as Tornado frames a chunk, straight to the socket.

        At thousands of idle streams heartbeats are most of the work, and Tornado's write path
        (RequestHandler.flush, HTTP1Connection, IOStream and their futures) costs more than the
        send itself. It writes only with nothing in flight, so bytes never interleave; a partial
        send hands the rest to the IOStream like any other write.
        """
        stream = self.request.connection.stream  # type: ignore[union-attr]
        if stream.closed() or stream.writing():
            return  # gone, or bytes still queued: the sweep tries again a heartbeat interval later
        framed = HEARTBEAT_CHUNK if self.request.version == "HTTP/1.1" else HEARTBEAT
        try:
            sent = stream.socket.send(framed)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            # Reset, closed under us or given up by the kernel: the client has gone. Close with the
            # error, as Tornado would, so that the stream's end says why (`_count_if_unacknowledged`).
            stream.close(exc_info=error)
            self._close()
            return
        if sent == len(framed):
            self._last_write = now
        else:
            self._track_write(stream.write(framed[sent:]))

    def recover(self) -> None:
        """A notification for this user could not be queued: catch up from MongoDB, then scan as usual.

        A stream backing off after a failed scan recovers with its next try.
        """
        if self._session is None:
            self._recover_when_registered = True
            return
        self._session.recover()
        if self._retry is None:
            self.wake()

    def wake(self) -> None:
        """Something was queued for this stream: scan now, or right after the scan under way."""
        self._woken = True
        if not self._scanning and not self._closed.done():
            self._scanning = True
            self._wake_scan = asyncio.ensure_future(self._scan_on_wake())

    async def send(self, chunk: bytes) -> bool:
        """Write and flush, after any write under way; False once the client has gone."""
        if self._closed.done() and not self._ending:
            return False
        if self._pending_write is not None:
            await asyncio.wait([self._pending_write])
        if self._closed.done() and not self._ending:
            return False
        try:
            await self._start_write(chunk)
        except StreamClosedError:
            return False
        return True

    def _start_write(self, chunk: bytes) -> asyncio.Future[None]:
        """Write through Tornado, one write at a time (see `send`); only heartbeats take a shorter way."""
        self.write(chunk)
        return self._track_write(self.flush())

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
            self._close()  # the client has gone (StreamClosedError)
        else:
            self._last_write = time.monotonic()

    def log_fields(self) -> dict[str, Any]:
        """The lines of a stream once registered also name its connection (its keys in Redis); the
        access line, written when it ends, says how many events it sent and why it ended."""
        logged = super().log_fields()
        if self._session is not None:  # it was opened, not refused
            logged.update(
                connection=self._session.inbox.connection_id, events_sent=self._events_sent, ended_by=self._ended_by
            )
        return logged

    async def _send_entries(self, session: StreamSession, entries: list[Entry], live: bool) -> bool:
        chunk = b"".join(encode_event(i, NOTIFICATION_EVENT, data) for i, data in entries)
        if not await self.send(chunk):
            return False
        self._events_sent += len(entries)
        self.metrics.delivered(entries, live)
        session.sent([notification_id for notification_id, _ in entries])
        return True

    async def _catch_up(self, session: StreamSession) -> None:
        try:
            async for entries in session.catch_up():
                if entries and not await self._send_entries(session, entries, live=False):
                    return
        except StoreUnavailable:
            log.debug("catch-up postponed: MongoDB unavailable", extra=fields(**self.log_fields()))
            self._retry_later()

    async def _scan_on_wake(self) -> None:
        try:
            await self._drain()
        finally:
            self._scanning = False
            self._wake_scan = None

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

    def _queue_safety_scan(self) -> None:
        """The stream's PeriodicCallback with hints: its slow safety scan, at the registry's next sweep.

        The scans that fall due within a sweep period then go to Redis in one pipeline instead of
        one round trip each, which is most of what thousands of idle streams cost.
        """
        # After a failed scan its backoff says when to try the stores again (as in `_poll`).
        if not self._closed.done() and self._retry is None:
            self.streams.scan_soon(self)

    async def _poll(self) -> None:
        """The stream's PeriodicCallback without hints: scan the inbox every POLL_INTERVAL."""
        # After a failed scan its backoff says when to try the stores again, not every poll.
        if self._scanning or self._retry is not None or self._closed.done():
            return
        self._scanning = True
        try:
            self._woken = True
            await self._drain()
        finally:
            self._scanning = False

    async def _drain(self) -> None:
        """While woken: send what is owed in id order, then delete exactly that from the inbox."""
        session = self._session
        while self._woken and not self._closed.done() and session is not None:
            self._woken = False
            try:
                await session.refresh_if_due()
                scan_started = time.perf_counter()
                entries = await session.take()
            except StoreUnavailable:
                self._retry_later()
                return
            self._failed_scans = 0
            if not entries:
                continue
            self.metrics.cache_scan.observe(time.perf_counter() - scan_started)
            if not await self._send_entries(session, entries, live=True):
                return
            if len(entries) >= MAX_ENTRIES_PER_SEND:
                self._woken = True  # more is queued than one send takes
            with contextlib.suppress(StoreUnavailable):
                await session.acknowledge([notification_id for notification_id, _ in entries])


default_handlers = [(r"/notifications/stream", EventStreamHandler)]
