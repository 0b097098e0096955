"""SIGTERM while closed streams still release their registrations: shutdown waits for them, quietly."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from tornado.iostream import IOStream

from services.auth import Authenticator
from services.cache import user_tag
from services.streams import RELEASES_PER_ITERATION
from tests.support import ServerProcess, SSEStream

JWT_SECRET = "shutdown-secret-" + "x" * 20
API_KEY = "shutdown-api-key-" + "y" * 10
# More than are released in one loop iteration: some still wait for their turn when shutdown begins.
STREAMS = 3 * RELEASES_PER_ITERATION


def _logged(server: ServerProcess) -> list[dict[str, Any]]:
    """The server's log lines, parsed (it logs JSON)."""
    return [json.loads(line) for line in server.output().splitlines()]


def _errors(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines logged as errors."""
    return [line for line in lines if line["level"] in ("ERROR", "CRITICAL")]


@pytest.mark.gen_test(timeout=90)
async def test_shutdown_right_after_a_mass_disconnect_deregisters_every_stream(store_urls, tmp_path):
    server = ServerProcess(
        store_urls, tmp_path / "bellcast.log", JWT_SECRET=JWT_SECRET, API_KEY=API_KEY, LOG_FORMAT="json"
    )
    server.wait_until_ready()
    base_url = server.base_url
    authenticator = Authenticator(JWT_SECRET, API_KEY)
    prefix = f"leaving-{uuid.uuid4().hex[:8]}-"
    users = [f"{prefix}{index}" for index in range(STREAMS)]
    # Every key of these users, in Redis: their registrations and any inbox.
    their_keys = f"bellcast:{user_tag(prefix)[:-1]}*"
    redis = Redis.from_url(store_urls[1])
    try:
        now = time.time()
        streams = await asyncio.gather(
            *(SSEStream.open(base_url, authenticator.mint_user_token(user, 60, now)) for user in users)
        )
        await asyncio.gather(*(stream.next_event() for stream in streams))  # registered once it answers
        assert len(await redis.keys(their_keys)) == STREAMS
        # All the clients leave and the server is told to stop at once: stopped meanwhile, the
        # server meets the ends of the streams and the signal together when it goes on.
        server.process.send_signal(signal.SIGSTOP)
        for stream in streams:
            stream.close()
        server.process.send_signal(signal.SIGTERM)
        server.process.send_signal(signal.SIGCONT)
        assert server.wait() == 0, server.output()[-3000:]
        left = await redis.keys(their_keys)
    finally:
        await redis.aclose()
        if server.process.poll() is None:
            server.stop()
    lines = _logged(server)
    errors = _errors(lines)
    assert errors == [], f"{len(errors)} error lines, the first: {errors[0]}"
    assert left == [], f"{len(left)} keys of closed streams left in Redis, such as {left[:3]}"
    # The test's premise: the streams' ends (their access lines) were still being written once shutdown began.
    shutdown_began = next(i for i, line in enumerate(lines) if line["message"].startswith("shutting down"))
    ended = [i for i, line in enumerate(lines) if line.get("uri", "").startswith("/notifications/stream")]
    assert len(ended) == STREAMS and ended[-1] > shutdown_began, "the streams had all released before the signal"


@pytest.mark.gen_test(timeout=90)
async def test_a_stream_still_writing_when_the_shutdown_grace_runs_out_is_closed_and_deregisters_without_an_error(
    store_urls, tmp_path
):
    """Once the grace for the streams to end has run out, shutdown closes the connections: the stream's
    write fails, it ends and removes its registration and inbox from Redis, with no error line."""
    server = ServerProcess(
        store_urls,
        tmp_path / "bellcast.log",
        JWT_SECRET=JWT_SECRET,
        API_KEY=API_KEY,
        LOG_FORMAT="json",
        STREAM_WRITE_TIMEOUT="120",  # the sweep must not drop the client first
    )
    server.wait_until_ready()
    api = server.api()
    user = f"sleepy-{uuid.uuid4().hex[:8]}"
    redis = Redis.from_url(store_urls[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client = IOStream(sock)
    try:
        await client.connect(("127.0.0.1", server.port))
        token = api.token(user)
        await client.write(f"GET /notifications/stream?access_token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await client.read_until(b"\r\n\r\n")
        payload = {"blob": "x" * 30000}
        for batch in range(10):  # about 7.5 MB never read, more than the kernel buffers on both sides
            await asyncio.gather(*(api.create(user, f"n{batch}-{i}", data=payload) for i in range(25)))
        # Its last words ("server restarting") wait behind what the client does not read.
        assert server.stop() == 0, server.output()[-3000:]
        # The user's counts stay (they expire on their own): the stream's registration and inbox must not.
        keys = await redis.keys(f"bellcast:{user_tag(user)}:*")
        left = [key for key in keys if not cast(bytes, key).endswith(b":counts")]
    finally:
        client.close()
        if server.process.poll() is None:
            server.stop()
        # Should the test fail: gone now, so that they do not hold 7.5 MB until their TTL.
        for key in await redis.keys(f"bellcast:{user_tag(user)}:*"):
            await redis.delete(key)
        await redis.aclose()
    lines = _logged(server)
    assert [line["message"] for line in _errors(lines)] == []
    [ended] = [line for line in lines if line.get("uri", "").startswith("/notifications/stream")]
    assert ended["level"] == "INFO" and ended["ended_by"] == "shutdown"
    warnings = [line["message"] for line in lines if line["level"] == "WARNING"]
    assert warnings == ["some streams had not ended within 5 s"]
    assert left == [], "the stream's connection was not closed, or it did not deregister once it was"
