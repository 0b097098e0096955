"""The MongoDB reads of what streams missed: shared by the tabs of a user, bounded in number, spread in time.

When Redis comes back empty, every stream of the process must learn from MongoDB what it missed,
all at once: thousands of queries would take every connection of the driver's pool, and creates
and lists would wait behind them. `RecoveryReads` runs each read once for all the streams that
ask for the same page (the tabs of one user that saw the same last notification) and at most
`concurrency` reads at a time, each after a random delay of up to `jitter` seconds, so that
processes that lost Redis together do not all query at the same instant.

A stream may share a read only if the read starts after the stream registered again: what is
created before the read starts is in its answer, what is created after the registration is queued
in the stream's inbox. So a read is open to joiners until it starts, never after.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from services.metrics import Metrics
from services.notifications import Counts, Notification, NotificationService

# A page's notifications, and whether MongoDB may hold more after the last of them.
Page = tuple[list[Notification], bool]
Result = TypeVar("Result")
# How far apart, at most, reads that had to wait for a slot start: processes that lost Redis together
# then spread their reads, and a user's tabs that ask a moment apart still share one.
RECOVERY_JITTER_SECONDS = 1.0


class RecoveryReads:
    """Pages of what a user's streams missed, read once per page for all of them, a bounded number at a time."""

    def __init__(
        self, notifications: NotificationService, metrics: Metrics, concurrency: int, jitter: float, page_size: int
    ) -> None:
        self._notifications = notifications
        self._metrics = metrics
        self._slots = asyncio.Semaphore(concurrency)
        self._jitter = jitter
        self.page_size = page_size
        # Reads not started yet, which any stream asking the same may join.
        self._waiting: dict[Hashable, asyncio.Task[Any]] = {}
        # Every read under way, so that none is left pending at shutdown and none is collected while running.
        self._running: set[asyncio.Task[Any]] = set()

    async def missed(self, user_id: str, after: str, look_back: bool, at_most: int | None = None) -> Page:
        """A page of the user's notifications after `after`, in id order (`NotificationService.missed`).

        Raises GapTooLarge past `at_most`, StoreUnavailable when MongoDB does not answer.
        """
        return await self._shared(
            (user_id, after, look_back, at_most),
            lambda: self._notifications.missed(user_id, after, self.page_size, look_back, at_most),
        )

    async def counts(self, user_id: str) -> Counts:
        """The user's counts now (`NotificationService.counts`), read once for the tabs that ask together."""
        return await self._shared(("counts", user_id), lambda: self._notifications.counts(user_id))

    async def close(self) -> None:
        """Cancel the reads under way (shutdown: the streams that wait for them are ending)."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _shared(self, key: Hashable, read: Callable[[], Awaitable[Result]]) -> Result:
        task = self._waiting.get(key)
        if task is None:
            task = self._waiting[key] = asyncio.ensure_future(self._read(key, read))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        else:
            self._metrics.recovery_reads_shared.inc()
        # Shielded: a stream that leaves meanwhile must not cancel the read its user's other tabs wait for.
        result: Result = await asyncio.shield(task)
        return result

    async def _read(self, key: Hashable, read: Callable[[], Awaitable[Result]]) -> Result:
        try:
            if self._slots.locked():
                # Others wait already: spread the reads, and give this user's other tabs time to join.
                await asyncio.sleep(random.uniform(0, self._jitter))
            async with self._slots:
                # From now on the read may miss what joiners queued before: newcomers start their own.
                self._forget(key)
                self._metrics.recovery_reads.inc()
                return await read()
        finally:
            self._forget(key)

    def _forget(self, key: Hashable) -> None:
        if (task := self._waiting.get(key)) is not None and task is asyncio.current_task():
            del self._waiting[key]
