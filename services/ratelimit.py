"""How often producers may create notifications: a counter per API key in Redis, shared by every process.

Each key gets a fixed window that starts with its first request: one Redis key,
``bellcast:rate:<digest of the API key>``, holds the count of notifications and expires with the window.
One transaction (SET NX PX, INCRBY, PTTL) counts and tells how long the window still runs, so every
process and node sharing the Redis counts against the same number, and no clock but Redis's decides
when a window ends. The API key itself is never stored.

A process does not count each request in Redis: it takes a share of the window's allowance at a time
(`share`: 1 % of it, at least one notification) and admits requests from that share until it is spent,
so that a create costs no Redis round trip of its own. Together the processes never admit more than the
allowance; a key can be refused while other processes still hold the unspent rest of their shares
(at most one share each, less one), and a share not spent by the window's end is lost with it.

When Redis cannot be reached, requests are let through (fail open) and that is logged once
per outage: MongoDB still stores what producers send, and refusing them would turn a cache
outage into lost notifications. A pool with every connection in use is no outage: that
request answers 503, so that no load can switch the limit off.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass

from redis.exceptions import MaxConnectionsError, RedisClusterException, RedisError

from services.errors import RateLimited, StoreUnavailable
from services.logs import OutageLog
from services.redis_backend import RedisBackend
from services.stores import redis_unavailable

log = logging.getLogger("bellcast.ratelimit")

KEY_PREFIX = "bellcast:rate:"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`requests_per_second` on average over windows of `window_seconds`; 0 requests per second is no limit."""

    requests_per_second: float
    window_seconds: float

    @property
    def enabled(self) -> bool:
        """False when the limit is turned off."""
        return self.requests_per_second > 0

    @property
    def allowance(self) -> int:
        """How many requests one window admits: also the largest burst."""
        return max(1, math.floor(self.requests_per_second * self.window_seconds))

    @property
    def window_milliseconds(self) -> int:
        """The window's length as Redis takes it."""
        return max(1, round(self.window_seconds * 1000))

    @property
    def share(self) -> int:
        """How much of a window's allowance a process takes from Redis at a time."""
        return max(1, self.allowance // 100)


class _Share:
    """What a process holds of one key's window: notifications it may still admit, until the window ends."""

    __slots__ = ("left", "taking", "unreachable_at", "window_ends")

    def __init__(self) -> None:
        self.left = 0
        self.window_ends = 0.0  # time.monotonic()
        # One process takes from Redis once at a time per key: requests meanwhile wait for that share.
        self.taking: asyncio.Lock = asyncio.Lock()
        # When a take last found Redis unreachable: the requests that waited for it fail open with it.
        self.unreachable_at = float("-inf")


def _spend(share: _Share, notifications: int) -> bool:
    """Take `notifications` from what the process holds, if it holds enough."""
    if share.left < notifications:
        return False
    share.left -= notifications
    return True


def rate_key(api_key: str) -> str:
    """The Redis key counting one API key's requests: a digest, so the key itself never reaches Redis."""
    digest = hashlib.sha256(b"bellcast producer rate\0" + api_key.encode()).hexdigest()[:32]
    return KEY_PREFIX + digest


class ProducerRateLimiter:
    """Counts each API key's requests in Redis and refuses those past the window's allowance."""

    def __init__(self, redis: RedisBackend, limit: RateLimit) -> None:
        self._redis = redis.client
        self._transactions = redis.transactions
        self._limit = limit
        self._outage = OutageLog(log, "producer rate limit", recovered="enforced again: Redis is back")
        # By the key's Redis key: only keys that passed authentication get here, so the dict stays small.
        self._shares: dict[str, _Share] = {}
        self.refused = 0

    async def admit(self, api_key: str, notifications: int = 1) -> None:
        """Count `notifications` of `api_key`; past the allowance RateLimited, with the seconds the window has left."""
        if not self._limit.enabled:
            return
        key = rate_key(api_key)
        share = self._shares.get(key)
        if share is None:
            share = self._shares[key] = _Share()
        if not self._admitted_from(share, notifications):
            waited_since = time.monotonic()
            async with share.taking:
                if self._admitted_from(share, notifications) or share.unreachable_at >= waited_since:
                    return  # from the share taken meanwhile; or Redis did not answer that take, and all fail open
                if not await self._take(key, share, notifications):
                    self.refused += 1
                    raise RateLimited(
                        f"at most {self._limit.allowance} notifications per {self._limit.window_seconds:g} s "
                        "for this key",
                        retry_after=max(1, math.ceil(share.window_ends - time.monotonic())),
                    )

    @staticmethod
    def _admitted_from(share: _Share, notifications: int) -> bool:
        """Admit from what the process holds of the window, if the window runs and it holds enough."""
        return time.monotonic() < share.window_ends and _spend(share, notifications)

    async def _take(self, key: str, share: _Share, notifications: int) -> bool:
        """Take a share of the window's allowance from Redis, enough for `notifications`; whether they are admitted.

        Admitted, too, when Redis cannot be reached: the limit fails open (logged once per outage)."""
        if time.monotonic() >= share.window_ends:
            share.left = 0  # what was left of a window that ended
        wanted = max(self._limit.share, notifications - share.left)
        try:
            count, remaining_ms = await self._count(key, wanted)
        except (RedisError, RedisClusterException, OSError) as error:
            if not redis_unavailable(error):
                raise
            if isinstance(error, MaxConnectionsError) or isinstance(error.__cause__, MaxConnectionsError):
                raise StoreUnavailable("every connection to Redis is in use; try again") from error
            self._outage.failed("not enforced while Redis is unreachable (%s)", error)
            share.unreachable_at = time.monotonic()
            return True
        self._outage.succeeded()
        now = time.monotonic()
        if now >= share.window_ends or count <= wanted:
            share.left = 0  # a new window: what was held belonged to the last one
        share.window_ends = now + remaining_ms / 1000
        # What this count may admit: all it took, unless it went past the allowance. Counted in the window Redis had,
        # the request is admitted even if that window ends as the answer comes (PTTL 0).
        share.left += max(0, min(wanted, self._limit.allowance - (count - wanted)))
        return _spend(share, notifications)

    async def _count(self, key: str, notifications: int) -> tuple[int, int]:
        """Count notifications in the key's window, opening one if none runs: (count so far, milliseconds left)."""
        window_ms = self._limit.window_milliseconds
        # One key, so one slot: a transaction on a single Redis; a cluster pipeline without one, where a
        # counter that loses its TTL in between gets it back below.
        async with self._redis.pipeline(transaction=self._transactions) as pipe:
            pipe.set(key, 0, px=window_ms, nx=True)
            pipe.incrby(key, notifications)
            pipe.pttl(key)
            _, count, remaining_ms = await pipe.execute()
        if remaining_ms < 0:
            # A counter without a TTL (made by hand, say) would refuse the key for good: give it one.
            await self._redis.pexpire(key, window_ms)
            remaining_ms = window_ms
        return int(count), int(remaining_ms)
