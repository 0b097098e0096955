"""The status page's short memory: the metrics sampled every few seconds, kept for some minutes.

Each process samples on its own, but what it samples is the sum over every process (the
metrics are shared), so whichever worker answers the page shows the same server.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Any

from services.background import stop_task
from services.metrics import Metrics, Snapshot, quantile

log = logging.getLogger("bellcast.status")

HISTORY_SECONDS = 600.0
# Delivery lag percentiles are over the deliveries of this trailing window.
LAG_WINDOW_SECONDS = 60.0


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def lag_quantiles(newer: Snapshot, older: Snapshot | None) -> tuple[float | None, float | None, float]:
    """p50 and p99 of the deliveries between two snapshots, and how many there were."""
    old = dict(older.lag_buckets) if older is not None else {}
    window = [(bound, count - old.get(bound, 0.0)) for bound, count in newer.lag_buckets]
    total = window[-1][1] if window else 0.0
    return quantile(0.5, window), quantile(0.99, window), total


@dataclass(frozen=True, slots=True)
class Point:
    """One sample as the charts draw it."""

    time: float
    open_streams: float
    deliveries_per_second: float | None
    lag_p50: float | None
    lag_p99: float | None


class StatusHistory:
    """Samples the metrics every `interval` seconds in the background; `report()` is the status page's data."""

    def __init__(self, metrics: Metrics, interval: float) -> None:
        self._metrics = metrics
        self.interval = interval
        size = int(HISTORY_SECONDS / interval) + 1
        self._points: collections.deque[Point] = collections.deque(maxlen=size)
        # The raw snapshots of the last LAG_WINDOW_SECONDS and one before, for the percentiles.
        self._recent: collections.deque[Snapshot] = collections.deque(maxlen=int(LAG_WINDOW_SECONDS / interval) + 2)
        self._sampler: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sample in the background (the task is kept and cancelled by `close`)."""
        if self._sampler is None:
            self._sampler = asyncio.ensure_future(self._sample_forever())

    async def close(self) -> None:
        """Stop sampling."""
        if self._sampler is not None:
            await stop_task(self._sampler, "the status sampler")
            self._sampler = None

    async def _sample_forever(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a sample is worth less than the sampler: keep going
                log.exception("could not sample the metrics")
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        """Take one sample now: the numbers, the delivery rate since the last sample, the lag over the window."""
        snapshot = self._metrics.snapshot()
        previous = self._recent[-1] if self._recent else None
        rate = None
        if previous is not None and snapshot.time > previous.time:
            # Counters only grow; after a worker was replaced they may seem to go back a little.
            rate = max(0.0, snapshot.delivered - previous.delivered) / (snapshot.time - previous.time)
        self._recent.append(snapshot)
        p50, p99, _ = lag_quantiles(snapshot, self._window_start(snapshot.time))
        self._points.append(
            Point(round(snapshot.time, 3), snapshot.open_streams_total, _rounded(rate, 3), _rounded(p50), _rounded(p99))
        )

    def _window_start(self, now: float) -> Snapshot | None:
        """The last snapshot from before the lag window; while sampling is younger than the window, the first one.

        (Not zero: the counters are every process's since bellcast started, a replaced worker's sampler is new.)
        """
        older = [s for s in self._recent if s.time < now - LAG_WINDOW_SECONDS]
        if older:
            return older[-1]
        return self._recent[0] if self._recent else None

    def report(self) -> dict[str, Any]:
        """The numbers now, and the series the charts draw: one point per sample."""
        now = self._metrics.snapshot()
        points = list(self._points)
        p50, p99, count = lag_quantiles(now, self._window_start(now.time))
        return {
            "time": round(now.time, 3),
            "interval": self.interval,
            "lag_window": LAG_WINDOW_SECONDS,
            "now": {
                "open_streams": now.open_streams_total,
                "open_streams_by_process": now.open_streams,
                "notifications_created": now.created,
                "entries_delivered": now.delivered,
                "deliveries_per_second": points[-1].deliveries_per_second if points else None,
                "lag_p50": _rounded(p50),
                "lag_p99": _rounded(p99),
                "lag_count": count,
            },
            "series": {
                "time": [p.time for p in points],
                "open_streams": [p.open_streams for p in points],
                "deliveries_per_second": [p.deliveries_per_second for p in points],
                "lag_p50": [p.lag_p50 for p in points],
                "lag_p99": [p.lag_p99 for p in points],
            },
        }
