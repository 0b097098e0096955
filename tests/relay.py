"""A TCP relay in front of a store that can be made to hang, as an unreachable store does, and to recover."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest


class StoreRelay:
    """Forwards 127.0.0.1:<port> to a store; `hang()` cuts every connection and answers none until `recover()`;
    `lose_next_reply_to()` loses one answer, `hold_next_reply_to()` delays one."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._hanging = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._lose_reply_to: bytes | None = None
        self._hold_reply_to: tuple[bytes, asyncio.Event] | None = None
        # Every hold's release, set at `close` so that no answer a failed test left held keeps its connection.
        self._releases: list[asyncio.Event] = []
        self.replies_lost = 0
        self.port = 0

    async def start(self) -> StoreRelay:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def hang(self) -> None:
        """Drop the open connections; new ones are accepted and never answered."""
        self._hanging = True
        self._drop_all()

    def lose_next_reply_to(self, marker: bytes) -> None:
        """The next request that contains `marker` reaches the store, but its connection closes
        when the store answers: the store did the work, and the client never learns that it did."""
        self._lose_reply_to = marker

    def hold_next_reply_to(self, marker: bytes) -> asyncio.Event:
        """The next request that contains `marker` reaches the store, but the store's answer to it waits until
        the event returned is set: the store did the work, and the client learns of it late."""
        release = asyncio.Event()
        self._hold_reply_to = (marker, release)
        self._releases.append(release)
        return release

    def recover(self) -> None:
        """Drop the hanging connections; new ones reach the store again."""
        self._hanging = False
        self._drop_all()

    async def close(self) -> None:
        """Stop listening, drop every connection and wait until each relayed connection has closed
        its sockets (Python 3.11's `wait_closed` does not wait for the connections' handlers: one
        still pending when the loop closes leaves its sockets unclosed)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for release in self._releases:
            release.set()
        self._drop_all()
        await asyncio.gather(*self._connections)

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        writers = {client_writer}
        self._writers |= writers
        connection = asyncio.current_task()
        assert connection is not None
        self._connections.add(connection)
        try:
            if self._hanging:
                await client_reader.read()  # until the client gives up or recover() drops it
                return
            store_reader, store_writer = await asyncio.open_connection(*self._target)
            writers.add(store_writer)
            self._writers.add(store_writer)
            answer_lost = asyncio.Event()
            # The release of an answer held back (`hold_next_reply_to`), once a request of this connection asked.
            holds: list[asyncio.Event] = []
            await asyncio.gather(
                _pipe(
                    client_reader, store_writer, before_each=lambda data: self._arm_if_marked(data, answer_lost, holds)
                ),
                _pipe(store_reader, client_writer, cut=answer_lost, holds=holds),
            )
            self.replies_lost += answer_lost.is_set()
        except OSError:
            pass
        finally:
            for writer in writers:
                self._writers.discard(writer)
                writer.close()
            for writer in writers:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            self._connections.discard(connection)

    def _arm_if_marked(self, data: bytes, answer_lost: asyncio.Event, holds: list[asyncio.Event]) -> None:
        if self._lose_reply_to is not None and self._lose_reply_to in data:
            self._lose_reply_to = None
            answer_lost.set()
        if self._hold_reply_to is not None and self._hold_reply_to[0] in data:
            holds.append(self._hold_reply_to[1])
            self._hold_reply_to = None


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    before_each: Callable[[bytes], None] = lambda data: None,
    cut: asyncio.Event | None = None,
    holds: list[asyncio.Event] | None = None,
) -> None:
    """Copy until either side closes; with `cut` set when data comes, close instead of passing it on; with a
    release in `holds` when data comes, pass it on once that is set."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            if cut is not None and cut.is_set():
                break
            while holds:
                await holds.pop(0).wait()
            before_each(data)
            writer.write(data)
            await writer.drain()
    writer.close()


def store_address(url: str) -> tuple[str, int]:
    """The host and port a relay stands in front of; the test is skipped for a URL that names no one address."""
    parts = urlsplit(url)
    try:
        if parts.hostname and parts.port:
            return parts.hostname, parts.port
    except ValueError:
        pass
    pytest.skip(f"the relay stands in front of one host:port per store, not {parts.scheme}://{parts.hostname}")


def through_relay(url: str, relay: StoreRelay) -> str:
    """`url` with its host and port replaced by the relay's."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=(userinfo + "@" if userinfo else "") + f"127.0.0.1:{relay.port}").geturl()
