"""`GET /healthz`: can this process reach MongoDB and Redis?"""

from __future__ import annotations

from handlers.base import BaseHandler


class HealthHandler(BaseHandler):
    """Liveness with the stores: 200 when both answer, 503 naming the one that does not."""

    async def get(self) -> None:
        """`{"status": "ok"|"unavailable", "checks": {"mongodb": ..., "redis": ...}}`."""
        report = await self.health.check()
        status = "ok" if report.healthy else "unavailable"
        self.set_header("Cache-Control", "no-store")
        self.write_json({"status": status, "checks": report.checks}, status=200 if report.healthy else 503)


default_handlers = [(r"/healthz", HealthHandler)]
