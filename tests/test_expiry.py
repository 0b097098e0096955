"""Expiry: every expiry reaches the user's streams once, and an hour later the sweep deletes the notification, a
batch at a time; Idempotency-Key claims go the same way once their 24 hours have passed. No TTL index does it:
SecantusDB's TTL pass reads every document of such a collection under its global lock once a minute."""

from __future__ import annotations

import asyncio
import datetime
from urllib.parse import quote

import pytest

from services import idempotency
from services.expiry import KEY_PREFIX, SWEEP_INTERVAL_SECONDS
from services.notifications import COLLECTION, DELETE_BATCH, utc_now, validate_new_notification
from tests.support import eventually, iso_in


@pytest.fixture
def wakeup_hints() -> bool:
    """An expiry is announced as a change; how streams are woken does not change it."""
    return True


@pytest.mark.gen_test(timeout=60)
async def test_expiries_spread_over_several_sweeps_are_each_announced_once(api, open_stream):
    stream = await open_stream("alice")
    await stream.next_event()
    expiring = [await api.create("alice", f"expiring {i}", expires_at=iso_in(1.0 + 0.4 * i)) for i in range(6)]
    created = [await stream.next_change() for _ in expiring]
    assert [change["ids"] for change in created] == [[notification["id"]] for notification in expiring]

    expired: list[dict] = []
    while sum(len(change["ids"]) for change in expired) < len(expiring):
        expired.append(await stream.next_change(timeout=3 * SWEEP_INTERVAL_SECONDS + 5))
    assert {change["change"] for change in expired} == {"expired"}
    assert sorted(id for change in expired for id in change["ids"]) == sorted(n["id"] for n in expiring)
    assert (expired[-1]["unread_count"], expired[-1]["unseen_count"]) == (0, 0)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("mongo_driver", ["pymongo", "motor"])
async def test_the_sweep_deletes_what_expired_an_hour_ago_and_claims_past_their_day_a_batch_at_a_time(runtime):
    database = runtime.mongo.database
    notifications, claims = database[COLLECTION], database[idempotency.COLLECTION]
    # The running server's sweeper waits while this test holds the deployment's lock (and a sweep under way ends).
    lock_key = f"{KEY_PREFIX}{quote(database.name, safe='')}:lock"
    await runtime.redis.set(lock_key, "this test", px=60_000)
    await asyncio.sleep(0.5)
    now = utc_now()

    def expired_ago(age: datetime.timedelta, user: str) -> dict:
        document = validate_new_notification({"user_id": user, "title": "t"}, now - age).to_document()
        document["expires_at"] = now - age
        return document

    # 2,500 that expired two hours ago, a millisecond apart; one half an hour ago; one not yet; one never.
    old = [expired_ago(datetime.timedelta(hours=2, milliseconds=n), f"user-{n}") for n in range(2500)]
    recent = expired_ago(datetime.timedelta(minutes=30), "recent")
    live = validate_new_notification({"user_id": "live", "title": "t", "expires_at": iso_in(3600)}, now).to_document()
    lasting = validate_new_notification({"user_id": "lasting", "title": "t"}, now).to_document()
    await notifications.insert_many([*old, recent, live, lasting])
    await claims.insert_many(
        [
            {
                "_id": "p:outdated",
                "fingerprint": "f",
                "ids": [],
                "created_at": now - idempotency.IDEMPOTENCY_WINDOW - datetime.timedelta(minutes=1),
            },
            {"_id": "p:current", "fingerprint": "f", "ids": [], "created_at": now - datetime.timedelta(hours=23)},
        ]
    )
    # Nothing whose expiry was not announced yet (a sweep behind, announcing an earlier backlog).
    assert await runtime.notifications.delete_expired(now, now - datetime.timedelta(hours=3)) == 1
    assert await notifications.count_documents({}) == 2503
    # One batch of the oldest, and the claim past its day.
    assert await runtime.notifications.delete_expired(now, now) == DELETE_BATCH
    assert await notifications.count_documents({"user_id": {"$in": [d["user_id"] for d in old[-DELETE_BATCH:]]}}) == 0
    assert await notifications.count_documents({}) == 2503 - DELETE_BATCH
    assert [claim["_id"] async for claim in claims.find()] == ["p:current"]

    await runtime.redis.delete(lock_key)

    async def only_the_unexpired_and_recent_left() -> bool:
        return await notifications.count_documents({}) == 3

    await eventually(only_the_unexpired_and_recent_left, timeout=5 * SWEEP_INTERVAL_SECONDS + 5)
    left = sorted([document["user_id"] async for document in notifications.find()])
    assert left == ["lasting", "live", "recent"]
    for collection in (notifications, claims):
        indexes = await collection.index_information()
        assert not [name for name, index in indexes.items() if "expireAfterSeconds" in index], "a TTL index"
