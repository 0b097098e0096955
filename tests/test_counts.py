"""The counts each `changed` event carries: kept in Redis for creates to add to, MongoDB's after every other change."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from bson import ObjectId

from services.cache import CountsCache, counts_key
from services.notifications import Change, Counts, utc_now, validate_new_notification
from tests.support import change_of_kind, counts_of, created_change


@pytest.mark.gen_test(timeout=60)
@pytest.mark.also_on_cluster
async def test_concurrent_creates_and_reads_of_one_user_leave_the_counts_equal_to_mongodbs(api, open_stream, runtime):
    """Creates add to the kept counts while reads take from them: whichever order they meet Redis and MongoDB
    in, the counts a create carries afterwards are MongoDB's."""
    stream = await open_stream("alice")
    await stream.next_event()
    first = [await api.create("alice", f"before {i}") for i in range(10)]

    async def read(notification_id: str) -> None:
        response = await api.as_user("alice", "POST", f"/api/notifications/{notification_id}/read", b"")
        assert response.code == 200, response.body

    await asyncio.gather(
        *(api.create("alice", f"during {i}") for i in range(40)), *(read(created["id"]) for created in first)
    )
    last = await api.create("alice", "after")

    change = await created_change(stream, last["id"])
    assert counts_of(change) == await runtime.notifications.counts("alice") == Counts(41, 51)
    kept = await runtime.redis.hmget(counts_key("alice"), "unread", "unseen")
    assert kept in ([None, None], [b"41", b"51"]), kept


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_creates_and_reads_add_to_the_kept_counts_and_any_other_change_recounts_them_from_mongodb(
    api, open_stream, runtime
):
    """What changed behind bellcast's back (a notification deleted straight from MongoDB) shows in the counts at
    the next change other than a create or a read, or when the kept counts expire: a create adds its
    notification to the counts kept in Redis, a read takes one off, and neither counts in MongoDB."""
    stream = await open_stream("alice")
    await stream.next_event()
    created = [await api.create("alice", f"n{i}") for i in range(3)]
    assert counts_of(await created_change(stream, created[-1]["id"])) == Counts(3, 3)
    await runtime.mongo.database["notifications"].delete_one({"_id": ObjectId(created[0]["id"])})

    added = await api.create("alice", "added to the kept counts")
    assert counts_of(await created_change(stream, added["id"])) == Counts(4, 4)

    response = await api.as_user("alice", "POST", f"/api/notifications/{added['id']}/read", b"")
    assert response.code == 200
    assert counts_of(await change_of_kind(stream, "read")) == Counts(3, 4)

    response = await api.as_user("alice", "POST", f"/api/notifications/{created[1]['id']}/archive", b"")
    assert response.code == 200
    archived = counts_of(await change_of_kind(stream, "archived"))
    assert archived == Counts(1, 2) == await runtime.notifications.counts("alice")
    recounted = await api.create("alice", "added to the recount")
    assert counts_of(await created_change(stream, recounted["id"])) == Counts(2, 3)


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_a_read_of_a_notification_the_counts_leave_out_or_never_had_carries_mongodbs_counts(
    api, open_stream, runtime
):
    """Reading an archived notification changes no count; reading one the kept counts never had (inserted
    straight into MongoDB) would take them below zero: each read's change carries MongoDB's counts."""
    stream = await open_stream("alice")
    await stream.next_event()
    archived, shown = await api.create("alice", "archived"), await api.create("alice", "shown")
    await created_change(stream, shown["id"])
    assert (await api.as_user("alice", "POST", f"/api/notifications/{archived['id']}/archive", b"")).code == 200
    assert counts_of(await change_of_kind(stream, "archived")) == Counts(1, 1)

    assert (await api.as_user("alice", "POST", f"/api/notifications/{archived['id']}/read", b"")).code == 200
    assert counts_of(await change_of_kind(stream, "read")) == Counts(1, 1)
    assert (await api.as_user("alice", "POST", f"/api/notifications/{shown['id']}/read", b"")).code == 200
    assert counts_of(await change_of_kind(stream, "read")) == Counts(0, 1)

    collection = runtime.mongo.database["notifications"]
    behind_its_back = ObjectId()
    document = await collection.find_one({"_id": ObjectId(shown["id"])})
    await collection.insert_one({**document, "_id": behind_its_back, "title": "straight into MongoDB", "read_at": None})
    assert (await api.as_user("alice", "POST", f"/api/notifications/{behind_its_back}/read", b"")).code == 200
    read = counts_of(await change_of_kind(stream, "read"))
    assert read == Counts(0, 2) == await runtime.notifications.counts("alice")
    assert await runtime.redis.hmget(counts_key("alice"), "unread", "unseen") == [b"0", b"2"]


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_counts_lost_from_redis_are_recounted_by_the_next_create(api, open_stream, runtime):
    stream = await open_stream("alice")
    await stream.next_event()
    for i in range(2):
        created = await api.create("alice", f"n{i}")
    await created_change(stream, created["id"])
    await runtime.mongo.database["notifications"].delete_one({"_id": ObjectId(created["id"])})
    await runtime.redis.delete(counts_key("alice"))  # evicted, or Redis restarted empty

    again = await api.create("alice", "again")

    assert counts_of(await created_change(stream, again["id"])) == Counts(2, 2)
    assert await runtime.redis.hmget(counts_key("alice"), "unread", "unseen") == [b"2", b"2"]


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_a_recount_that_a_create_overtook_keeps_nothing(runtime):
    """A recount read MongoDB, then a create came (MongoDB may or may not have counted its notification): what the
    recount read is not kept, and the create finds no counts to add to, so it recounts after its insert."""
    counter = CountsCache(runtime.batcher)

    async def create(count: int) -> Counts | None:
        now = utc_now()
        made = [validate_new_notification({"user_id": "alice", "title": "t"}, now=now) for _ in range(count)]
        return (await runtime.delivery_cache.enqueue(Change.of_created("alice", made, None, count=True))).counts

    marks = await counter.begin_recount(["alice"])
    assert await create(1) is None

    await counter.finish_recount(marks, {"alice": Counts(5, 5)}, time.time())

    assert b"unread" not in await runtime.redis.hgetall(counts_key("alice"))
    own = await counter.begin_recount(["alice"])
    await counter.finish_recount(own, {"alice": Counts(6, 6)}, time.time() - 1)  # read before what follows
    assert await create(2) == Counts(8, 8)


@pytest.mark.gen_test
@pytest.mark.also_on_cluster
async def test_a_change_queued_after_a_newer_count_carries_the_newer_counts(runtime):
    """Two changes of one user counted in MongoDB in one order and queued in the other (a 'seen' whose answer was
    slow, then a read): the one queued last carries the counts kept in Redis, the newer, so no badge goes back.
    Where none are kept, a change carries its own."""
    inbox = runtime.delivery_cache.open_inbox("alice")
    await inbox.register()
    counter = CountsCache(runtime.batcher)
    marks = await counter.begin_recount(["alice"])
    await counter.finish_recount(marks, {"alice": Counts(2, 0)}, time.time())  # the read's count, stored first

    await runtime.delivery_cache.enqueue(Change("alice", "seen", (), Counts(3, 0)))  # counted before the read
    await runtime.redis.delete(counts_key("alice"))
    await runtime.delivery_cache.enqueue(Change("alice", "seen", (), Counts(3, 0)))

    queued = [json.loads(data) for _, data in sorted(await inbox.pending())]
    assert [(change["unread_count"], change["unseen_count"]) for change in queued] == [(2, 0), (3, 0)]
