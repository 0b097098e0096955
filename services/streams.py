"""The open event streams of this process, so that shutdown can end them all."""

from __future__ import annotations

import asyncio
from typing import Protocol


class EndableStream(Protocol):
    """A stream that can be told to end."""

    def end(self) -> None:
        """Tell the client to reconnect later, then close."""


class StreamRegistry:
    """Tracks the open streams; one instance per Application."""

    def __init__(self) -> None:
        self._streams: set[EndableStream] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, stream: EndableStream) -> None:
        """Track an opened stream."""
        self._streams.add(stream)
        self._empty.clear()

    def discard(self, stream: EndableStream) -> None:
        """Forget a closed stream."""
        self._streams.discard(stream)
        if not self._streams:
            self._empty.set()

    async def wait_until_empty(self) -> None:
        """Return once no stream is open."""
        await self._empty.wait()

    def __len__(self) -> int:
        return len(self._streams)

    def end_all(self) -> None:
        """Ask every open stream to end; each discards itself when it has."""
        for stream in list(self._streams):
            stream.end()
