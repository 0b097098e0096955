"""What the stores' batchers share: the requests of one event-loop iteration, sent together."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


class IterationBatches(Generic[Request, Result]):
    """Collects the requests made during one loop iteration and hands them, in order, to `send`.

    `send` gets each request with the future its caller awaits, and settles every future. Nothing
    waits for a timer: the sender's first step runs in the next loop iteration, so a lone request
    waits only for the end of its own, and requests that come together (several handlers in one
    iteration, as under load) share one round trip.
    """

    def __init__(self, send: Callable[[list[tuple[Request, asyncio.Future[Result]]]], Awaitable[None]]) -> None:
        self._send = send
        self._queued: list[tuple[Request, asyncio.Future[Result]]] = []
        self._sender_started = False
        self._in_flight: set[asyncio.Task[None]] = set()

    def add(self, request: Request) -> asyncio.Future[Result]:
        """Queue `request` for this iteration's batch; the future has its result."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queued.append((request, future))
        if not self._sender_started:
            self._sender_started = True
            task = asyncio.ensure_future(self._send_queued())
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return future

    async def _send_queued(self) -> None:
        self._sender_started = False
        queued, self._queued = self._queued, []
        await self._send(queued)

    async def wait_sent(self) -> None:
        """Wait until the batches already under way are done."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
