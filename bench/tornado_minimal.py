"""The calibration of `make bench`: the least a Tornado server can do for an EventSource stream.

No token, no stores, no registration, no log line, no heartbeat: it answers with bellcast's
stream headers and first event, flushes, and holds the connection until the client leaves,
on uvloop like bellcast. Its CPU per connect and RSS per stream are what Tornado itself costs
on the machine of the run, the floor under bellcast's figures.

usage: python -m bench.tornado_minimal PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from tornado import httpserver, netutil, web

# bellcast's own backlog (server.LISTEN_BACKLOG), so that ramps of connects meet the same queue.
LISTEN_BACKLOG = 4096
FIRST_EVENT = b"retry: 2000\n: connected\n\n"


class MinimalStreamHandler(web.RequestHandler):
    """Headers and a first event, then nothing until the client closes."""

    async def get(self) -> None:
        """Open the stream and wait for the client to close it."""
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.write(FIRST_EVENT)
        await self.flush()
        await self._closed

    def on_connection_close(self) -> None:
        """The client went away: let `get` return."""
        if not self._closed.done():
            self._closed.set_result(None)


class HealthHandler(web.RequestHandler):
    """Answers once the server listens (the bench waits for it)."""

    def get(self) -> None:
        """ok."""
        self.write("ok")


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:`port` until killed."""
    app = web.Application(
        [(r"/notifications/stream", MinimalStreamHandler), (r"/healthz", HealthHandler)],
        log_function=lambda handler: None,
    )
    server = httpserver.HTTPServer(app)
    server.add_sockets(netutil.bind_sockets(port, "127.0.0.1", backlog=LISTEN_BACKLOG))
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
