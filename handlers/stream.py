"""`GET /notifications/stream`: each user's notifications as Server-Sent Events; `POST /notifications/stream-ticket`:
the single-use ticket that opens one, so that no user token need travel in the stream's URL."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tornado import httputil
from tornado.concurrent import Future
from tornado.iostream import IOStream

from handlers.base import TICKET_QUERY_ARGUMENT, APIError, BaseHandler
from services.connection import LiveConnection, abort_when_unacknowledged
from services.logs import fields

log = logging.getLogger("bellcast.stream")

SERVER_BUSY_RETRY_SECONDS = 5


class _SentHeaders(httputil.HTTPHeaders):
    """Response headers that went out already: no change to them could be sent, so none is taken."""

    def add(self, name: str, value: str, *, _chars_are_bytes: bool = True) -> None:
        raise RuntimeError(f"{name}: the response's headers were sent")

    def __setitem__(self, name: str, value: str) -> None:
        raise RuntimeError(f"{name}: the response's headers were sent")

    def __delitem__(self, name: str) -> None:
        raise RuntimeError(f"{name}: the response's headers were sent")


# What every stream holds as its response headers once they were sent (about 1 KB less per stream than its own).
SENT_HEADERS = _SentHeaders()


class EventStreamHandler(BaseHandler):
    """HTTP only: authenticate, refuse past the limits, send the stream's headers, and hand the response
    to its `LiveConnection`, which does the rest until the client leaves; then clean up."""

    # Class-level defaults, so that an idle stream carries no per-instance copy of them.
    _connection: LiveConnection | None = None
    # What the access line says of the stream once it has ended and let go of its connection.
    _ended: dict[str, Any] | None = None

    async def get(self) -> None:
        """Stream the user's notifications: `Last-Event-ID` (or `?last_event_id=`) first resumes from MongoDB."""
        # One coroutine for the whole stream (not one calling another): each frame stays in memory for hours.
        try:
            user_id = await self._stream_user()
            limits = self.stream_limits
            # A place is held while the stream registers, so that streams opened together cannot pass MAX_STREAMS.
            with self.streams.place(limits.max_streams) as admitted:
                if not admitted:
                    raise APIError(
                        503,
                        "server_busy",
                        "this server holds as many streams as it may",
                        retry_after=SERVER_BUSY_RETRY_SECONDS,
                    )
                socket_stream: IOStream = self.request.connection.stream  # type: ignore[union-attr]
                connection = self._connection = LiveConnection(
                    self,
                    socket_stream,
                    self.request.version == "HTTP/1.1",
                    self.delivery_cache.open_inbox(user_id),
                    self.recovery_reads,
                    self.wakeups,
                    self.streams,
                    self.metrics,
                    # A new EventSource cannot set the header: a page resuming with one passes the id in the query.
                    self.request.headers.get("Last-Event-ID") or self.get_query_argument("last_event_id", None),
                )
                try:
                    await connection.open(limits.max_streams_per_user)
                except BaseException:
                    await self._release(connection)
                    raise
            try:
                log.info(
                    "stream opened",
                    # Not yet what it sent and why it ended (`log_fields`): those are for the access line.
                    extra=fields(
                        **super().log_fields(), connection=connection.connection_id, remote_ip=self.request.remote_ip
                    ),
                )
                self.set_header("Content-Type", "text/event-stream; charset=utf-8")
                self.set_header("Cache-Control", "no-cache")
                self.set_header("X-Accel-Buffering", "no")
                # Each event is complete when written: send it now rather than wait to fill a packet (Nagle).
                socket_stream.set_nodelay(True)
                abort_when_unacknowledged(socket_stream.socket, limits.write_timeout)
                # A stream may stay open for hours: drop the parsed query (two copies, the token in both), the
                # query string (the access line logs the URI, redacted), and the template namespace, as Tornado
                # does when a response finishes (a stream renders no template).
                self.request.arguments = self.request.query_arguments = {}
                self.request.query = ""
                self.ui = None  # type: ignore[assignment]
                await connection.serve(self.stream_timing, limits.max_replay)
            finally:
                await self._release(connection)
        except asyncio.CancelledError:
            # Only the process's exit cancels a stream: asyncio.run cancels what is left once shutdown's
            # grace has run out. That is no error (the client reconnects; the registration expires by its
            # TTL), but Tornado answers a cancelled handler with send_error(500), which once the headers
            # are sent can only log an ERROR ("Cannot send error response after headers written"):
            # end the response first.
            if not self._finished:
                self.finish()
            raise

    def flush(self, include_footers: bool = False) -> Future[None]:
        """Tornado's flush; once it has sent the response's headers, the stream lets go of them (`SENT_HEADERS`)."""
        flushed = super().flush(include_footers)
        if self._headers_written:
            self._headers = SENT_HEADERS
        return flushed

    async def _stream_user(self) -> str:
        """The user of the URL's ticket, spent by this request; without one, the user of the request's token."""
        ticket = self.get_query_argument(TICKET_QUERY_ARGUMENT, None)
        if ticket is None:
            return self.current_user_id()
        self._user_id = await self.stream_tickets.redeem(ticket)
        return self._user_id

    async def _release(self, connection: LiveConnection) -> None:
        await connection.release()
        # Let go of the connection, which holds this handler: no cycle is left for the collector.
        self._ended = connection.log_fields()
        self._connection = None

    def on_connection_close(self) -> None:
        """The client went away: wake the stream so that it releases everything now."""
        if self._connection is not None:
            self._connection.close()

    def log_fields(self) -> dict[str, Any]:
        """The lines of a stream once registered also name its connection (its keys in Redis); the
        access line, written when it ends, says how many events it sent and why it ended."""
        logged = super().log_fields()
        if self._connection is not None:
            logged.update(self._connection.log_fields())
        elif self._ended is not None:
            logged.update(self._ended)
        return logged


class StreamTicketHandler(BaseHandler):
    """`/notifications/stream-ticket`: what a stream's URL carries instead of the user's token."""

    async def post(self) -> None:
        """A ticket for the token's user, `{"ticket", "expires_in"}`: `GET /notifications/stream?ticket=` opens
        one stream with it within `expires_in` seconds (`STREAM_TICKET_TTL`)."""
        ticket = await self.stream_tickets.mint(self.current_user_id())
        # A credential: no cache along the way may keep it.
        self.set_header("Cache-Control", "no-store")
        self.write_json({"ticket": ticket, "expires_in": self.stream_tickets.ttl})


default_handlers = [
    (r"/notifications/stream", EventStreamHandler),
    (r"/notifications/stream-ticket", StreamTicketHandler),
]
