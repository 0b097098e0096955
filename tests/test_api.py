"""The JSON API: create, the refresh list, read and read-all, and every error it answers."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from services.errors import Invalid
from services.notifications import utc_now, validate_new_notification
from tests.support import error_of


@pytest.mark.gen_test
async def test_create_answers_201_with_the_stored_notification(api):
    created = await api.create(
        "alice", "Deploy done", body="v2 is live", type="deploy", data={"n": 1}, url="/deploys/2"
    )
    assert len(created["id"]) == 24
    assert created["user_id"] == "alice"
    assert created["type"] == "deploy"
    assert (created["title"], created["body"], created["url"]) == ("Deploy done", "v2 is live", "/deploys/2")
    assert created["data"] == {"n": 1}
    assert created["created_at"].endswith("Z") and created["read_at"] is None
    listed = json.loads((await api.as_user("alice", "GET", "/api/notifications")).body)
    assert listed["notifications"] == [created]


@pytest.mark.gen_test
async def test_refresh_lists_newest_first_pages_with_next_before_and_counts_unread(api):
    created = [await api.create("alice", f"n{i}") for i in range(5)]
    await api.create("bob", "not alice's")
    first = json.loads((await api.as_user("alice", "GET", "/api/notifications?limit=2")).body)
    assert [n["id"] for n in first["notifications"]] == [created[4]["id"], created[3]["id"]]
    assert first["unread_count"] == 5
    assert first["next_before"] == created[3]["id"]
    second = json.loads(
        (await api.as_user("alice", "GET", f"/api/notifications?limit=2&before={first['next_before']}")).body
    )
    assert [n["id"] for n in second["notifications"]] == [created[2]["id"], created[1]["id"]]
    last = json.loads(
        (await api.as_user("alice", "GET", f"/api/notifications?limit=2&before={second['next_before']}")).body
    )
    assert [n["id"] for n in last["notifications"]] == [created[0]["id"]]
    assert last["next_before"] is None


@pytest.mark.gen_test
async def test_refresh_for_a_user_without_notifications_is_empty(api):
    listed = json.loads((await api.as_user("carol", "GET", "/api/notifications")).body)
    assert listed == {"notifications": [], "unread_count": 0, "unseen_count": 0, "next_before": None}


@pytest.mark.gen_test
async def test_mark_read_sets_read_at_once_and_lowers_the_unread_count(api):
    created = await api.create("alice")
    await api.create("alice")
    response = await api.as_user("alice", "POST", f"/api/notifications/{created['id']}/read")
    assert response.code == 200
    read = json.loads(response.body)
    assert read["id"] == created["id"] and read["read_at"] is not None
    again = json.loads((await api.as_user("alice", "POST", f"/api/notifications/{created['id']}/read")).body)
    assert again["read_at"] == read["read_at"]
    listed = json.loads((await api.as_user("alice", "GET", "/api/notifications")).body)
    assert listed["unread_count"] == 1


@pytest.mark.gen_test
async def test_read_all_marks_only_the_users_unread_notifications(api):
    for _ in range(3):
        await api.create("alice")
    await api.create("bob")
    response = await api.as_user("alice", "POST", "/api/notifications/read-all")
    assert json.loads(response.body) == {"updated": 3, "unread_count": 0, "unseen_count": 3}
    again = json.loads((await api.as_user("alice", "POST", "/api/notifications/read-all")).body)
    assert again == {"updated": 0, "unread_count": 0, "unseen_count": 3}
    assert json.loads((await api.as_user("bob", "GET", "/api/notifications")).body)["unread_count"] == 1


@pytest.mark.gen_test
async def test_another_users_notification_cannot_be_marked_read(api):
    created = await api.create("alice")
    response = await api.as_user("bob", "POST", f"/api/notifications/{created['id']}/read")
    assert response.code == 404
    assert error_of(response)["code"] == "not_found"
    listed = json.loads((await api.as_user("alice", "GET", "/api/notifications")).body)
    assert listed["notifications"][0]["read_at"] is None


BAD_BODIES = [
    ("{not json", "malformed_json"),
    (b"\xff\xfe{}", "malformed_json"),
    ('{"user_id": "a", "title": NaN}', "malformed_json"),
    ("[1, 2]", "invalid"),
    ('{"title": "no user"}', "invalid"),
    ('{"user_id": "a"}', "invalid"),
    ('{"user_id": "a", "title": "   "}', "invalid"),
    ('{"user_id": 7, "title": "t"}', "invalid"),
    ('{"user_id": "a", "title": "t", "data": [1]}', "invalid"),
    ('{"user_id": "a", "title": "t", "url": "javascript:alert(1)"}', "invalid"),
    ('{"user_id": "a", "title": "t", "url": "/path\\n"}', "invalid"),
    # Links a browser opens as another site: protocol-relative, a backslash read as a slash, a tab it drops.
    ('{"user_id": "a", "title": "t", "url": "//evil.example"}', "invalid"),
    ('{"user_id": "a", "title": "t", "url": "/\\\\evil.example"}', "invalid"),
    ('{"user_id": "a", "title": "t", "url": "\\\\\\\\evil.example"}', "invalid"),
    ('{"user_id": "a", "title": "t", "url": "/\\t/evil.example"}', "invalid"),
    ('{"user_id": "a", "title": "t", "url": "https:///evil.example"}', "invalid"),
    ('{"user_id": "a", "title": "t", "url": "https://good.example\\\\@evil.example"}', "invalid"),
    ('{"user_id": "a", "title": "t", "type": "has space"}', "invalid"),
    ('{"user_id": "a", "title": "t", "titel": "typo"}', "invalid"),
    ('{"user_id": "a", "title": "' + "x" * 201 + '"}', "invalid"),
    ('{"user_id": "a", "title": "\\ud800"}', "invalid"),
    ('{"user_id": "a", "title": "t", "data": ' + '{"a":' * 40 + "1" + "}" * 40 + "}", "invalid"),
    ("[" * 100000 + "]" * 100000, "payload_too_large"),
    ('{"user_id": "a", "title": "t", "data": {"x": "' + "y" * 70000 + '"}}', "payload_too_large"),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("body", "code"), BAD_BODIES)
async def test_bad_bodies_answer_a_json_4xx_and_store_nothing(api, runtime, body, code):
    response = await api.request("POST", "/api/notifications", body, {"X-API-Key": api.api_key})
    assert response.code == (413 if code == "payload_too_large" else 400)
    assert error_of(response)["code"] == code
    assert await runtime.mongo.database["notifications"].count_documents({}) == 0
    health = await api.request("GET", "/healthz")
    assert health.code == 200


@pytest.mark.gen_test
async def test_deeply_nested_json_is_a_400_not_a_crash(api):
    body = '{"user_id": "a", "title": "t", "data": ' + '{"a":' * 5000 + "1" + "}" * 5000 + "}"
    response = await api.request("POST", "/api/notifications", body, {"X-API-Key": api.api_key})
    assert response.code == 400


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"X-API-Key": "wrong-key-wrong-key"}, 403)],
)
async def test_create_needs_the_api_key(api, headers, status):
    response = await api.request("POST", "/api/notifications", '{"user_id": "a", "title": "t"}', headers)
    assert response.code == status
    error_of(response)


def _tokens(secret: str) -> dict[str, str]:
    now = int(time.time())
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(json.dumps({"sub": "alice", "exp": now + 60}).encode()).decode()
    return {
        "expired": jwt.encode({"sub": "alice", "exp": now - 10}, secret, algorithm="HS256"),
        "wrong signature": jwt.encode(
            {"sub": "alice", "exp": now + 60}, "another-secret-of-32-characters!", algorithm="HS256"
        ),
        "alg none": f"{header}.{payload}.",
        "no sub": jwt.encode({"exp": now + 60}, secret, algorithm="HS256"),
        "non-string sub": jwt.encode({"sub": 42, "exp": now + 60}, secret, algorithm="HS256"),
        "no exp": jwt.encode({"sub": "alice"}, secret, algorithm="HS256"),
        "garbage": "not.a.token",
    }


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "kind", ["expired", "wrong signature", "alg none", "no sub", "non-string sub", "no exp", "garbage", "missing"]
)
async def test_bad_user_tokens_answer_401_everywhere(api, settings, open_stream, kind):
    token = _tokens(settings.jwt_secret).get(kind)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for method, path in [
        ("GET", "/api/notifications"),
        ("POST", "/api/notifications/read-all"),
        ("POST", "/api/notifications/0123456789abcdef01234567/read"),
    ]:
        response = await api.request(method, path, None, headers)
        assert response.code == 401, (method, path)
        assert error_of(response)["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    stream = await open_stream(None, token=token)
    assert stream.status == 401


@pytest.mark.gen_test
async def test_token_is_accepted_from_header_cookie_and_query_parameter(api):
    created = await api.create("alice")
    token = api.token("alice")
    for path, headers in [
        ("/api/notifications", {"Authorization": f"Bearer {token}"}),
        ("/api/notifications", {"Cookie": f"bellcast_token={token}"}),
        (f"/api/notifications?access_token={token}", {}),
    ]:
        response = await api.request("GET", path, None, headers)
        assert json.loads(response.body)["notifications"][0]["id"] == created["id"]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/api/notifications?limit=0", "invalid"),
        ("/api/notifications?limit=101", "invalid"),
        ("/api/notifications?limit=ten", "invalid"),
        ("/api/notifications?before=xyz", "invalid"),
    ],
)
async def test_bad_list_parameters_answer_400(api, path, code):
    response = await api.as_user("alice", "GET", path)
    assert response.code == 400
    assert error_of(response)["code"] == code


@pytest.mark.gen_test
@pytest.mark.parametrize("notification_id", ["xyz", "0123456789abcdef0123456g", "%00"])
async def test_bad_ids_answer_400(api, notification_id):
    response = await api.as_user("alice", "POST", f"/api/notifications/{notification_id}/read")
    assert response.code == 400
    assert error_of(response)["code"] == "invalid"


@pytest.mark.gen_test
async def test_unknown_id_answers_404(api):
    response = await api.as_user("alice", "POST", "/api/notifications/0123456789abcdef01234567/read")
    assert response.code == 404


@pytest.mark.gen_test
@pytest.mark.parametrize(("method", "path"), [("GET", "/api/nope"), ("GET", "/nope"), ("DELETE", "/api/notifications")])
async def test_unknown_paths_and_methods_answer_json(api, method, path):
    response = await api.request(method, path)
    assert response.code in (404, 405)
    error_of(response)


@pytest.mark.gen_test
async def test_healthz_reports_both_stores(api):
    response = await api.request("GET", "/healthz")
    assert response.code == 200
    assert json.loads(response.body) == {"status": "ok", "checks": {"mongodb": "ok", "redis": "ok"}}


def _cpu_seconds_to_check(url: str, repeats: int = 5) -> float:
    """The least process CPU time, over `repeats` tries, that validating a create with `url` takes."""
    fields = {"user_id": "a", "title": "t", "url": url}
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        with pytest.raises(Invalid):
            validate_new_notification(fields, utc_now())
        best = min(best, time.process_time() - started)
    return best


def test_checking_a_url_costs_time_linear_in_its_length():
    """A URL that makes a backtracking check quadratic: ten times longer costs about ten times more, not a hundred.

    A ratio of two measurements taken together, so the machine's speed cancels out; the bound sits between
    the linear (about 10x, less where fixed costs dominate) and the quadratic (about 100x) growth.
    """
    short = _cpu_seconds_to_check("http://" + "a" * 200 + " ", repeats=50)
    long = _cpu_seconds_to_check("http://" + "a" * 2000 + " ", repeats=50)
    assert long < 30 * max(short, 1e-6)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("method", "path", "as_user"),
    [
        ("GET", "/api/notifications", True),
        ("GET", "/api/notifications", False),
        ("POST", "/api/notifications/read-all", True),
        ("GET", "/api/no-such-route", False),
        ("GET", "/api/openapi.json", False),
        ("GET", "/healthz", False),
        ("GET", "/static/notification-bell.js", False),
        ("GET", "/", False),
    ],
)
async def test_every_answer_forbids_content_type_sniffing(api, method, path, as_user):
    if as_user:
        response = await api.as_user("alice", method, path, b"" if method == "POST" else None)
    else:
        response = await api.request(method, path, None, {})
    assert response.headers.get("X-Content-Type-Options") == "nosniff", (response.code, path)
