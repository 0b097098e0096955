"""The Server-Sent Events wire format, as a table of pure functions."""

from __future__ import annotations

import pytest

from services.sse import encode_comment, encode_event, encode_retry


@pytest.mark.parametrize(
    ("event_id", "event", "data", "wire"),
    [
        ("1", "notification", '{"a":1}', b'id: 1\nevent: notification\ndata: {"a":1}\n\n'),
        (b"2", b"notification", b"x", b"id: 2\nevent: notification\ndata: x\n\n"),
        ("3", "n", "line1\nline2", b"id: 3\nevent: n\ndata: line1\ndata: line2\n\n"),
        ("4", "n", "a\r\nb\rc", b"id: 4\nevent: n\ndata: a\ndata: b\ndata: c\n\n"),
        ("5", "n", "", b"id: 5\nevent: n\ndata: \n\n"),
        ("6\nevent: forged", "n", "x", b"id: 6event: forged\nevent: n\ndata: x\n\n"),
        ("7", "n\r\ndata: forged", "x", b"id: 7\nevent: ndata: forged\ndata: x\n\n"),
        ("8\0", "n", "x", b"id: 8\nevent: n\ndata: x\n\n"),
        ("9", "n", "\n\nid: forged", b"id: 9\nevent: n\ndata: \ndata: \ndata: id: forged\n\n"),
    ],
)
def test_encode_event(event_id, event, data, wire):
    assert encode_event(event_id, event, data) == wire


@pytest.mark.parametrize(
    ("text", "wire"),
    [("heartbeat", b": heartbeat\n\n"), ("", b": \n\n"), ("two\nlines", b": two\n: lines\n\n")],
)
def test_encode_comment(text, wire):
    assert encode_comment(text) == wire


@pytest.mark.parametrize(("milliseconds", "wire"), [(2000, b"retry: 2000\n\n"), (0, b"retry: 0\n\n")])
def test_encode_retry(milliseconds, wire):
    assert encode_retry(milliseconds) == wire
