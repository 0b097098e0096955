"""Stream tickets: short-lived, single-use credentials that open one event stream, so that no user token
travels in a URL.

`EventSource` cannot send headers, so a stream's credential rides in its URL, where proxies, browser
histories and referrers may keep it. A ticket is what rides there instead: the bell mints it with
the user's token in a header (`POST /notifications/stream-ticket`), and the stream redeems it once.
It is valid `STREAM_TICKET_TTL` seconds (30 by default) and opens one stream of the user it was
minted for; a second use, an expired or an unknown ticket is refused alike.

Tickets live in Redis, so that one minted by any process or node is redeemed by any other:

* ``bellcast:ticket:<SHA-256 of the ticket>`` — the user id, expiring with the ticket. Only the
  digest is stored: whoever reads Redis cannot open a stream with what they find there.
* ``bellcast:{u:<user>}:tickets`` — how many tickets the user minted in the current window of
  `STREAM_TICKET_TTL` seconds: at most `MAX_TICKETS_PER_USER` live at once, so that a token
  holder cannot fill Redis with them.

Redeeming reads and deletes the ticket in one script, so that of two requests racing with one
ticket, one opens a stream and the other is refused.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets

from services.cache import KEY_PREFIX, user_tag
from services.command_batcher import CommandBatcher
from services.errors import RateLimited, Unauthorized

TICKET_KEY_PREFIX = f"{KEY_PREFIX}:ticket:"
# 32 random bytes: 43 characters of base64url, unguessable.
TICKET_BYTES = 32
_TICKET_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")
# Tickets one user may mint per STREAM_TICKET_TTL window: far more than the streams a user opens
# (MAX_STREAMS_PER_USER, 20 by default), even when each reconnects a few times in the window.
MAX_TICKETS_PER_USER = 100
# One answer for every refused ticket: it tells no one whether a ticket ever existed.
REFUSED = "the stream ticket is unknown, expired or already used"

# GET and DEL in one step: a ticket redeemed twice at once opens one stream. (GETDEL does the same
# from Redis 6.2 on; a script works on any Redis, and in a cluster, with its one key declared.)
REDEEM = """
local user = redis.call('GET', KEYS[1])
if user then redis.call('DEL', KEYS[1]) end
return user
"""


def ticket_key(ticket: str) -> str:
    """The Redis key of a ticket: its digest, never the ticket itself."""
    return TICKET_KEY_PREFIX + hashlib.sha256(ticket.encode()).hexdigest()


def tickets_count_key(user_id: str) -> str:
    """The counter of the tickets a user minted in the current window; in the user's hash slot."""
    return f"{KEY_PREFIX}:{user_tag(user_id)}:tickets"


class StreamTickets:
    """Mints tickets for users and redeems each once, in Redis, through the command batcher."""

    def __init__(self, batcher: CommandBatcher, ttl: float) -> None:
        """`ttl`: seconds a ticket stays valid."""
        self._batcher = batcher
        self._ttl_milliseconds = max(1, round(ttl * 1000))
        self.ttl = ttl

    async def mint(self, user_id: str) -> str:
        """A new ticket for one stream of `user_id`; RateLimited past MAX_TICKETS_PER_USER in a window,
        StoreUnavailable when Redis does not answer."""
        counter = tickets_count_key(user_id)
        ticket = secrets.token_urlsafe(TICKET_BYTES)
        key = ticket_key(ticket)
        # One round trip: count, and store the ticket as if within the limit (it is deleted below if not).
        _, minted, remaining_ms, _ = await self._batcher.execute_many(
            [
                ("SET", counter, 0, "PX", self._ttl_milliseconds, "NX"),
                ("INCR", counter),
                ("PTTL", counter),
                ("SET", key, user_id, "PX", self._ttl_milliseconds),
            ]
        )
        if int(remaining_ms) < 0:
            # The window ended between SET and INCR, and INCR made a counter without a TTL, which would
            # count for good: give it one.
            await self._batcher.execute("PEXPIRE", counter, self._ttl_milliseconds)
            remaining_ms = self._ttl_milliseconds
        if int(minted) > MAX_TICKETS_PER_USER:
            # Never handed out, so never usable; deleted all the same, so that refused mints take no memory.
            await self._batcher.execute("DEL", key)
            raise RateLimited(
                f"at most {MAX_TICKETS_PER_USER} stream tickets per {self.ttl:g} s for one user",
                retry_after=max(1, math.ceil(int(remaining_ms) / 1000)),
            )
        return ticket

    async def redeem(self, ticket: str) -> str:
        """The user `ticket` was minted for, which it no longer opens anything for; Unauthorized if it is
        malformed, unknown, expired or used, StoreUnavailable when Redis does not answer."""
        if not _TICKET_SHAPE.match(ticket):
            raise Unauthorized(REFUSED)
        # The batcher may send a command twice when Redis closed its connection: a redeem sent twice finds
        # the ticket gone the second time, and refuses it. Never the other way round: no ticket opens two.
        user_id = await self._batcher.execute("EVAL", REDEEM, 1, ticket_key(ticket))
        if user_id is None:
            raise Unauthorized(REFUSED)
        return bytes(user_id).decode()
