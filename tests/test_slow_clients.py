"""Clients that hold connections without finishing a request: each address, and all together, are bounded in
connections and in time, and the probes keep answering meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Callable

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from handlers.connections import BoundedHTTPServer, connection_limit_from_open_files
from tests.support import ServerProcess, eventually

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
PER_CLIENT = 20
ATTACKERS = 200
# How long a test waits for what must happen "at once" or "at the timeout": a bound for the test to end,
# generous for a loaded machine, not a claim about speed.
PATIENCE = 10.0
METRICS_TOKEN = "slow-clients-metrics-" + "m" * 16
# The clients' connections a test opened, closed when its server stops.
_OPENED: list[asyncio.StreamWriter] = []


@pytest.fixture
def wakeup_hints() -> bool:
    """Streams play no part here: one delivery mode is enough."""
    return True


@pytest.fixture
def serve(app) -> Callable[..., contextlib.AbstractAsyncContextManager[tuple[int, BoundedHTTPServer]]]:
    @contextlib.asynccontextmanager
    async def start(**limits: object) -> AsyncIterator[tuple[int, BoundedHTTPServer]]:
        sock, port = bind_unused_port()
        refused: list[str] = []
        server = BoundedHTTPServer(app, on_refused=refused.append, **limits)
        server.add_sockets([sock])
        server.refused = refused  # type: ignore[attr-defined]
        try:
            yield port, server
        finally:
            for writer in _OPENED:
                writer.close()
            _OPENED.clear()
            server.stop()
            await server.close_all_connections()

    return start


async def _open(port: int, source_ip: str, first_bytes: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source_ip, 0))
    _OPENED.append(writer)
    writer.write(first_bytes)
    await writer.drain()
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (end of file or reset) within PATIENCE; what it sent is skipped."""

    async def until_closed() -> None:
        while await reader.read(1 << 16):
            pass

    try:
        await asyncio.wait_for(until_closed(), PATIENCE)
    except (ConnectionResetError, BrokenPipeError):  # a reset, or a write of ours that met the closed socket
        return True
    except TimeoutError:
        return False
    return True


async def _healthz(port: int) -> int:
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}/healthz", request_timeout=PATIENCE, raise_error=False
    )
    return response.code


@pytest.mark.gen_test(timeout=60)
async def test_one_address_holding_half_sent_requests_gets_its_cap_and_no_more_and_the_probes_still_answer(serve):
    async with serve(max_connections_per_client=PER_CLIENT, header_timeout=30.0) as (port, server):
        attackers = [
            await _open(port, "127.0.0.2", b"GET /api/notifications HTTP/1.1\r\nHost: x\r\n") for _ in range(ATTACKERS)
        ]
        closed = await asyncio.gather(*(_closed_by_server(reader) for reader, _ in attackers[PER_CLIENT:]))
        assert all(closed)
        assert server.open_connections == PER_CLIENT
        assert server.refused == ["per_client"] * (ATTACKERS - PER_CLIENT)
        # Another address is served meanwhile.
        assert await _healthz(port) == 200
        for _, writer in attackers:
            writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_client_that_sends_its_headers_or_its_body_too_slowly_is_cut_off_at_the_timeout(serve, settings):
    async with serve(header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT) as (port, server):
        started = time.monotonic()
        slow_headers, headers_writer = await _open(port, "127.0.0.3", b"POST /api/notifications HTTP/1.1\r\n")
        # A producer's (without the key, the request would be refused before its body: tests/test_bodies.py).
        slow_body, body_writer = await _open(
            port,
            "127.0.0.4",
            b"POST /api/notifications HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n"
            + f"X-API-Key: {settings.api_key}\r\n\r\n{{".encode(),
        )
        idle, idle_writer = await _open(port, "127.0.0.5", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await idle.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        # A byte now and then does not keep a request alive past its timeout.
        for _ in range(3):
            await asyncio.sleep(HEADER_TIMEOUT / 3)
            headers_writer.write(b"X-Slow: 1\r\n")
            body_writer.write(b" ")
        assert await _closed_by_server(slow_headers)
        assert await _closed_by_server(slow_body)
        assert await _closed_by_server(idle)  # a kept-alive connection idle past the timeout
        assert time.monotonic() - started >= HEADER_TIMEOUT
        assert server.open_connections == 0
        for writer in (headers_writer, body_writer, idle_writer):
            writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_past_the_process_limit_connections_are_refused_at_once_and_served_again_once_others_close(serve):
    async with serve(max_connections=50, header_timeout=30.0) as (port, server):
        held = [await _open(port, f"127.0.1.{i % 250 + 1}", b"GET / HTTP/1.1\r\n") for i in range(50)]
        extra_reader, extra_writer = await _open(port, "127.0.2.1", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await _closed_by_server(extra_reader)
        assert server.refused == ["total"]
        for _, writer in held:
            writer.close()

        async def all_closed() -> bool:
            return server.open_connections == 0

        await eventually(all_closed, timeout=PATIENCE)
        assert await _healthz(port) == 200
        extra_writer.close()


def test_by_default_the_process_keeps_files_for_its_stores_below_its_open_file_limit():
    import resource

    soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_limit_from_open_files() == max(64, soft_limit - 512)


def test_the_served_process_applies_the_caps_and_timeouts_of_its_settings_and_counts_refusals(store_urls, tmp_path):
    server = ServerProcess(
        store_urls,
        tmp_path / "bellcast.log",
        JWT_SECRET="slow-clients-secret-" + "s" * 32,
        API_KEY="slow-clients-key-" + "k" * 16,
        METRICS_TOKEN=METRICS_TOKEN,
        MAX_CONNECTIONS_PER_CLIENT="3",
        HEADER_TIMEOUT="1",
    )
    held: list[socket.socket] = []
    try:
        server.wait_until_ready()
        for _ in range(5):
            connection = socket.create_connection(
                ("127.0.0.1", server.port), timeout=PATIENCE, source_address=("127.0.0.6", 0)
            )
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            held.append(connection)
        # The last two are closed at once; the first three once HEADER_TIMEOUT has passed.
        assert all(_closed_by_peer(connection) for connection in held)
        request = urllib.request.Request(
            f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=PATIENCE) as response:
            exposition = response.read().decode()
        assert 'bellcast_connections_refused_total{process="0",reason="per_client"} 2.0' in exposition
    finally:
        for connection in held:
            connection.close()
        server.stop()


def _closed_by_peer(connection: socket.socket) -> bool:
    """True once the server closed the connection (end of file or reset); False if it stays silent past PATIENCE."""
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
