"""Garbage collection for a process that holds thousands of long-lived streams.

CPython runs a full collection whenever the objects that survived into its oldest generation
have grown by a quarter, and a full collection traverses every tracked object: with thousands of
streams, millions of objects. Opening streams grows the oldest generation all the time, so a ramp
of connects would spend much of its CPU in full collections.

A closed stream leaves no cycle behind: reference counting frees it (`tests/test_memory.py` checks
it with the collector off). So here the objects of start-up are frozen out of collections, automatic full
collections are off, and one runs every `interval` for whatever cycles the rest of the process
makes. The young generations are collected as usual.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from services.background import stop_task

log = logging.getLogger("bellcast.memory")

# More collections of the middle generation than a process ever makes: no automatic full collection.
NEVER = 1_000_000_000
FULL_COLLECTION_INTERVAL = 3600.0


class ScheduledFullCollections:
    """Runs CPython's full collections on a schedule instead of by heap growth."""

    def __init__(self, interval: float = FULL_COLLECTION_INTERVAL) -> None:
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._thresholds = gc.get_threshold()

    def start(self) -> None:
        """Freeze what exists now, turn automatic full collections off, and collect every interval."""
        gc.freeze()
        young, middle, _ = self._thresholds = gc.get_threshold()
        gc.set_threshold(young, middle, NEVER)
        if self._task is None:
            self._task = asyncio.ensure_future(self._collect_forever())

    async def close(self) -> None:
        """Stop, and give CPython its own policy back."""
        if self._task is not None:
            await stop_task(self._task, "the scheduled collections")
            self._task = None
        gc.set_threshold(*self._thresholds)
        gc.unfreeze()

    async def _collect_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            started = time.perf_counter()
            found = gc.collect()
            log.debug("full collection: %d objects freed in %.0f ms", found, 1000 * (time.perf_counter() - started))
