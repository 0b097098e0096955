"""The registry of this process's open streams: one sweep heartbeats them, drops the stalled, batches safety scans."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.background import stop_task
from services.cache import ConnectionInbox
from services.errors import StoreUnavailable
from services.metrics import Metrics


@dataclass(frozen=True)
class StreamLimits:
    """How many streams a process and a user may hold, how long a client may leave a write unread, and how
    many notifications a stream replays on reconnect before it asks the client to reload instead."""

    max_streams: int
    max_streams_per_user: int
    write_timeout: float
    max_replay: int


class OpenStream(Protocol):
    """A stream as the registry sees it: shutdown ends it, the sweep keeps it alive or drops it."""

    def end(self) -> None:
        """Tell the client to reconnect later, then close."""

    def stalled_since(self) -> float | None:
        """When the write under way began (time.monotonic()), if one is."""

    @property
    def last_write(self) -> float:
        """When the last write completed (time.monotonic())."""

    def drop(self) -> None:
        """Close the connection now; the client reconnects and catches up."""

    def heartbeat(self, now: float) -> None:
        """Send a heartbeat, unless the stream has ended."""

    def wake(self) -> None:
        """Scan the inbox now."""

    @property
    def inbox(self) -> ConnectionInbox | None:
        """The stream's inbox, once it is registered."""


class InboxScanner(Protocol):
    """Tells which inboxes hold entries, many in one round trip."""

    async def safety_scan(self, inboxes: Sequence[ConnectionInbox]) -> list[bool]:
        """For each inbox, whether it holds entries; renews the registrations due on the way."""


# How many closed streams release their registration per loop iteration. Thousands of clients that
# leave at once (a proxy restarting, a network cut) each deregister and write an access line, which
# done in one iteration would stall the event loop for every other stream.
RELEASES_PER_ITERATION = 100

# The sweep runs every SWEEP_PERIOD, and at least SWEEPS_PER_HEARTBEAT times per heartbeat interval
# (short intervals, in tests).
SWEEP_PERIOD = 1.0
SWEEPS_PER_HEARTBEAT = 3


class StreamRegistry:
    """The open streams of this process: one sweep sends their heartbeats and drops stalled clients.

    One process-wide timer instead of a timer per stream: at thousands of idle streams the
    heartbeats are most of the work, and batching them into one loop iteration a second keeps
    the event loop from waking for each. Each stream waits in the sweep's bucket of the moment
    it next owes something (a heartbeat, or the end of its write timeout), so a sweep looks at
    the streams due and at no other: an idle stream costs one visit per heartbeat.
    """

    def __init__(
        self,
        heartbeat_interval: float,
        write_timeout: float,
        scanner: InboxScanner,
        metrics: Metrics | None = None,
    ) -> None:
        self._scanner = scanner
        self._metrics = metrics
        self._safety_scans: set[asyncio.Task[None]] = set()
        # Set while no stream is open and none is releasing: shutdown closes the stores only then.
        self._all_released = asyncio.Event()
        self._all_released.set()
        self._releases_under_way = 0
        self._heartbeat_interval = heartbeat_interval
        self._write_timeout = write_timeout
        self._period = min(SWEEP_PERIOD, heartbeat_interval / SWEEPS_PER_HEARTBEAT)
        # Each open stream and the sweep (a count of periods) that next visits it; the streams by that
        # sweep. A closed stream leaves both at once: nothing here holds it, to be freed later in bulk.
        self._visit_of: dict[OpenStream, int] = {}
        self._visits: dict[int, set[OpenStream]] = {}
        self._swept = self._sweep_number(time.monotonic())
        self._sweeper: asyncio.Task[None] | None = None
        self._scans_due: list[OpenStream] = []
        self._releases_left = RELEASES_PER_ITERATION
        self._waiting_to_release: collections.deque[asyncio.Future[None]] = collections.deque()
        self._releases_renewed = False
        self._ending = False
        # Places held for streams still registering, so that streams opened together cannot pass the limit.
        self._reserved = 0

    @contextlib.contextmanager
    def place(self, max_streams: int) -> Iterator[bool]:
        """Hold one of `max_streams` places while a stream opens: True if one was free (then `add` the stream
        within), False if every place is taken or held by a stream still opening."""
        if len(self._visit_of) + self._reserved >= max_streams:
            yield False
            return
        self._reserved += 1
        try:
            yield True
        finally:
            self._reserved -= 1

    def add(self, stream: OpenStream) -> None:
        """Track an opened stream; its first heartbeat is due a heartbeat interval from now.

        Once shutdown has begun (`end_all`), the stream is told to end at once: it was registering
        when the others were told, or its request came on a connection accepted before.
        """
        self._schedule(stream, time.monotonic() + self._heartbeat_interval)
        self._all_released.clear()
        if self._metrics is not None:
            self._metrics.streams_opened.inc()
            self._metrics.streams_open.inc()
        if self._ending:
            stream.end()

    def discard(self, stream: OpenStream) -> None:
        """Forget a closed stream that holds nothing to release (else `releasing`)."""
        visit = self._visit_of.pop(stream, None)
        if visit is None:
            return
        if (waiting := self._visits.get(visit)) is not None:
            waiting.discard(stream)
        if self._metrics is not None:
            self._metrics.streams_closed.inc()
            self._metrics.streams_open.dec()
        self._note_if_all_released()

    @contextlib.asynccontextmanager
    async def releasing(self, stream: OpenStream) -> AsyncIterator[None]:
        """Forget a closed stream, and enter once it may release what it holds (its registration).

        At most RELEASES_PER_ITERATION enter per loop iteration, in the order they came, so that a
        mass disconnect does not stall the other streams. The stream counts as releasing from the
        moment it is forgotten until it leaves, so `wait_until_all_released` waits for it.
        """
        # Counted before it is forgotten: the registry must not look released in between.
        self._releases_under_way += 1
        self.discard(stream)
        try:
            await self._release_turn()
            yield
        finally:
            self._releases_under_way -= 1
            self._note_if_all_released()

    def _note_if_all_released(self) -> None:
        if not self._visit_of and not self._releases_under_way:
            self._all_released.set()

    async def _release_turn(self) -> None:
        """Return in the stream's turn: at once, unless this iteration's allowance is spent or others wait."""
        if self._releases_left > 0 and not self._waiting_to_release:
            self._releases_left -= 1
            self._renew_releases_soon()
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting_to_release.append(turn)
        self._renew_releases_soon()
        await turn

    def _renew_releases_soon(self) -> None:
        if not self._releases_renewed:
            self._releases_renewed = True
            asyncio.get_running_loop().call_soon(self._renew_releases)

    def _renew_releases(self) -> None:
        """Once per loop iteration while closes come: a new allowance, first for those waiting."""
        self._releases_renewed = False
        self._releases_left = RELEASES_PER_ITERATION
        while self._waiting_to_release and self._releases_left > 0:
            turn = self._waiting_to_release.popleft()
            if not turn.done():  # else its stream's task was cancelled meanwhile
                turn.set_result(None)
                self._releases_left -= 1
        if self._waiting_to_release or self._releases_left < RELEASES_PER_ITERATION:
            self._renew_releases_soon()

    def __len__(self) -> int:
        return len(self._visit_of)

    def __iter__(self) -> Iterator[OpenStream]:
        return iter(list(self._visit_of))

    def count_slow_client(self) -> None:
        """Count a stream closed because its client left a write unread or unacknowledged for the write timeout."""
        if self._metrics is not None:
            self._metrics.slow_clients_dropped.inc()

    async def wait_until_all_released(self) -> None:
        """Return once no stream is open and none is still releasing what it held."""
        await self._all_released.wait()

    def end_all(self) -> None:
        """Ask every open stream, and any opened from now on, to end; each releases what it holds when it has
        (`releasing`)."""
        self._ending = True
        for stream in list(self._visit_of):
            stream.end()

    def start(self) -> None:
        """Start the sweep (the task is kept and cancelled by `close`)."""
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def close(self) -> None:
        """Stop the sweep and the safety scans under way."""
        for scan in list(self._safety_scans):
            scan.cancel()
        await asyncio.gather(*self._safety_scans, return_exceptions=True)
        if self._sweeper is not None:
            await stop_task(self._sweeper, "the streams' sweep")
            self._sweeper = None

    def scan_soon(self, stream: OpenStream) -> None:
        """Have `stream`'s inbox looked at by the next sweep, together with the others due by then."""
        self._scans_due.append(stream)

    async def _safety_scan(self, due: list[OpenStream]) -> None:
        """Ask Redis about all the due inboxes at once; wake the streams whose inbox holds entries."""
        registered = [(stream, inbox) for stream in due if (inbox := stream.inbox) is not None]
        try:
            found = await self._scanner.safety_scan([inbox for _, inbox in registered])
        except StoreUnavailable:
            found = [True] * len(registered)  # each stream's own scan meets the outage and backs off
        else:
            if self._metrics is not None:
                unregistered = sum(inbox.registration_lost for _, inbox in registered)
                holding = sum(found) - unregistered
                self._metrics.safety_scans_unregistered.inc(unregistered)
                self._metrics.safety_scans_found.inc(holding)
                self._metrics.safety_scans_empty.inc(len(found) - holding - unregistered)
        for (stream, _), holds_entries in zip(registered, found, strict=True):
            if holds_entries:
                stream.wake()

    def sweep(self, now: float) -> None:
        """Start the scans due, and visit the streams due: heartbeat the silent, drop the stalled."""
        if self._scans_due:
            due, self._scans_due = self._scans_due, []
            scan = asyncio.ensure_future(self._safety_scan(due))
            self._safety_scans.add(scan)
            scan.add_done_callback(self._safety_scans.discard)
        swept = self._swept = max(self._swept, self._sweep_number(now))
        for number in sorted(number for number in self._visits if number <= swept):
            for stream in self._visits.pop(number):
                next_visit = self._visit(stream, now)
                if stream in self._visit_of:  # else it was discarded on the way
                    self._schedule(stream, next_visit)

    def _visit(self, stream: OpenStream, now: float) -> float:
        """Heartbeat or drop `stream` if due; when it will next be due."""
        started = stream.stalled_since()
        if started is not None:
            if now - started > self._write_timeout:
                self.count_slow_client()
                stream.drop()
                return now + self._write_timeout  # it discards itself meanwhile
            return started + self._write_timeout + self._period  # the first sweep past the timeout
        heartbeat_due = stream.last_write + self._heartbeat_interval
        if now >= heartbeat_due - self._period / 2:
            stream.heartbeat(now)
            return now + self._heartbeat_interval
        return heartbeat_due

    def _schedule(self, stream: OpenStream, when: float) -> None:
        # The sweep of the period `when` falls in, never one already made: sweeps keep their phase, so a
        # stream comes back on time after a heartbeat, and otherwise within a period of `when`.
        number = max(self._swept + 1, self._sweep_number(when))
        self._visit_of[stream] = number
        if (waiting := self._visits.get(number)) is None:
            waiting = self._visits[number] = set()
        waiting.add(stream)

    def _sweep_number(self, now: float) -> int:
        return math.floor(now / self._period)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            self.sweep(time.monotonic())
