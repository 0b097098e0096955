"""`GET /healthz` and `GET /readyz`: can this process reach MongoDB and Redis, and should it get new clients?"""

from __future__ import annotations

from handlers.base import BaseHandler
from services.health import READINESS_TIMEOUT


class HealthHandler(BaseHandler):
    """Liveness with the stores: 200 when both answer, 503 naming the one that does not."""

    quiet_access_log = True

    async def get(self) -> None:
        """`{"status": "ok"|"unavailable", "checks": {"mongodb": ..., "redis": ...}}`."""
        report = await self.health.check()
        status = "ok" if report.healthy else "unavailable"
        self.set_header("Cache-Control", "no-store")
        self.write_json({"status": status, "checks": report.checks}, status=200 if report.healthy else 503)


class ReadinessHandler(BaseHandler):
    """Readiness: 200 when both stores answer within a second; 503 when one does not, or once shutdown began."""

    quiet_access_log = True

    async def get(self) -> None:
        """`{"status": "ready"|"unavailable"|"shutting_down", "checks": {...}}`; shutdown answers at once."""
        self.set_header("Cache-Control", "no-store")
        if self.health.shutting_down:
            self.write_json({"status": "shutting_down", "checks": {}}, status=503)
            return
        report = await self.health.check(within=READINESS_TIMEOUT)
        status = "ready" if report.healthy else "unavailable"
        self.write_json({"status": status, "checks": report.checks}, status=200 if report.healthy else 503)


default_handlers = [(r"/healthz", HealthHandler), (r"/readyz", ReadinessHandler)]
