"""Development only, when `make run` generated the secrets: what the demo page needs to be tried alone.

A host app mints its users' tokens and producers hold the API key; in development these two routes
stand in for them. Neither exists when JWT_SECRET or API_KEY is configured.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from handlers.base import APIError, BaseHandler
from handlers.proxy import is_trusted
from services.notifications import MAX_USER_ID_LENGTH

DEMO_USER_ID = "demo"
DEMO_TOKEN_LIFETIME_SECONDS = 3600
# `{"user_id": ...}`: 200 characters, each escaped as \uXXXX at worst.
TOKEN_REQUEST_BYTES = 4096


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def is_loopback(host: str) -> bool:
    """True for `localhost` and for loopback addresses (127.0.0.0/8, ::1, IPv4-mapped too), bracketed or not."""
    return host == "localhost" or is_trusted(host.strip("[]"), LOOPBACK)


class DevelopmentHandler(BaseHandler):
    """Development routes take JSON only, so a page of another origin cannot post to them without CORS.

    They answer only a client on this machine that names it: its address is loopback (so HOST=0.0.0.0,
    or a proxy forwarding another machine's request, does not mint tokens for the network), and so is
    the Host it asked for (so a page whose own name was rebound to 127.0.0.1 cannot reach them).
    """

    async def admit(self) -> None:
        """403 unless both the client's address and the requested Host are loopback; before any body is read."""
        if not (is_loopback(self.request.remote_ip or "") and is_loopback(self.request.host_name)):
            raise APIError(403, "forbidden", "development routes answer only on this machine, at localhost")

    def body_limit(self) -> int:
        """What a create takes: `MAX_BODY_BYTES`."""
        return self.config.max_body_bytes

    def json_object(self) -> dict[str, Any]:
        """The JSON object body; 415 unless sent as application/json."""
        if self.request.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            raise APIError(415, "unsupported_media_type", "send the body as application/json")
        body = self.get_json_body()
        if not isinstance(body, dict):
            raise APIError(400, "invalid", "the body must be a JSON object")
        return body


class DemoTokenHandler(DevelopmentHandler):
    """`/dev/token`: a host app's token endpoint, for the demo."""

    def body_limit(self) -> int:
        """A user id, no more."""
        return TOKEN_REQUEST_BYTES

    def post(self) -> None:
        """A token for `user_id` (default "demo"), valid an hour: `{"token", "user_id", "expires_in"}`."""
        user_id = self.json_object().get("user_id", DEMO_USER_ID)
        if not isinstance(user_id, str) or not 1 <= len(user_id) <= MAX_USER_ID_LENGTH:
            raise APIError(400, "invalid", f"user_id must be a string of 1 to {MAX_USER_ID_LENGTH} characters")
        token = self.authenticator.mint_user_token(user_id, DEMO_TOKEN_LIFETIME_SECONDS, time.time())
        self.set_header("Cache-Control", "no-store")
        self.write_json({"token": token, "user_id": user_id, "expires_in": DEMO_TOKEN_LIFETIME_SECONDS})


class SendTestNotificationHandler(DevelopmentHandler):
    """`/dev/notifications`: the demo page's "send a test notification" form."""

    async def post(self) -> None:
        """Create a notification as a producer would (user "demo" unless `user_id` is given); 201 with it."""
        notification = await self.notifications.create({"user_id": DEMO_USER_ID, **self.json_object()})
        self.write_json(notification.to_dict(), status=201)


default_handlers = [
    (r"/dev/token", DemoTokenHandler),
    (r"/dev/notifications", SendTestNotificationHandler),
]
