"""User tokens across clocks that disagree: the host app that mints them, and bellcast that checks them."""

from __future__ import annotations

import time

import jwt
import pytest

from services.auth import Authenticator, mint_user_token
from services.errors import Unauthorized

SECRET = "test-secret-" + "x" * 32


def test_a_token_minted_by_a_clock_running_ahead_is_accepted():
    now = time.time()
    token = mint_user_token(SECRET, "alice", 3600, now + 30)
    assert Authenticator(SECRET, "k" * 16).user_id(token) == "alice"


@pytest.mark.parametrize("expired_seconds_ago", [1, 120])
def test_an_expired_token_is_refused_without_leeway(expired_seconds_ago):
    now = int(time.time())
    token = jwt.encode({"sub": "alice", "exp": now - expired_seconds_ago}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="expired"):
        Authenticator(SECRET, "k" * 16).user_id(token)


def test_minted_token_carries_the_user_and_its_lifetime():
    claims = jwt.decode(mint_user_token(SECRET, "alice", 90, 1_000_000.0), options={"verify_signature": False})
    assert claims == {"sub": "alice", "iat": 1_000_000, "exp": 1_000_090}
