"""Requests that go to the stores together: those of one event-loop iteration (the batchers), or of the time
the batch before them took (`InTurnBatches`), and reads that callers asking the same share (`SharedReads`)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


async def await_all(awaitables: Sequence[Awaitable[Result]]) -> list[Result]:
    """Their results in order, as `asyncio.gather` gives them; a lone one is awaited in the caller's own task,
    without the task gather would wrap it in and the turn of the loop that task waits for before it starts
    (a create's usual case: one user, one notification)."""
    if len(awaitables) == 1:
        return [await awaitables[0]]
    return list(await asyncio.gather(*awaitables))


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
        self._in_flight: set[asyncio.Future[None]] = set()

    def add(self, request: Request, future: asyncio.Future[Result] | None = None) -> asyncio.Future[Result]:
        """Queue `request` for this iteration's batch; the future (`future`, or a new one) has its result."""
        if future is None:
            future = asyncio.get_running_loop().create_future()
        self._queued.append((request, future))
        if not self._sender_started:
            self._sender_started = True
            self._track(self._send_queued())
        return future

    def _track(self, sending: Awaitable[None]) -> asyncio.Future[None]:
        """Run `sending` in a task of its own, counted under way until it is done (`wait_sent`)."""
        task = asyncio.ensure_future(sending)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return task

    async def _send_queued(self) -> None:
        self._sender_started = False
        queued, self._queued = self._queued, []
        await self._send(queued)

    async def wait_sent(self) -> None:
        """Wait until the batches already under way are done."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)


class InTurnBatches(IterationBatches[Request, Result]):
    """Batches sent one after the other: what is asked while a batch is under way goes in the next, sent
    when that one is done, so that the more requests come while the store works, the fewer commands carry them.

    A batch that takes longer than `patience` seconds (a store that hangs) stops holding the next one back,
    so that no request waits for another's timeout before its own begins. A batch's `send` calls
    `start_next()` once the store has answered and before it settles its callers: the next batch then goes
    out before their code runs on, where under load it would otherwise wait behind all of it.
    """

    def __init__(
        self, send: Callable[[list[tuple[Request, asyncio.Future[Result]]]], Awaitable[None]], patience: float
    ) -> None:
        super().__init__(send)
        self._patience = patience
        self._next_batch: asyncio.Future[None] | None = None

    def start_next(self) -> None:
        """Start the batch of what was asked meanwhile, now (its first step is the loop's next callback)."""
        if self._next_batch is None and self._queued:
            queued, self._queued = self._queued, []
            self._next_batch = self._track(self._send(queued))

    async def _send_queued(self) -> None:
        try:
            while True:
                self.start_next()  # unless the batch before it already did
                batch, self._next_batch = self._next_batch, None
                if batch is None:
                    break
                await asyncio.wait([batch], timeout=self._patience)
        finally:
            self._sender_started = False


class SharedReads:
    """Reads that every caller asking the same (`key`) shares until the read starts; at most `concurrency` run.

    A caller may share a read only if it starts after the caller asked: so a read is open to joiners
    while it waits (`delay`, then a free slot, then, if it had to wait for one, up to `jitter` more
    seconds), never once it runs. `on_run` and `on_share` count reads run and shared.
    """

    def __init__(
        self,
        concurrency: int,
        delay: float = 0.0,
        jitter: float = 0.0,
        on_run: Callable[[], None] | None = None,
        on_share: Callable[[], None] | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._delay = delay
        self._jitter = jitter
        self._on_run = on_run
        self._on_share = on_share
        # Reads not started yet, which a caller asking the same may join.
        self._waiting: dict[Hashable, asyncio.Task[Any]] = {}
        # Every read under way, so that none is left pending at shutdown and none is collected while running.
        self._running: set[asyncio.Task[Any]] = set()

    async def read(self, key: Hashable, read: Callable[[], Awaitable[Result]]) -> Result:
        """`read()`'s result, shared with whoever asks for `key` before it starts."""
        task = self._waiting.get(key)
        if task is None:
            task = self._waiting[key] = asyncio.ensure_future(self._run(key, read))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        elif self._on_share is not None:
            self._on_share()
        # Shielded: a caller that leaves meanwhile must not cancel the read the others wait for.
        result: Result = await asyncio.shield(task)
        return result

    async def close(self) -> None:
        """Cancel the reads under way (shutdown: whoever waits for them is ending)."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _run(self, key: Hashable, read: Callable[[], Awaitable[Result]]) -> Result:
        try:
            if self._delay:
                await asyncio.sleep(self._delay)
            if self._slots.locked() and self._jitter:
                # Others wait already: spread the reads, and give more callers time to join.
                await asyncio.sleep(random.uniform(0, self._jitter))
            async with self._slots:
                # From now on the read may miss what joiners did before they asked: newcomers start their own.
                self._forget(key)
                if self._on_run is not None:
                    self._on_run()
                return await read()
        finally:
            self._forget(key)

    def _forget(self, key: Hashable) -> None:
        if (task := self._waiting.get(key)) is not None and task is asyncio.current_task():
            del self._waiting[key]
