"""Expired notifications announced, then deleted: every stream of their users gets a `changed` event of kind
`expired`, and an hour later the notification leaves MongoDB.

Queries leave an expired notification out at once, but nothing happens to a user's open streams at the
moment it expires: this service tells them. One process of the deployment sweeps at a time (a lock in Redis
held for one interval), from where the last sweep stopped (kept in Redis too), so each expiry is announced
once however many processes run, and one that expired while none ran is announced by the next sweep. Each
sweep also deletes a batch of what expired an hour before, and of Idempotency-Key claims past their 24 hours
(`NotificationService.delete_expired`), rather than by TTL indexes (see `services.stores.delete_dated_before`;
a MongoDB keeps those an earlier version made, `ensure_date_index`)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
from urllib.parse import quote

from services.background import stop_task
from services.command_batcher import CommandBatcher
from services.errors import StoreUnavailable
from services.notifications import NotificationService, utc_now

log = logging.getLogger("bellcast.expiry")

SWEEP_INTERVAL_SECONDS = 2.0
# Expiries one sweep announces at most; the next goes on from the last of them.
SWEEP_BATCH = 1000
# Then the database's name: deployments (or test runs) sharing a Redis each sweep their own notifications.
KEY_PREFIX = "bellcast:expiry:"
# A first sweep looks this far back: what expired before is not announced (the streams' counts have caught up).
FIRST_LOOK_BACK = datetime.timedelta(minutes=1)


class ExpirySweeper:
    """Every SWEEP_INTERVAL_SECONDS, if this process holds the deployment's lock, announce what expired since, and
    delete what has had its time."""

    def __init__(
        self, notifications: NotificationService, batcher: CommandBatcher, interval: float = SWEEP_INTERVAL_SECONDS
    ) -> None:
        self._notifications = notifications
        self._batcher = batcher
        self._interval = interval
        self._token = secrets.token_hex(8)
        database = quote(notifications.database_name, safe="")
        self._lock_key = f"{KEY_PREFIX}{database}:lock"
        self._swept_until_key = f"{KEY_PREFIX}{database}:swept-until"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sweep in the background (the task is kept and cancelled by `close`)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._sweep_forever())

    async def close(self) -> None:
        """Stop sweeping."""
        if self._task is not None:
            await stop_task(self._task, "the expiry sweep")
            self._task = None

    async def sweep(self) -> int:
        """Announce what expired since the last sweep, then delete a batch of what has had its time, if no other
        process sweeps now; how many were announced."""
        lock_ms = max(1, round(self._interval * 1000))
        [locked, swept_until] = await self._batcher.execute_many(
            [("SET", self._lock_key, self._token, "NX", "PX", lock_ms), ("GET", self._swept_until_key)]
        )
        if not locked:
            return 0
        now = utc_now()
        since = now - FIRST_LOOK_BACK if swept_until is None else _from_milliseconds(int(swept_until))
        expired = await self._notifications.expired_between(since, now, SWEEP_BATCH)
        until = now
        if len(expired) == SWEEP_BATCH and (last := expired[-1].expires_at) is not None:
            # More may have expired in the last one's millisecond: the next sweep takes that millisecond again
            # (announcing one twice does no harm; missing one would leave a badge wrong).
            until = last - datetime.timedelta(milliseconds=1)
        by_user: dict[str, list[str]] = {}
        for notification in expired:
            by_user.setdefault(notification.user_id, []).append(str(notification.id))
        for user_id, ids in by_user.items():
            await self._notifications.publish_change(user_id, "expired", tuple(ids))
        await self._batcher.execute("SET", self._swept_until_key, _milliseconds(until))
        await self._notifications.delete_expired(now, until)
        return len(expired)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except StoreUnavailable:
                log.debug("expiry sweep postponed: a store is unavailable")
            except Exception:  # a sweep is worth less than the sweeper: keep going
                log.exception("expiry sweep failed")


def _milliseconds(moment: datetime.datetime) -> int:
    return round(moment.timestamp() * 1000)


def _from_milliseconds(milliseconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(milliseconds / 1000, datetime.UTC)
