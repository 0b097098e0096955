"""The calibration of `make bench`: the least a Tornado push server can do for an EventSource stream.

No token, no persistence, no registration, no log line, no heartbeat. A stream answers with
bellcast's stream headers and first event, flushes, and then writes whatever its queue gets. A
`POST /pub/<user>` publishes its body on one Redis channel; the process holds one subscription and
puts each message into the queue of every stream of its user. On uvloop, with redis-py and hiredis,
like bellcast. Its CPU per connect and per delivery, and its RSS per stream, are what Tornado and
one Redis round trip cost on the machine of the run: the floor under bellcast's figures.

usage: python -m bench.tornado_minimal PORT REDIS_URL
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as redis
import uvloop
from tornado import httpserver, iostream, netutil, web

# bellcast's own backlog (server.LISTEN_BACKLOG), so that ramps of connects meet the same queue.
LISTEN_BACKLOG = 4096
FIRST_EVENT = b"retry: 2000\n: connected\n\n"
CHANNEL = "minimal:messages"


class Subscribers:
    """The queues of the open streams, by user."""

    def __init__(self) -> None:
        self.by_user: dict[bytes, set[asyncio.Queue[bytes | None]]] = {}

    def add(self, user: bytes, queue: asyncio.Queue[bytes | None]) -> None:
        self.by_user.setdefault(user, set()).add(queue)

    def remove(self, user: bytes, queue: asyncio.Queue[bytes | None]) -> None:
        queues = self.by_user.get(user)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self.by_user[user]

    async def listen(self, client: redis.Redis) -> None:
        """Put every published message into the queue of each stream of its user."""
        pubsub = client.pubsub()
        await pubsub.subscribe(CHANNEL)
        async for message in pubsub.listen():
            if message["type"] == "message":
                user, _, body = message["data"].partition(b"\n")
                for queue in self.by_user.get(user, ()):
                    queue.put_nowait(body)


class MinimalStreamHandler(web.RequestHandler):
    """Headers and a first event, then each message of the stream's user as a `data:` event."""

    def initialize(self, subscribers: Subscribers) -> None:
        self.subscribers = subscribers

    async def get(self) -> None:
        """Open the stream and write its messages until the client closes it."""
        user = self.get_argument("user", "").encode()
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.subscribers.add(user, self.queue)
        try:
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.set_header("Cache-Control", "no-cache")
            self.write(FIRST_EVENT)
            await self.flush()
            while (body := await self.queue.get()) is not None:
                self.write(b"data: " + body + b"\n\n")
                await self.flush()
        except iostream.StreamClosedError:
            pass
        finally:
            self.subscribers.remove(user, self.queue)

    def on_connection_close(self) -> None:
        """The client went away: let `get` return."""
        self.queue.put_nowait(None)


class PublishHandler(web.RequestHandler):
    """`POST /pub/<user>`: publish the body to the user's streams, on every process subscribed."""

    def initialize(self, client: redis.Redis) -> None:
        self.client = client

    async def post(self, user: str) -> None:
        """202 once Redis took the message."""
        await self.client.publish(CHANNEL, user.encode() + b"\n" + self.request.body)
        self.set_status(202)


class HealthHandler(web.RequestHandler):
    """Answers once the server listens (the bench waits for it)."""

    def get(self) -> None:
        """ok."""
        self.write("ok")


async def serve(port: int, redis_url: str) -> None:
    """Serve on 127.0.0.1:`port` until killed."""
    client = redis.Redis.from_url(redis_url)
    subscribers = Subscribers()
    listening = asyncio.create_task(subscribers.listen(client))
    app = web.Application(
        [
            (r"/notifications/stream", MinimalStreamHandler, {"subscribers": subscribers}),
            (r"/pub/([^/]+)", PublishHandler, {"client": client}),
            (r"/healthz", HealthHandler),
        ],
        log_function=lambda handler: None,
    )
    server = httpserver.HTTPServer(app)
    server.add_sockets(netutil.bind_sockets(port, "127.0.0.1", backlog=LISTEN_BACKLOG))
    await listening


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2]))
