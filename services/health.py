"""Whether bellcast can reach its stores."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.errors import StoreUnavailable

HEALTH_CHECK_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The state of each store: "ok", or why not."""

    checks: dict[str, str]

    @property
    def healthy(self) -> bool:
        """True when every store answered."""
        return all(state == "ok" for state in self.checks.values())


class HealthService:
    """Pings each store within a bound, all at once."""

    def __init__(self, probes: dict[str, Callable[[], Awaitable[None]]]) -> None:
        self._probes = probes

    async def check(self) -> HealthReport:
        """Ask every store; a store that fails or is slower than the bound is reported with the reason."""
        states = await asyncio.gather(*(self._probe(probe) for probe in self._probes.values()))
        return HealthReport(dict(zip(self._probes, states, strict=True)))

    async def _probe(self, probe: Callable[[], Awaitable[None]]) -> str:
        try:
            await asyncio.wait_for(probe(), HEALTH_CHECK_TIMEOUT)
        except TimeoutError:
            return "timed out"
        except StoreUnavailable:
            return "unreachable"
        return "ok"
