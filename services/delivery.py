"""What makes thousands of streams per process cheap: pipelined Redis commands and wake-up hints.

* `CommandBatcher` sends the Redis commands that streams issue during one event-loop
  iteration (scans, registrations, removals) in one pipeline: one round trip for many streams.
* `WakeupHub` holds this process's single pub/sub subscription. The cache observer publishes
  the user id of each new notification; the hub wakes the local streams of that user so they
  scan at once. Idle streams touch no network. Hints only make delivery fast: a stream also
  scans on its own now and then, and after the subscription was lost every stream scans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.errors import StoreUnavailable
from services.metrics import Metrics

log = logging.getLogger("bellcast.delivery")

WAKEUP_CHANNEL = "bellcast:wakeups"
# The longest a pipeline grows; more commands in one loop iteration go in several.
MAX_PIPELINE_COMMANDS = 2000
SUBSCRIPTION_POLL_SECONDS = 1.0
RECONNECT_BACKOFF_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class StreamTiming:
    """How often streams act: heartbeats, and scans with or without wake-up hints."""

    poll_interval: float
    heartbeat_interval: float
    safety_scan_interval: float
    wakeup_hints: bool

    @property
    def tick_interval(self) -> float:
        """A stream's PeriodicCallback period: every poll without hints; with them, only as often as needed."""
        if not self.wakeup_hints:
            return self.poll_interval
        return min(self.heartbeat_interval, self.safety_scan_interval)


class CommandBatcher:
    """Queues Redis commands and sends those of one loop iteration together, without a transaction."""

    def __init__(self, redis: Redis, metrics: Metrics | None = None) -> None:
        self._redis = redis
        self._metrics = metrics
        self._queued: list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]] = []
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()

    async def execute(self, *command: Any) -> Any:
        """Run one command in the next pipeline; RedisError becomes StoreUnavailable."""
        return (await self.execute_many([command]))[0]

    def execute_many(self, commands: Sequence[Sequence[Any]]) -> asyncio.Future[list[Any]]:
        """Run several commands, in order, in the next pipeline; the future has their replies."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queued.append((commands, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, []
        batch: list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]] = []
        size = 0
        for entry in queued:
            batch.append(entry)
            size += len(entry[0])
            if size >= MAX_PIPELINE_COMMANDS:
                self._start(batch)
                batch, size = [], 0
        if batch:
            self._start(batch)

    def _start(self, batch: list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]]) -> None:
        task = asyncio.ensure_future(self._send(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, batch: list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for commands, _ in batch:
                    for command in commands:
                        pipe.execute_command(*command)
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as error:
            results = [error] * sum(len(commands) for commands, _ in batch)
            if self._metrics is not None:
                self._metrics.store_error("redis")
        position = 0
        for commands, future in batch:
            replies = results[position : position + len(commands)]
            position += len(commands)
            if future.done():
                continue
            failure = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if failure is not None:
                unavailable = StoreUnavailable("the delivery cache is unavailable")
                unavailable.__cause__ = failure
                future.set_exception(unavailable)
            else:
                future.set_result(replies)

    async def close(self) -> None:
        """Wait for the pipelines already sent."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)


class Wakeable(Protocol):
    """A stream that can be told its inbox has something."""

    def wake(self) -> None:
        """Scan the inbox soon."""


class WakeupHub:
    """This process's one subscription to wake-up hints, fanned out to its local streams.

    It also notices when Redis goes away and comes back, with or without hints.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._listeners: dict[str, set[Wakeable]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.outages = 0
        # Moves on each time the subscription comes back after a loss: Redis may have restarted
        # or dropped what it queued meanwhile, so streams compare it to know they must recover.
        self.epoch = 0

    def listen(self, user_id: str, listener: Wakeable) -> None:
        """Wake `listener` whenever a notification for `user_id` is queued."""
        self._listeners.setdefault(user_id, set()).add(listener)

    def ignore(self, user_id: str, listener: Wakeable) -> None:
        """Stop waking `listener`."""
        listeners = self._listeners.get(user_id)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[user_id]

    def start(self) -> None:
        """Subscribe in the background (the task is kept and cancelled by `close`)."""
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read_forever())

    async def wait_subscribed(self) -> None:
        """Return once the subscription is in place (tests and start-up)."""
        await self._subscribed.wait()

    async def close(self) -> None:
        """Unsubscribe and stop."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    def _wake(self, user_id: str) -> None:
        for listener in tuple(self._listeners.get(user_id, ())):
            listener.wake()

    def _wake_everyone(self) -> None:
        for listeners in tuple(self._listeners.values()):
            for listener in tuple(listeners):
                listener.wake()

    async def _read_forever(self) -> None:
        attempt = 0
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(WAKEUP_CHANNEL)
                if attempt:
                    log.warning("Redis is back after %d attempts; every stream recovers what it missed", attempt)
                    # Hints, registrations and queued entries may be lost: let every stream recover.
                    self.epoch += 1
                    self._wake_everyone()
                attempt = 0
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=SUBSCRIPTION_POLL_SECONDS)
                    if message is not None and message["type"] == "message":
                        self._wake(message["data"].decode())
            except (RedisError, OSError) as error:
                self._subscribed.clear()
                if attempt == 0:
                    self.outages += 1
                    log.warning("Redis unreachable (%s); streams stay open and recover when it is back", error)
                delay = RECONNECT_BACKOFF_SECONDS[min(attempt, len(RECONNECT_BACKOFF_SECONDS) - 1)]
                attempt += 1
                await asyncio.sleep(delay)
            finally:
                await pubsub.aclose()
