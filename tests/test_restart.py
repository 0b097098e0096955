"""A bellcast stopped with SIGTERM and started again loses nothing that was created before the signal."""

from __future__ import annotations

import json

import pytest

from tests.support import ServerProcess, SSEStream

JWT_SECRET = "restart-secret-" + "x" * 20
API_KEY = "restart-api-key-" + "y" * 10
CREATED = 20


@pytest.mark.gen_test(timeout=90)
async def test_what_was_created_before_sigterm_is_listed_and_streamed_once_after_a_restart(store_urls, tmp_path):
    server = ServerProcess(store_urls, tmp_path / "bellcast.log", JWT_SECRET=JWT_SECRET, API_KEY=API_KEY)
    server.wait_until_ready()
    base_url = server.base_url
    api = server.api()
    try:
        stream = await SSEStream.open(base_url, api.token("carol"))
        await stream.next_event()
        created = [await api.create("carol", f"before the signal {i}") for i in range(CREATED)]
        [first] = await stream.notifications(1)  # the browser saw the first one, then the server went away
        assert first.id == created[0]["id"]
    finally:
        assert server.stop() == 0, server.output()[-3000:]
    stream.close()

    server.restart()
    server.wait_until_ready()
    try:
        page = json.loads((await api.as_user("carol", "GET", "/api/notifications?limit=100")).body)
        assert [n["id"] for n in page["notifications"]] == [n["id"] for n in reversed(created)]
        resumed = await SSEStream.open(base_url, api.token("carol"), last_event_id=first.id)
        events = await resumed.notifications(CREATED - 1)
        assert [e.id for e in events] == [n["id"] for n in created[1:]]
        await resumed.assert_silent(0.3)
        resumed.close()
    finally:
        assert server.stop() == 0, server.output()[-3000:]
