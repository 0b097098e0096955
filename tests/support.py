"""What the tests talk to bellcast with: the JSON API, an SSE reader on a raw socket, bellcast as a process; and
readers of its metrics and error answers shared by several test modules."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pymongo
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.cluster import RedisCluster
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.testing import bind_unused_port
from tornado.web import Application

from services.auth import Authenticator
from services.cache import DeliveryCache, connections_key
from services.embedded import EmbeddedRedis, free_port
from services.expiry import KEY_PREFIX as EXPIRY_KEY_PREFIX_TEXT
from services.metrics import NAMESPACE, Metrics
from services.notifications import Change, Counts, Notification


@dataclass
class Event:
    """One parsed Server-Sent Event."""

    id: str | None = None
    event: str | None = None
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        """The event's data parsed as JSON."""
        return json.loads(self.data)


class API:
    """The HTTP API of a running bellcast, as a producer and as users."""

    def __init__(self, client: AsyncHTTPClient, base_url: str, api_key: str, authenticator: Authenticator) -> None:
        self.client = client
        self.base_url = base_url
        self.api_key = api_key
        self.authenticator = authenticator

    def token(self, user_id: str, lifetime: int = 3600) -> str:
        """A valid token for `user_id`."""
        return self.authenticator.mint_user_token(user_id, lifetime, time.time())

    async def request(
        self, method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None
    ) -> HTTPResponse:
        """Any request; never raises on an error status."""
        if body is None and method == "POST":
            body = b""
        return await self.client.fetch(
            self.base_url + path, method=method, body=body, headers=headers or {}, raise_error=False
        )

    async def create(self, user_id: str, title: str = "Hello", **fields: Any) -> dict[str, Any]:
        """Create a notification as a producer; asserts 201 and returns the JSON."""
        response = await self.request(
            "POST",
            "/api/notifications",
            json.dumps({"user_id": user_id, "title": title, **fields}),
            {"X-API-Key": self.api_key, "Content-Type": "application/json"},
        )
        assert response.code == 201, response.body
        return json.loads(response.body)

    async def as_user(self, user_id: str, method: str, path: str, body: bytes | str | None = None) -> HTTPResponse:
        """A request with the user's Bearer token."""
        return await self.request(method, path, body, {"Authorization": f"Bearer {self.token(user_id)}"})

    async def stream_ticket(self, user_id: str) -> str:
        """A ticket that opens one stream of `user_id`, minted with the user's Bearer token; asserts 200."""
        response = await self.as_user(user_id, "POST", "/notifications/stream-ticket")
        assert response.code == 200, response.body
        return str(json.loads(response.body)["ticket"])


class SSEStream:
    """A browser's EventSource reduced to a socket: send the request, de-chunk, parse events."""

    def __init__(self, stream: IOStream) -> None:
        self._stream = stream
        self.status = 0
        self.headers: dict[str, str] = {}
        self._buffer = b""
        self._chunked = False
        # Every byte of the event stream received so far (de-chunked), for tests of the framing itself, and each
        # HTTP chunk apart (a chunk is what one write of the server flushed).
        self.received = bytearray()
        self.chunks: list[bytes] = []
        # `changed` events, kept apart: `next_event` passes them by, `next_change` takes them in order.
        self.changes: list[Event] = []
        self._changes_taken = 0
        self._passed_by: list[Event] = []

    @classmethod
    async def open(
        cls,
        base_url: str,
        token: str | None,
        last_event_id: str | None = None,
        headers: dict[str, str] | None = None,
        http_version: str = "HTTP/1.1",
        ticket: str | None = None,
        receive_buffer: int | None = None,
    ) -> SSEStream:
        """Connect and read the response head; `headers` are sent too (an Origin, say). The credential in
        the URL: the `ticket` if given, else the `token`. `receive_buffer` shrinks the socket's (SO_RCVBUF),
        so that what the client does not read soon fills the kernel's buffers."""
        url = urlsplit(base_url)
        if receive_buffer is None:
            stream = await TCPClient().connect(url.hostname or "127.0.0.1", url.port or 80)
        else:
            sock = socket.socket()
            # Before connecting: the window the client offers is fixed as the connection opens.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            stream = IOStream(sock)
            await stream.connect((url.hostname or "127.0.0.1", url.port or 80))
        query = f"?ticket={ticket}" if ticket is not None else f"?access_token={token}" if token else ""
        path = "/notifications/stream" + query
        lines = [f"GET {path} {http_version}", f"Host: {url.netloc}", "Accept: text/event-stream"]
        if last_event_id is not None:
            lines.append(f"Last-Event-ID: {last_event_id}")
        lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
        stream.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        self = cls(stream)
        head = await stream.read_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding") == "chunked"
        return self

    async def _read_more(self) -> None:
        if self._chunked:
            size = int((await self._stream.read_until(b"\r\n")).strip(), 16)
            chunk = await self._stream.read_bytes(size + 2)
            if size == 0:
                raise StreamClosedError()
            data = chunk[:-2]
            self.chunks.append(data)
        else:
            data = await self._stream.read_bytes(65536, partial=True)
        self._buffer += data
        self.received += data

    async def next_event(self, timeout: float = 5.0) -> Event:
        """The next event or comment block other than a `changed` event; TimeoutError if none arrives in time."""
        return await asyncio.wait_for(self._next_other_than_a_change(), timeout)

    async def next_change(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next `changed` event's data; TimeoutError if none arrives in time."""
        await asyncio.wait_for(self._next_change(), timeout)
        self._changes_taken += 1
        return self.changes[self._changes_taken - 1].json()

    async def _next_other_than_a_change(self) -> Event:
        if self._passed_by:
            return self._passed_by.pop(0)
        while (event := await self._next_event()).event == "changed":
            self.changes.append(event)
        return event

    async def _next_change(self) -> None:
        while len(self.changes) <= self._changes_taken:
            event = await self._next_event()
            if event.event == "changed":
                self.changes.append(event)
            else:
                self._passed_by.append(event)

    async def _next_event(self) -> Event:
        while b"\n\n" not in self._buffer:
            await self._read_more()
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        event = Event()
        data_lines = []
        for line in block.decode().split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "":
                event.comments.append(value)
            elif name == "id":
                event.id = value
            elif name == "event":
                event.event = value
            elif name == "data":
                data_lines.append(value)
            elif name == "retry":
                event.retry = int(value)
        event.data = "\n".join(data_lines)
        return event

    async def notifications(self, count: int, timeout: float = 5.0) -> list[Event]:
        """The next `count` notification events, skipping comments and retry hints."""
        found: list[Event] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            event = await self.next_event(max(0.01, deadline - time.monotonic()))
            if event.event == "notification":
                found.append(event)
        return found

    async def assert_silent(self, seconds: float) -> None:
        """Fail if a notification arrives within `seconds`."""
        try:
            extra = await self.notifications(1, timeout=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected notification: {extra[0].data}")

    def close(self) -> None:
        """Close the socket, as a browser closing the tab does."""
        self._stream.close()


async def eventually(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> None:
    """Wait until the async `predicate()` is true; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def created_change(stream: SSEStream, notification_id: str) -> dict[str, Any]:
    """The `created` change of one notification, passing the others by."""
    while (change := await stream.next_change())["ids"] != [notification_id]:
        pass
    return change


async def change_of_kind(stream: SSEStream, kind: str) -> dict[str, Any]:
    """The next change of this kind, passing the others by."""
    while (change := await stream.next_change())["change"] != kind:
        pass
    return change


def counts_of(change: dict[str, Any]) -> Counts:
    """The counts a `changed` event carries."""
    return Counts(change["unread_count"], change["unseen_count"])


def iso_in(seconds: float) -> str:
    """The UTC time `seconds` from now in ISO 8601, as the API takes `expires_at`."""
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    return moment.isoformat().replace("+00:00", "Z")


def error_of(response: HTTPResponse) -> dict[str, Any]:
    """The `error` of a JSON error answer, checking its shape: only a code and a message, no traceback."""
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert "Traceback" not in response.body.decode()
    return dict(body["error"])


def b64url(raw: bytes) -> str:
    """Base64url without padding, as JWTs encode their parts."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class FailingObserver:
    """An observer that always raises, as one whose mail server is down."""

    async def created(self, notification: Notification) -> None:
        raise RuntimeError("mail server down")


@contextlib.asynccontextmanager
async def serving(app: Application) -> AsyncIterator[str]:
    """Serve `app` on a port of its own; yields its base URL."""
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        await server.close_all_connections()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_exposition(text: str) -> Samples:
    """Every sample of a /metrics answer, by name and labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def sample(found: Samples, name: str, process: str = "0", **labels: str) -> float:
    """Metric `name` (without the namespace) of `process` in a parsed exposition; 0 if absent."""
    return found.get((f"{NAMESPACE}_{name}", frozenset({"process": process, **labels}.items())), 0.0)


def metric_value(metrics: Metrics, name: str, **labels: str) -> float:
    """The value of bellcast's metric `name` (without the namespace) for this process; 0 before it is first counted."""
    value = metrics.registry.get_sample_value(f"{NAMESPACE}_{name}", {"process": metrics.process, **labels})
    return 0.0 if value is None else value


async def status_of_get(port: int, path: str, source_ip: str, headers: dict[str, str]) -> int:
    """GET `path` from 127.0.0.1:`port` over a connection from `source_ip` (any 127.x.y.z): the status."""
    stream = await TCPClient().connect("127.0.0.1", port, source_ip=source_ip)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        await stream.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await stream.read_until(b"\r\n\r\n")
        await stream.read_until_close()
        return int(head.split()[1])
    finally:
        stream.close()


def on_every_node(redis: Any) -> dict[str, Any]:
    """Options that send a command without a key (KEYS, INFO, CLIENT KILL) to every primary of a cluster.

    A cluster client sends such a command to one node only, where a test would find nothing.
    """
    return {"target_nodes": redis.get_primaries()} if isinstance(redis, RedisCluster) else {}


EXPIRY_KEY_PREFIX = EXPIRY_KEY_PREFIX_TEXT.encode()


async def cache_keys(redis: Any) -> list[bytes]:
    """bellcast's keys in Redis, from every node of a cluster, but the expiry sweep's (one lock and one bookmark
    for the whole deployment, services/expiry.py) and users' counts (one per user who was given a notification
    or changed one, expiring on their own): none of those is a stream's or a request's to leave behind."""
    keys = await redis.keys("bellcast:*", **on_every_node(redis))
    return [key for key in keys if not key.startswith(EXPIRY_KEY_PREFIX) and not key.endswith(b":counts")]


async def command_calls(redis: Any, command: str) -> int:
    """How many times Redis (all the nodes of a cluster) has run `command`."""
    stats = await redis.info("commandstats", **on_every_node(redis))
    per_node = stats.values() if isinstance(redis, RedisCluster) else [stats]
    return sum(int(node.get(f"cmdstat_{command}", {}).get("calls", 0)) for node in per_node)


def users_by_node(redis: RedisCluster, count_per_node: int) -> dict[str, list[str]]:
    """User ids whose keys live on each primary, `count_per_node` of each."""
    found: dict[str, list[str]] = {node.name: [] for node in redis.get_primaries()}
    index = 0
    while any(len(users) < count_per_node for users in found.values()):
        user_id = f"user{index}"
        node = redis.get_node_from_key(connections_key(user_id))
        assert node is not None
        users = found[node.name]
        if len(users) < count_per_node:
            users.append(user_id)
        index += 1
    return found


ROOT = Path(__file__).resolve().parent.parent


def port_below_the_ephemeral_range() -> int:
    """A free port below the kernel's ephemeral range, which neither `free_port()` (port 0) nor an outgoing
    connection is given: nothing else of a busy machine takes it while its server is stopped."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(max(1024, low - 10000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


class RestartableRedis:
    """A Redis of one test's own, on a fixed port, that the test may stop and start again (empty, as
    after a restart without persistence). Stopping it twice is harmless."""

    def __init__(self) -> None:
        self.port = port_below_the_ephemeral_range()
        self._server: EmbeddedRedis | None = EmbeddedRedis(None, port=self.port).start()
        self.url = self._server.url

    def stop(self) -> None:
        """Stop the server, as a crash or an outage would."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def start(self) -> None:
        """Start a new, empty server on the same port."""
        if self._server is None:
            self._server = EmbeddedRedis(None, port=self.port).start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it keeps its connections and answers nothing, as a hung one."""
        self._process().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        self._process().send_signal(signal.SIGCONT)

    def _process(self) -> psutil.Process:
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any(c.laddr.port == self.port and c.status == psutil.CONN_LISTEN for c in child.net_connections()):
                    return child
        raise LookupError(f"no process of this test run listens on port {self.port}")


# `python server.py`, as a checkout runs bellcast.
SERVER_PY = (sys.executable, "server.py")


class ServerProcess:
    """bellcast as a process of its own, started at once: `python server.py` unless `command` says otherwise.

    It runs on `store_urls` (MONGODB_URL, REDIS_URL: the test session's stores, as the fixtures give
    them) with a database of its own, or with `store_urls` None on embedded stores it starts itself.
    Its port is PORT; stdout and stderr go to `log`.
    """

    def __init__(
        self,
        store_urls: tuple[str, str] | None,
        log: Path,
        command: Sequence[str] = SERVER_PY,
        cwd: Path | str | None = None,
        **settings: str | None,
    ) -> None:
        """`settings` are environment variables; None removes one the test run may have set.

        `cwd`: the folder it runs in (the checkout unless given).
        """
        self.port = free_port()
        self.log = log
        self.command = list(command)
        self.cwd = Path(cwd) if cwd is not None else ROOT
        stores: dict[str, str | None] = {"MONGODB_URL": None, "REDIS_URL": None}
        if store_urls is not None:
            stores = dict(zip(("MONGODB_URL", "REDIS_URL"), store_urls, strict=True))
        environ: dict[str, str | None] = {
            **os.environ,
            "PORT": str(self.port),
            **stores,
            "MONGODB_DB": f"bellcast_test_{uuid.uuid4().hex[:12]}",
            **settings,
        }
        self.environ = {name: value for name, value in environ.items() if value is not None}
        self.database = self.environ["MONGODB_DB"]
        self.process = self._launch()

    def _launch(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as output:
            return subprocess.Popen(self.command, cwd=self.cwd, env=self.environ, stdout=output, stderr=output)

    @property
    def base_url(self) -> str:
        """Where it serves."""
        return f"http://127.0.0.1:{self.port}"

    def api(self) -> API:
        """Its HTTP API, with the JWT_SECRET and API_KEY it was given (call it inside the test's event loop)."""
        secret, api_key = self.environ["JWT_SECRET"], self.environ["API_KEY"]
        return API(AsyncHTTPClient(), self.base_url, api_key, Authenticator(secret, api_key))

    def output(self) -> str:
        """What the server has logged so far."""
        return self.log.read_text(errors="replace")

    def wait_until_ready(self, path: str = "/healthz", workers: int = 0, timeout: float = 30) -> None:
        """Wait until `path` answers 200 (and `workers` worker processes run); fail with the log if it does not."""
        deadline = time.monotonic() + timeout
        while not self.answers(path) or len(self.workers()) < workers:
            self._fail_if_down_or_late(deadline)
            time.sleep(0.1)

    def first_answer(self, path: str, timeout: float = 30) -> tuple[int, Any]:
        """The status and JSON body of the first answer to `path`, whatever its status."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())
            except OSError:
                self._fail_if_down_or_late(deadline)
                time.sleep(0.1)

    def _fail_if_down_or_late(self, deadline: float) -> None:
        if self.process.poll() is None and time.monotonic() < deadline:
            return
        self.kill()
        raise AssertionError("bellcast did not start:\n" + self.output()[-3000:])

    def answers(self, path: str) -> bool:
        """True if `path` answers 200 now."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def workers(self) -> list[psutil.Process]:
        """Its worker processes (with PROCESSES=N), or the embedded stores it started."""
        return list(psutil.Process(self.process.pid).children())

    def worker_holding(self, client_port: int, server_port: int | None = None) -> int | None:
        """The pid of the worker holding the server side of the connection from `client_port` to
        `server_port` (by default its PORT)."""
        for worker in self.workers():
            try:
                connections = worker.net_connections("tcp")
            except psutil.NoSuchProcess:  # a killed worker, gone between the listing and the look
                continue
            for connection in connections:
                served = connection.laddr.port == (server_port or self.port)
                if served and connection.raddr and connection.raddr.port == client_port:
                    return worker.pid
        return None

    async def open_streams_on_every_worker(
        self, token: str, opened: list[SSEStream], workers: int = 2, at_least: int = 1
    ) -> dict[int, list[SSEStream]]:
        """Open streams until each of `workers` worker processes holds one and `at_least` are open; the
        streams by the pid of the worker holding them. Each is appended to `opened`, which the caller closes."""
        by_worker: dict[int, list[SSEStream]] = {}
        while len(by_worker) < workers or len(opened) < at_least:
            assert len(opened) < 60, "the kernel never handed a stream to every worker"
            stream = await SSEStream.open(self.base_url, token)
            opened.append(stream)
            assert stream.status == 200, f"a stream answered {stream.status}"
            await stream.next_event()
            owner = self.worker_holding(stream._stream.socket.getsockname()[1])
            assert owner is not None
            by_worker.setdefault(owner, []).append(stream)
        return by_worker

    def restart(self) -> None:
        """Start it again, same port, same database (after `stop` or `kill`)."""
        self.process = self._launch()

    def stop(self) -> int:
        """SIGTERM, then the exit status (`wait`)."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        """SIGKILL, as when the machine dies: every connection drops at once."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def wait(self) -> int:
        """The exit status; a server still running 30 s later is killed and the test fails."""
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("no exit within 30 s of SIGTERM:\n" + self.output()[-3000:]) from None

    def drop_database(self) -> None:
        """Remove what it stored in MongoDB."""
        client: Any = pymongo.MongoClient(self.environ["MONGODB_URL"])
        with client:
            client.drop_database(self.database)


async def queue_created(cache: DeliveryCache, notification: Notification) -> int:
    """Queue a new notification as the cache observer does (its counts aside): how many connections it reached."""
    return (await cache.enqueue(Change.of_created(notification.user_id, [notification], None))).connections
