"""A Redis restart under thousands of streams, with creates flowing: recovery shares, bounds and completes.

bellcast runs as a process of its own on the session's MongoDB and a private Redis; the test holds
5,000 streams (500 users, 10 tabs each) over raw sockets, creates at 50 per second through the API, and
stops Redis for six seconds in the middle, as a crash with an empty restart would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections import Counter
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from services.auth import Authenticator
from tests.support import RestartableRedis, ServerProcess, eventually, parse_exposition, sample

JWT_SECRET = "recovery-secret-" + "x" * 20
API_KEY = "recovery-api-key-" + "y" * 10
METRICS_TOKEN = "recovery-metrics-" + "z" * 10
USERS = 500
TABS = 10
CREATES_PER_SECOND = 50
CREATING_BEFORE_OUTAGE = 3.0
OUTAGE = 6.0
CREATING_AFTER_OUTAGE = 4.0
OPENING_AT_ONCE = 250


class RawStream:
    """One tab's stream over a bare socket (HTTP/1.0, so the body is the events as sent): the ids of
    the notifications it received, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received: list[str] = []
        self.connected = asyncio.get_running_loop().create_future()
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, port: int, token: str) -> RawStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /notifications/stream?access_token={token} HTTP/1.0\r\n\r\n".encode())
        return cls(reader, writer)

    async def _read(self) -> None:
        headers = await self.reader.readuntil(b"\r\n\r\n")
        self.connected.set_result(headers.split(b"\r\n", 1)[0])
        buffer = b""
        while chunk := await self.reader.read(65536):
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                lines = dict(line.split(b": ", 1) for line in event.split(b"\n") if line[:3] in (b"id:", b"eve"))
                if lines.get(b"event") == b"notification":
                    self.received.append(lines[b"id"].decode())

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()


async def _open_all(port: int, tokens: list[str], streams: list[RawStream]) -> None:
    """Open a stream with each token into `streams`, a batch at a time; each must be accepted."""
    for start in range(0, len(tokens), OPENING_AT_ONCE):
        batch = tokens[start : start + OPENING_AT_ONCE]
        opened = await asyncio.gather(*(RawStream.open(port, token) for token in batch))
        streams.extend(opened)
        statuses = await asyncio.gather(*(stream.connected for stream in opened))
        assert all(b" 200 " in status for status in statuses), Counter(statuses).most_common(3)


async def _create_steadily(
    server: ServerProcess, users: list[str], seconds: float, created: dict[str, list[str]], statuses: Counter[int]
) -> None:
    """Creates at CREATES_PER_SECOND for `seconds`, round robin over the users; each answer's status counted."""
    # Enough connections that no create waits in the client's own queue: the server's answer time is what counts.
    client = AsyncHTTPClient(force_instance=True, max_clients=1000)
    pending: list[asyncio.Future[Any]] = []
    started = time.monotonic()
    sent = 0

    async def create(user: str) -> None:
        try:
            response = await client.fetch(
                f"{server.base_url}/api/notifications",
                method="POST",
                headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
                body=json.dumps({"user_id": user, "title": "owed"}),
                request_timeout=60,
            )
        except HTTPClientError as error:
            statuses[error.code] += 1
            return
        statuses[response.code] += 1
        created[user].append(json.loads(response.body)["id"])

    while (elapsed := time.monotonic() - started) < seconds:
        while sent < elapsed * CREATES_PER_SECOND:
            pending.append(asyncio.ensure_future(create(users[(len(created) + sent) % len(users)])))
            sent += 1
        await asyncio.sleep(0.01)
    await asyncio.gather(*pending)
    client.close()


def _metrics(server: ServerProcess) -> Any:
    request = urllib.request.Request(server.base_url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return parse_exposition(response.read().decode())


@pytest.mark.gen_test(timeout=300)
async def test_a_redis_restart_under_5000_streams_with_creates_flowing_delivers_everything_once_without_a_stampede(
    store_urls, tmp_path
):
    private_redis = RestartableRedis()
    server = ServerProcess(
        (store_urls[0], private_redis.url),
        tmp_path / "bellcast.log",
        JWT_SECRET=JWT_SECRET,
        API_KEY=API_KEY,
        LOG_FORMAT="json",
        LOG_LEVEL="info",
        MAX_CONNECTIONS_PER_CLIENT="0",
        MAX_STREAMS_PER_USER=str(TABS),
        METRICS_TOKEN=METRICS_TOKEN,
    )
    streams: list[RawStream] = []
    try:
        server.wait_until_ready()
        authenticator = Authenticator(JWT_SECRET, API_KEY)
        users = [f"scale-{index}" for index in range(USERS)]
        now = time.time()
        tokens = {user: authenticator.mint_user_token(user, 3600, now) for user in users}
        await _open_all(server.port, [tokens[user] for user in users for _ in range(TABS)], streams)
        created: dict[str, list[str]] = {user: [] for user in users}
        statuses: Counter[int] = Counter()

        async def outage() -> None:
            await asyncio.sleep(CREATING_BEFORE_OUTAGE)
            private_redis.stop()
            await asyncio.sleep(OUTAGE)
            private_redis.start()

        await asyncio.gather(
            _create_steadily(server, users, CREATING_BEFORE_OUTAGE + OUTAGE + CREATING_AFTER_OUTAGE, created, statuses),
            outage(),
        )
        assert statuses == {201: sum(map(len, created.values()))}, f"creates starved: {statuses}"

        async def all_received() -> bool:
            return all(
                set(created[users[index // TABS]]) <= set(stream.received) for index, stream in enumerate(streams)
            )

        # Said below, tab by tab, if not.
        with contextlib.suppress(AssertionError):
            await eventually(all_received, timeout=120, interval=0.5)
        for index, stream in enumerate(streams):
            owed = created[users[index // TABS]]
            assert stream.received == sorted(owed), (
                f"tab {index % TABS} of {users[index // TABS]}: {len(stream.received)} received "
                f"({len(stream.received) - len(set(stream.received))} twice), {len(owed)} owed"
            )
        found = _metrics(server)
        reads = sample(found, "recovery_reads_total", outcome="run")
        # One read per user (a second for a user whose tabs asked once the first had begun), not one per tab.
        assert reads <= 2 * USERS, f"{reads:.0f} recovery reads from MongoDB for {USERS} users"
    finally:
        for stream in streams:
            stream.close()
        server.kill()
        private_redis.stop()
    warnings = Counter(
        line["message"][:60] for line in map(json.loads, server.output().splitlines()) if line["level"] == "WARNING"
    )
    assert not any("MongoDB unavailable" in message for message in warnings), warnings
    # One warning per outage and kind, not one per notification or per stream.
    assert all(count == 1 for count in warnings.values()), warnings.most_common(5)
