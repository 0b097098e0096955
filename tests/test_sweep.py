"""The registry's sweep: heartbeats for silent streams, drops for stalled ones, and no other visits;
the turns in which closed streams release what they hold, which shutdown waits for; and streams' ticks
falling due together."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise

import pytest
from tornado.ioloop import IOLoop

from services.cache import ConnectionInbox
from services.connection import AlignedPeriodicCallback
from services.metrics import Metrics
from services.streams import RELEASES_PER_ITERATION, StreamRegistry
from tests.support import metric_value


class _NoScans:
    async def safety_scan(self, inboxes: Sequence[ConnectionInbox]) -> list[bool]:
        return [False] * len(inboxes)


class _Stream:
    """An open stream as the registry sees it, counting how often the sweep looks at it."""

    inbox = None

    def __init__(self) -> None:
        self.last_write = time.monotonic()
        self.write_started: float | None = None
        self.visits = 0
        self.heartbeats: list[float] = []
        self.dropped = False
        self.ended = 0

    def stalled_since(self) -> float | None:
        self.visits += 1
        return self.write_started

    def heartbeat(self, now: float) -> None:
        self.heartbeats.append(now)
        self.last_write = now

    def drop(self) -> None:
        assert not self.dropped, "dropped twice"
        self.dropped = True

    def end(self) -> None:
        self.ended += 1

    def wake(self) -> None:
        pass


def _registry(write_timeout: float = 30.0, metrics: Metrics | None = None) -> StreamRegistry:
    return StreamRegistry(heartbeat_interval=30.0, write_timeout=write_timeout, scanner=_NoScans(), metrics=metrics)


def _added_now(registry: StreamRegistry, *streams: _Stream) -> float:
    """Add the streams; the time they were added, from which the tests' sweeps count."""
    start = time.monotonic()
    for stream in streams:
        registry.add(stream)
    return start


def _sweep_every_second(
    registry: StreamRegistry, start: float, seconds: range, before_each: Callable[[float], None] = lambda now: None
) -> None:
    for second in seconds:
        now = start + second
        before_each(now)
        registry.sweep(now)


@pytest.mark.gen_test
async def test_a_silent_stream_gets_one_heartbeat_per_interval_and_no_other_visit():
    registry, stream = _registry(), _Stream()
    start = _added_now(registry, stream)
    _sweep_every_second(registry, start, range(1, 301))
    assert len(stream.heartbeats) == 10
    gaps = [later - earlier for earlier, later in pairwise([start, *stream.heartbeats])]
    assert all(29.5 <= gap <= 31 for gap in gaps), gaps
    assert stream.visits == 10


@pytest.mark.gen_test
async def test_a_stream_that_keeps_writing_gets_no_heartbeat_and_one_visit_per_interval():
    registry, stream = _registry(), _Stream()
    start = _added_now(registry, stream)

    def write_every_five_seconds(now: float) -> None:
        if round(now - start) % 5 == 0:
            stream.last_write = now

    _sweep_every_second(registry, start, range(1, 301), write_every_five_seconds)
    assert stream.heartbeats == []
    assert 9 <= stream.visits <= 11


@pytest.mark.gen_test
async def test_a_stream_whose_write_stalls_is_dropped_once_past_the_write_timeout():
    metrics = Metrics()
    registry, stalled, healthy = _registry(write_timeout=20.0, metrics=metrics), _Stream(), _Stream()
    start = _added_now(registry, stalled, healthy)
    _sweep_every_second(registry, start, range(1, 26))
    stalled.write_started = start + 25.2
    _sweep_every_second(registry, start, range(26, 46))
    assert not stalled.dropped
    _sweep_every_second(registry, start, range(46, 48))
    assert stalled.dropped and metric_value(metrics, "slow_clients_dropped_total") == 1
    assert not healthy.dropped and len(healthy.heartbeats) == 1


@pytest.mark.gen_test
async def test_a_discarded_stream_is_no_longer_visited():
    registry, stream = _registry(), _Stream()
    start = _added_now(registry, stream)
    registry.discard(stream)
    _sweep_every_second(registry, start, range(1, 101))
    assert stream.visits == 0 and len(registry) == 0


@pytest.mark.gen_test
async def test_streams_closing_together_release_a_limited_number_per_loop_iteration_in_order():
    registry = _registry()
    iteration = 0

    async def count_iterations() -> None:
        nonlocal iteration
        while True:
            await asyncio.sleep(0)  # resumes in the next iteration
            iteration += 1

    counter = asyncio.ensure_future(count_iterations())
    released: list[tuple[int, int]] = []

    async def close(number: int) -> None:
        async with registry.releasing(_Stream()):
            released.append((number, iteration))

    closing = 2 * RELEASES_PER_ITERATION + 50
    await asyncio.gather(*(close(number) for number in range(closing)))
    counter.cancel()
    assert [number for number, _ in released] == list(range(closing))
    per_iteration = Counter(when for _, when in released)
    assert max(per_iteration.values()) == RELEASES_PER_ITERATION
    assert len(per_iteration) == 3
    alone = asyncio.ensure_future(close(closing))
    await asyncio.sleep(0)
    assert alone.done(), "once the crowd has gone, a stream's turn comes at once"


@pytest.mark.gen_test
async def test_waiting_until_all_released_lasts_until_closed_streams_have_released_not_only_closed():
    registry = _registry()
    streams = [_Stream() for _ in range(RELEASES_PER_ITERATION + 1)]  # the last one waits for a turn
    _added_now(registry, *streams)
    deregistered = asyncio.get_running_loop().create_future()  # Redis's reply to their deregistrations

    async def close(stream: _Stream) -> None:
        async with registry.releasing(stream):
            await deregistered

    closing = [asyncio.ensure_future(close(stream)) for stream in streams]
    all_released = asyncio.ensure_future(registry.wait_until_all_released())
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(registry) == 0, "every stream is forgotten at once"
    assert not all_released.done(), "shutdown must not close the stores while streams still release"
    deregistered.set_result(None)
    await asyncio.gather(*closing)
    await all_released


@pytest.mark.gen_test
async def test_a_stream_opened_after_shutdown_began_is_told_to_end_at_once_and_the_others_once():
    registry = _registry()
    open_before, registering_meanwhile = _Stream(), _Stream()
    _added_now(registry, open_before)
    registry.end_all()
    _added_now(registry, registering_meanwhile)  # its registration's reply came after the signal
    assert (open_before.ended, registering_meanwhile.ended) == (1, 1)


def _note_time(times: list[float], clock: IOLoop) -> None:
    times.append(clock.time())


@pytest.mark.gen_test
async def test_tickers_started_at_different_moments_run_together_on_the_alignment_grid():
    clock = IOLoop.current()  # PeriodicCallback's clock: the wall clock
    runs: list[list[float]] = [[] for _ in range(8)]
    tickers = []
    for times in runs:
        ticker = AlignedPeriodicCallback(functools.partial(_note_time, times, clock), 300, jitter=0.1, alignment=0.1)
        ticker.start()
        tickers.append(ticker)
        await asyncio.sleep(0.037)  # each started off the grid, at its own moment
    await asyncio.sleep(1.0)
    for ticker in tickers:
        ticker.stop()
    assert all(len(times) >= 2 for times in runs), runs
    # Unaligned, a run would be this close to a multiple of 0.1 s with a chance of 0.6: 30-odd runs all
    # would be a fluke. Aligned, each runs on a multiple, or a little late on a busy machine (or a hair
    # early: the deadline is a float product, and the wall clock's resolution there is a fraction of a µs).
    off_grid = [round(min(moment % 0.1, 0.1 - moment % 0.1), 3) for times in runs for moment in times]
    assert all(distance < 0.03 for distance in off_grid), off_grid
    gaps = [later - earlier for times in runs for earlier, later in pairwise(times)]
    assert all(0.2 - 0.01 <= gap <= 0.4 + 0.04 for gap in gaps), gaps
