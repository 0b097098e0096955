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

from services.batching import SharedReads
from services.metrics import Metrics
from services.notifications import Counts, Notification, NotificationService

# A page's notifications, and the key to read the next page after while MongoDB may hold more (else None).
Page = tuple[list[Notification], str | None]
# How far apart, at most, reads that had to wait for a slot start: processes that lost Redis together
# then spread their reads, and a user's tabs that ask a moment apart still share one.
RECOVERY_JITTER_SECONDS = 1.0


class RecoveryReads:
    """Pages of what a user's streams missed, read once per page for all of them, a bounded number at a time."""

    def __init__(
        self, notifications: NotificationService, metrics: Metrics, concurrency: int, jitter: float, page_size: int
    ) -> None:
        self._notifications = notifications
        self.page_size = page_size
        self._reads = SharedReads(
            concurrency, jitter=jitter, on_run=metrics.recovery_reads.inc, on_share=metrics.recovery_reads_shared.inc
        )
        # The counts a stream sends once it has resumed or recovered: bounded alike, counted apart.
        self._counts = SharedReads(concurrency, jitter=jitter)

    async def missed(self, user_id: str, after: str, look_back: bool, at_most: int | None = None) -> Page:
        """A page of the user's notifications after the key `after`, in stream order (`NotificationService.missed`).

        Raises GapTooLarge past `at_most`, StoreUnavailable when MongoDB does not answer.
        """
        return await self._reads.read(
            (user_id, after, look_back, at_most),
            lambda: self._notifications.missed(user_id, after, self.page_size, look_back, at_most),
        )

    async def resume_key(self, user_id: str, last_event_id: str) -> str | None:
        """Where a stream's Last-Event-ID stands (`NotificationService.resume_key`): in a source collection a
        lookup, bounded as the counts are."""
        if not self._notifications.watched:
            return await self._notifications.resume_key(user_id, last_event_id)
        return await self._counts.read(
            ("resume", user_id, last_event_id), lambda: self._notifications.resume_key(user_id, last_event_id)
        )

    async def counts(self, user_id: str) -> Counts:
        """The user's counts now (`NotificationService.counts`), read once for the tabs that ask together."""
        return await self._counts.read(user_id, lambda: self._notifications.counts(user_id))

    async def close(self) -> None:
        """Cancel the reads under way (shutdown: the streams that wait for them are ending)."""
        await self._reads.close()
        await self._counts.close()
