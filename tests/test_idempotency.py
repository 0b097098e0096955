"""Idempotency-Key on `POST /api/notifications`: a repeat within 24 hours answers the first request's
notifications, stored once and delivered once, however many repeats race; another request with the key is a 409."""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

import pytest
from bson import ObjectId
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from services.idempotency import COLLECTION, IDEMPOTENCY_WINDOW, IdempotencyKey, producer_pseudonym
from services.notifications import utc_now, validate_create
from tests.support import API, error_of

PATH = "/api/notifications"


async def _post(
    api: API, fields: dict[str, Any], key: str | None, client: AsyncHTTPClient | None = None
) -> HTTPResponse:
    headers = {"X-API-Key": api.api_key, "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await (client or api.client).fetch(
        api.base_url + PATH, method="POST", body=json.dumps(fields), headers=headers, raise_error=False
    )


async def _stored(runtime) -> int:
    return int(await runtime.mongo.database["notifications"].count_documents({}))


@pytest.mark.gen_test
async def test_the_same_key_twice_stores_and_delivers_one_notification_and_answers_it_twice(api, runtime, open_stream):
    tab = await open_stream("alice")
    fields = {"user_id": "alice", "title": "Invoice 42", "data": {"n": 42}}
    first = await _post(api, fields, "invoice-42")
    # The same request, its keys in another order and spaced otherwise: a repeat all the same.
    repeat = await _post(api, {"data": {"n": 42}, "title": "Invoice 42", "user_id": "alice"}, "invoice-42")
    assert (first.code, repeat.code) == (201, 201)
    assert json.loads(repeat.body) == json.loads(first.body)
    assert "Idempotent-Replayed" not in first.headers and repeat.headers["Idempotent-Replayed"] == "true"
    [delivered] = await tab.notifications(1)
    assert delivered.json() == json.loads(first.body)
    await tab.assert_silent(0.5)
    assert await _stored(runtime) == 1


@pytest.mark.gen_test
async def test_the_same_key_with_another_request_is_a_409_and_stores_nothing_more(api, runtime):
    assert (await _post(api, {"user_id": "alice", "title": "Invoice 42"}, "invoice-42")).code == 201
    for other in (
        {"user_id": "alice", "title": "Invoice 43"},
        {"user_id": "bob", "title": "Invoice 42"},
        {"user_ids": ["alice"], "title": "Invoice 42"},
    ):
        conflict = await _post(api, other, "invoice-42")
        assert conflict.code == 409
        assert error_of(conflict)["code"] == "conflict"
    assert await _stored(runtime) == 1
    # Without a key, or with another, nothing is repeated.
    assert (await _post(api, {"user_id": "alice", "title": "Invoice 42"}, None)).code == 201
    assert (await _post(api, {"user_id": "alice", "title": "Invoice 42"}, "invoice-42b")).code == 201
    assert await _stored(runtime) == 3


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("users", [["alice"], ["alice", "bob", "carol"]], ids=["one", "several"])
async def test_twenty_requests_racing_with_one_key_store_and_deliver_each_notification_once(
    api, runtime, open_stream, users
):
    tabs = {user: await open_stream(user) for user in users}
    for tab in tabs.values():
        await tab.next_event()  # connected
    fields = {"user_ids": users, "title": "Once"} if len(users) > 1 else {"user_id": users[0], "title": "Once"}
    client = AsyncHTTPClient(force_instance=True, max_clients=20)
    try:
        answers = await asyncio.gather(*(_post(api, fields, "racing", client) for _ in range(20)))
    finally:
        client.close()
    assert {answer.code for answer in answers} == {201}
    assert len({answer.body for answer in answers}) == 1
    assert sum("Idempotent-Replayed" not in answer.headers for answer in answers) == 1
    assert await _stored(runtime) == len(users)
    answered = json.loads(answers[0].body)
    by_user = {n["user_id"]: n for n in answered["notifications"]} if len(users) > 1 else {users[0]: answered}
    for user, tab in tabs.items():
        [delivered] = await tab.notifications(1)
        assert delivered.json() == by_user[user]
    for tab in tabs.values():
        await tab.assert_silent(0.5)


@pytest.mark.gen_test
@pytest.mark.parametrize("key", ["", "k" * 256, "clé", "tab\there"], ids=repr)
async def test_a_key_that_is_not_1_to_255_printable_ascii_characters_is_a_400_and_nothing_is_stored(api, runtime, key):
    response = await _post(api, {"user_id": "alice", "title": "t"}, key)
    assert response.code == 400
    error = error_of(response)
    assert error["code"] == "invalid" and "Idempotency-Key" in error["message"]
    assert await _stored(runtime) == 0


@pytest.mark.gen_test
async def test_the_longest_key_and_every_printable_character_are_accepted(api):
    for key in ("k" * 255, "".join(chr(c) for c in range(0x21, 0x7F))):
        assert (await _post(api, {"user_id": "alice", "title": "t"}, key)).code == 201


@pytest.mark.gen_test
async def test_after_24_hours_the_key_makes_a_new_notification(api, runtime):
    first = json.loads((await _post(api, {"user_id": "alice", "title": "Daily"}, "daily")).body)
    claims = runtime.mongo.database[COLLECTION]
    # As if a day had passed and the expiry sweep had not yet deleted the claim.
    aged = utc_now() - IDEMPOTENCY_WINDOW - datetime.timedelta(seconds=1)
    await claims.update_many({}, {"$set": {"created_at": aged}})
    again = await _post(api, {"user_id": "alice", "title": "Daily"}, "daily")
    assert again.code == 201 and "Idempotent-Replayed" not in again.headers
    assert json.loads(again.body)["id"] != first["id"]
    assert await _stored(runtime) == 2
    repeat = await _post(api, {"user_id": "alice", "title": "Daily"}, "daily")
    assert json.loads(repeat.body)["id"] == json.loads(again.body)["id"]


@pytest.mark.gen_test
async def test_a_repeat_stores_and_delivers_what_the_first_request_claimed_but_never_stored(api, runtime, open_stream):
    """The first request claimed its key and then failed (MongoDB went away, the process died): its retry
    stores the notification the claim names, and delivers it."""
    tab = await open_stream("alice")
    fields = {"user_id": "alice", "title": "Retried"}
    claimed_id = ObjectId()
    key = IdempotencyKey(producer_pseudonym(api.api_key), "retried")
    await runtime.mongo.database[COLLECTION].insert_one(
        {
            "_id": key.record_id,
            "fingerprint": validate_create(fields).fingerprint(),
            "ids": [claimed_id],
            "created_at": utc_now(),
        }
    )
    retry = await _post(api, fields, "retried")
    assert retry.code == 201 and json.loads(retry.body)["id"] == str(claimed_id)
    [delivered] = await tab.notifications(1)
    assert delivered.id == str(claimed_id)
    assert await _stored(runtime) == 1


@pytest.mark.gen_test
async def test_keys_are_scoped_to_the_producers_credential(runtime):
    """bellcast takes one API key, so two producers cannot both reach HTTP: the service keeps their keys apart."""
    assert producer_pseudonym("first-key-" + "a" * 16) != producer_pseudonym("second-key-" + "b" * 16)
    request = validate_create({"user_id": "alice", "title": "Same key, two producers"})
    first = await runtime.notifications.create_many(request, IdempotencyKey("producer-a", "shared"))
    second = await runtime.notifications.create_many(request, IdempotencyKey("producer-b", "shared"))
    assert not first.replayed and not second.replayed
    assert first.notifications[0].id != second.notifications[0].id
    assert await _stored(runtime) == 2
