"""PROCESSES=N: one port, several worker processes, each stream of a user served once per notification."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.iostream import StreamClosedError

from services.auth import Authenticator
from services.embedded import free_port
from tests.support import API, SSEStream

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "processes-secret-" + "x" * 20
API_KEY = "processes-api-key-" + "y" * 10


@pytest.fixture
def two_process_server(store_urls):
    mongodb_url, redis_url = store_urls
    port = free_port()
    database = f"bellcast_test_{uuid.uuid4().hex[:12]}"
    environ = {
        **os.environ,
        "PORT": str(port),
        "PROCESSES": "2",
        "MONGODB_URL": mongodb_url,
        "REDIS_URL": redis_url,
        "MONGODB_DB": database,
        "JWT_SECRET": JWT_SECRET,
        "API_KEY": API_KEY,
    }
    process = subprocess.Popen(
        [sys.executable, "server.py"], cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while len(psutil.Process(process.pid).children()) < 2 or not _healthy(port):
        assert process.poll() is None and time.monotonic() < deadline, "workers did not start"
        time.sleep(0.1)
    yield process, port
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail("no exit within 30 s of SIGTERM:\n" + output.decode()[-3000:])
    assert process.returncode == 0, output.decode()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _owner(children: list[psutil.Process], port: int, client_port: int) -> int | None:
    for child in children:
        for connection in child.net_connections("tcp"):
            if connection.laddr.port == port and connection.raddr and connection.raddr.port == client_port:
                return child.pid
    return None


@pytest.mark.gen_test(timeout=60)
async def test_streams_of_one_user_on_two_processes_each_receive_a_notification_once(two_process_server):
    process, port = two_process_server
    base_url = f"http://127.0.0.1:{port}"
    authenticator = Authenticator(JWT_SECRET, API_KEY)
    api = API(AsyncHTTPClient(), base_url, API_KEY, authenticator)
    children = psutil.Process(process.pid).children()
    streams: list[SSEStream] = []
    owners: set[int] = set()
    try:
        while len(owners) < 2:
            assert len(streams) < 60, "the kernel never handed a stream to the second worker"
            stream = await SSEStream.open(base_url, api.token("alice"))
            await stream.next_event()
            streams.append(stream)
            client_port = stream._stream.socket.getsockname()[1]
            owner = _owner(children, port, client_port)
            assert owner is not None
            owners.add(owner)
        created = await api.create("alice", "to every tab on every process")
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

    process, port = two_process_server
    base_url = f"http://127.0.0.1:{port}"
    api = API(AsyncHTTPClient(), base_url, API_KEY, Authenticator(JWT_SECRET, API_KEY))
    children = psutil.Process(process.pid).children()
    by_owner: dict[int, list[SSEStream]] = {}
    opened: list[SSEStream] = []
    try:
        while len(by_owner) < 2:
            assert len(opened) < 60, "the kernel never handed a stream to the second worker"
            stream = await SSEStream.open(base_url, api.token("bob"))
            await stream.next_event()
            opened.append(stream)
            owner = _owner(children, port, stream._stream.socket.getsockname()[1])
            assert owner is not None
            by_owner.setdefault(owner, []).append(stream)
        victim, survivor = list(by_owner)
        os.kill(victim, signal.SIGKILL)
        for stream in by_owner[victim]:
            with pytest.raises(StreamClosedError):
                while True:  # what was already buffered, then the end
                    await stream.next_event(timeout=5)
        created = [await api.create("bob", f"after the kill {i}") for i in range(3)]
        for stream in by_owner[survivor]:
            events = await stream.notifications(3)
            assert [e.id for e in events] == [c["id"] for c in created]
            await stream.assert_silent(0.2)
        # The dead worker could not deregister: its entries linger only until their TTL.
        client = redis.asyncio.Redis.from_url(store_urls[1])
        try:
            assert 0 < await client.ttl(connections_key("bob")) <= REGISTRATION_TTL
        finally:
            await client.aclose()
        # The supervisor replaces the dead worker.
        deadline = time.monotonic() + 15
        while len(psutil.Process(process.pid).children()) < 2 or not _healthy(port):
            assert time.monotonic() < deadline, "no replacement worker"
            await asyncio.sleep(0.1)
    finally:
        for stream in opened:
            stream.close()
