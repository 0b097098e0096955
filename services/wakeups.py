"""This process's one subscription to wake-up hints, fanned out to its local streams.

The cache observer publishes the user id of each new notification (on a single Redis, with the
entries it queued); the `WakeupHub` wakes the local streams of that user so they scan at once, or
hands them the entries (a `Delivery`): idle streams write them at once, and one command removes them
from all their inboxes. Idle streams touch no network. Hints only make delivery fast: a
stream also scans on its own now and then, and after the subscription was lost every stream
recovers. A notification Redis would not queue is announced on a third channel instead: its
user's streams catch up from MongoDB.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from redis.exceptions import RedisClusterException, RedisError

from services.background import stop_task
from services.command_batcher import CommandBatcher
from services.errors import StoreUnavailable
from services.redis_backend import (
    DELIVERY_CHANNEL,
    RECOVERY_CHANNEL,
    REMOVE_DELIVERED,
    RedisBackend,
    split_changes,
)

log = logging.getLogger("bellcast.wakeups")

RECOVERY_CHANNEL_BYTES = RECOVERY_CHANNEL.encode()
DELIVERY_CHANNEL_BYTES = DELIVERY_CHANNEL.encode()
# Every stream's recovery waits for the subscription to notice Redis is back: try often (a connect is cheap).
RECONNECT_BACKOFF_SECONDS = (0.1, 0.25, 0.5, 1.0)


class Delivery:
    """The entries one hint carried, queued in the inbox of each stream of its user, and what those streams share.

    A stream that can write them at once does, and joins `written` with its inbox's key: the hub then
    removes them from all those inboxes in one command, and tells each stream once done (`acknowledged`). The
    events are encoded once for all of them (`encoded`, by what makes one stream's bytes differ).
    """

    __slots__ = ("changes", "encoded", "entries", "notification_ids", "notifications", "written")

    def __init__(self, entries: Sequence[tuple[str, str]]) -> None:
        self.entries = entries
        self.notifications, self.changes = split_changes(entries)
        self.notification_ids = [notification_id for notification_id, _ in self.notifications]
        self.encoded: dict[Any, bytes] = {}
        self.written: list[tuple[Wakeable, str]] = []


class Wakeable(Protocol):
    """A stream that can be told its inbox has something, or may lack something."""

    def wake(self) -> None:
        """Scan the inbox soon."""

    def deliver(self, delivery: Delivery) -> None:
        """These entries were queued in the inbox: write them now and join `delivery.written`, or scan soon."""

    def acknowledged(self, delivery: Delivery, left: int | None) -> None:
        """What it wrote of `delivery` was removed from its inbox, which holds `left` entries more (None: Redis
        did not answer, and the entries are still there)."""

    def recover(self) -> None:
        """Something owed may be missing from the inbox: catch up from MongoDB with the next scan."""


class WakeupHub:
    """This process's one subscription to wake-up hints, fanned out to its local streams.

    It also notices when Redis goes away and comes back, with or without hints.
    """

    def __init__(self, redis: RedisBackend, batcher: CommandBatcher) -> None:
        self._redis = redis
        self._batcher = batcher
        # A user's one stream is held as itself; only a user with several streams gets a set.
        self._listeners: dict[str, Wakeable | set[Wakeable]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._announcements: set[asyncio.Task[None]] = set()
        self._subscribed = asyncio.Event()
        self._failed_attempts = 0
        # The eviction settings last warned about, so that a Redis coming back warns only of a change.
        self._eviction_warned: frozenset[str] = frozenset()
        self.outages = 0
        # Moves on each time the subscription comes back after a loss: Redis may have restarted
        # or dropped what it queued meanwhile, so streams compare it to know they must recover.
        self.epoch = 0

    def listen(self, user_id: str, listener: Wakeable) -> None:
        """Wake `listener` whenever a notification for `user_id` is queued."""
        listening = self._listeners.get(user_id)
        if listening is None:
            self._listeners[user_id] = listener
        elif isinstance(listening, set):
            listening.add(listener)
        elif listening is not listener:
            self._listeners[user_id] = {listening, listener}

    def ignore(self, user_id: str, listener: Wakeable) -> None:
        """Stop waking `listener`."""
        listening = self._listeners.get(user_id)
        if listening is listener:
            del self._listeners[user_id]
        elif isinstance(listening, set):
            listening.discard(listener)
            if not listening:
                del self._listeners[user_id]

    def start(self) -> None:
        """Subscribe in the background (the task is kept and cancelled by `close`)."""
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read_forever())

    async def wait_subscribed(self) -> None:
        """Return once the subscription is in place (tests and start-up)."""
        await self._subscribed.wait()

    def announce_recovery(self, user_id: str) -> None:
        """A notification for `user_id` could not be queued: have that user's streams catch up from MongoDB.

        Redis answered with a refusal, or not in time, while the subscription stayed up: no stream
        would learn of the notification before it reconnects. The announcement goes to every
        process on RECOVERY_CHANNEL (in a cluster with SPUBLISH), through the batcher
        (announcements made together share a pipeline; a Redis that hangs is not sent a connection
        each); where Redis refuses that too, or no process heard it, only this process's streams
        recover. In the background: the create's answer does not wait for it.
        """
        task = asyncio.ensure_future(self._announce_recovery(user_id))
        self._announcements.add(task)
        task.add_done_callback(self._announcements.discard)

    async def _announce_recovery(self, user_id: str) -> None:
        try:
            if await self._batcher.execute(self._redis.publish_command, RECOVERY_CHANNEL, user_id):
                return  # heard, by this process's subscription too unless it is being replaced
        except StoreUnavailable as error:
            log.debug("recovery of %s's streams not announced (%s): this process's only", user_id, error.__cause__)
        self._recover(user_id)

    async def close(self) -> None:
        """Unsubscribe and stop."""
        for announcement in tuple(self._announcements):
            announcement.cancel()
        if self._reader is not None:
            await stop_task(self._reader, "the wake-up subscription")
            self._reader = None

    def _listening(self, user_id: str) -> tuple[Wakeable, ...]:
        listening = self._listeners.get(user_id)
        if isinstance(listening, set):
            return tuple(listening)
        return () if listening is None else (listening,)

    def _wake(self, user_id: str) -> None:
        for listener in self._listening(user_id):
            listener.wake()

    def _recover(self, user_id: str) -> None:
        for listener in self._listening(user_id):
            listener.recover()

    def _on_message(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        if channel == DELIVERY_CHANNEL_BYTES:
            user_id, flat = json.loads(message["data"])
            delivery = Delivery(list(zip(flat[::2], flat[1::2], strict=True)))
            for listener in self._listening(user_id):
                listener.deliver(delivery)
            if delivery.written:
                self._remove_written(delivery)
        elif channel == RECOVERY_CHANNEL_BYTES:
            self._recover(message["data"].decode())
        else:
            self._wake(message["data"].decode())

    def _remove_written(self, delivery: Delivery) -> None:
        """Remove what the streams wrote from their inboxes in one command, and tell each what its inbox still holds.

        One command and a callback where each stream had a task and two commands of its own: at hundreds of
        creates a second to users with ten tabs, thousands of each a second. The command rides with the next
        pipeline (the next create's queueing, under load): the streams do not wait for it (`Wakeable.deliver`).
        """
        keys = [key for _, key in delivery.written]
        fields = [field for field, _ in delivery.entries]
        removal = self._batcher.execute_with_next([("EVAL", REMOVE_DELIVERED, len(keys), *keys, *fields)])
        removal.add_done_callback(functools.partial(_acknowledge, delivery))

    def _wake_everyone(self) -> None:
        for user_id in tuple(self._listeners):
            self._wake(user_id)

    async def _read_forever(self) -> None:
        while True:
            try:
                await self._redis.read_hints(self._on_subscribed, self._on_message)
            except Exception as error:
                # Anything else is a client's bug met on the way (redis-py's connection losing its
                # writer while a cluster node restarts): ended by it, the hub would wake no stream
                # again and notice no outage, so it subscribes again as after an outage.
                self._subscribed.clear()
                if self._failed_attempts == 0:
                    self.outages += 1
                    if isinstance(error, RedisError | RedisClusterException | OSError):
                        log.warning("Redis unreachable (%s); streams stay open and recover when it is back", error)
                    else:
                        log.error("wake-up subscription failed; subscribing again", exc_info=error)
                delay = RECONNECT_BACKOFF_SECONDS[min(self._failed_attempts, len(RECONNECT_BACKOFF_SECONDS) - 1)]
                self._failed_attempts += 1
                await asyncio.sleep(delay)

    async def _on_subscribed(self) -> None:
        """The subscription is in place: check how Redis evicts, and after an outage have every stream recover."""
        await self._warn_if_evicting()
        if self._failed_attempts:
            # The end of the outage its first failure warned of: information, not a second warning.
            log.info("Redis is back after %d attempts; every stream recovers what it missed", self._failed_attempts)
            # Hints, registrations and queued entries may be lost: let every stream recover.
            self.epoch += 1
            self._wake_everyone()
        self._failed_attempts = 0
        self._subscribed.set()

    async def _warn_if_evicting(self) -> None:
        """Warn if Redis may evict keys: it would drop queued entries and registrations without an error.

        With `noeviction` (or no `maxmemory`), a full Redis refuses the observer's write with OOM and
        the user's streams recover from MongoDB (`announce_recovery`). An evicted entry is instead a
        live delivery lost (MongoDB, the list and a reconnect still have it), and an evicted
        registration one delayed until its renewal notices. Checked each time the subscription is
        made, so a Redis restarted with other settings is noticed.
        """
        try:
            memories = await self._redis.memory_infos()
        except (RedisError, RedisClusterException) as error:  # INFO refused by an ACL, or Redis gone again
            log.debug("Redis's eviction policy not checked (%s)", error)
            return
        evicting = frozenset(
            f"{memory.get('maxmemory_policy')} (maxmemory {memory.get('maxmemory')})"
            for memory in memories
            if memory.get("maxmemory") and memory.get("maxmemory_policy") != "noeviction"
        )
        if evicting and evicting != self._eviction_warned:
            log.warning(
                "Redis may evict keys (maxmemory-policy %s): a notification whose queued entry is evicted "
                "reaches no open stream, and one created while its user's registration is gone arrives "
                "only once the registration's renewal notices (minutes later); set maxmemory-policy noeviction",
                ", ".join(sorted(evicting)),
            )
        self._eviction_warned = evicting


def _acknowledge(delivery: Delivery, removal: asyncio.Future[list[Any]]) -> None:
    """Tell each stream that wrote `delivery` what its inbox holds after the removal (None for each if it failed)."""
    failed = removal.cancelled() or removal.exception() is not None
    left: list[int | None] = [None] * len(delivery.written) if failed else list(removal.result()[0])
    for (stream, _), holding in zip(delivery.written, left, strict=True):
        stream.acknowledged(delivery, holding)
