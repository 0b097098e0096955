"""PROCESSES=N with metrics: whichever worker a scrape lands on reports every worker; a dead one's streams leave."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import pytest
from tornado.tcpclient import TCPClient

from services.embedded import free_port
from tests.support import Samples, ServerProcess, SSEStream, parse_exposition, sample

JWT_SECRET = "metered-secret-" + "x" * 20
API_KEY = "metered-api-key-" + "y" * 10
METRICS_TOKEN = "metered-token-" + "z" * 20


def _first_worker_pids(workers: ServerProcess) -> list[int]:
    """The first workers' pids, by index, from the supervisor's log."""
    started = re.search(r"started 2 worker processes: (\d+), (\d+)", workers.output())
    assert started is not None
    return [int(pid) for pid in started.groups()]


@pytest.fixture
def workers(store_urls, tmp_path):
    """`python server.py` with PROCESSES=2 and metrics, its output in a file."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    server = ServerProcess(
        store_urls,
        tmp_path / "bellcast.log",
        METRICS_PORT=str(free_port()),
        PROCESSES="2",
        JWT_SECRET=JWT_SECRET,
        API_KEY=API_KEY,
        METRICS_TOKEN=METRICS_TOKEN,
        LOG_FORMAT="text",
        # Where the supervisor makes the shared metrics directory, to see that it is gone afterwards.
        TMPDIR=str(temporary),
    )
    server.wait_until_ready("/readyz", workers=2)
    assert [p.name[:17] for p in temporary.iterdir()] == ["bellcast-metrics-"]
    yield server
    assert server.stop() == 0, server.output()
    assert list(temporary.iterdir()) == [], "the shared metrics directory outlived bellcast"


async def scrape(workers: ServerProcess, port: int) -> tuple[int | None, Samples]:
    """One scrape on a connection of its own: which worker answered, and what it said."""
    stream = await TCPClient().connect("127.0.0.1", port)
    try:
        request = f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {METRICS_TOKEN}\r\n\r\n"
        await stream.write(request.encode())
        head = (await stream.read_until(b"\r\n\r\n")).decode("latin-1")
        assert head.startswith("HTTP/1.1 200"), head
        length = int(re.search(r"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        body = await stream.read_bytes(length)
        # Kept open until now, so the worker still holds its side.
        return workers.worker_holding(stream.socket.getsockname()[1], port), parse_exposition(body.decode())
    finally:
        stream.close()


@pytest.mark.gen_test(timeout=90)
async def test_any_worker_answers_a_scrape_for_every_worker_and_a_dead_one_leaves_the_open_streams(workers):
    api = workers.api()
    pids = _first_worker_pids(workers)
    opened_streams: list[SSEStream] = []
    try:
        by_worker = await workers.open_streams_on_every_worker(api.token("erin"), opened_streams, at_least=3)
        assert set(by_worker) == set(pids)
        expected = {str(index): len(by_worker[pid]) for index, pid in enumerate(pids)}

        answered_by: set[int | None] = set()
        for _ in range(40):
            owner, found = await scrape(workers, workers.port)
            answered_by.add(owner)
            assert {p: sample(found, "streams_open", p) for p in expected} == expected, f"scrape answered by {owner}"
            if answered_by >= set(pids):
                break
        assert answered_by >= set(pids), "every scrape landed on one worker"
        _, found = await scrape(workers, int(workers.environ["METRICS_PORT"]))
        assert {p: sample(found, "streams_open", p) for p in expected} == expected

        victim_index = next(index for index, pid in enumerate(pids) if by_worker[pid])
        victim = pids[victim_index]
        os.kill(victim, signal.SIGKILL)
        survivor = str(1 - victim_index)
        deadline = time.monotonic() + 20
        while True:
            _, found = await scrape(workers, workers.port)
            if sample(found, "streams_open", str(victim_index)) == 0:
                break
            assert time.monotonic() < deadline, "the dead worker's streams are still counted as open"
            await asyncio.sleep(0.2)
        assert sample(found, "streams_open", survivor) == expected[survivor]
        # Counters of the dead worker stay in the sums: its replacement's go on from them.
        assert sample(found, "streams_opened_total", str(victim_index)) == expected[str(victim_index)]
    finally:
        for stream in opened_streams:
            stream.close()
