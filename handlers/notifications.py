"""The notifications API: producers create, users list (the Refresh button) and mark read."""

from __future__ import annotations

from handlers.base import APIError, BaseHandler
from services.notifications import Counts

DEFAULT_LIST_LIMIT = 20


class NotificationsHandler(BaseHandler):
    """`/api/notifications`: create (producers) and list (users)."""

    async def post(self) -> None:
        """Create a notification for `user_id` (needs `X-API-Key`, within its rate limit); 201 with it stored."""
        await self.admit_producer()
        notification = await self.notifications.create(self.get_json_body())
        self.write_json(notification.to_dict(), status=201)

    async def get(self) -> None:
        """The user's notifications newest first: `limit` (1 to 100, default 20), `before` an id to page on,
        `status` (unread, read, archived; without it everything not archived) and `tag`; and the user's counts."""
        user_id = self.current_user_id()
        page = await self.notifications.list_recent(
            user_id,
            self._limit(),
            self.get_query_argument("before", None),
            self.get_query_argument("status", None),
            self.get_query_argument("tag", None),
        )
        self.write_json(
            {
                "notifications": [n.to_dict() for n in page.notifications],
                "unread_count": page.unread_count,
                "unseen_count": page.unseen_count,
                "next_before": page.next_before,
            }
        )

    def _limit(self) -> int:
        raw = self.get_query_argument("limit", str(DEFAULT_LIST_LIMIT))
        try:
            return int(raw)
        except ValueError:
            raise APIError(400, "invalid", "limit must be an integer") from None


class NotificationHandler(BaseHandler):
    """`/api/notifications/<id>`: delete one notification."""

    async def delete(self, notification_id: str) -> None:
        """Delete the user's notification; 204, or 404 if it is not theirs."""
        await self.notifications.delete(self.current_user_id(), notification_id)
        self.set_status(204)
        self.finish()


class MarkReadHandler(BaseHandler):
    """`/api/notifications/<id>/read`: mark one notification read."""

    async def post(self, notification_id: str) -> None:
        """Mark the user's notification read; 200 with it, 404 if it is not theirs."""
        notification = await self.notifications.mark_read(self.current_user_id(), notification_id)
        self.write_json(notification.to_dict())


class ArchiveHandler(BaseHandler):
    """`/api/notifications/<id>/archive`: archive one notification."""

    async def post(self, notification_id: str) -> None:
        """Archive the user's notification; 200 with it, 404 if it is not theirs."""
        notification = await self.notifications.archive(self.current_user_id(), notification_id)
        self.write_json(notification.to_dict())


class UnarchiveHandler(BaseHandler):
    """`/api/notifications/<id>/unarchive`: bring one notification back to the inbox."""

    async def post(self, notification_id: str) -> None:
        """Unarchive the user's notification; 200 with it, 404 if it is not theirs."""
        notification = await self.notifications.unarchive(self.current_user_id(), notification_id)
        self.write_json(notification.to_dict())


class BulkHandler(BaseHandler):
    """A change to every notification of the user that a `status` and `tag` filter shows."""

    def write_bulk(self, updated: int, counts: Counts) -> None:
        """Answer how many changed, and the user's counts after it."""
        self.write_json({"updated": updated, "unread_count": counts.unread, "unseen_count": counts.unseen})

    def bulk_filter(self) -> tuple[str | None, str | None]:
        """The `status` and `tag` query arguments."""
        return self.get_query_argument("status", None), self.get_query_argument("tag", None)


class MarkAllReadHandler(BulkHandler):
    """`/api/notifications/read-all`: mark every notification the filter shows read."""

    async def post(self) -> None:
        """Mark read every unread notification of the user the `status`/`tag` filter shows; how many changed."""
        self.write_bulk(*await self.notifications.mark_all_read(self.current_user_id(), *self.bulk_filter()))


class ArchiveAllHandler(BulkHandler):
    """`/api/notifications/archive-all`: archive every notification the filter shows."""

    async def post(self) -> None:
        """Archive every notification of the user the `status`/`tag` filter shows; how many changed."""
        self.write_bulk(*await self.notifications.archive_all(self.current_user_id(), *self.bulk_filter()))


class MarkAllSeenHandler(BulkHandler):
    """`/api/notifications/seen`: mark every notification of the user seen (the bell's panel was opened)."""

    async def post(self) -> None:
        """Mark every notification of the user seen; how many changed."""
        self.write_bulk(*await self.notifications.mark_all_seen(self.current_user_id()))


default_handlers = [
    (r"/api/notifications", NotificationsHandler),
    (r"/api/notifications/read-all", MarkAllReadHandler),
    (r"/api/notifications/archive-all", ArchiveAllHandler),
    (r"/api/notifications/seen", MarkAllSeenHandler),
    (r"/api/notifications/(?P<notification_id>[^/]+)/read", MarkReadHandler),
    (r"/api/notifications/(?P<notification_id>[^/]+)/archive", ArchiveHandler),
    (r"/api/notifications/(?P<notification_id>[^/]+)/unarchive", UnarchiveHandler),
    (r"/api/notifications/(?P<notification_id>[^/]+)", NotificationHandler),
]
