"""User tokens: not-yet-valid, audience and issuer, algorithm confusion; and no token ever reaches a log."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import replace
from typing import Any

import jwt
import pytest

from tests.support import b64url

ENDPOINTS = [
    ("GET", "/api/notifications"),
    ("POST", "/api/notifications/read-all"),
    ("POST", "/api/notifications/0123456789abcdef01234567/read"),
]

# Signed with throwaway keys (openssl genrsa 2048; openssl ecparam prime256v1) for {"sub": "alice", "exp": 2100}.
RS256_TOKEN = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0."
    "VVAw4XHcSPEeJdoc5MEjmdcGUqLE6TGJBlG_sQPEwQZHW_o2gxhbAJyskVnQO2yzn1RqAqaxRPw4OG3_s6fjOULOE-2PXhqAksVslswsDlwpN9"
    "ujv8k25LR7AqJ6QH0-r0ZhoxIT871xAW_z4R2PtHityx2g36cKUNBipQZCOdFvWtedyYfWKu-vgHZCGuH_9zvw7_2yxZfIqa7YuSb4MirD5RDX"
    "FUaGWHEeK74NX7EwNQce3ni4CTWCh5y7cNFixZCXY5r1kilv2rQXxeY5OVUgxPGjgXRN71agXprG43Zh1--IaA-etj3p0MKWlR7sJAP2rqZzNI"
    "T2Ca9ZYh_RpA"
)
ES256_TOKEN = (
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0."
    "7IMHosHtd-1Zse3Gm_bdZWOreZ71Ik9bHUjz37diSoMrR_McXBvY10pgoZlDcbN6cZHKO2BEM_EUUHaJD9x4SA"
)
# The public half of the ES256 key: the classic confusion signs HS256 with it as the HMAC secret.
EC_PUBLIC_KEY_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE5RczY10BoRqBiblPkfuaxM9aZxcg\n"
    "W2ITv5RMw7Invm/sDI+2+mi/uvkHJrvu/ScMB7BcLSZZ2M/qPRILLKMnUg==\n"
    "-----END PUBLIC KEY-----\n"
)


@pytest.fixture
def wakeup_hints() -> bool:
    """Tokens do not depend on how streams are woken."""
    return True


@pytest.fixture
def expected_claims() -> dict[str, str]:
    """JWT_AUDIENCE / JWT_ISSUER of a test: none unless it parametrizes them."""
    return {}


@pytest.fixture
def settings(settings, expected_claims):
    return replace(settings, **expected_claims)


def _signed(header: dict[str, Any], claims: dict[str, Any], key: str, digest: Any = hashlib.sha256) -> str:
    """A JWT signed with HMAC as given, whatever the header says (PyJWT refuses to make the odd ones)."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    return signing_input + "." + b64url(hmac.new(key.encode(), signing_input.encode(), digest).digest())


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 600, **extra}


async def _status_everywhere(api, open_stream, token: str) -> set[int]:
    statuses = set()
    for method, path in ENDPOINTS:
        response = await api.request(method, path, None, {"Authorization": f"Bearer {token}"})
        statuses.add(response.code)
    stream = await open_stream(None, token=token)
    statuses.add(stream.status)
    stream.close()
    return statuses


@pytest.mark.gen_test
async def test_a_token_not_valid_before_a_future_time_answers_401_everywhere(api, settings, open_stream):
    future = _signed({"alg": "HS256", "typ": "JWT"}, _claims(nbf=int(time.time()) + 3600), settings.jwt_secret)
    assert await _status_everywhere(api, open_stream, future) == {401}
    past = _signed({"alg": "HS256", "typ": "JWT"}, _claims(nbf=int(time.time()) - 60), settings.jwt_secret)
    assert (await api.request("GET", "/api/notifications", None, {"Authorization": f"Bearer {past}"})).code == 200


def _confused_tokens(secret: str) -> dict[str, str]:
    claims = _claims()
    return {
        "RS256, signed with an RSA key": RS256_TOKEN,
        "ES256, signed with an EC key": ES256_TOKEN,
        "HS256 with the public key's PEM as secret": _signed({"alg": "HS256"}, claims, EC_PUBLIC_KEY_PEM),
        "HS512 with the right secret": _signed({"alg": "HS512"}, claims, secret, hashlib.sha512),
        "HS384 with the right secret": _signed({"alg": "HS384"}, claims, secret, hashlib.sha384),
        "hs256 in lower case": _signed({"alg": "hs256"}, claims, secret),
        "HS256 with a space": _signed({"alg": "HS256 "}, claims, secret),
        "no alg": _signed({"typ": "JWT"}, claims, secret),
        "alg as a list": _signed({"alg": ["HS256"]}, claims, secret),
        "None": b64url(b'{"alg":"None"}') + "." + b64url(json.dumps(claims).encode()) + ".",
        "NONE with a signature": _signed({"alg": "NONE"}, claims, secret),
    }


@pytest.mark.gen_test
@pytest.mark.parametrize("kind", list(_confused_tokens("x")))
async def test_algorithm_confusion_answers_401_everywhere(api, settings, open_stream, kind):
    token = _confused_tokens(settings.jwt_secret)[kind]
    assert await _status_everywhere(api, open_stream, token) == {401}


@pytest.mark.gen_test
async def test_a_token_naming_an_audience_is_refused_when_none_is_configured(api, settings):
    token = jwt.encode(_claims(aud="another-service"), settings.jwt_secret, algorithm="HS256")
    response = await api.request("GET", "/api/notifications", None, {"Authorization": f"Bearer {token}"})
    assert response.code == 401


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "expected_claims", [{"jwt_audience": "bellcast", "jwt_issuer": "https://app.example.com"}], ids=["aud+iss"]
)
@pytest.mark.parametrize(
    ("claims", "status"),
    [
        ({"aud": "bellcast", "iss": "https://app.example.com"}, 200),
        ({"aud": ["billing", "bellcast"], "iss": "https://app.example.com"}, 200),
        ({"iss": "https://app.example.com"}, 401),
        ({"aud": "billing", "iss": "https://app.example.com"}, 401),
        ({"aud": ["billing"], "iss": "https://app.example.com"}, 401),
        ({"aud": "Bellcast", "iss": "https://app.example.com"}, 401),
        ({"aud": "bellcast"}, 401),
        ({"aud": "bellcast", "iss": "https://evil.example.com"}, 401),
        ({"aud": "bellcast", "iss": None}, 401),
    ],
)
async def test_with_jwt_audience_and_issuer_set_tokens_must_carry_both(
    api, settings, open_stream, expected_claims, claims, status
):
    token = _signed({"alg": "HS256", "typ": "JWT"}, _claims(**claims), settings.jwt_secret)
    assert await _status_everywhere(api, open_stream, token) == ({200, 404} if status == 200 else {401})


@pytest.mark.gen_test(timeout=30)
async def test_tokens_appear_in_no_log_record_whether_accepted_or_refused(api, settings, open_stream, caplog):
    caplog.set_level(logging.DEBUG)
    now = int(time.time())
    valid = api.token("alice")
    expired = jwt.encode({"sub": "alice", "exp": now - 60}, settings.jwt_secret, algorithm="HS256")
    forged = jwt.encode(_claims(), "another-secret-of-32-characters!", algorithm="HS256")
    tokens = {"valid": valid, "expired": expired, "forged": forged}
    for token in tokens.values():
        for headers, query in [
            ({"Authorization": f"Bearer {token}"}, ""),
            ({"Cookie": f"bellcast_token={token}"}, ""),
            ({}, f"access_token={token}"),
            ({}, f"access%5Ftoken={token}"),  # the same parameter, its name escaped
            ({}, f"limit=5&ACCESS_TOKEN={token}&x=1"),
        ]:
            for method, path in [
                ("GET", "/api/notifications"),
                ("GET", "/api/notifications?limit=ten"),
                ("GET", "/api/notifications?before=%ff"),  # Tornado's own error, which would quote the URI
                ("POST", "/api/notifications/not-an-id/read"),
                ("POST", "/api/notifications/read-all"),
                ("GET", "/no/such/path"),
                ("DELETE", "/api/notifications"),
            ]:
                separator = "&" if "?" in path else "?"
                uri = path + (separator + query if query else "")
                await api.request(method, uri, None, headers)
        stream = await open_stream(None, token=token)
        stream.close()
    await asyncio.sleep(0.3)  # the streams' access log lines are written when they end
    assert any(r.name == "tornado.access" and "[redacted]" in r.getMessage() for r in caplog.records)
    for kind, token in tokens.items():
        # Also the signature alone: the part of a token that must stay secret.
        for secret_part in (token, token.rsplit(".", 1)[1]):
            leaking = [r for r in caplog.records if secret_part in r.getMessage() or secret_part in str(r.args)]
            assert not leaking, (kind, [r.getMessage() for r in leaking])
        assert token not in caplog.text


ODD_SUBJECTS = {
    "a lone surrogate": "\ud800",
    "a lone surrogate inside a name": "al\udfffice",
    "empty": "",
    "blank": "   ",
    "longer than any user id": "u" * 201,
    "a number": 42,
    "a list": ["alice"],
    "an object": {"id": "alice"},
}


@pytest.mark.gen_test
@pytest.mark.parametrize("kind", list(ODD_SUBJECTS))
async def test_a_correctly_signed_token_whose_sub_no_user_id_could_have_answers_401_everywhere(
    api, settings, open_stream, kind
):
    token = _signed({"alg": "HS256", "typ": "JWT"}, _claims(sub=ODD_SUBJECTS[kind]), settings.jwt_secret)
    assert await _status_everywhere(api, open_stream, token) == {401}


WEEK = 7 * 24 * 3600


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("claims", "status"),
    [
        ({"iat": 0, "exp": WEEK}, 200),  # exactly MAX_TOKEN_LIFETIME (the default, a week)
        ({"iat": 0, "exp": WEEK + 60}, 401),
        ({"exp": WEEK - 60}, 200),  # no iat: counted from now
        ({"exp": WEEK + 60}, 401),
        ({"iat": 365 * 24 * 3600, "exp": 365 * 24 * 3600 + 60}, 401),  # an iat in the future stretches nothing
        ({"iat": True, "exp": WEEK + 60}, 401),
    ],
    ids=["a-week", "a-week-and-a-minute", "no-iat-within", "no-iat-beyond", "future-iat", "iat-not-a-number"],
)
async def test_a_token_valid_for_longer_than_max_token_lifetime_answers_401_everywhere(
    api, settings, open_stream, claims, status
):
    assert settings.max_token_lifetime == WEEK
    now = int(time.time())
    relative = {name: value if isinstance(value, bool) else now + value for name, value in claims.items()}
    token = _signed({"alg": "HS256", "typ": "JWT"}, {"sub": "alice", **relative}, settings.jwt_secret)
    expected = {status} if status == 401 else {200, 404}  # the read of a notification that is not there: 404
    assert await _status_everywhere(api, open_stream, token) == expected
