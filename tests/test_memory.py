"""Garbage collection by stream churn: full collections when streams closed and others open, never for a ramp alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.memory import NEVER, StreamAwareCollector


class Streams:
    """A registry's counts, set by the test."""

    def __init__(self, open_streams: int) -> None:
        self.opened = open_streams
        self.closed = 0

    def __len__(self) -> int:
        return self.opened - self.closed

    def replace(self, count: int) -> None:
        """`count` streams closed and as many opened."""
        self.opened += count
        self.closed += count


@pytest.fixture
def full_collections() -> Iterator[list[int]]:
    """Generation-2 collections seen while the test runs."""
    seen: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            seen.append(info["collected"])

    gc.callbacks.append(note)
    yield seen
    gc.callbacks.remove(note)


def test_a_full_collection_runs_once_a_quarter_of_the_open_streams_were_replaced(full_collections):
    streams = Streams(open_streams=4000)
    collector = StreamAwareCollector(streams, min_closed=100, longest_interval=3600)
    streams.replace(999)
    assert not collector.collect_if_due(now=collector.last_full_collection)
    assert full_collections == []
    streams.replace(1)
    assert collector.collect_if_due(now=collector.last_full_collection)
    assert len(full_collections) == 1
    # Counted afresh from there.
    streams.replace(500)
    assert not collector.collect_if_due(now=collector.last_full_collection)


def test_few_open_streams_wait_for_the_minimum_turnover(full_collections):
    streams = Streams(open_streams=10)
    collector = StreamAwareCollector(streams, min_closed=100, longest_interval=3600)
    streams.replace(99)
    assert not collector.collect_if_due(now=collector.last_full_collection)
    streams.replace(1)
    assert collector.collect_if_due(now=collector.last_full_collection)
    assert len(full_collections) == 1


def test_a_ramp_of_connects_or_a_mass_disconnect_alone_never_causes_a_full_collection(full_collections):
    streams = Streams(open_streams=0)
    collector = StreamAwareCollector(streams, min_closed=100, longest_interval=60)
    start = collector.last_full_collection
    for _ in range(20):
        streams.opened += 1000
        assert not collector.collect_if_due(now=start + 59)
    for _ in range(20):
        streams.closed += 1000
        assert not collector.collect_if_due(now=start + 59)
    assert full_collections == []
    # The next streams to open bring it, while the heap is small.
    streams.opened += 1
    assert collector.collect_if_due(now=start + 59)
    assert len(full_collections) == 1


def test_the_longest_interval_brings_a_full_collection_without_churn(full_collections):
    streams = Streams(open_streams=5)
    collector = StreamAwareCollector(streams, min_closed=100, longest_interval=60)
    assert not collector.collect_if_due(now=collector.last_full_collection + 59)
    assert collector.collect_if_due(now=collector.last_full_collection + 60)
    assert len(full_collections) == 1


@pytest.mark.gen_test
async def test_start_turns_automatic_full_collections_off_and_close_gives_them_back():
    before = gc.get_threshold()
    collector = StreamAwareCollector(Streams(open_streams=0))
    collector.start()
    try:
        assert gc.get_threshold() == (before[0], before[1], NEVER)
        assert gc.get_freeze_count() > 0
    finally:
        await collector.close()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
