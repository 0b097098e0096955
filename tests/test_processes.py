"""PROCESSES=N: one port, several worker processes, each stream of a user served once per notification."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import signal
import time
import uuid

import pytest
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from tests.support import ServerProcess, SSEStream

JWT_SECRET = "processes-secret-" + "x" * 20
API_KEY = "processes-api-key-" + "y" * 10


@pytest.fixture
def process_environ() -> dict[str, str]:
    """More settings for the two workers; a test may parametrize it."""
    return {}


@pytest.fixture
def two_process_server(store_urls, process_environ, tmp_path):
    server = ServerProcess(
        store_urls,
        tmp_path / "bellcast.log",
        **{"PROCESSES": "2", "JWT_SECRET": JWT_SECRET, "API_KEY": API_KEY, **process_environ},
    )
    server.wait_until_ready(workers=2)
    yield server
    assert server.stop() == 0, server.output()[-3000:]


@pytest.mark.gen_test(timeout=60)
async def test_a_change_made_through_one_process_reaches_the_users_streams_on_every_process_once(two_process_server):
    """A read, and an expiry (swept by one process of the two), each told once to every stream of the user."""
    server = two_process_server
    api = server.api()
    # A user of its own: the session's tests share one Redis, where another test's streams of a common
    # name may still count against the user's stream limit.
    user = f"alice-{uuid.uuid4().hex[:8]}"
    streams: list[SSEStream] = []
    try:
        await server.open_streams_on_every_worker(api.token(user), streams)
        read = await api.create(user, "to be read")
        moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
        expiring = await api.create(user, "to expire", expires_at=moment.isoformat())
        assert (await api.as_user(user, "POST", f"/api/notifications/{read['id']}/read")).code == 200
        for stream in streams:
            changes = [await stream.next_change(timeout=10) for _ in range(4)]
            assert [(change["change"], change["ids"]) for change in changes] == [
                ("created", [read["id"]]),
                ("created", [expiring["id"]]),
                ("read", [read["id"]]),
                ("expired", [expiring["id"]]),
            ]
            assert (changes[-1]["unread_count"], changes[-1]["unseen_count"]) == (0, 1)
        for stream in streams:
            with pytest.raises(TimeoutError):
                await stream.next_change(timeout=2.5)
    finally:
        for stream in streams:
            stream.close()


@pytest.mark.gen_test(timeout=60)
async def test_streams_of_one_user_on_two_processes_each_receive_a_notification_once(two_process_server):
    server = two_process_server
    api = server.api()
    # A user of its own: the session's tests share one Redis, where another test's streams of a common
    # name may still count against the user's stream limit.
    user = f"alice-{uuid.uuid4().hex[:8]}"
    streams: list[SSEStream] = []
    try:
        await server.open_streams_on_every_worker(api.token(user), streams)
        created = await api.create(user, "to every tab on every process")
        for stream in streams:
            [event] = await stream.notifications(1)
            assert json.loads(event.data)["id"] == created["id"]
        for stream in streams:
            await stream.assert_silent(0.2)
    finally:
        for stream in streams:
            stream.close()


@pytest.mark.gen_test(timeout=60)
async def test_killing_one_worker_loses_nothing_for_streams_on_the_other(two_process_server, store_urls):
    import redis.asyncio

    from services.cache import REGISTRATION_TTL, connections_key

    server = two_process_server
    api = server.api()
    # A user of its own: the killed worker's streams stay registered until their TTL, in a Redis the
    # session's other tests share (repeated, this test would meet its own, past the user's stream limit).
    user = f"bob-{uuid.uuid4().hex[:8]}"
    opened: list[SSEStream] = []
    try:
        by_owner = await server.open_streams_on_every_worker(api.token(user), opened)
        victim, survivor = list(by_owner)
        os.kill(victim, signal.SIGKILL)
        for stream in by_owner[victim]:
            with pytest.raises(StreamClosedError):
                while True:  # what was already buffered, then the end
                    await stream.next_event(timeout=5)
        created = [await api.create(user, f"after the kill {i}") for i in range(3)]
        for stream in by_owner[survivor]:
            events = await stream.notifications(3)
            assert [e.id for e in events] == [c["id"] for c in created]
            await stream.assert_silent(0.2)
        # The dead worker could not deregister: its entries linger only until their TTL.
        client = redis.asyncio.Redis.from_url(store_urls[1])
        try:
            assert 0 < await client.ttl(connections_key(user)) <= REGISTRATION_TTL
        finally:
            await client.aclose()
        # The supervisor replaces the dead worker.
        deadline = time.monotonic() + 15
        while len(server.workers()) < 2 or not server.answers("/healthz"):
            assert time.monotonic() < deadline, "no replacement worker"
            await asyncio.sleep(0.1)
    finally:
        for stream in opened:
            stream.close()


RATE_LIMITED_KEY = "processes-rate-limited-key-" + "z" * 10


async def _create_on(connection: IOStream, user_id: str) -> int:
    """POST a notification on a kept-alive connection; the status."""
    body = json.dumps({"user_id": user_id, "title": "counted"}).encode()
    head = (
        "POST /api/notifications HTTP/1.1\r\nHost: bellcast\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {RATE_LIMITED_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    await connection.write(head.encode() + body)
    response_head = await connection.read_until(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", response_head)
    assert length is not None
    await connection.read_bytes(int(length.group(1)))
    return int(response_head.split()[1])


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize(
    "process_environ",
    # Six per minute: the window outlasts the test, so the count is exact.
    [{"API_KEY": RATE_LIMITED_KEY, "PRODUCER_RATE_LIMIT": "0.1", "PRODUCER_RATE_WINDOW": "60"}],
)
async def test_the_producer_rate_limit_is_shared_by_the_worker_processes(two_process_server):
    server = two_process_server
    by_owner: dict[int, IOStream] = {}
    spare: list[IOStream] = []
    try:
        while len(by_owner) < 2:
            assert len(spare) < 60, "the kernel never handed a connection to the second worker"
            connection = await TCPClient().connect("127.0.0.1", server.port)
            client_port = connection.socket.getsockname()[1]
            deadline = time.monotonic() + 5
            while (owner := server.worker_holding(client_port)) is None:
                assert time.monotonic() < deadline, "no worker accepted the connection"
                await asyncio.sleep(0.02)
            if owner in by_owner:
                spare.append(connection)
            else:
                by_owner[owner] = connection
        first, second = by_owner.values()
        statuses = []
        for _ in range(6):
            statuses.append(await _create_on(first, "counted"))
            statuses.append(await _create_on(second, "counted"))
        assert statuses == [201] * 6 + [429] * 6
    finally:
        for connection in [*by_owner.values(), *spare]:
            connection.close()
