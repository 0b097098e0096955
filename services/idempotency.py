"""Idempotency-Key: a producer's repeat of a create, within 24 hours, answers the first one's notifications.

Each key a producer sends claims one MongoDB document, `_id` the producer's pseudonym and the key, which
holds a digest of the request and the ids and time its notifications were given. The `_id` is unique, so
of requests racing with one key exactly one claims it; the others read the claim and answer its
notifications. The expiry sweep deletes a claim once its 24 hours have passed; until it gets to it, a claim
older than that counts as gone.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from pymongo.errors import DuplicateKeyError

from services.errors import Conflict, Invalid
from services.stores import delete_dated_before, ensure_date_index

COLLECTION = "idempotency_keys"
IDEMPOTENCY_WINDOW = datetime.timedelta(hours=24)
HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# Printable ASCII, the space included: what any HTTP client can send as a header value unchanged.
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]+$")


def producer_pseudonym(api_key: str) -> str:
    """A digest naming the credential a producer sent: keys are scoped by it, and the credential never stored."""
    return hashlib.sha256(b"bellcast idempotency\0" + api_key.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A producer's Idempotency-Key, scoped to the credential that sent it."""

    producer: str
    key: str

    @classmethod
    def from_header(cls, producer: str, value: str | None) -> IdempotencyKey | None:
        """The key of a request's header (None without one); Invalid unless 1 to 255 printable ASCII characters."""
        if value is None:
            return None
        if not 1 <= len(value) <= MAX_KEY_LENGTH or not _PRINTABLE_ASCII.match(value):
            raise Invalid(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters")
        return cls(producer, value)

    @property
    def record_id(self) -> str:
        """The `_id` of its claim: the producer's pseudonym is hexadecimal, so the colon cannot be forged."""
        return f"{self.producer}:{self.key}"


@dataclass(frozen=True, slots=True)
class Claim:
    """The ids and time of the notifications of the request holding a key; `first` if it is this one."""

    ids: list[Any]
    created_at: datetime.datetime
    first: bool


class IdempotencyRecords:
    """The claims of the keys producers sent in the last 24 hours, in MongoDB."""

    def __init__(self, database: Any) -> None:
        self._collection = database[COLLECTION]

    async def ensure_indexes(self) -> None:
        """The index by which claims past their window are found and deleted (idempotent)."""
        existing = await self._collection.index_information()
        await ensure_date_index(self._collection, "created_at", existing, int(IDEMPOTENCY_WINDOW.total_seconds()))

    async def delete_outdated(self, now: datetime.datetime, at_most: int) -> int:
        """Delete about `at_most` claims whose window had passed at `now`, oldest first; how many went."""
        return await delete_dated_before(self._collection, "created_at", now - IDEMPOTENCY_WINDOW, at_most)

    async def claim(self, key: IdempotencyKey, fingerprint: str, ids: list[Any], now: datetime.datetime) -> Claim:
        """Claim `key` for a request (`fingerprint`) whose notifications get `ids` at `now`, unless a request
        within the window holds it: then that one's claim, or Conflict if it asked something else."""
        record = {"_id": key.record_id, "fingerprint": fingerprint, "ids": ids, "created_at": now}
        try:
            await self._collection.insert_one(record)
            return Claim(ids, now, first=True)
        except DuplicateKeyError:
            held = await self._collection.find_one({"_id": key.record_id})
        if held is None or _as_utc(held["created_at"]) <= now - IDEMPOTENCY_WINDOW:
            # Outlived its window (the expiry sweep had not deleted it yet), or deleted meanwhile: claim afresh;
            # of requests doing so together, one claims, the others read its claim.
            if held is not None:
                await self._collection.delete_one({"_id": key.record_id, "created_at": held["created_at"]})
            try:
                await self._collection.insert_one(record)
                return Claim(ids, now, first=True)
            except DuplicateKeyError:
                held = await self._collection.find_one({"_id": key.record_id})
                assert held is not None  # a claim is removed only once 24 hours old
        if held["fingerprint"] != fingerprint:
            raise Conflict(f"this {HEADER} was sent within 24 hours with a different request")
        return Claim(list(held["ids"]), _as_utc(held["created_at"]), first=False)


def _as_utc(value: datetime.datetime) -> datetime.datetime:
    return value.replace(tzinfo=datetime.UTC) if value.tzinfo is None else value
