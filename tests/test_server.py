"""`python server.py`: settings checked at start, embedded stores started and stopped with it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from server import Settings, SettingsError, parse_settings
from services.auth import Authenticator
from services.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PORT": "eighty"}, "PORT='eighty'"),
        ({"PORT": "70000"}, "PORT='70000'"),
        ({"POLL_INTERVAL": "0"}, "POLL_INTERVAL"),
        ({"POLL_INTERVAL": "nan"}, "POLL_INTERVAL"),
        ({"MONGO_DRIVER": "mongoose"}, "MONGO_DRIVER"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
        ({"MONGODB_URL": "http://x"}, "MONGODB_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER"),
        ({"REDIS_CLUSTER": "1", "REDIS_URL": "unix:///run/redis.sock"}, "REDIS_CLUSTER"),
        ({"REDIS_CLUSTER": "1", "REDIS_URL": "redis://node1:6379/2"}, "REDIS_CLUSTER"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET=<hidden>"),
        ({"HEARTBEAT_INTERVAL": "1", "POLL_INTERVAL": "2"}, "HEARTBEAT_INTERVAL"),
    ],
)
def test_invalid_settings_are_refused_with_the_variable_named(environ, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        parse_settings([], environ)


@pytest.mark.parametrize(
    "url", ["redis://node1:6379", "redis://node1:6379/", "rediss://u:p@node1/0?ssl_cert_reqs=none"]
)
def test_a_cluster_url_of_database_0_is_accepted(url):
    assert parse_settings([], {"REDIS_CLUSTER": "true", "REDIS_URL": url}).redis_cluster


def test_flags_override_environment_which_overrides_defaults():
    settings = parse_settings(["--port", "9000"], {"PORT": "8000", "POLL_INTERVAL": "0.5"})
    assert settings == Settings(port=9000, poll_interval=0.5)


def test_server_refuses_to_start_on_an_invalid_setting():
    result = subprocess.run(
        [sys.executable, "server.py"], cwd=ROOT, env={**os.environ, "PORT": "x"}, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "invalid setting PORT='x'" in result.stderr
    assert "Traceback" not in result.stderr


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _start_healthy_server(data_dir: Path, environ: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    """`python server.py` on a free port with its data in `data_dir`, once /healthz finds both stores ok."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "server.py", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    health: tuple[int, dict] | None = None
    while health is None and process.poll() is None and time.monotonic() < deadline:
        try:
            health = _get(f"http://127.0.0.1:{port}/healthz")
        except OSError:
            time.sleep(0.1)
    stores_ok = {"mongodb": "ok", "redis": "ok"}
    if health is None or health[0] != 200 or health[1].get("checks") != stores_ok:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        raise AssertionError(f"server did not start healthy ({health}):\n{output}")
    return process, port


def test_server_starts_embedded_stores_serves_and_stops_them_on_sigterm(tmp_path):
    """Also the shutdown order: open streams get a retry hint and a clean end before the stores close."""
    environ = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URL", "REDIS_URL", "JWT_SECRET", "API_KEY")}
    process, port = _start_healthy_server(tmp_path, environ)
    try:
        secrets = json.loads((tmp_path / "development-secrets.json").read_text())
        assert set(secrets) == {"jwt_secret", "api_key"}
        token = Authenticator(secrets["jwt_secret"], secrets["api_key"]).mint_user_token("demo", 60, time.time())
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", f"/notifications/stream?access_token={token}")
        stream = connection.getresponse()
        assert stream.status == 200
        assert stream.readline() == b"retry: 2000\n"
        process.send_signal(signal.SIGTERM)
        rest = stream.read()  # raises IncompleteRead unless the chunked stream ends properly
        connection.close()
        assert b"retry: 2000\n" in rest
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "embedded SecantusDB" in output and "embedded valkey-server" in output
    assert 'token for user "demo"' in output
    assert "bellcast stopped" in output
    children = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert children == "", "an embedded server outlived bellcast"


def test_redis_cluster_without_url_starts_an_embedded_three_node_cluster_and_stops_it(tmp_path, store_urls):
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "JWT_SECRET", "API_KEY")}
    environ.update(MONGODB_URL=store_urls[0], REDIS_CLUSTER="1")
    process, _ = _start_healthy_server(tmp_path, environ)
    try:
        nodes = [child for child in psutil.Process(process.pid).children() if "valkey" in child.name()]
        assert len(nodes) == 3
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "embedded three-node valkey cluster" in output
    assert not any(node.is_running() for node in nodes), "a node of the embedded cluster outlived bellcast"
