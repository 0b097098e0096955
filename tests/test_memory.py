"""Garbage collection: a closed stream is freed by reference counting, so full collections can wait."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator

import pytest

from services.memory import NEVER, ScheduledFullCollections
from tests.support import eventually


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


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    """CPython's cycle collector off while the test runs: only reference counting frees objects."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.gen_test
@pytest.mark.parametrize("wakeup_hints", [True], ids=["hints"])
async def test_closed_streams_are_freed_when_they_close_without_the_cycle_collector(
    no_cycle_collector, api, open_stream, runtime
):
    """What makes it safe to take full collections off the streams' path: they leave no cycles.

    Nor does the registry's heartbeat sweep hold them until their next visit: freeing ten
    thousand closed streams there at once stalled the event loop for 0.4 s.
    """
    clients = [await open_stream(f"user{i % 5}") for i in range(20)]
    for client in clients:
        await client.next_event()
    created = await api.create("user0")
    for client in clients[::5]:
        assert (await client.notifications(1))[0].id == created["id"]
    handlers = [weakref.ref(handler) for handler in runtime.streams]
    assert len(handlers) == 20
    runtime.streams.sweep(time.monotonic() + 1)  # each now waits in the sweep's bucket of its heartbeat
    for client in clients:
        client.close()

    async def released() -> bool:
        return len(runtime.streams) == 0

    await eventually(released)
    await asyncio.sleep(0.1)  # the handlers' last callbacks
    assert [ref for ref in handlers if ref() is not None] == []


@pytest.mark.gen_test
async def test_full_collections_run_on_their_schedule_and_close_gives_cpython_its_policy_back(full_collections):
    before = gc.get_threshold()
    collections = ScheduledFullCollections(interval=0.05)
    collections.start()
    try:
        assert gc.get_threshold() == (before[0], before[1], NEVER)
        assert gc.get_freeze_count() > 0
        await asyncio.sleep(0.3)
        assert len(full_collections) >= 2
    finally:
        await collections.close()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
