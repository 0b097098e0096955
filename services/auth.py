"""Who is asking: users by their signed token, producers by the API key."""

from __future__ import annotations

import hmac
import time
from typing import Any

import jwt

from services.errors import Forbidden, Unauthorized
from services.notifications import is_valid_user_id

USER_TOKEN_ALGORITHM = "HS256"


class Authenticator:
    """Verifies user tokens (HS256 JWTs, user id in `sub`, `exp` required) and the producers' API key.

    With `audience` or `issuer` set, a token must carry that `aud` (one of its values) or `iss`.
    A token that names an audience is refused when no `audience` is set: it was meant for another service.
    """

    def __init__(
        self,
        jwt_secret: str,
        api_key: str,
        audience: str | None = None,
        issuer: str | None = None,
        max_lifetime: float = 0,
    ) -> None:
        """`max_lifetime`: seconds a token may be valid for at most (0: any)."""
        self._jwt_secret = jwt_secret
        self._api_key = api_key.encode()
        self._audience = audience
        self._issuer = issuer
        self._max_lifetime = max_lifetime

    def user_id(self, token: str | None) -> str:
        """The user a token belongs to, or Unauthorized."""
        if not token:
            raise Unauthorized("a user token is required")
        try:
            claims = jwt.decode(
                token,
                self._jwt_secret,
                audience=self._audience,
                issuer=self._issuer,
                algorithms=[USER_TOKEN_ALGORITHM],
                # A host whose clock runs a little ahead mints tokens "issued in the future";
                # `exp` alone bounds a token's life, so `iat` is not checked.
                options={"require": ["exp", "sub"], "verify_iat": False},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("the token is invalid") from None
        if self._max_lifetime and self._lifetime(claims) > self._max_lifetime:
            raise Unauthorized("the token is valid for longer than this server accepts")
        subject = claims["sub"]
        # A `sub` no notification could be created for (a lone surrogate, say) would fail later, in BSON,
        # in a Redis key or in the log's pseudonym: refuse it here, like any other invalid token.
        if not is_valid_user_id(subject):
            raise Unauthorized("the token is invalid")
        return subject

    @staticmethod
    def _lifetime(claims: dict[str, Any]) -> float:
        """From when it was issued, or from now if later (an `iat` in the future must not stretch it), to `exp`."""
        now = time.time()
        issued = claims.get("iat")
        start = min(issued, now) if isinstance(issued, int | float) and not isinstance(issued, bool) else now
        return float(claims["exp"]) - start

    def check_api_key(self, key: str | None) -> None:
        """Unauthorized without a key, Forbidden with a wrong one."""
        if not key:
            raise Unauthorized("an API key is required (header X-API-Key)")
        if not hmac.compare_digest(key.encode(), self._api_key):
            raise Forbidden("the API key is not valid")

    def mint_user_token(self, user_id: str, lifetime_seconds: int, now: float) -> str:
        """A token for `user_id`; for development and tests, production tokens come from the host app."""
        return mint_user_token(self._jwt_secret, user_id, lifetime_seconds, now)


def mint_user_token(jwt_secret: str, user_id: str, lifetime_seconds: int, now: float) -> str:
    """An HS256 token for `user_id` valid `lifetime_seconds` from `now`, as the host app would mint it."""
    claims = {"sub": user_id, "iat": int(now), "exp": int(now) + lifetime_seconds}
    return jwt.encode(claims, jwt_secret, algorithm=USER_TOKEN_ALGORITHM)
