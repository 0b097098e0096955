"""The notifications API: producers create, users list (the Refresh button) and mark read."""

from __future__ import annotations

from handlers.base import APIError, BaseHandler

DEFAULT_LIST_LIMIT = 20


class NotificationsHandler(BaseHandler):
    """`/api/notifications`: create (producers) and list (users)."""

    async def post(self) -> None:
        """Create a notification for `user_id` (needs `X-API-Key`, within its rate limit); 201 with it stored."""
        await self.admit_producer()
        notification = await self.notifications.create(self.get_json_body())
        self.write_json(notification.to_dict(), status=201)

    async def get(self) -> None:
        """The user's notifications newest first: `limit` (1 to 100, default 20), `before` an id to page on."""
        user_id = self.current_user_id()
        page = await self.notifications.list_recent(user_id, self._limit(), self.get_query_argument("before", None))
        self.write_json(
            {
                "notifications": [n.to_dict() for n in page.notifications],
                "unread_count": page.unread_count,
                "next_before": page.next_before,
            }
        )

    def _limit(self) -> int:
        raw = self.get_query_argument("limit", str(DEFAULT_LIST_LIMIT))
        try:
            return int(raw)
        except ValueError:
            raise APIError(400, "invalid", "limit must be an integer") from None


class MarkReadHandler(BaseHandler):
    """`/api/notifications/<id>/read`: mark one notification read."""

    async def post(self, notification_id: str) -> None:
        """Mark the user's notification read; 200 with it, 404 if it is not theirs."""
        notification = await self.notifications.mark_read(self.current_user_id(), notification_id)
        self.write_json(notification.to_dict())


class MarkAllReadHandler(BaseHandler):
    """`/api/notifications/read-all`: mark every notification of the user read."""

    async def post(self) -> None:
        """Mark all the user's unread notifications read; answers how many changed."""
        updated = await self.notifications.mark_all_read(self.current_user_id())
        self.write_json({"updated": updated})


default_handlers = [
    (r"/api/notifications", NotificationsHandler),
    (r"/api/notifications/read-all", MarkAllReadHandler),
    (r"/api/notifications/(?P<notification_id>[^/]+)/read", MarkReadHandler),
]
