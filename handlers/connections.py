"""What clients may hold before they authenticate: connections per address, in all, and the time to send a request."""

from __future__ import annotations

import collections
import logging
import resource
from collections.abc import Callable, Collection
from typing import Any

from tornado import iostream
from tornado.http1connection import HTTP1ServerConnection

from handlers.proxy import Network, TrustedProxyHTTPServer, is_trusted

log = logging.getLogger("bellcast.connections")

# Open files kept for everything but clients' connections: the stores' pools, logs, the embedded servers' pipes.
RESERVED_FILES = 512
# What a refusal logs at most once per this many refusals of the same reason.
REFUSALS_PER_LOG_LINE = 1000


def connection_limit_from_open_files() -> int:
    """The most client connections this process can hold and still open the files and sockets it needs."""
    soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft_limit == resource.RLIM_INFINITY:
        soft_limit = 1 << 20
    return max(64, soft_limit - RESERVED_FILES)


class BoundedHTTPServer(TrustedProxyHTTPServer):
    """The HTTP server of the API and the streams, bounded against clients that hold without asking.

    A connection past `max_connections` in all, or past `max_connections_per_client` from one address
    (trusted proxies excepted: they carry many clients), is closed as soon as it is accepted, before
    anything is read: the process keeps files free for its stores and never meets EMFILE in its accept
    loop, which would spin. `header_timeout` bounds how long a client may take to send a request's
    headers, and how long a kept-alive connection may wait for its next request; `body_timeout` bounds
    the body. Bodies are cut off past `max_body_size` (the HTTPServer's own setting).
    """

    def initialize(  # type: ignore[override]
        self,
        request_callback: Any,
        trusted_proxies: Collection[Network] = (),
        *,
        max_connections: int | None = None,
        max_connections_per_client: int = 0,
        header_timeout: float | None = None,
        body_timeout: float | None = None,
        on_refused: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        """`max_connections` None: as many as the open-file limit allows; `max_connections_per_client` 0: no cap.

        `on_refused(reason)` is told of each refused connection ("per_client" or "total").
        """
        super().initialize(
            request_callback,
            trusted_proxies,
            idle_connection_timeout=header_timeout,
            body_timeout=body_timeout,
            **kwargs,
        )
        self.max_connections = connection_limit_from_open_files() if max_connections is None else max_connections
        self.max_connections_per_client = max_connections_per_client
        self._on_refused = on_refused
        self._open_total = 0
        self._open_by_client: collections.Counter[str] = collections.Counter()
        self._refusals: collections.Counter[str] = collections.Counter()

    def handle_stream(self, stream: iostream.IOStream, address: Any) -> None:
        """Serve the connection, or close it at once when its address or the process holds too many."""
        client = address[0] if isinstance(address, tuple) and address else ""
        reason = self._refusal(client)
        if reason is not None:
            stream.close()
            self._note_refusal(reason, client)
            return
        self._open_total += 1
        self._open_by_client[client] += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        """A served connection ended: it no longer counts against its address or the total."""
        super().on_close(server_conn)
        if isinstance(server_conn, HTTP1ServerConnection):
            address = getattr(server_conn.context, "address", None)
            client = address[0] if isinstance(address, tuple) and address else ""
            self._open_total -= 1
            self._open_by_client[client] -= 1
            if self._open_by_client[client] <= 0:
                del self._open_by_client[client]

    @property
    def open_connections(self) -> int:
        """Client connections being served now."""
        return self._open_total

    def _refusal(self, client: str) -> str | None:
        if self._open_total >= self.max_connections:
            return "total"
        if (
            self.max_connections_per_client
            and self._open_by_client[client] >= self.max_connections_per_client
            and not is_trusted(client, self.trusted_proxies)
        ):
            return "per_client"
        return None

    def _note_refusal(self, reason: str, client: str) -> None:
        if self._on_refused is not None:
            self._on_refused(reason)
        if self._refusals[reason] % REFUSALS_PER_LOG_LINE == 0:
            log.warning(
                "refusing connections (%s): %s holds %d, the process %d of %d",
                reason,
                client or "a client",
                self._open_by_client[client],
                self._open_total,
                self.max_connections,
            )
        self._refusals[reason] += 1
