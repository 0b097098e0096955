"""Whether bellcast can reach its stores."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.errors import StoreUnavailable
from services.metrics import Metrics

HEALTH_CHECK_TIMEOUT = 2.0
# Readiness asks more of the stores than liveness: a load balancer should route elsewhere sooner.
READINESS_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The state of each store: "ok", or why not."""

    checks: dict[str, str]

    @property
    def healthy(self) -> bool:
        """True when every store answered."""
        return all(state == "ok" for state in self.checks.values())


class HealthService:
    """Pings each store within a bound, all at once; knows when the process is shutting down."""

    def __init__(self, probes: dict[str, Callable[[], Awaitable[None]]], metrics: Metrics | None = None) -> None:
        self._probes = probes
        self._metrics = metrics
        self.shutting_down = False
        # The probe of each store under way: concurrent checks share it, so that no number of health
        # checks takes more than one of a store's connections, nor makes a busy store look down.
        self._under_way: dict[str, asyncio.Task[str]] = {}

    def begin_shutdown(self) -> None:
        """From now on the process is not ready: load balancers should send new clients elsewhere."""
        self.shutting_down = True

    async def check(self, within: float = HEALTH_CHECK_TIMEOUT) -> HealthReport:
        """Ask every store; a store that fails or is slower than `within` seconds is reported with the reason."""
        states = await asyncio.gather(*(self._state(store, within) for store in self._probes))
        return HealthReport(dict(zip(self._probes, states, strict=True)))

    async def close(self) -> None:
        """Cancel the probes under way."""
        for probe in list(self._under_way.values()):
            probe.cancel()
        await asyncio.gather(*self._under_way.values(), return_exceptions=True)

    async def _state(self, store: str, within: float) -> str:
        probe = self._under_way.get(store)
        if probe is None:
            probe = self._under_way[store] = asyncio.ensure_future(self._probe(store))
            probe.add_done_callback(lambda done: self._forget(store, done))
        try:
            return await asyncio.wait_for(asyncio.shield(probe), within)
        except TimeoutError:
            return "timed out"

    def _forget(self, store: str, probe: asyncio.Task[str]) -> None:
        if self._under_way.get(store) is probe:
            del self._under_way[store]

    async def _probe(self, store: str) -> str:
        try:
            await asyncio.wait_for(self._probes[store](), HEALTH_CHECK_TIMEOUT)
        except TimeoutError:
            # The probe was cancelled before it could fail and count itself.
            if self._metrics is not None:
                self._metrics.store_error(store)
            return "timed out"
        except StoreUnavailable:
            return "unreachable"
        return "ok"
