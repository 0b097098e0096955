"""Garbage collection for a process that holds thousands of long-lived streams.

CPython runs a full collection whenever the objects that survived into its oldest generation
have grown by a quarter, and a full collection traverses every tracked object: at 18,000
streams (about 1.9 million objects) one takes about a second. Opening streams grows the oldest
generation all the time, so a ramp of connects spent a third of its CPU in full collections
(measured: 7.0 s of 19.7 s while 18,000 streams opened).

Open streams leave no garbage behind; closed ones may leave reference cycles, and the memory
they held is reused only once those are collected. So here the objects of start-up are frozen
out of collections, automatic full collections are off, and a full collection runs when a
quarter of the open streams (at least `min_closed`) have closed since the last one and streams
are opening again, or once `longest_interval` has passed. That is about as often as CPython
would under steady churn, but never during a ramp of connects (nothing closed) nor during a
mass disconnect (memory is being freed, not asked for; the collection waits for the next
opens, when the heap is small and a collection cheap). The young generations are collected as
usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Protocol

log = logging.getLogger("bellcast.memory")

# More collections of the middle generation than a process ever makes: no automatic full collection.
NEVER = 1_000_000_000
CHECK_PERIOD = 1.0


class StreamCounts(Protocol):
    """How many streams are open, and how many have opened and closed so far."""

    opened: int
    closed: int

    def __len__(self) -> int: ...


class StreamAwareCollector:
    """Runs CPython's full collections by stream churn instead of by heap growth."""

    def __init__(self, streams: StreamCounts, min_closed: int = 1000, longest_interval: float = 3600.0) -> None:
        self._streams = streams
        self._min_closed = min_closed
        self._longest_interval = longest_interval
        self._opened_at_check = streams.opened
        self._closed_at_last = streams.closed
        # time.monotonic() of the last full collection (of the collector's creation, before the first).
        self.last_full_collection = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.full_collections = 0

    def start(self) -> None:
        """Freeze what exists now, turn automatic full collections off, and check every second."""
        gc.freeze()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, NEVER)
        if self._task is None:
            self._task = asyncio.ensure_future(self._check_forever())

    async def close(self) -> None:
        """Stop checking and give CPython its own policy back."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, 10)
        gc.unfreeze()

    def collect_if_due(self, now: float) -> bool:
        """Run a full collection when enough streams closed since the last and more are opening, or it is overdue."""
        streams = self._streams
        opening = streams.opened > self._opened_at_check
        self._opened_at_check = streams.opened
        closed = streams.closed - self._closed_at_last
        enough_closed = opening and closed >= max(self._min_closed, len(streams) // 4)
        if not enough_closed and now - self.last_full_collection < self._longest_interval:
            return False
        started = time.perf_counter()
        found = gc.collect()
        log.debug(
            "full collection: %d objects freed in %.0f ms after %d streams closed",
            found,
            1000 * (time.perf_counter() - started),
            closed,
        )
        self._closed_at_last = streams.closed
        self.last_full_collection = now
        self.full_collections += 1
        return True

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(CHECK_PERIOD)
            self.collect_if_due(time.monotonic())
