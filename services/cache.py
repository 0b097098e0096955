"""The delivery cache in Redis: which connections each user has open, and what each still has to send.

`CacheObserver` is the notification service's observer: it has `DeliveryCache` queue each new
notification in the inbox of every live connection of its user. Each stream's `LiveConnection`
(services/connection.py) reads and empties its own `ConnectionInbox`.

Keys, all of one user inside one hash tag so they share a Redis Cluster slot:

* ``bellcast:{u:<user>}:connections`` — sorted set of the user's live connection ids,
  scored by the time their registration expires.
* ``bellcast:{u:<user>}:inbox:<connection>`` — hash of notification id → notification JSON
  not yet delivered on that connection.
* ``bellcast:{u:<user>}:counts`` — the user's unread and unseen counts (`CountsCache`), which a
  create adds to instead of counting in MongoDB.

Both carry a TTL: a live connection renews its registration every
``REGISTRATION_RENEWAL_INTERVAL``, and an inbox lives ``INBOX_TTL`` after its last write,
so a connection whose process died leaves nothing behind for long.
The registration TTL is long because renewing it is per-stream work at idle: thousands of
streams renewing every few seconds would cost more than everything else an idle stream does.

Every command names keys of one user only, so none spans a Redis Cluster's hash slots. How
the commands and hints go out on one server or a cluster is the `RedisBackend`'s business
(services/redis_backend.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

from redis.exceptions import RedisClusterException, RedisError

from services.command_batcher import CommandBatcher
from services.errors import StoreUnavailable
from services.metrics import Metrics
from services.notifications import Change, Counts
from services.redis_backend import CHANGE_FIELD_PREFIX, OVERFLOW_MARK, CountsToAdd, RedisBackend
from services.stores import redis_unavailable
from services.wakeups import WakeupHub

log = logging.getLogger("bellcast.cache")

KEY_PREFIX = "bellcast"
REGISTRATION_TTL = 600
REGISTRATION_RENEWAL_INTERVAL = REGISTRATION_TTL / 3
# Longer than the longest safety scan interval (REGISTRATION_RENEWAL_INTERVAL), so that an entry
# whose wake-up hint was lost still waits for the stream's own scan.
INBOX_TTL = REGISTRATION_TTL
# The entries an inbox holds by default (MAX_QUEUED_PER_STREAM): a stream that does not keep up (or a
# burst for one user) costs Redis memory, and each scan's transfer, up to this, not the whole backlog.
DEFAULT_INBOX_CAP = 200
# How long after its insert an observer may still be queueing a notification.
OBSERVER_GRACE = 30.0


def user_tag(user_id: str) -> str:
    """The hash tag of a user's keys; quoting keeps braces and colons in ids from splitting it."""
    return "{u:" + quote(user_id, safe="") + "}"


def connections_key(user_id: str) -> str:
    """The sorted set of a user's live connection ids."""
    return f"{KEY_PREFIX}:{user_tag(user_id)}:connections"


def inbox_key(user_id: str, connection_id: str) -> str:
    """The hash of notifications waiting to be sent on one connection."""
    return f"{KEY_PREFIX}:{user_tag(user_id)}:inbox:{connection_id}"


def counts_key(user_id: str) -> str:
    """The hash of a user's counts, as of their last recount and the creates since."""
    return f"{KEY_PREFIX}:{user_tag(user_id)}:counts"


# How long a user's counts are trusted after MongoDB last counted them: a notification deleted behind bellcast's
# back (straight in MongoDB) shows in the counts within this, at the latest.
COUNTS_TTL = 600


class CountsCache:
    """Each user's unread and unseen counts in Redis, so that a create adds one instead of counting in MongoDB.

    MongoDB stays the source of truth. Every change but a create recounts there (`recount`), and so does a
    create that finds no counts; a create adds its notifications to counts that are there, in the command
    that queues it (`DeliveryCache.enqueue`). A recount marks the counts as being recounted before it reads
    MongoDB, and stores what it read only if nothing marked them since: a create that comes meanwhile
    (whose notification MongoDB may or may not have counted) marks them too, and recounts itself after its
    insert. A create that comes after the recount stored its counts adds to them only if its notifications
    were made after the recount read MongoDB (`counted`); otherwise the recount may have counted them
    already (their insert was answered late), and the create recounts; a read takes one off the same way. So the
    counts stored are MongoDB's at a moment after every create that added to them; they expire COUNTS_TTL
    after the recount that stored them. Processes compare their clocks here: on several hosts, a create
    made within their skew of a recount is counted as if the clocks agreed.
    """

    # KEYS[1] the counts; ARGV[1] the recount's mark, ARGV[2] COUNTS_TTL.
    BEGIN_RECOUNT = """
redis.call('HDEL', KEYS[1], 'unread', 'unseen', 'counted')
redis.call('HSET', KEYS[1], 'recount', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
"""
    # KEYS[1] the counts; ARGV[1] the recount's mark, ARGV[2] and ARGV[3] what MongoDB counted, ARGV[4] when it
    # had counted (ms since the epoch), ARGV[5] COUNTS_TTL.
    FINISH_RECOUNT = """
if redis.call('HGET', KEYS[1], 'recount') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'recount')
  redis.call('HSET', KEYS[1], 'unread', ARGV[2], 'unseen', ARGV[3], 'counted', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
"""

    def __init__(self, batcher: CommandBatcher) -> None:
        self._batcher = batcher

    async def begin_recount(self, user_ids: list[str]) -> list[str]:
        """Mark these users' counts as being recounted, before MongoDB is read; the marks, for `finish_recount`."""
        marks = [_mark() for _ in user_ids]
        await self._batcher.execute_many(
            [
                ("EVAL", self.BEGIN_RECOUNT, 1, counts_key(user), mark, COUNTS_TTL)
                for user, mark in zip(user_ids, marks, strict=True)
            ]
        )
        return marks

    async def finish_recount(self, marks: list[str], counts: dict[str, Counts], counted_at: float) -> None:
        """Store what MongoDB counted for each user whose counts nothing marked since `begin_recount`, with when
        it had counted (`counted_at`, seconds since the epoch, read once MongoDB had answered)."""
        counted = int(counted_at * 1000)
        await self._batcher.execute_many(
            [
                (
                    "EVAL",
                    self.FINISH_RECOUNT,
                    1,
                    counts_key(user),
                    mark,
                    found.unread,
                    found.unseen,
                    counted,
                    COUNTS_TTL,
                )
                for (user, found), mark in zip(counts.items(), marks, strict=True)
            ]
        )

    async def drop(self, user_ids: list[str]) -> None:
        """Drop these users' kept counts (they missed a change), and any recount's mark: the next change counts in
        MongoDB, and a recount under way keeps nothing."""
        await self._batcher.execute_many([("DEL", counts_key(user)) for user in user_ids])


def _mark() -> str:
    return uuid.uuid4().hex


class CacheObserver:
    """The observer that puts each change, and each new notification with the change that announces it, in the
    inboxes of its user's live connections."""

    def __init__(self, cache: DeliveryCache, wakeups: WakeupHub) -> None:
        self._cache = cache
        self._wakeups = wakeups

    async def changed(self, change: Change) -> Counts | None:
        """Queue the change (for `created`, its notifications and then the change) for every open stream of its
        user, in one command; with `change.added`, add that to the user's kept counts in that command and answer
        the counts after it (None if none are kept: then only the notifications are queued).

        If it cannot be queued, the user's streams catch up from MongoDB, which has the notifications, and
        send fresh counts once they have; the failure is raised for the service to log and count.
        """
        try:
            return (await self._cache.enqueue(change)).counts
        except Exception:
            self._wakeups.announce_recovery(change.user_id)
            raise


class Queued(NamedTuple):
    """What `DeliveryCache.enqueue` did: how many connections it queued for, and the user's counts it added to."""

    connections: int
    counts: Counts | None


class DeliveryCache:
    """Registers live connections and queues notifications for them in Redis."""

    def __init__(
        self,
        redis: RedisBackend,
        batcher: CommandBatcher,
        publish_hints: bool = True,
        metrics: Metrics | None = None,
        inbox_cap: int = DEFAULT_INBOX_CAP,
    ) -> None:
        """`inbox_cap`: the entries an inbox holds at most; past it, its stream catches up from MongoDB."""
        self._redis = redis
        self._inbox_cap = inbox_cap
        self._batcher = batcher
        self._publish_hints = publish_hints
        self._metrics = metrics
        # Connection ids: random per cache (so per process, made after any fork), then a serial number,
        # which costs less per connect than a uuid4 each.
        self._connection_prefix = uuid.uuid4().hex[:16]
        self._connection_serial = itertools.count()

    def open_inbox(self, user_id: str) -> ConnectionInbox:
        """A new, not yet registered inbox for one stream of the user."""
        connection_id = f"{self._connection_prefix}{next(self._connection_serial):x}"
        return ConnectionInbox(self._batcher, user_id, connection_id)

    async def enqueue(self, change: Change) -> Queued:
        """Queue the change's notifications and its `changed` event for every live connection of its user, and hint
        them; answer how many connections, and the counts it added the change to.

        The event goes with the counts kept for the user: with `change.added`, after that is added to them in
        the same command, and where none are kept (or a recount read them after the change was made) the
        event is not queued (the counts answered are None) and the user's counts are marked, so that a
        recount under way keeps nothing; for a change with counts of its own, those where none are kept
        (kept ones are as new or newer: a change announced late does not take a badge back).

        Through the batcher: the creates of one loop iteration share pipelines with the streams' commands.
        """
        entries = [(notification.key, notification.to_json()) for notification in change.notifications]
        field = f"{CHANGE_FIELD_PREFIX}{time.time_ns():020d}:{uuid.uuid4().hex[:8]}"
        counting = None
        key = counts_key(change.user_id)
        if change.counts is not None:
            # Kept counts are as new or newer than those the change read: the script takes them where there are.
            unread, unseen = change.counts.unread, change.counts.unseen
            counting = CountsToAdd(key, 0, 0, 0, "", COUNTS_TTL, field, change.json_before_counts(), unread, unseen)
        elif change.added is not None:
            added, since = change.added, int(change.made_at * 1000)
            json_before_counts = change.json_before_counts()
            counting = CountsToAdd(
                key, added.unread, added.unseen, since, _mark(), COUNTS_TTL, field, json_before_counts
            )
        if not entries and counting is None:
            return Queued(0, None)
        connections, counts = await self._redis.queue_for_live_connections(
            self._batcher.execute_many,
            connections_key(change.user_id),
            inbox_key(change.user_id, ""),
            entries,
            INBOX_TTL,
            self._inbox_cap,
            change.user_id if self._publish_hints else None,
            counting,
        )
        return Queued(connections, Counts(*counts) if counts is not None else None)

    async def safety_scan(self, inboxes: Sequence[ConnectionInbox]) -> list[bool]:
        """Which of these inboxes hold entries, asked together with renewing the registrations due.

        Streams whose inboxes hold something then scan them themselves. A renewal that finds its
        registration gone (Redis evicted it, or was flushed) marks the inbox `registration_lost`
        and counts as holding something: the stream's scan registers again and catches up from
        MongoDB. Raises StoreUnavailable when Redis does not answer.
        """
        if not inboxes:
            return []
        found = await self._redis.safety_scan(self._batcher.execute_many, inboxes, REGISTRATION_TTL)
        return [holds or inbox.registration_lost for holds, inbox in zip(found, inboxes, strict=True)]

    async def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers: in a cluster, every primary."""
        try:
            await self._redis.ping()
        except (RedisError, RedisClusterException) as error:
            if not redis_unavailable(error):
                raise
            self._store_error()
            raise StoreUnavailable("the delivery cache is unavailable") from error

    def _store_error(self) -> None:
        if self._metrics is not None:
            self._metrics.store_error("redis")


class ConnectionInbox:
    """One stream's registration and queue of undelivered notifications; its commands go out pipelined."""

    __slots__ = (
        "_batcher",
        "_connections_key",
        "_inbox_key",
        "_registered_at",
        "_registration",
        "_renewal_due_at",
        "connection_id",
        "overflowed",
        "registration_lost",
        "user_id",
    )

    def __init__(self, batcher: CommandBatcher, user_id: str, connection_id: str) -> None:
        self._batcher = batcher
        self.user_id = user_id
        self.connection_id = connection_id
        self._connections_key = connections_key(user_id)
        self._inbox_key = inbox_key(user_id, connection_id)
        self._renewal_due_at = 0.0
        self._registered_at = 0.0
        # A renewal found the registration gone (evicted, or flushed): observers queue nothing for
        # this connection until it registers again.
        self.registration_lost = False
        # The last `pending` found the overflow mark: Redis dropped entries that MongoDB has.
        self.overflowed = False
        self._registration: asyncio.Future[list[Any]] | None = None

    async def register(self) -> int:
        """Announce the connection so that observers queue the user's notifications for it.

        Returns how many live connections the user has now, this one included.
        """
        now = self._registered_at = time.time()
        registration = self._registration = self._batcher.execute_many(
            [*self._registration_commands(), ("ZCOUNT", self._connections_key, now, "+inf")]
        )
        try:
            # Shielded: cancelled meanwhile, the stream's task leaves the commands to go out all the
            # same, and `deregister` waits for their reply.
            replies = await asyncio.shield(registration)
        finally:
            if registration.done():
                self._registration = None
        self._renewal_due_at = time.monotonic() + REGISTRATION_RENEWAL_INTERVAL
        self.registration_lost = False
        return int(replies[-1])

    @property
    def registered_at(self) -> float:
        """When the connection last registered (time.time()): observers may queue what was created shortly before."""
        return self._registered_at

    @property
    def key(self) -> str:
        """The inbox's key in Redis."""
        return self._inbox_key

    async def renew_if_due(self) -> None:
        """Renew the registration's TTL when a third of it has passed; note if it was gone."""
        commands = self.renewal_commands_if_due()
        if commands:
            self.note_renewal(await self._batcher.execute_many(commands))

    @property
    def connections_key(self) -> str:
        """The key of the user's sorted set of live connections, where this one registers."""
        return self._connections_key

    @property
    def renewal_pending(self) -> bool:
        """Whether the registration's renewal is due (`renewal_due`), without counting it as renewed."""
        return time.monotonic() >= self._renewal_due_at

    def renewal_due(self) -> bool:
        """Whether a third of the registration's TTL has passed; if so, it counts as renewed from now.

        The inbox needs no renewal: each entry queued renews it, and a live stream empties it within
        a safety scan interval, well inside INBOX_TTL.
        """
        now = time.monotonic()
        if now < self._renewal_due_at:
            return False
        self._renewal_due_at = now + REGISTRATION_RENEWAL_INTERVAL
        return True

    def renewal_commands_if_due(self) -> list[tuple[object, ...]]:
        """The commands that renew the registration's TTL, if due (`renewal_due`)."""
        if not self.renewal_due():
            return []
        # XX: a renewal only extends a registration. Queued before the stream closed, it may reach
        # Redis after the deregistration (safety scans go out a sweep later, on another connection),
        # and must not bring the connection back to be written to for ten minutes (the single Redis's
        # safety scan script too).
        # The ZSCORE before says whether there was a registration to renew (None: Redis lost it).
        return [("ZSCORE", self._connections_key, self.connection_id), *self._registration_commands("XX")]

    def note_renewal(self, replies: Sequence[Any]) -> None:
        """Take the replies to `renewal_commands_if_due`'s commands: note if the registration was gone."""
        if replies[0] is None:  # the ZSCORE's
            self.registration_lost = True

    def _registration_commands(self, *flags: str) -> list[tuple[object, ...]]:
        return [
            ("ZADD", self._connections_key, *flags, time.time() + REGISTRATION_TTL, self.connection_id),
            # The newest registration expires last, so its TTL covers every member.
            ("EXPIRE", self._connections_key, REGISTRATION_TTL),
        ]

    async def pending(self) -> list[tuple[str, bytes]]:
        """The queued (notification id, JSON) pairs, in id order; `overflowed` says if some were dropped."""
        entries: dict[bytes, bytes] = await self._batcher.execute("HGETALL", self._inbox_key)
        self.overflowed = entries.pop(OVERFLOW_MARK.encode(), None) is not None if entries else False
        return sorted((key.decode(), value) for key, value in entries.items()) if entries else []

    async def clear_overflow(self) -> None:
        """Remove the overflow mark: what is dropped from now on marks the inbox again."""
        await self._batcher.execute("HDEL", self._inbox_key, OVERFLOW_MARK)
        self.overflowed = False

    async def remove(self, notification_ids: Collection[str]) -> None:
        """Delete exactly these entries, once they have been sent."""
        if notification_ids:
            await self._batcher.execute("HDEL", self._inbox_key, *notification_ids)

    async def remove_and_count(self, notification_ids: Collection[str]) -> int:
        """Delete exactly these entries, once they have been sent without reading the inbox; how many it still
        holds (queued since, or left from before: its stream then reads it)."""
        _, left = await self._batcher.execute_many(
            [("HDEL", self._inbox_key, *notification_ids), ("HLEN", self._inbox_key)]
        )
        return int(left)

    async def deregister(self) -> None:
        """Forget the connection and drop whatever it had not sent."""
        if self._registration is not None and not self._registration.done():
            # A registration still under way (a recovery's) must not land after this.
            await asyncio.wait([self._registration])
        await self._batcher.execute_many(
            [("ZREM", self._connections_key, self.connection_id), ("DEL", self._inbox_key)]
        )
