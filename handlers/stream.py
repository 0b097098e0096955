"""`GET /notifications/stream`: each user's notifications as Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from tornado.ioloop import PeriodicCallback
from tornado.iostream import StreamClosedError

from handlers.base import BaseHandler
from handlers.sse import encode_comment, encode_event, encode_retry
from services.cache import ConnectionInbox
from services.errors import StoreUnavailable

log = logging.getLogger("bellcast.stream")

NOTIFICATION_EVENT = "notification"
# What browsers wait before reconnecting after the stream drops.
RECONNECT_DELAY_MS = 2000
# Spread the ticks of streams opened together, so they do not all fall due at once.
TICK_JITTER = 0.1


class EventStreamHandler(BaseHandler):
    """One browser's stream: catch-up from MongoDB, then whatever its inbox in Redis receives.

    Its PeriodicCallback scans the inbox on every tick when wake-up hints are off; with hints,
    the hub wakes it the moment something is queued, and the ticks only send heartbeats and
    an occasional safety scan, so an idle stream costs no Redis traffic.
    """

    def initialize(self) -> None:
        """Per-stream state; the timing comes from the Application's settings."""
        self._closed = asyncio.Event()
        self._ending = False
        self._last_write = 0.0
        self._inbox: ConnectionInbox | None = None
        # A scan is running (or the catch-up is): wakes are folded into it rather than started anew.
        self._scanning = True
        self._woken = False
        self._wake_scan: asyncio.Future[None] | None = None
        self._next_safety_scan = 0.0

    async def get(self) -> None:
        """Stream the user's notifications: `Last-Event-ID` first resumes from MongoDB, then live ones follow."""
        user_id = self.current_user_id()
        inbox = self.delivery_cache.open_inbox(user_id)
        self.wakeups.listen(user_id, self)
        try:
            await inbox.register()
            self._inbox = inbox
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")
            # Each event is complete when written: send it now rather than wait to fill a packet (Nagle).
            self.request.connection.stream.set_nodelay(True)  # type: ignore[union-attr]
            ticker = PeriodicCallback(self._tick, self.stream_timing.tick_interval * 1000, jitter=TICK_JITTER)
            self.streams.add(self)
            try:
                if await self.send(encode_retry(RECONNECT_DELAY_MS) + encode_comment("connected")):
                    await self._catch_up(user_id, inbox)
                self._next_safety_scan = time.monotonic() + self.stream_timing.safety_scan_interval
                ticker.start()
                # What was queued during the catch-up, and wakes that came meanwhile.
                self._woken = True
                await self._drain()
                self._scanning = False
                await self._closed.wait()
                if self._ending and await self.send(
                    encode_retry(RECONNECT_DELAY_MS) + encode_comment("server restarting")
                ):
                    # End the response ourselves, so its last chunk is sent before shutdown closes the connection.
                    with contextlib.suppress(StreamClosedError):
                        await self.finish()
            finally:
                ticker.stop()
                self._closed.set()
                if self._wake_scan is not None:
                    self._wake_scan.cancel()
                self.streams.discard(self)
                await self._deregister(inbox)
        finally:
            self.wakeups.ignore(user_id, self)

    def on_connection_close(self) -> None:
        """The client went away: wake `get()` so that it releases everything now."""
        self._closed.set()

    def end(self) -> None:
        """Shutdown: tell the client to reconnect (elsewhere), then close the stream."""
        self._ending = True
        self._closed.set()

    def wake(self) -> None:
        """Something was queued for this stream: scan now, or right after the scan under way."""
        self._woken = True
        if not self._scanning and not self._closed.is_set():
            self._scanning = True
            self._wake_scan = asyncio.ensure_future(self._scan_on_wake())

    async def send(self, chunk: bytes) -> bool:
        """The only writer of the socket: write and flush, False once the client has gone."""
        if self._closed.is_set() and not self._ending:
            return False
        try:
            self.write(chunk)
            await self.flush()
        except StreamClosedError:
            self._closed.set()
            return False
        self._last_write = time.monotonic()
        return True

    async def _catch_up(self, user_id: str, inbox: ConnectionInbox) -> None:
        last_event_id = self.request.headers.get("Last-Event-ID")
        if not last_event_id:
            return
        async for batch in self.notifications.since(user_id, last_event_id):
            for notification in batch:
                inbox.note_caught_up(notification)
            chunk = b"".join(encode_event(str(n.id), NOTIFICATION_EVENT, n.to_json()) for n in batch)
            if not await self.send(chunk):
                return

    async def _scan_on_wake(self) -> None:
        try:
            await self._drain()
        finally:
            self._scanning = False
            self._wake_scan = None

    async def _tick(self) -> None:
        """Renew the registration when due; scan when polling or a safety scan is due; a heartbeat if idle."""
        if self._scanning or self._closed.is_set() or self._inbox is None:
            return
        self._scanning = True
        try:
            timing = self.stream_timing
            now = time.monotonic()
            if not timing.wakeup_hints or now >= self._next_safety_scan:
                self._next_safety_scan = now + timing.safety_scan_interval
                self._woken = True
            with contextlib.suppress(StoreUnavailable):
                await self._inbox.refresh_if_due()
            await self._drain()
            # Allow for the tick's jitter, so an idle stream is not left a whole extra tick silent.
            if time.monotonic() - self._last_write >= timing.heartbeat_interval - TICK_JITTER * timing.tick_interval:
                # A comment now and then, so that proxies do not close an idle stream.
                await self.send(encode_comment("heartbeat"))
                await self._drain()
        finally:
            self._scanning = False

    async def _drain(self) -> None:
        """While woken: send what the inbox holds, in id order, then delete exactly that."""
        while self._woken and not self._closed.is_set() and self._inbox is not None:
            self._woken = False
            try:
                entries = await self._inbox.pending()
            except StoreUnavailable:
                self._woken = True  # the next tick tries again
                return
            if not entries:
                continue
            chunk = b"".join(encode_event(i, NOTIFICATION_EVENT, data) for i, data in entries)
            if not await self.send(chunk):
                return
            try:
                await self._inbox.remove([notification_id for notification_id, _ in entries])
            except StoreUnavailable:
                log.warning("could not remove delivered entries; they will not be sent again")

    async def _deregister(self, inbox: ConnectionInbox) -> None:
        try:
            await inbox.deregister()
        except StoreUnavailable:
            log.warning("could not deregister connection %s; its registration expires by itself", inbox.connection_id)


default_handlers = [(r"/notifications/stream", EventStreamHandler)]
