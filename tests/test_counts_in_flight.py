"""The counts kept in Redis when a recount reads MongoDB while a create or a read is done there but not yet
announced: the recount counts it, so its announcement must not add it to the kept counts a second time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from bson import ObjectId

from services.cache import counts_key
from services.notifications import Counts
from tests.relay import StoreRelay, store_address, through_relay
from tests.support import change_of_kind, counts_of, created_change, eventually


@pytest.fixture
def mongo_relay(io_loop, store_urls: tuple[str, str]) -> Iterator[StoreRelay]:
    """A relay in front of the session's MongoDB, which can hold an answer back."""
    relay = io_loop.run_sync(StoreRelay(*store_address(store_urls[0])).start)
    yield relay
    io_loop.run_sync(relay.close)


@pytest.fixture
def mongodb_url(store_urls: tuple[str, str], mongo_relay: StoreRelay) -> str:
    """The runtime reaches MongoDB through the relay, directly (no discovery of the server's own address)."""
    url = through_relay(store_urls[0], mongo_relay)
    return url if "directConnection=" in url else url + ("&" if "?" in url else "/?") + "directConnection=true"


async def _recount_once_stored(api, runtime, counts_in_mongodb: Counts, archiving: str) -> None:
    """Once MongoDB has the write whose answer is held (its counts are `counts_in_mongodb`), archive one of
    alice's notifications: the archive recounts in MongoDB and keeps what it counted."""

    async def stored() -> bool:
        return await runtime.notifications.counts("alice") == counts_in_mongodb

    await eventually(stored)
    response = await api.as_user("alice", "POST", f"/api/notifications/{archiving}/archive", b"")
    assert response.code == 200, response.body


@pytest.mark.gen_test(timeout=30)
@pytest.mark.also_on_cluster
async def test_a_create_answered_after_a_recount_that_counted_it_is_not_counted_twice(
    api, open_stream, runtime, mongo_relay
):
    """MongoDB stores a create's notification, and its answer comes late (a slow network, a busy process): an
    archive meanwhile recounts and keeps counts that include it. The create's announcement then carries
    MongoDB's counts, and the counts kept for the creates after it stay MongoDB's."""
    stream = await open_stream("alice")
    await stream.next_event()
    first = await api.create("alice", "first")
    await api.create("alice", "second")
    released = mongo_relay.hold_next_reply_to(b"answered late")
    late = asyncio.ensure_future(api.create("alice", "answered late"))

    await _recount_once_stored(api, runtime, Counts(3, 3), archiving=first["id"])
    assert await runtime.redis.hmget(counts_key("alice"), "unread", "unseen") == [b"2", b"2"]
    released.set()
    answered = await late

    assert counts_of(await created_change(stream, answered["id"])) == Counts(2, 2)
    after = await api.create("alice", "after")
    assert counts_of(await created_change(stream, after["id"])) == Counts(3, 3)
    assert await runtime.notifications.counts("alice") == Counts(3, 3)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.also_on_cluster
async def test_a_read_answered_after_a_recount_that_counted_it_is_not_taken_off_twice(
    api, open_stream, runtime, mongo_relay
):
    """MongoDB marks a notification read, and its answer comes late: an archive meanwhile recounts and keeps
    counts that leave the read one out already. The read's change then carries MongoDB's counts, and so do
    the counts kept for the creates after it."""
    stream = await open_stream("alice")
    await stream.next_event()
    read, archived, shown = [await api.create("alice", title) for title in ("read", "archived", "shown")]
    await created_change(stream, shown["id"])
    released = mongo_relay.hold_next_reply_to(ObjectId(read["id"]).binary)
    late = asyncio.ensure_future(api.as_user("alice", "POST", f"/api/notifications/{read['id']}/read", b""))

    await _recount_once_stored(api, runtime, Counts(2, 3), archiving=archived["id"])
    assert await runtime.redis.hmget(counts_key("alice"), "unread", "unseen") == [b"1", b"2"]
    released.set()
    assert (await late).code == 200

    assert counts_of(await change_of_kind(stream, "read")) == Counts(1, 2)
    after = await api.create("alice", "after")
    assert counts_of(await created_change(stream, after["id"])) == Counts(2, 3)
    assert await runtime.notifications.counts("alice") == Counts(2, 3)
