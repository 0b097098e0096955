"""Whatever a client sends, the API answers a 2xx or a JSON 4xx, and the event stream's framing holds.

Property-based (hypothesis), through real sockets against the real stores. Example counts are
kept modest so that `make test` stays short on two shared cores; raise EXAMPLES locally when a
change warrants a longer hunt (docs/reliability.md reports the counts).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any
from urllib.parse import quote

import hypothesis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from services.sse import encode_event
from tests.support import b64url

# The counts docs/reliability.md reports; each example is one to four requests.
EXAMPLES = 150
STREAM_EXAMPLES = 50
PROPERTY = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    # The fixtures (stores, server) are shared by the examples on purpose: each example cleans up nothing.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
REQUEST_TIMEOUT = 30.0


@pytest.fixture
def wakeup_hints() -> bool:
    """One delivery mode is enough here: these properties are about input, not about waking streams."""
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(body: bytes) -> Any:
    """Parse as a browser's JSON.parse would: UTF-8, no NaN or Infinity."""
    return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)


def assert_answer(response: Any, allowed: set[int]) -> Any:
    """A 2xx with JSON, or a JSON 4xx of the one error shape; returns the parsed body."""
    hypothesis.event(f"HTTP {response.code}")
    assert response.code in allowed, (response.code, response.body[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    body = strict_json(response.body)
    if response.code >= 400:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message"}, body
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
        assert "Traceback" not in body["error"]["message"]
    return body


# Characters that have broken parsers and framings elsewhere: line ends of every kind (SSE
# treats CR, LF and CRLF alike), NUL, JSON's and JavaScript's line separators, BOMs and
# non-characters, bidi overrides, joiners, combining marks, astral characters, lone surrogates.
EDGE_CHARACTERS = [
    "\n",
    "\r",
    "\r\n",
    "\x00",
    "\x85",
    "\x0b",
    "\x1b",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\ufffe",
    "\uffff",
    "\u202e",
    "\u200d",
    "e\u0301",
    "\U0001f514",
    "\U0010ffff",
    "\ud800",
    "\udfff",
    '"',
    "\\",
    "</script>",
]
# Field prefixes a line break in a title would turn into fields of their own, were it not escaped.
SSE_FIELD_PREFIXES = ["id: ", "id:", "data: ", "data:", "event: ", "event:", "retry: ", "retry:", ": ", ":"]

characters = st.characters(exclude_categories=())
unicode_characters = st.characters(exclude_categories=["Cs"])
# Any text, lone surrogates included (invalid Unicode, refused), and text that is valid Unicode.
texts = st.lists(st.one_of(st.sampled_from(EDGE_CHARACTERS), st.text(characters, max_size=12)), max_size=8).map("".join)
SURROGATES = ("\ud800", "\udfff")
unicode_texts = st.lists(
    st.one_of(
        st.sampled_from([c for c in EDGE_CHARACTERS if c not in SURROGATES]), st.text(unicode_characters, max_size=12)
    ),
    max_size=8,
).map("".join)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
    max_leaves=12,
)
# Values a notification's `data` may hold: valid Unicode, finite numbers.
valid_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), unicode_texts),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(unicode_texts, children, max_size=4)),
    max_leaves=12,
)


def _nested(depth: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


# `data` near its limits: 32 KiB as JSON, 16 levels deep, and the 64 KiB body around it.
big_data = st.integers(min_value=32 * 1024 - 64, max_value=70 * 1024).map(lambda n: {"blob": "x" * n})
deep_data = st.builds(_nested, st.integers(min_value=10, max_value=40), st.sampled_from(["list", "dict"])).map(
    lambda nested: {"deep": nested}
)


def _lengths(low: int, high: int) -> st.SearchStrategy[str]:
    """Strings around a length limit, cheap to generate."""
    return st.integers(min_value=low, max_value=high).map(lambda n: "é" * n)


user_ids = st.one_of(
    st.sampled_from(["alice", "bob", "{u:alice}", "a:b", "$ne", "."]),
    unicode_texts.map(lambda t: "u" + t),
    texts,
    _lengths(195, 205),
)
titles = st.one_of(unicode_texts.map(lambda t: "t" + t), texts, _lengths(195, 205), st.sampled_from(SSE_FIELD_PREFIXES))
types = st.one_of(
    st.sampled_from(["info", "deploy", "a.b:c-d_e"]),
    st.from_regex(r"\A[A-Za-z0-9_.:-]{1,64}\Z"),
    texts,
    _lengths(60, 70),
)
urls = st.one_of(
    st.sampled_from(["/x", "https://example.com/a?b=c", "/a#b", "javascript:alert(1)", "//evil.example", "http://"]),
    unicode_texts.map(lambda t: "/x" + "".join(c for c in t if not c.isspace())),
    texts.map(lambda t: "/" + t),
    st.just("/" + "u" * 2050),
)
datas = st.one_of(
    st.dictionaries(unicode_texts, valid_json_values, max_size=5),
    st.dictionaries(unicode_texts, valid_json_values, max_size=5),
    st.dictionaries(texts, json_values, max_size=5),
    big_data,
    deep_data,
)


@st.composite
def _field(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> Any:
    """Mostly a plausible value, one time in five any JSON value at all (the wrong type)."""
    return draw(json_values if draw(st.integers(0, 4)) == 4 else valid)


optional_fields = {
    "body": _field(st.one_of(unicode_texts, texts, _lengths(3990, 4010))),
    "type": _field(types),
    "data": _field(datas),
    "url": _field(urls),
}
notification_objects = st.one_of(
    # Both required fields, each mostly plausible: many are stored (201).
    st.fixed_dictionaries({"user_id": _field(user_ids), "title": _field(titles)}, optional=optional_fields),
    st.fixed_dictionaries({"user_id": _field(user_ids), "title": _field(titles)}, optional=optional_fields),
    # Any subset of the fields, and fields that do not exist.
    st.builds(
        lambda fields, extra: {**extra, **fields},
        st.fixed_dictionaries({}, optional={"user_id": json_values, "title": json_values, **optional_fields}),
        st.dictionaries(st.sampled_from(["titel", "id", "read_at", "$set", ""]), json_values, max_size=1),
    ),
)


@st.composite
def serialized(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> bytes:
    """A JSON text of the value: escaped or raw UTF-8 (lone surrogates then make invalid UTF-8), NaN allowed."""
    value = draw(values)
    ascii_only = draw(st.booleans())
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


raw_bodies = st.one_of(
    st.binary(max_size=512),
    st.sampled_from([b"", b"{", b"null", b"[]", b'"x"', b"1e400", b'{"user_id":"a","title":"t","data":{"n":1e400}}']),
    st.integers(min_value=1, max_value=5000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(min_value=1, max_value=3000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
)
# Number literals that are valid JSON but no double (Python reads 1e400 as inf and would write Infinity back),
# or that no int() takes (more than 4,300 digits), inside an otherwise valid notification.
number_literals = st.one_of(
    st.sampled_from(["1e400", "-1e400", "1E309", "2.5e-400", "-0", "0.0", "1" * 4301, "1" * 4300, "1.5"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers().map(str),
)
number_bodies = number_literals.map(lambda n: f'{{"user_id":"alice","title":"t","data":{{"n":[{n}]}}}}'.encode())
bodies = st.one_of(
    serialized(notification_objects),
    serialized(notification_objects),
    serialized(json_values),
    raw_bodies,
    number_bodies,
)


@given(body=bodies, content_type=st.sampled_from([None, "application/json", "text/plain", "application/x-www-form"]))
@hypothesis.example(body=b'{"user_id":"alice","title":"t","data":{"n":1e400}}', content_type=None)
@PROPERTY
def test_any_body_to_create_answers_201_or_a_json_4xx_and_what_is_stored_reads_back_equal(
    io_loop, api, body, content_type
):
    headers = {"X-API-Key": api.api_key}
    if content_type is not None:
        headers["Content-Type"] = content_type

    async def check() -> None:
        response = await api.request("POST", "/api/notifications", body, headers)
        created = assert_answer(response, {201, 400, 413})
        if response.code == 201:
            sent = json.loads(body)
            assert created["title"] == sent["title"] and created["user_id"] == sent["user_id"]
            assert created["data"] == (sent.get("data") or {})
            listed = await api.as_user(created["user_id"], "GET", "/api/notifications?limit=1")
            assert assert_answer(listed, {200})["notifications"] == [created]
        assert (await api.request("GET", "/healthz")).code == 200

    io_loop.run_sync(check, timeout=REQUEST_TIMEOUT)


query_values = st.one_of(
    texts,
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.sampled_from(
        ["0", "1", "100", "101", "-1", " 5", "1_0", "\u0665", "1e2", "9" * 5000, "0123456789abcdef01234567"]
    ),
)


@st.composite
def list_queries(draw: st.DrawFn) -> str:
    """A query string for the list endpoint: limit, before, repeats, unknown names, raw bytes."""
    parts = []
    for name in draw(st.lists(st.sampled_from(["limit", "before", "after", "limit", ""]), max_size=4)):
        if draw(st.booleans()):
            value = quote(draw(query_values).encode("utf-8", "surrogatepass"), safe="")
        else:
            value = quote(draw(st.binary(max_size=16)), safe="")
        parts.append(f"{name}={value}")
    return "&".join(parts)


@given(query=list_queries())
@PROPERTY
def test_any_query_of_the_list_answers_200_or_a_json_400(io_loop, api, query):
    async def check() -> None:
        response = await api.as_user("alice", "GET", f"/api/notifications?{query}")
        page = assert_answer(response, {200, 400})
        if response.code == 200:
            assert set(page) == {"notifications", "unread_count", "unseen_count", "next_before"}
            assert len(page["notifications"]) <= 100

    io_loop.run_sync(check, timeout=REQUEST_TIMEOUT)


ids = st.one_of(
    texts.map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")),
    st.binary(max_size=30).map(lambda b: quote(b, safe="")),
    st.binary(min_size=12, max_size=12).map(bytes.hex),
    st.sampled_from(["", ".", "..", "%2F", "%00", "0" * 24, "f" * 24, "g" * 24, "0" * 25, "$where"]),
)


@given(notification_id=ids)
@PROPERTY
def test_any_id_to_mark_read_answers_a_json_400_or_404(io_loop, api, notification_id):
    async def check() -> None:
        response = await api.as_user("alice", "POST", f"/api/notifications/{notification_id}/read")
        assert_answer(response, {400, 404})

    io_loop.run_sync(check, timeout=REQUEST_TIMEOUT)


@st.composite
def tokens(draw: st.DrawFn, secret: str) -> str:
    """JWT-shaped strings: any header and claims, signed with the right secret or not, or no JWT at all."""
    now = int(time.time())
    shape = draw(st.integers(0, 3))
    if shape == 0:
        return draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=200))
    if shape == 1:
        valid = {"sub": draw(st.sampled_from(["alice", "bob"])), "exp": now + 600}
        signing_input = b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(json.dumps(valid).encode())
        signature = b64url(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())
        return f"{signing_input}.{signature}"
    header = draw(
        st.one_of(
            st.fixed_dictionaries(
                {"alg": st.sampled_from(["HS256", "HS256", "hs256", "HS512", "none", "None", "RS256", ""])},
                optional={"typ": st.sampled_from(["JWT", "jwt"]), "kid": json_values, "crit": json_values},
            ),
            json_values,
        )
    )
    # Offsets from now rather than bounds around it: the bounds would move between hypothesis's replays.
    moments = st.one_of(
        st.integers(-3600, 3600).map(lambda offset: now + offset), st.floats(allow_nan=True), json_values
    )
    claims = draw(
        st.one_of(
            st.fixed_dictionaries(
                {"sub": st.one_of(st.just("alice"), json_values), "exp": st.one_of(st.just(now + 600), moments)},
                optional={"nbf": moments, "iat": moments, "aud": json_values, "iss": json_values},
            ),
            json_values,
        )
    )
    signing_input = (
        b64url(json.dumps(header, allow_nan=True).encode("utf-8", "surrogatepass"))
        + "."
        + b64url(json.dumps(claims, allow_nan=True).encode("utf-8", "surrogatepass"))
    )
    key = secret if draw(st.booleans()) else "not-the-secret-" + "z" * 20
    signature = b64url(hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{signature}"


SECRET = "test-secret-" + "x" * 32  # tests/conftest.py's settings


@given(token=tokens(SECRET), where=st.sampled_from(["header", "query", "cookie"]))
@PROPERTY
def test_any_token_answers_200_or_a_json_401(io_loop, api, settings, token, where):
    assert settings.jwt_secret == SECRET

    async def check() -> None:
        path, headers = "/api/notifications", {}
        if where == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif where == "cookie":
            headers["Cookie"] = f"bellcast_token={quote(token, safe='')}"
        else:
            path += f"?access_token={quote(token, safe='')}"
        response = await api.request("GET", path, None, headers)
        assert_answer(response, {200, 401})

    io_loop.run_sync(check, timeout=REQUEST_TIMEOUT)


# --- the event stream's framing -------------------------------------------------------------------------


def parse_event_stream(raw: bytes) -> tuple[list[dict[str, str]], list[int]]:
    """Events and retry values as the WHATWG EventSource parser reads them (CR, LF and CRLF end lines)."""
    text = raw.decode("utf-8")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    events: list[dict[str, str]] = []
    retries: list[int] = []
    data: list[str] = []
    event_type = ""
    event_id = ""
    for line in lines[:-1]:  # what follows the last line end is an incomplete line
        if line == "":
            if data:
                events.append({"type": event_type or "message", "data": "\n".join(data), "id": event_id})
            data, event_type = [], ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event_type = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\x00" not in value:
            event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            retries.append(int(value))
    return events, retries


ALLOWED_LINE_STARTS = ("id: ", "event: ", "data: ", "retry: ", ": ")


def assert_clean_framing(raw: bytes) -> None:
    """No CR anywhere, and every line is one field of ours, a comment or an event's end."""
    assert b"\r" not in raw and b"\x00" not in raw
    for line in raw.split(b"\n")[:-1]:
        assert line == b"" or line.startswith(tuple(s.encode() for s in ALLOWED_LINE_STARTS)), line


injection_texts = st.lists(
    st.one_of(
        st.sampled_from([c for c in EDGE_CHARACTERS if c not in SURROGATES] + SSE_FIELD_PREFIXES),
        st.text(unicode_characters, max_size=8),
    ),
    min_size=1,
    max_size=10,
).map("".join)
injected_fields = st.fixed_dictionaries(
    {"title": injection_texts.map(lambda t: ("t" + t)[:200])},
    optional={
        "body": injection_texts,
        "data": st.dictionaries(injection_texts, injection_texts, max_size=3),
        # A valid link: no white space, no backslash (is_safe_link).
        "url": injection_texts.map(lambda t: "/x" + "".join(c for c in t if not c.isspace() and c != "\\")[:100]),
    },
)


@given(batch=st.lists(injected_fields, min_size=1, max_size=3))
@hypothesis.settings(PROPERTY, max_examples=STREAM_EXAMPLES)
def test_line_breaks_and_field_prefixes_in_fields_never_break_the_event_framing(io_loop, api, open_stream, batch):
    user_id = f"framing-{uuid.uuid4().hex[:8]}"

    async def check() -> None:
        stream = await open_stream(user_id)
        try:
            await stream.next_event()
            created = [await api.create(user_id, **fields) for fields in batch]
            end = await api.create(user_id, "end")
            events = await stream.notifications(len(created) + 1)
            # The marker came right after what was created: nothing was split off or injected in between.
            assert [e.id for e in events] == [n["id"] for n in [*created, end]]
            assert [strict_json(e.data.encode()) for e in events] == [*created, end]
            parsed, retries = parse_event_stream(bytes(stream.received))
            notifications = [e for e in parsed if e["type"] == "notification"]
            assert [e["id"] for e in notifications] == [n["id"] for n in [*created, end]]
            assert [json.loads(e["data"]) for e in notifications] == [*created, end]
            # Between them only the changes that announce each create, framed as cleanly.
            changes = [json.loads(e["data"]) for e in parsed if e["type"] != "notification"]
            assert all(change["change"] == "created" for change in changes), changes
            assert [change["ids"] for change in changes] == [[n["id"]] for n in [*created, end]][: len(changes)]
            assert retries == [2000]
            assert_clean_framing(bytes(stream.received))
        finally:
            stream.close()

    io_loop.run_sync(check, timeout=REQUEST_TIMEOUT)


@given(event_id=st.text(characters), event=st.text(characters), data=st.text(characters))
@hypothesis.settings(max_examples=300, deadline=None)
def test_encode_event_reads_back_as_one_event_whatever_its_fields_contain(event_id, event, data):
    try:
        raw = encode_event(event_id, event, data)
    except UnicodeEncodeError:
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in event_id + event + data)
        return
    parsed, retries = parse_event_stream(raw)
    stripped = event.replace("\r", "").replace("\n", "").replace("\x00", "")
    assert parsed == [
        {
            "type": stripped or "message",
            "data": data.replace("\r\n", "\n").replace("\r", "\n"),
            "id": event_id.replace("\r", "").replace("\n", "").replace("\x00", ""),
        }
    ]
    assert retries == []
