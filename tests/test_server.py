"""`python server.py`: settings checked at start, embedded stores started and stopped with it."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from redis.exceptions import NoPermissionError

from server import Settings, SettingsError, parse_settings
from services.auth import Authenticator
from services.embedded import free_port
from tests.support import ROOT, SERVER_PY, ServerProcess


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
        ({"SOURCE_SCHEMA": "laravel"}, "set it too"),
        ({"SOURCE_COLLECTION": "notifications", "SOURCE_SCHEMA": "rails"}, "SOURCE_SCHEMA"),
        ({"SOURCE_COLLECTION": "system.users"}, "SOURCE_COLLECTION"),
        ({"SOURCE_COLLECTION": "n", "SOURCE_FIELDS": "user_id"}, "SOURCE_FIELDS"),
        ({"SOURCE_COLLECTION": "n", "SOURCE_FIELDS": "colour=c"}, "SOURCE_FIELDS"),
        ({"SOURCE_COLLECTION": "n", "SOURCE_FIELDS": "title=$where"}, "SOURCE_FIELDS"),
        ({"SOURCE_COLLECTION": "n", "SOURCE_SCHEMA": "laravel", "SOURCE_FIELDS": "title=t"}, "may only map"),
        ({"SOURCE_COLLECTION": "n", "SOURCE_FILTER": "[1]"}, "SOURCE_FILTER"),
        ({"SOURCE_COLLECTION": "n", "SOURCE_FILTER": '{"$where": "sleep(1000)"}'}, "JavaScript"),
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
    # Run to its end rather than served (ServerProcess): what it says must go to stderr.
    result = subprocess.run([*SERVER_PY], cwd=ROOT, env={**os.environ, "PORT": "x"}, capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid setting PORT='x'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_source_collection_is_refused_with_a_clear_message_when_no_change_stream_can_be_opened():
    environ = {
        **os.environ,
        "PORT": "0",
        # Nothing listens there: no change stream. (A standalone mongod answers "only supported on replica sets".)
        "MONGODB_URL": f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=500",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "JWT_SECRET": "s" * 40,
        "API_KEY": "k" * 20,
        "STORE_TIMEOUT": "0.5",
        "SOURCE_COLLECTION": "notifications",
    }
    result = subprocess.run([*SERVER_PY], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "SOURCE_COLLECTION=notifications needs a MongoDB that serves change streams" in result.stderr
    assert "replica set" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("configured", ["JWT_SECRET", "API_KEY"])
def test_a_half_configured_start_is_refused_and_prints_no_secret(tmp_path, configured):
    value = "configured-secret-" + "s" * 32
    environ = {**os.environ, "PORT": "0", "DATA_DIR": str(tmp_path), configured: value}
    environ.pop({"JWT_SECRET": "API_KEY", "API_KEY": "JWT_SECRET"}[configured], None)
    result = subprocess.run([*SERVER_PY], cwd=ROOT, env=environ, capture_output=True, text=True)
    assert result.returncode == 2
    assert "JWT_SECRET and API_KEY go together" in result.stderr
    assert value not in result.stdout + result.stderr
    assert not (tmp_path / "development-secrets.json").exists()


@pytest.mark.parametrize("unsafe", ["group-readable", "world-writable", "a link"])
def test_generated_secrets_that_others_could_read_or_write_are_refused(tmp_path, unsafe):
    stored = tmp_path / "development-secrets.json"
    secrets = {"jwt_secret": "planted-" + "j" * 40, "api_key": "planted-" + "k" * 30}
    if unsafe == "a link":
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_text(json.dumps(secrets))
        elsewhere.chmod(0o600)
        stored.symlink_to(elsewhere)
    else:
        stored.write_text(json.dumps(secrets))
        stored.chmod(0o640 if unsafe == "group-readable" else 0o602)
    environ = {**os.environ, "PORT": "0", "DATA_DIR": str(tmp_path)}
    environ.pop("JWT_SECRET", None)
    environ.pop("API_KEY", None)
    result = subprocess.run([*SERVER_PY], cwd=ROOT, env=environ, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "delete it to have new secrets generated, or chmod 600 it" in result.stderr
    assert "Traceback" not in result.stderr
    assert secrets["api_key"] not in result.stdout + result.stderr


def _start_healthy_server(data_dir: Path, store_urls: tuple[str, str] | None, **settings: str | None) -> ServerProcess:
    """`python server.py` with its data in `data_dir` and no secrets, once /healthz finds both stores ok."""
    server = ServerProcess(
        store_urls,
        data_dir / "bellcast.log",
        [*SERVER_PY, "--data-dir", str(data_dir)],
        JWT_SECRET=None,
        API_KEY=None,
        **settings,
    )
    health = server.first_answer("/healthz")
    if health != (200, {"status": "ok", "checks": {"mongodb": "ok", "redis": "ok"}}):
        server.stop()
        raise AssertionError(f"server did not start healthy ({health}):\n{server.output()}")
    return server


def test_server_starts_embedded_stores_serves_and_stops_them_on_sigterm(tmp_path):
    """Also the shutdown order: open streams get a retry hint and a clean end before the stores close."""
    server = _start_healthy_server(tmp_path, None)
    try:
        secrets = json.loads((tmp_path / "development-secrets.json").read_text())
        assert set(secrets) == {"jwt_secret", "api_key"}
        # The embedded Redis answers another process of the machine nothing but PING.
        logged = re.search(r"embedded valkey-server at redis://bellcast:\*\*\*@127\.0\.0\.1:(\d+)", server.output())
        assert logged is not None, server.output()
        stranger = redis.Redis(port=int(logged.group(1)))
        try:
            assert stranger.ping()
            with pytest.raises(NoPermissionError):
                stranger.set("planted", "1")
        finally:
            stranger.close()
        token = Authenticator(secrets["jwt_secret"], secrets["api_key"]).mint_user_token("demo", 60, time.time())
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", f"/notifications/stream?access_token={token}")
        stream = connection.getresponse()
        assert stream.status == 200
        assert stream.readline() == b"retry: 2000\n"
        server.process.send_signal(signal.SIGTERM)
        rest = stream.read()  # raises IncompleteRead unless the chunked stream ends properly
        connection.close()
        assert b"retry: 2000\n" in rest
    finally:
        returncode = server.stop()
    output = server.output()
    assert returncode == 0, output
    assert "embedded SecantusDB" in output and "embedded valkey-server" in output
    assert (tmp_path / "development-secrets.json").stat().st_mode & 0o777 == 0o600
    assert 'token for user "demo"' in output
    assert "bellcast stopped" in output
    children = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert children == "", "an embedded server outlived bellcast"


def test_redis_cluster_without_url_starts_an_embedded_three_node_cluster_and_stops_it(tmp_path, store_urls):
    server = _start_healthy_server(tmp_path, None, MONGODB_URL=store_urls[0], REDIS_CLUSTER="1")
    try:
        nodes = [child for child in server.workers() if "valkey" in child.name()]
        assert len(nodes) == 3
    finally:
        returncode = server.stop()
    assert returncode == 0, server.output()
    assert "embedded three-node valkey cluster" in server.output()
    assert not any(node.is_running() for node in nodes), "a node of the embedded cluster outlived bellcast"
