"""The Server-Sent Events wire format, as pure functions."""

from __future__ import annotations


def _field(name: bytes, value: bytes) -> bytes:
    return name + b": " + value + b"\n"


def _one_line(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return raw.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")


def encode_event(event_id: str | bytes, event: str | bytes, data: str | bytes) -> bytes:
    """One event: `id:` and `event:` stripped of line breaks, each line of data its own `data:` field."""
    raw_data = data.encode() if isinstance(data, str) else data
    lines = raw_data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return (
        _field(b"id", _one_line(event_id))
        + _field(b"event", _one_line(event))
        + b"".join(_field(b"data", line) for line in lines)
        + b"\n"
    )


def encode_comment(text: str) -> bytes:
    """A comment, which clients ignore: used as heartbeat, one line per line of text."""
    return b"".join(b": " + line.encode() + b"\n" for line in text.splitlines() or [""]) + b"\n"


def encode_retry(milliseconds: int) -> bytes:
    """The reconnection delay a client should use after the stream drops."""
    return b"retry: " + str(int(milliseconds)).encode() + b"\n\n"
