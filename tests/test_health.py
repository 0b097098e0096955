"""`/healthz` says which store cannot be reached; `/readyz` also says when the process is shutting down."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from server import make_app
from tests.support import ServerProcess, SSEStream, command_calls, serving


@pytest.mark.gen_test(timeout=30)
async def test_healthz_answers_503_naming_an_unreachable_redis(http_client, settings, runtime_without_redis):
    async with serving(make_app(runtime_without_redis, settings)) as base_url:
        response = await http_client.fetch(base_url + "/healthz", raise_error=False)
    assert response.code == 503
    assert json.loads(response.body) == {
        "status": "unavailable",
        "checks": {"mongodb": "ok", "redis": "unreachable"},
    }


@pytest.mark.gen_test
async def test_readyz_answers_200_when_both_stores_answer(api):
    response = await api.request("GET", "/readyz", headers={"X-Request-ID": "probe-1"})
    assert response.code == 200
    assert json.loads(response.body) == {"status": "ready", "checks": {"mongodb": "ok", "redis": "ok"}}
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Request-ID"] == "probe-1"


JWT_SECRET = "health-secret-" + "x" * 20
API_KEY = "health-api-key-" + "y" * 10


PROBES = 500


@pytest.mark.gen_test(timeout=60)
async def test_hundreds_of_concurrent_probes_share_one_ping_and_never_make_a_healthy_store_look_down(
    api, base_url, runtime
):
    """A load balancer's probes, or anyone's: they must not take the stores' connections nor fake an outage."""
    pings_before = await command_calls(runtime.redis, "ping")
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=PROBES)
    try:
        answers = await asyncio.gather(
            *(client.fetch(f"{base_url}/readyz", raise_error=False, request_timeout=30) for _ in range(PROBES))
        )
    finally:
        client.close()
    assert [answer.code for answer in answers] == [200] * PROBES
    assert {json.loads(answer.body)["checks"]["redis"] for answer in answers} == {"ok"}
    # One PING per wave of probes that arrive while none is under way, not one per probe.
    assert await command_calls(runtime.redis, "ping") - pings_before < PROBES / 10


@pytest.fixture
def delayed_shutdown_server(store_urls, tmp_path):
    """`python server.py` with SHUTDOWN_DELAY=3 (and JSON logs, the default with configured secrets)."""
    server = ServerProcess(
        store_urls, tmp_path / "bellcast.log", JWT_SECRET=JWT_SECRET, API_KEY=API_KEY, SHUTDOWN_DELAY="3"
    )
    server.wait_until_ready("/readyz")
    yield server
    server.kill()


@pytest.mark.gen_test(timeout=60)
async def test_on_sigterm_readyz_turns_503_first_while_streams_are_still_served(delayed_shutdown_server):
    """SHUTDOWN_DELAY: not ready at once, but still serving; then the streams are told to end."""
    server = delayed_shutdown_server
    process = server.process
    api = server.api()
    stream = await SSEStream.open(server.base_url, api.token("frank"))
    await stream.next_event()
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 2
    while (answer := await api.request("GET", "/readyz")).code != 503:
        assert time.monotonic() < deadline, "still ready after SIGTERM"
        await asyncio.sleep(0.05)
    assert json.loads(answer.body) == {"status": "shutting_down", "checks": {}}
    assert (await api.request("GET", "/healthz")).code == 200
    created = await api.create("frank", "during the shutdown delay")
    [event] = await stream.notifications(1)
    assert event.id == created["id"]
    ending = await stream.next_event(timeout=10)
    while "server restarting" not in ending.comments:
        ending = await stream.next_event(timeout=10)
    with pytest.raises(StreamClosedError):
        await stream.next_event(timeout=10)
    deadline = time.monotonic() + 30
    while process.poll() is None:
        assert time.monotonic() < deadline, "no exit after the streams ended"
        await asyncio.sleep(0.1)
    assert process.returncode == 0
    lines = [json.loads(line) for line in server.output().splitlines()]
    shutting_down = next(i for i, line in enumerate(lines) if line["message"].startswith("shutting down"))
    stream_ended = next(i for i, line in enumerate(lines) if line.get("ended_by") == "shutdown")
    assert shutting_down < stream_ended
