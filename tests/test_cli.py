"""The `bellcast` command: `serve` (also without a command, as `python server.py`) and `token`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import jwt
import pytest

from server import main
from services.development import generated_secrets
from services.settings import SETTINGS
from tests.support import ServerProcess

SECRET = "cli-test-secret-" + "s" * 32


def _console_script() -> str:
    script = Path(sys.executable).with_name("bellcast")
    found = str(script) if script.exists() else shutil.which("bellcast")
    if found is None:
        pytest.fail("the `bellcast` console script is not installed: pip install -e .")
    return found


@pytest.fixture
def environ(monkeypatch, tmp_path):
    """No secrets from the caller's environment; DATA_DIR an empty folder."""
    for name in ("JWT_SECRET", "API_KEY", "DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    return tmp_path


def test_help_names_both_commands_and_that_serve_is_the_default():
    result = subprocess.run([_console_script(), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "token" in result.stdout
    assert "Without a command bellcast serves" in result.stdout


def test_serve_help_lists_every_setting_with_its_environment_variable(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for setting in SETTINGS:
        assert "--" + setting.field.replace("_", "-") in shown
        assert f"(env {setting.env})" in shown


@pytest.mark.parametrize("argv", [["--port", "x"], ["serve", "--port", "x"]])
def test_flags_without_a_command_mean_serve(environ, capsys, argv):
    assert main(argv) == 2
    assert "invalid setting PORT='x'" in capsys.readouterr().err


def test_token_is_signed_with_jwt_secret_and_lasts_ttl(environ, monkeypatch, capsys):
    monkeypatch.setenv("JWT_SECRET", SECRET)
    assert main(["token", "alice", "--ttl", "60"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "only the token goes to stdout, for TOKEN=$(bellcast token alice)"
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 60


def test_token_flag_wins_over_the_environment(environ, monkeypatch, capsys):
    monkeypatch.setenv("JWT_SECRET", "not-this-one-" + "n" * 32)
    assert main(["token", "alice", "--jwt-secret", SECRET]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 24 * 3600


def test_token_uses_the_development_secret_that_serve_keeps_in_data_dir(environ, capsys):
    generated = generated_secrets(environ)
    assert main(["token", "bob"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), generated["jwt_secret"], algorithms=["HS256"])
    assert claims["sub"] == "bob"


def test_token_without_any_secret_says_where_it_looked(environ, capsys):
    assert main(["token", "alice"]) == 2
    error = capsys.readouterr().err
    assert "JWT_SECRET" in error and str(environ / "development-secrets.json") in error


@pytest.mark.parametrize("ttl", ["0", "-5", "1.5", "soon"])
def test_token_refuses_a_lifetime_that_is_not_a_positive_whole_number(environ, capsys, ttl):
    with pytest.raises(SystemExit) as exited:
        main(["token", "alice", "--ttl", ttl])
    assert exited.value.code == 2
    assert "--ttl" in capsys.readouterr().err


def test_console_script_serves_and_accepts_the_token_it_mints(store_urls, tmp_path):
    api_key = "cli-test-api-key-" + "k" * 16
    server = ServerProcess(
        store_urls, tmp_path / "bellcast.log", [_console_script(), "serve"], JWT_SECRET=SECRET, API_KEY=api_key
    )
    try:
        server.wait_until_ready("/healthz")
        minted = subprocess.run(
            [_console_script(), "token", "alice", "--ttl", "120"], env=server.environ, capture_output=True, text=True
        )
        assert minted.returncode == 0, minted.stderr
        request = urllib.request.Request(
            server.base_url + "/api/notifications", headers={"Authorization": f"Bearer {minted.stdout.strip()}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            empty = {"notifications": [], "unread_count": 0, "unseen_count": 0, "next_before": None}
            assert json.loads(response.read()) == empty
    finally:
        returncode = server.stop()
        server.drop_database()
    assert returncode == 0, server.output()
    assert "bellcast stopped" in server.output()
