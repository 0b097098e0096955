"""The Redis commands of one event-loop iteration, sent together: one round trip for many streams.

Streams issue their scans, registrations and removals, and observers their queueing, through one
`CommandBatcher`; each loop iteration's commands go out in one pipeline, without a transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from services.batching import IterationBatches, await_all
from services.errors import StoreUnavailable
from services.metrics import Metrics
from services.redis_backend import RedisBackend
from services.stores import DEFAULT_STORE_TIMEOUT_SECONDS, redis_unavailable

# The longest a pipeline grows; more commands in one loop iteration go in several.
MAX_PIPELINE_COMMANDS = 2000
# The longest a command that may wait (`execute_with_next`) waits for a pipeline to ride with.
RIDE_WAIT_SECONDS = 0.025


class CommandBatcher:
    """Queues Redis commands and sends those of one loop iteration together, without a transaction.

    Each pipeline is bounded by `timeout` as a whole rather than each reply; the backend runs it
    (`RedisBackend.execute_pipeline`).
    """

    def __init__(
        self, redis: RedisBackend, timeout: float = DEFAULT_STORE_TIMEOUT_SECONDS, metrics: Metrics | None = None
    ) -> None:
        self._redis = redis
        self._timeout = timeout
        self._metrics = metrics
        self._batches: IterationBatches[Sequence[Sequence[Any]], list[Any]] = IterationBatches(self._send_queued)
        # Commands that go with the next pipeline, or on their own once RIDE_WAIT_SECONDS have passed.
        self._riders: list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]] = []
        self._riders_due: asyncio.TimerHandle | None = None

    async def execute(self, *command: Any) -> Any:
        """Run one command in the next pipeline; RedisError becomes StoreUnavailable."""
        return (await self.execute_many([command]))[0]

    def execute_many(self, commands: Sequence[Sequence[Any]]) -> asyncio.Future[list[Any]]:
        """Run several commands, in order, in the next pipeline; the future has their replies."""
        return self._batches.add(commands)

    def execute_with_next(self, commands: Sequence[Sequence[Any]]) -> asyncio.Future[list[Any]]:
        """Run several commands, in order, at the head of the next pipeline that goes anyway, or of their own after
        RIDE_WAIT_SECONDS: for what no caller waits on, such as removing what streams sent, so that under load it
        costs no round trip (nor a wake-up of Redis) of its own."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._riders.append((commands, future))
        if self._riders_due is None:
            self._riders_due = asyncio.get_running_loop().call_later(RIDE_WAIT_SECONDS, self._send_riders)
        return future

    def _send_riders(self) -> None:
        """No pipeline went in time: send the riders on their own."""
        self._riders_due = None
        riders, self._riders = self._riders, []
        for commands, future in riders:
            self._batches.add(commands, future)

    async def _send_queued(self, queued: list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]]) -> None:
        if self._riders:
            # They go first: a removal then counts what is left before this pipeline queues more.
            queued = [*self._riders, *queued]
            self._riders = []
            if self._riders_due is not None:
                self._riders_due.cancel()
                self._riders_due = None
        batches: list[list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]]] = [[]]
        size = 0
        for entry in queued:
            if size >= MAX_PIPELINE_COMMANDS:
                batches.append([])
                size = 0
            batches[-1].append(entry)
            size += len(entry[0])
        await await_all([self._send(batch) for batch in batches])

    async def _send(self, batch: list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]]) -> None:
        if self._metrics is not None:
            self._metrics.redis_pipeline_commands.observe(sum(len(commands) for commands, _ in batch))
        flat = [command for commands, _ in batch for command in commands]
        try:
            async with asyncio.timeout(self._timeout):
                results = await self._redis.execute_pipeline(flat)
        except (RedisError, RedisClusterException, OSError) as error:  # TimeoutError is an OSError
            results = [error] * len(flat)
            if self._metrics is not None:
                self._metrics.store_error("redis")
        position = 0
        for commands, future in batch:
            replies = results[position : position + len(commands)]
            position += len(commands)
            if future.done():
                continue
            failure = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if failure is not None and not redis_unavailable(failure):
                future.set_exception(failure)  # a bug, such as keys of two slots: let it surface
            elif failure is not None:
                unavailable = StoreUnavailable("the delivery cache is unavailable")
                unavailable.__cause__ = failure
                future.set_exception(unavailable)
            else:
                future.set_result(replies)

    async def close(self) -> None:
        """Send what waits to ride, and wait for the pipelines already sent."""
        if self._riders_due is not None:
            self._riders_due.cancel()
            self._send_riders()
        await self._batches.wait_sent()
