"""Stopping the background tasks of a process (sweeps, samplers, subscriptions, watchers) without hanging."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("bellcast")

# How long each cancellation of a background task may take to end it, and how many are tried.
STOP_GRACE_SECONDS = 1.0
STOP_ATTEMPTS = 3


async def stop_task(task: asyncio.Task[None], what: str) -> None:
    """Cancel a background task and wait until it has ended, at most STOP_GRACE_SECONDS per attempt.

    On Python 3.11 a library's `asyncio.wait_for` swallows a cancellation that arrives as its inner
    call completes (bpo-42130), and a task that loops goes on as if never cancelled: awaited bare, it
    would hold shutdown forever. It is cancelled again at its next wait; after STOP_ATTEMPTS it is left
    behind with a warning.
    """
    for _ in range(STOP_ATTEMPTS):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_SECONDS)
        if done:
            if not task.cancelled() and (error := task.exception()) is not None:
                log.error("%s failed as it stopped", what, exc_info=error)
            return
    log.warning("%s did not stop within %d cancellations; left behind", what, STOP_ATTEMPTS)
