"""Request bodies are read only once the headers were admitted, and no further than the endpoint takes: a client
without credentials is answered before it sends its body, and cannot make the process hold one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import psutil
import pytest
from tornado.testing import bind_unused_port

from handlers.connections import BoundedHTTPServer
from server import Settings, make_app
from tests.support import ServerProcess, eventually

# What a test waits for an answer that must come "at once": a bound for the test to end, not a claim about speed.
PATIENCE = 10.0
DECLARED_LENGTH = 1_000_000
METRICS_TOKEN = "bodies-metrics-token-" + "m" * 16
MAX_BODY_BYTES = 4096


@pytest.fixture
def wakeup_hints() -> bool:
    """Streams play no part here: one delivery mode is enough."""
    return True


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, metrics_token=METRICS_TOKEN, max_body_bytes=MAX_BODY_BYTES)


@pytest.fixture
def server(io_loop, runtime, settings: Settings) -> Iterator[tuple[int, BoundedHTTPServer]]:
    """bellcast with its development routes, on a port of its own: (port, server)."""
    sock, port = bind_unused_port()
    served = BoundedHTTPServer(make_app(runtime, settings, development_routes=True))
    served.add_sockets([sock])
    yield port, served
    served.stop()
    io_loop.run_sync(served.close_all_connections)


class Client:
    """A client on a raw socket that sends a request's head and as much of its body as it likes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def send_head(
        cls, port: int, method: str, path: str, headers: dict[str, str], first_body_bytes: bytes = b"{"
    ) -> Client:
        """Connect, send the head and the first bytes of the body, and send nothing more."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in {"Host": "localhost", **headers}.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + first_body_bytes)
        await writer.drain()
        return cls(reader, writer)

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and body of the answer, which must come while the client sends nothing more."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), PATIENCE)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", "0"))), PATIENCE)
        return int(status_line.split()[1]), headers, body

    async def closed_by_server(self) -> bool:
        """True once the server closed the connection (end of file or reset) within PATIENCE."""
        try:
            return await asyncio.wait_for(self.reader.read(1), PATIENCE) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


def _error_code(body: bytes) -> str:
    parsed = json.loads(body)
    assert set(parsed) == {"error"}
    return str(parsed["error"]["code"])


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("POST", "/api/notifications", {}, 401),
        ("POST", "/api/notifications", {"X-API-Key": "not-the-key-" + "k" * 16}, 403),
        ("POST", "/api/notifications/read-all", {}, 401),
        ("POST", "/api/notifications/0123456789abcdef01234567/read", {"Authorization": "Bearer forged"}, 401),
        # The cookie's writes must come as JSON from an allowed page: refused before the body too.
        ("POST", "/api/notifications/read-all", {"Cookie": "bellcast_token=x", "Content-Type": "text/plain"}, 403),
        ("POST", "/dev/token", {"Host": "evil.example"}, 403),
        ("POST", "/dev/notifications", {"Host": "evil.example"}, 403),
        ("POST", "/no/such/endpoint", {}, 404),
        # Endpoints that read no body take none.
        ("GET", "/healthz", {}, 413),
        ("GET", "/api/notifications", {}, 413),
        ("GET", "/notifications/stream", {}, 413),
        # The status page's form: a token of METRICS_TOKEN's size, not a megabyte.
        ("POST", "/status", {"Content-Type": "application/x-www-form-urlencoded"}, 413),
    ],
)
async def test_a_request_refused_by_its_headers_is_answered_before_its_body_is_sent_and_its_connection_closed(
    server, method, path, headers, status
):
    port, served = server
    client = await Client.send_head(port, method, path, {"Content-Length": str(DECLARED_LENGTH), **headers})
    try:
        answered, answer_headers, body = await client.answer()
        assert answered == status
        assert answer_headers["content-type"].startswith("application/json")
        assert _error_code(body) in {"unauthorized", "forbidden", "not_found", "payload_too_large"}
        assert await client.closed_by_server()
    finally:
        client.close()

    async def released() -> bool:
        return served.open_connections == 0

    await eventually(released, timeout=PATIENCE)


@pytest.mark.gen_test(timeout=60)
async def test_a_static_file_takes_no_body_either(server):
    port, _ = server
    client = await Client.send_head(
        port, "GET", "/static/notification-bell.js", {"Content-Length": str(DECLARED_LENGTH)}
    )
    try:
        status, _, _ = await client.answer()
        assert status == 413
        assert await client.closed_by_server()
    finally:
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_producer_declaring_a_body_past_max_body_bytes_gets_a_json_413_before_sending_it(server, api):
    port, _ = server
    client = await Client.send_head(
        port,
        "POST",
        "/api/notifications",
        {"X-API-Key": api.api_key, "Content-Type": "application/json", "Content-Length": str(DECLARED_LENGTH)},
    )
    try:
        status, headers, body = await client.answer()
        assert status == 413 and headers["content-type"].startswith("application/json")
        error = json.loads(body)["error"]
        assert error["code"] == "payload_too_large" and str(MAX_BODY_BYTES) in error["message"]
        assert await client.closed_by_server()
    finally:
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_chunked_body_is_refused_with_a_json_413_as_soon_as_it_passes_max_body_bytes(server, api, runtime):
    port, _ = server
    client = await Client.send_head(
        port,
        "POST",
        "/api/notifications",
        {"X-API-Key": api.api_key, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        first_body_bytes=b"",
    )
    try:
        # One byte past the limit, in chunks, and the body not ended: the answer comes without its end.
        chunk = b'{"user_id": "alice", "title": "' + b"x" * (MAX_BODY_BYTES // 2)
        client.writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        rest = b"y" * (MAX_BODY_BYTES - len(chunk) + 1)
        client.writer.write(b"%x\r\n%s\r\n" % (len(rest), rest))
        await client.writer.drain()
        status, _, body = await client.answer()
        assert status == 413 and _error_code(body) == "payload_too_large"
        assert await client.closed_by_server()
    finally:
        client.close()
    assert await runtime.mongo.database["notifications"].count_documents({}) == 0


@pytest.mark.gen_test(timeout=60)
async def test_bodies_within_each_endpoints_limit_are_still_read(server, api):
    """The create, a user's write with a JSON `{}`, the development routes and the status form still get their
    bodies, chunked too."""
    port, _ = server
    created = await api.create("alice")
    fields = json.dumps({"user_id": "alice", "title": "chunked"}).encode()
    client = await Client.send_head(
        port,
        "POST",
        "/api/notifications",
        {"X-API-Key": api.api_key, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        first_body_bytes=b"%x\r\n%s\r\n0\r\n\r\n" % (len(fields), fields),
    )
    try:
        status, _, body = await client.answer()
        assert status == 201 and json.loads(body)["title"] == "chunked"
    finally:
        client.close()
    base = f"http://127.0.0.1:{port}"
    token = api.token("alice")
    read = await api.client.fetch(
        f"{base}/api/notifications/{created['id']}/read",
        method="POST",
        body="{}",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        raise_error=False,
    )
    assert read.code == 200
    minted = await api.client.fetch(
        f"{base}/dev/token", method="POST", body='{"user_id": "bob"}', headers={"Content-Type": "application/json"}
    )
    assert json.loads(minted.body)["user_id"] == "bob"
    signed_in = await api.client.fetch(
        f"{base}/status",
        method="POST",
        body=f"token={METRICS_TOKEN}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
        raise_error=False,
    )
    assert signed_in.code == 303


@pytest.mark.gen_test(timeout=120)
async def test_hundreds_of_clients_trickling_bodies_without_the_key_are_each_answered_401_and_let_go(server):
    port, served = server
    clients = await asyncio.gather(
        *(
            Client.send_head(port, "POST", "/api/notifications", {"Content-Length": str(DECLARED_LENGTH)})
            for _ in range(200)
        )
    )
    try:
        answers = await asyncio.gather(*(client.answer() for client in clients))
        assert {status for status, _, _ in answers} == {401}
        assert all(await asyncio.gather(*(client.closed_by_server() for client in clients)))
    finally:
        for client in clients:
            client.close()

    async def released() -> bool:
        return served.open_connections == 0

    await eventually(released, timeout=PATIENCE)


def test_clients_sending_bodies_without_the_key_do_not_grow_the_servers_memory(store_urls, tmp_path):
    """Forty clients each send 900 kB of a declared megabyte without the key: the server, refusing them
    before their bodies, does not hold the 36 MB Tornado would have read for them."""
    clients, sent_per_client = 40, 900_000
    server = ServerProcess(
        store_urls,
        tmp_path / "bellcast.log",
        JWT_SECRET="bodies-secret-" + "s" * 32,
        API_KEY="bodies-key-" + "k" * 16,
    )
    connections: list[socket.socket] = []
    try:
        server.wait_until_ready()
        process = psutil.Process(server.process.pid)
        before = process.memory_info().rss
        head = f"POST /api/notifications HTTP/1.1\r\nHost: x\r\nContent-Length: {DECLARED_LENGTH}\r\n\r\n".encode()
        for _ in range(clients):
            connection = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE)
            connections.append(connection)
            connection.sendall(head)
            with contextlib.suppress(OSError):  # the server closed the connection: the rest is not wanted
                for _ in range(sent_per_client // 50_000):
                    connection.sendall(b" " * 50_000)
        grown = process.memory_info().rss - before
        assert grown < clients * sent_per_client // 4, f"the server grew by {grown} bytes"
        # Each was answered, before the rest of its body; one deadline for all, so that a server that waits
        # for the bodies fails the test once.
        deadline = time.monotonic() + PATIENCE
        answers = []
        for connection in connections:
            connection.settimeout(max(0.01, deadline - time.monotonic()))
            with contextlib.suppress(OSError):
                answers.append(connection.recv(12))
        assert answers == [b"HTTP/1.1 401"] * clients
    finally:
        for connection in connections:
            connection.close()
        server.stop()
        server.drop_database()
