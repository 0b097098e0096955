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
# Spread the scans of streams opened together, so they do not all fall due at once.
POLL_JITTER = 0.1


class EventStreamHandler(BaseHandler):
    """One browser's stream: catch-up from MongoDB, then whatever its inbox in Redis receives."""

    def initialize(self) -> None:
        """Per-stream state; the timing comes from the Application's settings."""
        self._closed = asyncio.Event()
        self._ending = False
        self._last_write = 0.0

    async def get(self) -> None:
        """Stream the user's notifications: `Last-Event-ID` first resumes from MongoDB, then live ones follow."""
        user_id = self.current_user_id()
        inbox = self.delivery_cache.open_inbox(user_id)
        await inbox.register()
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        scanner = PeriodicCallback(
            lambda: self._scan(inbox), float(self.settings["poll_interval"]) * 1000, jitter=POLL_JITTER
        )
        self.streams.add(self)
        try:
            if await self.send(encode_retry(RECONNECT_DELAY_MS) + encode_comment("connected")):
                await self._catch_up(user_id, inbox)
            scanner.start()
            await self._closed.wait()
            if self._ending and await self.send(encode_retry(RECONNECT_DELAY_MS) + encode_comment("server restarting")):
                # End the response ourselves, so its last chunk is sent before shutdown closes the connection.
                with contextlib.suppress(StreamClosedError):
                    await self.finish()
        finally:
            scanner.stop()
            self._closed.set()
            self.streams.discard(self)
            await self._deregister(inbox)

    def on_connection_close(self) -> None:
        """The client went away: wake `get()` so that it releases everything now."""
        self._closed.set()

    def end(self) -> None:
        """Shutdown: tell the client to reconnect (elsewhere), then close the stream."""
        self._ending = True
        self._closed.set()

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

    async def _scan(self, inbox: ConnectionInbox) -> None:
        """One tick: renew the registration when due, send what the inbox holds, else a heartbeat if idle."""
        if self._closed.is_set():
            return
        try:
            await inbox.refresh_if_due()
            entries = await inbox.pending()
        except StoreUnavailable:
            entries = []
        if entries:
            chunk = b"".join(encode_event(i, NOTIFICATION_EVENT, data) for i, data in entries)
            if await self.send(chunk):
                try:
                    await inbox.remove([notification_id for notification_id, _ in entries])
                except StoreUnavailable:
                    log.warning("could not remove delivered entries; they will not be sent again")
        elif time.monotonic() - self._last_write >= self.settings["heartbeat_interval"]:
            # A comment now and then, so that proxies do not close an idle stream.
            await self.send(encode_comment("heartbeat"))

    async def _deregister(self, inbox: ConnectionInbox) -> None:
        try:
            await inbox.deregister()
        except StoreUnavailable:
            log.warning("could not deregister connection %s; its registration expires by itself", inbox.connection_id)


default_handlers = [(r"/notifications/stream", EventStreamHandler)]
