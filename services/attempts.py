"""Wrong guesses of a secret, counted per client address, so that guessing stops being free."""

from __future__ import annotations

import collections
import time


class FailedAttempts:
    """Failures per address within a window; past `limit` of them the address waits until the window ends.

    At most `max_addresses` are remembered (the least recently failing are forgotten first), so a
    flood of addresses costs bounded memory.
    """

    def __init__(self, limit: int = 10, window: float = 60.0, max_addresses: int = 10_000) -> None:
        self._limit = limit
        self._window = window
        self._max_addresses = max_addresses
        # address → (failures in the window, when the window started)
        self._failures: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()

    def wait_for(self, address: str, now: float | None = None) -> float:
        """Seconds `address` must wait before its next try counts; 0 when it may try now."""
        now = time.monotonic() if now is None else now
        count, started = self._failures.get(address, (0, now))
        if now - started >= self._window:
            self._failures.pop(address, None)
            return 0.0
        return self._window - (now - started) if count >= self._limit else 0.0

    def failed(self, address: str, now: float | None = None) -> None:
        """Count a wrong guess from `address`."""
        now = time.monotonic() if now is None else now
        count, started = self._failures.pop(address, (0, now))
        if now - started >= self._window:
            count, started = 0, now
        self._failures[address] = (count + 1, started)
        while len(self._failures) > self._max_addresses:
            self._failures.popitem(last=False)
