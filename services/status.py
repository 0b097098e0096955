"""The status page's short memory: the metrics sampled every few seconds, kept for some minutes.

Each process samples on its own, but what it samples is the sum over every process (the
metrics are shared), so whichever worker answers the page shows the same server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

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


class StatusHistory:
    """Samples the metrics every `interval` seconds in the background; `report()` is the status page's data."""

    def __init__(self, metrics: Metrics, interval: float) -> None:
        self._metrics = metrics
        self.interval = interval
        self._samples: collections.deque[Snapshot] = collections.deque(maxlen=int(HISTORY_SECONDS / interval) + 1)
        self._sampler: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sample in the background (the task is kept and cancelled by `close`)."""
        if self._sampler is None:
            self._sampler = asyncio.ensure_future(self._sample_forever())

    async def close(self) -> None:
        """Stop sampling."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    async def _sample_forever(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a sample is worth less than the sampler: keep going
                log.exception("could not sample the metrics")
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        """Take one sample now."""
        self._samples.append(self._metrics.snapshot())

    def report(self) -> dict[str, Any]:
        """The numbers now, and the series the charts draw: one point per sample."""
        now = self._metrics.snapshot()
        samples = list(self._samples)
        times: list[float] = []
        open_streams: list[float] = []
        rates: list[float | None] = []
        p50s: list[float | None] = []
        p99s: list[float | None] = []
        start = 0
        for index, sample in enumerate(samples):
            previous = samples[index - 1] if index else None
            elapsed = sample.time - previous.time if previous is not None else 0.0
            # Counters only grow; after a restart of a worker they may seem to go back a little.
            rate = max(0.0, sample.delivered - previous.delivered) / elapsed if previous and elapsed > 0 else None
            while samples[start].time < sample.time - LAG_WINDOW_SECONDS:
                start += 1
            p50, p99, _ = lag_quantiles(sample, samples[start - 1] if start else None)
            times.append(round(sample.time, 3))
            open_streams.append(sample.open_streams_total)
            rates.append(_rounded(rate, 3))
            p50s.append(_rounded(p50))
            p99s.append(_rounded(p99))
        older = next((s for s in samples if s.time >= now.time - LAG_WINDOW_SECONDS), None)
        p50, p99, count = lag_quantiles(now, older)
        return {
            "time": round(now.time, 3),
            "interval": self.interval,
            "lag_window": LAG_WINDOW_SECONDS,
            "now": {
                "open_streams": now.open_streams_total,
                "open_streams_by_process": now.open_streams,
                "notifications_created": now.created,
                "entries_delivered": now.delivered,
                "deliveries_per_second": rates[-1] if rates else None,
                "lag_p50": _rounded(p50),
                "lag_p99": _rounded(p99),
                "lag_count": count,
            },
            "series": {
                "time": times,
                "open_streams": open_streams,
                "deliveries_per_second": rates,
                "lag_p50": p50s,
                "lag_p99": p99s,
            },
        }
