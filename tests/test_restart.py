"""A bellcast stopped with SIGTERM and started again loses nothing that was created before the signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from services.auth import Authenticator
from services.embedded import free_port
from tests.support import API, SSEStream

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "restart-secret-" + "x" * 20
API_KEY = "restart-api-key-" + "y" * 10
CREATED = 20


def _start(port: int, environ: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "server.py"], cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while not _healthy(port):
        assert process.poll() is None and time.monotonic() < deadline, "bellcast did not start"
        time.sleep(0.1)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output.decode()[-3000:]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.gen_test(timeout=90)
async def test_what_was_created_before_sigterm_is_listed_and_streamed_once_after_a_restart(store_urls):
    mongodb_url, redis_url = store_urls
    port = free_port()
    environ = {
        **os.environ,
        "PORT": str(port),
        "MONGODB_URL": mongodb_url,
        "REDIS_URL": redis_url,
        "MONGODB_DB": f"bellcast_test_{uuid.uuid4().hex[:12]}",
        "JWT_SECRET": JWT_SECRET,
        "API_KEY": API_KEY,
    }
    base_url = f"http://127.0.0.1:{port}"
    api = API(AsyncHTTPClient(), base_url, API_KEY, Authenticator(JWT_SECRET, API_KEY))
    process = _start(port, environ)
    try:
        stream = await SSEStream.open(base_url, api.token("carol"))
        await stream.next_event()
        created = [await api.create("carol", f"before the signal {i}") for i in range(CREATED)]
        [first] = await stream.notifications(1)  # the browser saw the first one, then the server went away
        assert first.id == created[0]["id"]
    finally:
        _stop(process)
    stream.close()

    process = _start(port, environ)
    try:
        page = json.loads((await api.as_user("carol", "GET", "/api/notifications?limit=100")).body)
        assert [n["id"] for n in page["notifications"]] == [n["id"] for n in reversed(created)]
        resumed = await SSEStream.open(base_url, api.token("carol"), last_event_id=first.id)
        events = await resumed.notifications(CREATED - 1)
        assert [e.id for e in events] == [n["id"] for n in created[1:]]
        await resumed.assert_silent(0.3)
        resumed.close()
    finally:
        _stop(process)
