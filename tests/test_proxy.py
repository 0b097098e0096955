"""deploy/nginx.conf for real: Debian's nginx on loopback in front of bellcast.

Events pass through unbuffered, heartbeats keep a stream open past nginx's `proxy_read_timeout`,
and bellcast believes the client address nginx forwards. The test runs the shipped file with
three changes: the ports, and a read timeout of a few seconds instead of a minute; around it,
site-wide compression as many servers have it, and clients that accept gzip as browsers do.
Two controls show that the tests can fail: without heartbeats nginx closes the stream, and a
location that buffers and compresses holds every event back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest
from tornado.iostream import StreamClosedError
from tornado.testing import bind_unused_port

from handlers.proxy import TrustedProxyHTTPServer
from server import make_app
from services.embedded import free_port
from tests.support import SSEStream, status_of_get

DEPLOY_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"
# The test's `proxy_read_timeout`, and a heartbeat well inside it (the `settings` fixture's).
READ_TIMEOUT = 2
HEARTBEAT = 0.5
STARTUP_TIMEOUT = 10.0
# A notification created while the stream is open must arrive this soon through nginx.
PROMPTLY = 1.0
# What a browser's EventSource sends, and what makes a compressing proxy hold events back.
BROWSER_HEADERS = {"Accept-Encoding": "gzip, deflate, br"}
# The location as it would be without its two guards, behind a proxy that ignores bellcast's
# `X-Accel-Buffering: no` as proxies other than nginx do.
BUFFERING_AND_COMPRESSING = [
    ("proxy_buffering off;", "proxy_buffering on;\n        proxy_ignore_headers X-Accel-Buffering;"),
    ("gzip off;", "gzip on;"),
]


@pytest.fixture
def wakeup_hints() -> bool:
    """Through the proxy, the production default: streams woken by hints."""
    return True


@pytest.fixture(scope="session")
def nginx_executable() -> str:
    """Debian's nginx: required in CI, where .ci/run installs it; elsewhere its absence skips, loudly."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is not None:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("nginx is not installed, and CI must run the reverse-proxy tests: .ci/run installs it")
    pytest.skip("NGINX IS NOT INSTALLED: the reverse-proxy tests did NOT run (apt-get install nginx)")


def site_config(listen_port: int, upstream_port: int, read_timeout: int, edits: Sequence[tuple[str, str]] = ()) -> str:
    """deploy/nginx.conf with the test's ports and read timeout (and `edits`); the rest stays as shipped."""
    site = DEPLOY_CONFIG.read_text()
    for shipped, tested in [
        ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
        ("server 127.0.0.1:8888;", f"server 127.0.0.1:{upstream_port};"),
        ("proxy_read_timeout 60s;", f"proxy_read_timeout {read_timeout}s;"),
        *edits,
    ]:
        assert site.count(shipped) == 1, f"deploy/nginx.conf no longer says {shipped!r} once: update this test"
        site = site.replace(shipped, tested)
    return site


class Nginx:
    """An nginx master in the foreground whose configuration, logs and temporary files live in `directory`."""

    def __init__(self, executable: str, directory: Path) -> None:
        self._executable = executable
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def launch(self, upstream_port: int, read_timeout: int, edits: Sequence[tuple[str, str]] = ()) -> None:
        """Write the configuration and start nginx on a free loopback port."""
        self._directory.mkdir(parents=True)
        self.port = free_port()
        access_log = ("/var/log/nginx/bellcast.access.log", str(self.access_log))
        site = site_config(self.port, upstream_port, read_timeout, [access_log, *edits])
        (self._directory / "bellcast.conf").write_text(site)
        config = self._directory / "nginx.conf"
        config.write_text(self._main_config())
        log = self._directory / "error.log"
        command = [self._executable, "-p", str(self._directory), "-c", str(config), "-e", str(log)]
        self._process = subprocess.Popen([*command, "-g", "daemon off;"], stderr=subprocess.STDOUT)

    @property
    def access_log(self) -> Path:
        """The site's access log, in the shipped format."""
        return self._directory / "bellcast.access.log"

    async def wait_until_listening(self) -> Nginx:
        """Return once nginx accepts connections; fail with its error log if it exits or takes too long."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not await self._accepts():
            assert self._process is not None
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = self._directory / "error.log"
                raise AssertionError(f"nginx did not start:\n{log.read_text() if log.exists() else ''}")
            await asyncio.sleep(0.05)
        return self

    def _main_config(self) -> str:
        where = self._directory
        # As root, nginx's workers would run as nobody, who cannot enter pytest's temporary folders.
        user = "user root;" if os.geteuid() == 0 else ""
        temp_paths = "\n".join(f"    {kind}_temp_path {where / kind};" for kind in ("client_body", "proxy", "fastcgi"))
        return f"""{user}
worker_processes 1;
pid {where / "nginx.pid"};
error_log {where / "error.log"} info;
events {{ worker_connections 64; }}
http {{
    access_log {where / "access.log"};
    # Site-wide compression, as many servers have it: the shipped location keeps it off the stream.
    gzip on;
    gzip_types text/event-stream application/json;
{temp_paths}
    uwsgi_temp_path {where / "uwsgi"};
    scgi_temp_path {where / "scgi"};
    include {where / "bellcast.conf"};
}}
"""

    async def _accepts(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        return True

    def stop(self) -> None:
        """Fast shutdown (SIGTERM), which also closes the open streams."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


ProxyStarter = Callable[..., Awaitable[Nginx]]


@pytest.fixture
def behind_nginx(nginx_executable, runtime, settings, tmp_path) -> Iterator[ProxyStarter]:
    """Start bellcast (trusting 127.0.0.1 as its proxy) and nginx in front: `await behind_nginx(...)`."""
    started: list[TrustedProxyHTTPServer | Nginx] = []

    async def start(edits: Sequence[tuple[str, str]] = ()) -> Nginx:
        assert settings.heartbeat_interval < READ_TIMEOUT or settings.heartbeat_interval > READ_TIMEOUT + 5
        app = make_app(runtime, settings)
        sock, upstream_port = bind_unused_port()
        server = TrustedProxyHTTPServer(app, trusted_proxies=[ipaddress.ip_network("127.0.0.1/32")])
        server.add_sockets([sock])
        started.append(server)
        nginx = Nginx(nginx_executable, tmp_path / f"nginx-{len(started)}")
        started.append(nginx)
        nginx.launch(upstream_port, READ_TIMEOUT, edits)
        return await nginx.wait_until_listening()

    yield start
    for thing in reversed(started):
        thing.stop()


@contextlib.asynccontextmanager
async def stream_through(nginx: Nginx, token: str) -> AsyncIterator[SSEStream]:
    """An SSE stream opened through nginx, past its first block (the retry hint and `: connected`)."""
    stream = await SSEStream.open(f"http://127.0.0.1:{nginx.port}", token, headers=BROWSER_HEADERS)
    try:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in stream.headers
        assert (await stream.next_event()).retry is not None
        yield stream
    finally:
        stream.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_notification_created_while_the_stream_is_open_arrives_through_nginx_at_once(behind_nginx, api):
    nginx = await behind_nginx()
    async with stream_through(nginx, api.token("alice")) as stream:
        sent_at = time.monotonic()
        created = await api.create("alice", "Through the proxy")
        [event] = await stream.notifications(1, timeout=PROMPTLY)
        latency = time.monotonic() - sent_at
        assert event.id == created["id"] and event.json() == created
        # Not flushed by the stream's end: the same stream goes on with its heartbeat.
        assert "heartbeat" in (await stream.next_event(timeout=HEARTBEAT + 1)).comments
    print(f"delivery through nginx: {latency * 1000:.0f} ms from POST to event")


@pytest.mark.gen_test(timeout=30)
async def test_heartbeats_keep_the_stream_open_past_nginx_read_timeout(behind_nginx, api):
    nginx = await behind_nginx()
    async with stream_through(nginx, api.token("alice")) as stream:
        opened_at = time.monotonic()
        heartbeats = 0
        while time.monotonic() - opened_at < 2.5 * READ_TIMEOUT:
            event = await stream.next_event(timeout=READ_TIMEOUT)
            heartbeats += "heartbeat" in event.comments
        assert heartbeats >= 2 * READ_TIMEOUT / HEARTBEAT
        created = await api.create("alice", "Still there")
        [event] = await stream.notifications(1, timeout=PROMPTLY)
        assert event.id == created["id"]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("heartbeat_interval", [60.0])
async def test_without_heartbeats_nginx_closes_a_silent_stream_at_its_read_timeout(behind_nginx, api):
    """The control: the read timeout is real, so the test above passes because of the heartbeats."""
    nginx = await behind_nginx()
    async with stream_through(nginx, api.token("alice")) as stream:
        opened_at = time.monotonic()
        with pytest.raises(StreamClosedError):
            while True:
                await stream.next_event(timeout=READ_TIMEOUT + 3)
        assert READ_TIMEOUT - 0.5 < time.monotonic() - opened_at < READ_TIMEOUT + 3


@pytest.mark.gen_test(timeout=30)
async def test_control_a_location_that_buffers_and_compresses_holds_the_events_back(behind_nginx, api):
    """The control: the test of prompt delivery above would catch a proxy that holds events back."""
    nginx = await behind_nginx(edits=BUFFERING_AND_COMPRESSING)
    reader, writer = await asyncio.open_connection("127.0.0.1", nginx.port)
    try:
        request = [f"GET /notifications/stream?access_token={api.token('alice')} HTTP/1.1", "Host: bellcast"]
        request += [f"{name}: {value}" for name, value in BROWSER_HEADERS.items()]
        writer.write(("\r\n".join(request) + "\r\n\r\n").encode())
        await asyncio.sleep(0.2)
        await api.create("alice", "Held back")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 2 * PROMPTLY)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.gen_test(timeout=30)
async def test_bellcast_sees_the_client_address_nginx_saw_not_the_one_the_client_claims(behind_nginx, caplog):
    caplog.set_level(logging.DEBUG, logger="tornado.access")  # a successful /healthz is logged at debug level
    nginx = await behind_nginx()
    spoofed = {"X-Forwarded-For": "198.51.100.7", "X-Real-IP": "198.51.100.7"}
    assert await status_of_get(nginx.port, "/healthz", "127.0.0.2", spoofed) == 200
    [line] = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert "GET /healthz (127.0.0.2)" in line


@pytest.mark.gen_test(timeout=30)
async def test_the_shipped_access_log_keeps_the_paths_and_leaves_tokens_in_query_strings_out(behind_nginx, api):
    nginx = await behind_nginx()
    token = api.token("alice")
    async with stream_through(nginx, token):
        pass
    listed = await api.client.fetch(
        f"http://127.0.0.1:{nginx.port}/api/notifications?access_token={token}", raise_error=False
    )
    assert listed.code == 200
    nginx.stop()  # flushes and closes the log
    logged = nginx.access_log.read_text()
    assert '"GET /notifications/stream HTTP/1.1" 200' in logged
    assert '"GET /api/notifications HTTP/1.1" 200' in logged
    assert token not in logged and "access_token" not in logged
