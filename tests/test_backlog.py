"""A stream that falls behind: Redis queues at most MAX_QUEUED_PER_STREAM for it, MongoDB gives it the rest."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from services.cache import inbox_key

CAP = 20
BURST = 3 * CAP


@pytest.fixture
def wakeup_hints() -> bool:
    """Polling, with a poll far apart: the burst is all queued before the stream looks at its inbox."""
    return False


@pytest.fixture
def settings(settings):
    return replace(settings, poll_interval=5.0, heartbeat_interval=5.0, max_queued_per_stream=CAP)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.also_on_cluster
async def test_a_burst_past_the_inbox_cap_is_queued_up_to_it_and_the_stream_gets_the_rest_from_mongodb_in_order_once(
    api, open_stream, runtime
):
    stream = await open_stream("alice")
    await stream.next_event()  # registered, and its first scan done: the next is a poll away
    created = await asyncio.gather(*(api.create("alice", f"burst {index}") for index in range(BURST)))
    [connection] = runtime.streams
    queued = await runtime.redis.hlen(inbox_key("alice", connection.connection_id))
    assert queued <= CAP + 1, f"{queued} entries queued for one stream, past its cap of {CAP} (and the mark)"
    events = await stream.notifications(BURST, timeout=20)
    assert [event.id for event in events] == sorted(notification["id"] for notification in created)
    await stream.assert_silent(0.5)
