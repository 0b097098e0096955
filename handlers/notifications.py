"""The notifications API: producers create; users list (the Refresh button), mark read or seen, archive and delete."""

from __future__ import annotations

from handlers.base import IGNORED_BODY_BYTES, APIError, BaseHandler
from services.idempotency import HEADER as IDEMPOTENCY_HEADER
from services.idempotency import IdempotencyKey, producer_pseudonym
from services.notifications import Counts, validate_create

DEFAULT_LIST_LIMIT = 20
# Says that an answer repeats the first one of its Idempotency-Key.
REPLAYED_HEADER = "Idempotent-Replayed"


class NotificationsHandler(BaseHandler):
    """`/api/notifications`: create (producers) and list (users)."""

    # A create's, set by admit(): the producer's API key, and its Idempotency-Key if it sent one.
    _api_key = ""
    _idempotency_key: IdempotencyKey | None = None

    def body_limit(self) -> int:
        """A create takes up to MAX_BODY_BYTES; the list, none."""
        return self.config.max_body_bytes if self.request.method == "POST" else 0

    async def admit(self) -> None:
        """A create needs the API key and a valid Idempotency-Key if any, checked before its body is read.

        The rate limit waits for the body, which says how many notifications to count: a producer holding
        the key may send one, and its connection stays open for the next request.
        """
        if self.request.method != "POST":
            return
        key = self.request.headers.get("X-API-Key")
        self.authenticator.check_api_key(key)
        assert key is not None
        header = self.request.headers.get(IDEMPOTENCY_HEADER)
        self._idempotency_key = IdempotencyKey.from_header(producer_pseudonym(key), header)
        self._api_key = key

    async def post(self) -> None:
        """Create a notification for `user_id`, 201 with it; or one for each of `user_ids` (1 to 1,000, each
        counted by the rate limit), 201 with `{"notifications": [...]}`. A repeated `Idempotency-Key` answers
        the first request's again (`Idempotent-Replayed: true`), or 409 if that one asked something else."""
        request = validate_create(self.get_json_body())
        await self.producer_rate_limiter.admit(self._api_key, len(request.user_ids))
        created = await self.notifications.create_many(request, self._idempotency_key)
        if created.replayed:
            self.set_header(REPLAYED_HEADER, "true")
        self.write_json(created.to_dict(), status=201)

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


class UserWriteHandler(BaseHandler):
    """A user's write: the token is checked before the body, which is ignored (a JSON `{}` at most)."""

    # Set by admit(): the user of the token.
    _writer = ""

    def body_limit(self) -> int:
        """Room for the `{}` of a client that sends its writes as JSON (as those the cookie authenticates must)."""
        return IGNORED_BODY_BYTES if self.request.method == "POST" else 0

    async def admit(self) -> None:
        """The user's token, before the body."""
        if self.request.method in ("POST", "DELETE"):
            self._writer = self.current_user_id()


class NotificationHandler(UserWriteHandler):
    """`/api/notifications/<id>`: delete one notification."""

    async def delete(self, notification_id: str) -> None:
        """Delete the user's notification; 204, or 404 if it is not theirs."""
        await self.notifications.delete(self._writer, notification_id)
        self.set_status(204)
        self.finish()


class MarkReadHandler(UserWriteHandler):
    """`/api/notifications/<id>/read`: mark one notification read."""

    async def post(self, notification_id: str) -> None:
        """Mark the user's notification read; 200 with it, 404 if it is not theirs."""
        notification = await self.notifications.mark_read(self._writer, notification_id)
        self.write_json(notification.to_dict())


class ArchiveHandler(UserWriteHandler):
    """`/api/notifications/<id>/archive`: archive one notification."""

    async def post(self, notification_id: str) -> None:
        """Archive the user's notification; 200 with it, 404 if it is not theirs."""
        notification = await self.notifications.archive(self._writer, notification_id)
        self.write_json(notification.to_dict())


class UnarchiveHandler(UserWriteHandler):
    """`/api/notifications/<id>/unarchive`: bring one notification back to the inbox."""

    async def post(self, notification_id: str) -> None:
        """Unarchive the user's notification; 200 with it, 404 if it is not theirs."""
        notification = await self.notifications.unarchive(self._writer, notification_id)
        self.write_json(notification.to_dict())


class BulkHandler(UserWriteHandler):
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
        self.write_bulk(*await self.notifications.mark_all_read(self._writer, *self.bulk_filter()))


class ArchiveAllHandler(BulkHandler):
    """`/api/notifications/archive-all`: archive every notification the filter shows."""

    async def post(self) -> None:
        """Archive every notification of the user the `status`/`tag` filter shows; how many changed."""
        self.write_bulk(*await self.notifications.archive_all(self._writer, *self.bulk_filter()))


class MarkAllSeenHandler(BulkHandler):
    """`/api/notifications/seen`: mark every notification of the user seen (the bell's panel was opened)."""

    async def post(self) -> None:
        """Mark every notification of the user seen; how many changed."""
        self.write_bulk(*await self.notifications.mark_all_seen(self._writer))


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
