"""`make bench`: bellcast under thousands of streams, and nginx + Nchan under the same load, in one run.

Scenarios (each bounded in time): 1 hold idle streams, 2 fan-out, 3 burst, 4 churn, 5 changes (each user
marks a notification read; every tab must get the `changed` event), 6 watched (Laravel notifications
inserted straight into a collection bellcast watches, beside the API path on the same server); Nchan runs
1 and 2, and a minimal Tornado push server (bench/tornado_minimal.py: one Redis subscription and a
queue per stream) runs 1 and 2, to show what Tornado and Redis themselves cost on the machine of the
run. The fan-out runs at each of --fanout-rates. Prints a table with bellcast/Nchan and
bellcast/Tornado ratios, writes bench/results.json, and draws
docs/bench/latency.png and docs/bench/memory.png. Options: --quick for a small smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import psutil
import redis
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stalls import STALL_SECONDS, stalls_between  # noqa: E402
from server import Settings  # noqa: E402
from services.auth import Authenticator  # noqa: E402
from services.embedded import EmbeddedMongo, EmbeddedRedis, free_port  # noqa: E402

JWT_SECRET = "bench-secret-" + "s" * 32
API_KEY = "bench-api-key-" + "k" * 16
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]
READY_TIMEOUT = 60.0
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
# The minimal Tornado server holds each size this long: long enough to read its RSS, it does nothing idle.
TORNADO_HOLD_SECONDS = 10.0
SCENARIOS = ("hold", "fanout", "burst", "churn", "changes", "watched")
MONGODB_DB = "bellcast_bench"
# The app's collection in the watched scenario: named apart from bellcast's own `notifications`.
WATCHED_COLLECTION = "app_notifications"
# py-spy's sampling of `--profile`: without pausing the process, 100 samples a second, stacks as text. The one
# installed beside this Python: `make bench` runs the venv's Python without the venv on PATH.
PY_SPY = (
    str(Path(sys.executable).with_name("py-spy")),
    "record",
    "--nonblocking",
    "--subprocesses",
    "-r",
    "100",
    "-f",
    "raw",
)
# How long the watched scenario waits for its first document's event before it measures anyway.
WATCHER_READY_TIMEOUT = 30.0


# ---------------------------------------------------------------- measuring the server


class ProcessMeter:
    """RSS and CPU time of a process and its children (the workers of nginx or of PROCESSES=N)."""

    def __init__(self, pid: int, exclude_names: tuple[str, ...] = ()) -> None:
        self._root = psutil.Process(pid)
        self._exclude = exclude_names

    def _tree(self) -> list[psutil.Process]:
        processes = [self._root, *self._root.children(recursive=True)]
        return [p for p in processes if not any(name in " ".join(p.cmdline()) for name in self._exclude)]

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in self._tree())

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self._tree())

    def processes(self) -> list[psutil.Process]:
        return self._tree()


class CpuMeter:
    """CPU time of a fixed set of processes, their children not included."""

    def __init__(self, pids: list[int]) -> None:
        self._processes = [psutil.Process(pid) for pid in pids]

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self._processes)

    def processes(self) -> list[psutil.Process]:
        return self._processes


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    """User and system CPU time of `processes`, summed."""
    return sum(sum(p.cpu_times()[:2]) for p in processes)


class HostMeter:
    """The whole machine's CPU since the meter was made: how busy its cores were, and how much of
    them the host took (`steal`: a VM's virtual CPU waiting for a real one), in % of all cores.

    On a shared host the steal moves from run to run; it is printed beside the figures it may sway.
    """

    def __init__(self) -> None:
        self._before = psutil.cpu_times()

    def percent(self) -> dict[str, float]:
        after = psutil.cpu_times()
        spent = {field: getattr(after, field) - getattr(self._before, field) for field in after._fields}
        # guest and guest_nice are already counted in user and nice.
        total = sum(seconds for field, seconds in spent.items() if not field.startswith("guest")) or 1.0
        busy = total - spent["idle"] - spent.get("iowait", 0.0) - spent.get("steal", 0.0)
        return {"busy": 100.0 * busy / total, "steal": 100.0 * spent.get("steal", 0.0) / total}


def embedded_store_meter(names: tuple[str, ...] = ("secantusd", "valkey-server")) -> CpuMeter | None:
    """The embedded SecantusDB and valkey-server this run started (those of `names`), if it started them."""
    pids = [
        child.pid
        for child in psutil.Process().children(recursive=True)
        if any(name in " ".join(child.cmdline()) for name in names)
    ]
    return CpuMeter(pids) if pids else None


# ---------------------------------------------------------------- the servers


class Server:
    """A server under load, run as a child process; its meter counts that process and its children."""

    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    # The embedded stores it uses, by role, as embedded_store_meter finds them: their CPU is the server's too.
    stores: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Where `--profile` puts py-spy's samples of its passes.
    profile_dir: Path | None = None
    # Whether the fan-out measures each user's first create (`--no-warm-up`).
    no_warm_up = False
    # Whether bellcast runs with a watchdog on its event loop (`--loop-stalls`).
    loop_stalls = False

    def meter(self) -> ProcessMeter:
        assert self.process is not None
        return ProcessMeter(self.process.pid)

    def stalls_between(self, start: float, end: float) -> list[dict[str, Any]]:
        """The event loop's stalls recorded between `start` and `end` (none but bellcast's are watched)."""
        return []


class Bellcast(Server):
    name = "bellcast"
    stores: ClassVar[dict[str, tuple[str, ...]]] = {"mongodb": ("secantusd",), "redis": ("valkey-server",)}

    def __init__(
        self, mongodb_url: str, redis_url: str, processes: int, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.mongodb_url, self.redis_url, self.processes = mongodb_url, redis_url, processes
        self.log_path = log_path
        self.env = env or {}
        self.authenticator = Authenticator(JWT_SECRET, API_KEY)

    def start(self) -> None:
        env = {
            **os.environ,
            "PORT": str(self.port),
            "MONGODB_URL": self.mongodb_url,
            "REDIS_URL": self.redis_url,
            "MONGODB_DB": MONGODB_DB,
            "JWT_SECRET": JWT_SECRET,
            "API_KEY": API_KEY,
            "PROCESSES": str(self.processes),
            # The producers' rate limit on, as by default, taken from Redis in shares of 50 as the default's is, but
            # in 1-s windows of 5,000 that the benchmark's rates never reach.
            "PRODUCER_RATE_LIMIT": "5000",
            "PRODUCER_RATE_WINDOW": "1",
            # Thousands of clients from the load generator's eight addresses: no per-address cap.
            "MAX_CONNECTIONS_PER_CLIENT": "0",
            **self.env,
        }
        command = ["-m", "bench.stalls", str(self.stalls_path)] if self.loop_stalls else ["server.py"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=log, stderr=log)
        _wait_http(self.port, "/healthz", self.process)

    @property
    def stalls_path(self) -> Path:
        """Where the watchdog of `--loop-stalls` records the stalls (bench/stalls.py)."""
        return self.log_path.with_name(f"loop-stalls-{self.port}.jsonl")

    def stalls_between(self, start: float, end: float) -> list[dict[str, Any]]:
        return stalls_between(self.stalls_path, start, end) if self.loop_stalls else []

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM)
        self.process = None

    def stream_path(self, user: str, tab: int) -> str:
        token = self.authenticator.mint_user_token(user, 3600, time.time())
        return f"/notifications/stream?access_token={token}&tab={tab}"

    def publish_request(self, user: str, payload: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
        body = json.dumps({"user_id": user, "title": "bench", "data": payload}).encode()
        return "/api/notifications", {"X-API-Key": API_KEY, "Content-Type": "application/json"}, body

    def created_status(self) -> int:
        return 201

    def user_of(self, path: str) -> str:
        """The user a stream's path is for: its token's subject."""
        import jwt

        token = path.split("access_token=")[1].split("&")[0]
        return str(jwt.decode(token, options={"verify_signature": False})["sub"])


class Nchan(Server):
    name = "nchan"

    def __init__(self, workers: int, log_dir: Path, ping_interval: int = 0) -> None:
        self.port = free_port()
        self.workers = workers
        self.ping_interval = ping_interval
        if ping_interval:
            self.name = "nchan+pings"
        self.prefix = Path(tempfile.mkdtemp(prefix="nchan-", dir=log_dir))

    def start(self) -> None:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / sub).mkdir(exist_ok=True)
        template = string.Template((ROOT / "bench" / "nchan.conf.template").read_text())
        config = self.prefix / "nginx.conf"
        config.write_text(
            template.safe_substitute(PORT=self.port, PREFIX=self.prefix, WORKERS=self.workers, PING=self.ping_interval)
        )
        self.process = subprocess.Popen(
            ["nginx", "-p", str(self.prefix), "-c", str(config), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.prefix / "stderr.log", "ab"),  # noqa: SIM115 - lives as long as nginx
        )
        _wait_http(self.port, "/pub/warmup", self.process)

    def stop(self) -> None:
        _stop(self.process, signal.SIGQUIT)  # nginx's graceful stop
        self.process = None

    def stream_path(self, user: str, tab: int) -> str:
        return f"/sub/{user}?tab={tab}"

    def publish_request(self, user: str, payload: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
        return f"/pub/{user}", {"Content-Type": "application/json"}, json.dumps({"data": payload}).encode()

    def created_status(self) -> int:
        return 202

    def user_of(self, path: str) -> str:
        """The channel (the user) of a subscriber's path."""
        return path.split("/")[-1].split("?")[0]


class MinimalTornado(Server):
    """bench/tornado_minimal.py: what Tornado and one Redis subscription cost per stream and per delivery."""

    name = "tornado"
    stores: ClassVar[dict[str, tuple[str, ...]]] = {"redis": ("valkey-server",)}

    def __init__(self, redis_url: str, log_dir: Path) -> None:
        self.port = free_port()
        self.redis_url = redis_url
        self.log_path = log_dir / "tornado-minimal.log"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.tornado_minimal", str(self.port), self.redis_url],
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )
        _wait_http(self.port, "/healthz", self.process)

    def stop(self) -> None:
        _stop(self.process, signal.SIGKILL)  # it has nothing to shut down
        self.process = None

    def stream_path(self, user: str, tab: int) -> str:
        return f"/notifications/stream?user={user}&tab={tab}"

    def publish_request(self, user: str, payload: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
        return f"/pub/{user}", {"Content-Type": "application/json"}, json.dumps({"data": payload}).encode()

    def created_status(self) -> int:
        return 202

    def user_of(self, path: str) -> str:
        """The user of a stream's path."""
        return path.split("user=")[1].split("&")[0]


def _stop(process: subprocess.Popen[bytes] | None, signum: int) -> None:
    """Ask a server to stop, kill it if it has not within 30 s."""
    if process is not None:
        process.send_signal(signum)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_http(port: int, path: str, process: subprocess.Popen[bytes]) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer within {READY_TIMEOUT} s")


# ---------------------------------------------------------------- load generator and producer


class Workers:
    """Load-generator processes, one per source address."""

    def __init__(self, count: int, port: int) -> None:
        self.count, self.port = count, port
        self.procs: list[asyncio.subprocess.Process] = []

    def meter(self) -> CpuMeter:
        """The load generator's CPU: the workers', and this process's, which posts the creates."""
        return CpuMeter([os.getpid(), *(proc.pid for proc in self.procs)])

    async def start(self) -> None:
        for index in range(self.count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.loadgen",
                "127.0.0.1",
                str(self.port),
                SOURCES[index % len(SOURCES)],
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 28,
            )
            self.procs.append(proc)

    async def ask(self, index: int, command: dict[str, Any]) -> dict[str, Any]:
        proc = self.procs[index]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(command) + "\n").encode())
        await proc.stdin.drain()
        answer: dict[str, Any] = json.loads(await proc.stdout.readline())
        return answer

    async def ask_all(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self.ask(i, c) for i, c in enumerate(commands))))

    async def connect(self, paths: list[str], concurrency: int = 64) -> list[dict[str, Any]]:
        """Open the streams, spread evenly over the workers."""
        return await self.ask_all(
            [{"op": "connect", "paths": p, "concurrency": concurrency} for p in _split(paths, self.count)]
        )

    async def broadcast(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        return await self.ask_all([command] * self.count)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            await proc.wait()


def _split(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts)]


# The producer's keep-alive connections, each carrying one request at a time. Each request's latency is timed
# from before it waits for a free connection, so too few would count the producer's own queue: at 500 creates
# a second and bellcast's answer in 15 ms, 8 were all busy (Little's law: 7.5) and any slower moment left
# the producer behind for the rest of the pass. 64 carry 4,000 a second at that answer time.
PRODUCER_CONNECTIONS = 64


class Producer:
    """Keep-alive HTTP/1.1 connections that POST notifications."""

    def __init__(self, port: int, connections: int) -> None:
        self.port = port
        self.size = connections
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def start(self) -> None:
        for _ in range(self.size):
            self.free.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> int:
        """POST `body`; the answer's status."""
        return (await self.post_for_body(path, headers, body))[0]

    async def post_for_body(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """POST `body`; the answer's status and body. A connection that fails is replaced, and the error raised."""
        reader, writer = await self.free.get()
        try:
            head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {len(body)}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(head.encode() + b"\r\n" + body)
            response = await reader.readuntil(b"\r\n\r\n")
            status = int(response.split(b" ", 2)[1])
            length = 0
            for line in response.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            answer = await reader.readexactly(length) if length else b""
        except (OSError, asyncio.IncompleteReadError):
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            raise
        finally:
            self.free.put_nowait((reader, writer))
        return status, answer

    async def close(self) -> None:
        while not self.free.empty():
            _, writer = self.free.get_nowait()
            writer.close()


# ---------------------------------------------------------------- scenarios


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def scenario_hold(
    target: Any, workers: Workers, sizes: list[int], hold_seconds: float, last_hold_seconds: float | None = None
) -> dict[str, Any]:
    """Open streams in steps up to each size, hold them idle, measure connects, RSS and idle CPU.

    The largest size is held `last_hold_seconds` when given: long enough for every stream's
    periodic work (bellcast's safety scan and registration renewal) to fall inside the window.
    """
    meter = target.meter()
    await asyncio.sleep(1.0)
    baseline_rss = meter.rss()
    steps = []
    opened = 0
    for size in sizes:
        paths = [target.stream_path(f"hold{i}", 0) for i in range(opened, size)]
        cpu_before_connects = meter.cpu_seconds()
        answers = await workers.connect(paths)
        connect_cpu = meter.cpu_seconds() - cpu_before_connects
        connected = sum(a["connected"] for a in answers)
        failed = sum(a["failed"] for a in answers)
        errors: Counter[str] = Counter()
        for a in answers:
            errors.update(a["errors"])
        seconds = max(a["seconds"] for a in answers)
        opened += connected
        await asyncio.sleep(min(5.0, hold_seconds / 4))  # let connects settle before measuring idle
        cpu_before, wall_before, host = meter.cpu_seconds(), time.monotonic(), HostMeter()
        await asyncio.sleep(last_hold_seconds if last_hold_seconds and size == sizes[-1] else hold_seconds)
        idle_cpu = (meter.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        idle_host = host.percent()
        still_open = sum(r["open"] for r in await workers.broadcast({"op": "report"}))
        rss = meter.rss()
        steps.append(
            {
                "target_streams": size,
                "streams": still_open,
                "connected": connected,
                "failed": failed,
                "errors": dict(errors),
                "connects_per_second": connected / seconds if seconds else 0.0,
                # What decides connects/s when the server is the bottleneck, steadier than the rate itself.
                "server_cpu_per_connect_us": 1e6 * connect_cpu / connected if connected else 0.0,
                "rss_bytes": rss,
                "rss_per_stream_bytes": (rss - baseline_rss) / still_open if still_open else 0.0,
                "idle_cpu_percent": 100.0 * idle_cpu,
                "idle_host_percent": idle_host,
            }
        )
        print(f"  {target.name} hold {size}: {steps[-1]}", flush=True)
    await workers.broadcast({"op": "close"})
    await asyncio.sleep(2.0)
    return {"baseline_rss_bytes": baseline_rss, "steps": steps}


async def scenario_fanout(
    target: Any, workers: Workers, users: int, tabs: int, rate: float, passes: int = 1
) -> dict[str, Any]:
    """users x tabs streams; one notification per user at `rate` per second; completeness and latency.

    Run `passes` times, each with streams of its own: the quantiles are those of every delivery of
    every pass together, since one pass's p99 (its 100 slowest deliveries) is decided by whatever
    else the two shared cores did in those 5 seconds. Each pass's own figures are kept beside them.
    The CPU per create is each role's (server, embedded stores, load generator) from the first create
    until 3 s after the last, so it includes what the idle streams cost meanwhile (bellcast's 10,000:
    about 1 % of a core, some 0.1 ms per create).

    Each user is first sent one notification, unmeasured, with no stream open: the users of the passes are
    users who had a notification in the last few minutes, as those of an app that notifies them are. (A
    user's first create in COUNTS_TTL costs bellcast a count in MongoDB more: measured apart with
    `--no-warm-up`.)
    """
    if not target.no_warm_up:
        await _warm_up(target, [f"fan{user}" for user in range(users)], rate)
    meters = _meters(target, workers)
    result = _pooled([await _api_pass(target, workers, "fan", users, tabs, rate, meters) for _ in range(passes)])
    summary = {k: v for k, v in result.items() if k not in ("latencies_ms", "passes")}
    print(f"  {target.name} fan-out, {passes} passes: {summary}", flush=True)
    return result


async def scenario_watched(
    target: Bellcast,
    workers: Workers,
    collection: AsyncCollection[dict[str, Any]],
    users: int,
    tabs: int,
    rate: float,
    passes: int,
) -> dict[str, Any]:
    """users x tabs streams of a bellcast watching `collection`: Laravel notifications inserted straight
    into it, one per user at `rate` per second, then the same through the API, on the same server.

    Each tab must get its user's document once; the latency runs from just before `insert_one` (or
    the POST) to the event's arrival. The watched and the API passes alternate, each with streams of
    its own, and are pooled like the fan-out's, so the two paths meet the same hours of the machine.
    """
    warmup_seconds = await _first_watched_delivery(target, workers, collection)
    meters = _meters(target, workers)
    watched, api = [], []
    for _ in range(passes):
        watched.append(await _watched_pass(target, workers, collection, users, tabs, rate, meters))
        api.append(await _api_pass(target, workers, "api", users, tabs, rate, meters))
    result: dict[str, Any] = {
        "first_delivery_seconds": warmup_seconds,
        "watched": _pooled(watched),
        "api": _pooled(api),
    }
    for path in ("watched", "api"):
        summary = {k: v for k, v in result[path].items() if k not in ("latencies_ms", "passes")}
        print(f"  bellcast watched scenario, {path} path, {passes} passes: {summary}", flush=True)
    return result


async def _warm_up(target: Any, names: list[str], rate: float) -> None:
    """One notification for each user, at `rate`, nobody listening; every create must succeed."""
    producer = Producer(target.port, PRODUCER_CONNECTIONS)
    await producer.start()
    statuses: Counter[int] = Counter()

    async def publish(index: int) -> None:
        path, headers, body = target.publish_request(names[index], {"k": "warm-up", "t0": time.time()})
        statuses[await producer.post(path, headers, body)] += 1

    try:
        await _at_rate(len(names), rate, publish)
    finally:
        await producer.close()
    assert set(statuses) == {target.created_status()}, statuses


def _meters(target: Any, workers: Workers) -> dict[str, Any]:
    """The CPU meters of a pass: the server, the load generator, and each embedded store the server uses."""
    meters: dict[str, Any] = {"server": target.meter(), "load generator": workers.meter()}
    for role, names in target.stores.items():
        if (store := embedded_store_meter(names)) is not None:
            meters[role] = store
    return meters


class Profiler:
    """py-spy on each server-side Python process of a pass while it makes its creates (`--profile DIR`).

    Writes one raw file per process, and appends the pass to DIR/profiles.json with its CPU per create,
    for `python -m bench.roles DIR`. Does nothing without `--profile`.
    """

    def __init__(self, target: Any, meters: dict[str, Any], label: str) -> None:
        self.directory: Path | None = target.profile_dir
        self.target, self.label = target.name, label
        self.files: dict[str, str] = {}
        self.recorders: list[subprocess.Popen[bytes]] = []
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for role, meter in meters.items():
            pids = [p.pid for p in meter.processes() if "valkey-server" not in " ".join(p.cmdline())]
            if role == "load generator" or not pids:
                continue
            file = self.directory / f"{self.target}-{label}-{role}-{time.time():.0f}.txt"
            self.files[role] = str(file)
            self.recorders.append(
                subprocess.Popen(
                    [*PY_SPY, "-o", str(file), "-p", str(pids[0])],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def stop(self, cpu_ms_per_create: dict[str, float], rate: float) -> None:
        """Stop recording; note the pass in profiles.json."""
        if self.directory is None:
            return
        for recorder in self.recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in self.recorders:
            recorder.wait(timeout=30)
        index = self.directory / "profiles.json"
        entries = json.loads(index.read_text()) if index.exists() else []
        entries.append(
            {
                "target": self.target,
                "label": self.label,
                "rate": rate,
                "files": {role: file for role, file in self.files.items() if Path(file).exists()},
                "cpu_ms_per_create": cpu_ms_per_create,
            }
        )
        index.write_text(json.dumps(entries, indent=1))


def _redis_requests(target: Any) -> int | None:
    """How many requests the target's Redis has read so far (valkey's `total_reads_processed`: a pipeline's
    commands that arrive together are one); None for a target without Redis."""
    url = getattr(target, "redis_url", None)
    if url is None:
        return None
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_reads_processed"])
    finally:
        client.close()


def _pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Passes of one kind together: summed counts, the quantiles of all their latencies, CPU per create."""
    latencies = [x for run in runs for x in run.pop("latencies")]
    create_seconds = [x for run in runs for x in run.pop("create_seconds")]
    statuses: Counter[str] = Counter()
    for run in runs:
        statuses.update(run["create_statuses"])
    creates = sum(run["creates"] for run in runs)
    result: dict[str, Any] = {
        key: sum(run[key] for run in runs)
        for key in ("streams", "expected_deliveries", "delivered", "missing", "duplicates", "misdelivered")
    }
    result.update(
        passes=runs,
        create_statuses=dict(statuses),
        latency_ms=_quantiles_ms(latencies),
        create_response_ms=_quantiles_ms(create_seconds),
        cpu_ms_per_create={
            role: 1000 * sum(run["cpu_seconds"][role] for run in runs) / creates for role in runs[0]["cpu_seconds"]
        },
        latencies_ms=[round(1000 * x, 3) for x in latencies],  # µs are enough, and keep the file small
    )
    if all("redis_requests" in run for run in runs):
        result["redis_requests_per_create"] = sum(run["redis_requests"] for run in runs) / creates
    return result


def _quantiles_ms(seconds: list[float]) -> dict[str, float]:
    return {
        "p50": 1000 * _percentile(seconds, 0.50),
        "p99": 1000 * _percentile(seconds, 0.99),
        "max": 1000 * max(seconds, default=float("nan")),
    }


# What a pass does for each user (make its one notification; say how that went: an HTTP status, say),
# and how it reads the load generator's reports (counts as `_count` gives them, and the latencies).
Send = Callable[[int], Awaitable[str]]
Tally = Callable[[list[dict[str, Any]]], tuple[dict[str, int], list[float]]]


async def _delivery_pass(
    target: Any,
    workers: Workers,
    label: str,
    users: list[str],
    tabs: int,
    rate: float,
    meters: dict[str, Any],
    send: Send,
    tally: Tally,
) -> dict[str, Any]:
    """`tabs` streams for each of `users`; `send(i)` makes user i one notification, at `rate` per second.

    The CPU is each meter's from the first send until 3 s after the last; the machine's (`HostMeter`)
    while the sends were made, not the quiet tail.
    """
    connected = await _open_tabs(target, workers, users, tabs)
    outcomes: Counter[str] = Counter()
    send_seconds: list[float] = []

    async def one(index: int) -> None:
        sent = time.perf_counter()
        outcomes[await send(index)] += 1
        send_seconds.append(time.perf_counter() - sent)

    profiler = Profiler(target, meters, f"{label}-{rate:g}")
    cpu_before = {role: meter.cpu_seconds() for role, meter in meters.items()}
    redis_requests_before = _redis_requests(target)
    host = HostMeter()
    sends_began = time.time()
    await _at_rate(len(users), rate, one)
    host_percent = host.percent()
    sends_ended = time.time()
    await asyncio.sleep(3.0)
    stalls = target.stalls_between(sends_began, sends_ended)  # a stall is recorded when it ends
    cpu_seconds = {role: meter.cpu_seconds() - cpu_before[role] for role, meter in meters.items()}
    redis_requests = _redis_requests(target)
    profiler.stop({role: 1000 * seconds / len(users) for role, seconds in cpu_seconds.items()}, rate)
    counts, latencies = tally(await workers.broadcast({"op": "report"}))
    await workers.broadcast({"op": "close"})
    await asyncio.sleep(2.0)
    result = {
        "streams": connected,
        "creates": len(users),
        "expected_deliveries": len(users) * tabs,
        **counts,
        "create_statuses": dict(outcomes),
        "latency_ms": _quantiles_ms(latencies),
        "create_response_ms": _quantiles_ms(send_seconds),
        "cpu_seconds": cpu_seconds,
        "cpu_ms_per_create": {role: 1000 * seconds / len(users) for role, seconds in cpu_seconds.items()},
        "host_percent": host_percent,
    }
    if redis_requests is not None and redis_requests_before is not None:
        # Less the INFO that read the count after.
        result["redis_requests"] = redis_requests - redis_requests_before - 1
    if target.loop_stalls:
        result["loop_stalls"] = {
            "count": len(stalls),
            "longest_ms": max((stall["wall_ms"] for stall in stalls), default=0.0),
            # Near the wall time: bellcast's own work held the loop; near zero: it waited for a core.
            "loop_thread_cpu_ms": sum(stall["loop_thread_cpu_ms"] for stall in stalls),
            "wall_ms": sum(stall["wall_ms"] for stall in stalls),
            # The watchdog's own evidence that it watches: what it recorded since bellcast started.
            "recorded_since_start": len(target.stalls_between(0.0, sends_ended)),
        }
    print(f"  {target.name} {label} pass: {result}", flush=True)
    return {**result, "latencies": latencies, "create_seconds": send_seconds}


async def _api_pass(
    target: Any, workers: Workers, prefix: str, users: int, tabs: int, rate: float, meters: dict[str, Any]
) -> dict[str, Any]:
    """A pass through the server's publish API; the latency from just before each POST, carried in its payload."""
    names = [f"{prefix}{user}" for user in range(users)]
    producer = Producer(target.port, PRODUCER_CONNECTIONS)
    await producer.start()

    async def publish(index: int) -> str:
        path, headers, body = target.publish_request(names[index], {"k": names[index], "t0": time.time()})
        try:
            return str(await producer.post(path, headers, body))
        except (OSError, asyncio.IncompleteReadError) as error:
            return type(error).__name__  # an overloaded server's dropped answer: counted, the pass goes on

    def tally(reports: list[dict[str, Any]]) -> tuple[dict[str, int], list[float]]:
        streams = [(path, keys) for report in reports for path, keys in report["keys"]]
        return _count(streams, target.user_of), [x for report in reports for x in report["latencies"]]

    try:
        return await _delivery_pass(target, workers, "fan-out", names, tabs, rate, meters, publish, tally)
    finally:
        await producer.close()


async def _watched_pass(
    target: Bellcast,
    workers: Workers,
    collection: AsyncCollection[dict[str, Any]],
    users: int,
    tabs: int,
    rate: float,
    meters: dict[str, Any],
) -> dict[str, Any]:
    """A pass of documents inserted straight into the watched collection; the latency from just before
    each `insert_one`, matched to the arrival by the document's `_id`, the event's id."""
    names = [f"wat{user}" for user in range(users)]
    inserted: dict[str, tuple[str, float]] = {}  # document _id: its user, the time it was inserted

    async def insert(index: int) -> str:
        document = laravel_notification(names[index])
        inserted[document["_id"]] = (names[index], time.time())
        try:
            await collection.insert_one(document)
        except PyMongoError as error:
            return type(error).__name__
        return "inserted"

    def tally(reports: list[dict[str, Any]]) -> tuple[dict[str, int], list[float]]:
        document_of = {user: document_id for document_id, (user, _) in inserted.items()}
        each = [(path, arrivals) for report in reports for path, arrivals in report["arrivals"]]
        expected = {path: document_of[target.user_of(path)] for path, _ in each}
        latencies = [
            at - inserted[document_id][1]
            for path, arrivals in each
            for document_id, at in arrivals
            if document_id == expected[path]
        ]
        streams = [(path, [document_id for document_id, _ in arrivals]) for path, arrivals in each]
        return _count(streams, expected.__getitem__), latencies

    return await _delivery_pass(target, workers, "watched", names, tabs, rate, meters, insert, tally)


def laravel_notification(user: str) -> dict[str, Any]:
    """A notification for `user` as Laravel's database channel writes it through laravel-mongodb."""
    now = datetime.datetime.now(datetime.UTC)
    return {
        "_id": str(uuid.uuid4()),
        "type": "App\\Notifications\\InvoicePaid",
        "notifiable_type": "App\\Models\\User",
        "notifiable_id": user,
        "data": {"title": "Invoice paid", "body": "Invoice 1 was paid.", "url": "/invoices/1"},
        "read_at": None,
        "created_at": now,
        "updated_at": now,
    }


async def _first_watched_delivery(
    target: Bellcast, workers: Workers, collection: AsyncCollection[dict[str, Any]]
) -> float | None:
    """Seconds from one inserted document to its event on a stream: the watcher is up once it arrives.

    None when nothing arrived within WATCHER_READY_TIMEOUT (a bellcast that does not watch): the
    passes still run, and show it.
    """
    await workers.ask(0, {"op": "connect", "paths": [target.stream_path("watch-warmup", 0)]})
    await asyncio.sleep(1.0)
    document = laravel_notification("watch-warmup")
    started = time.monotonic()
    await collection.insert_one(document)
    arrived = None
    while arrived is None and time.monotonic() - started < WATCHER_READY_TIMEOUT:
        await asyncio.sleep(0.2)
        report = await workers.ask(0, {"op": "report"})
        if any(document_id == document["_id"] for _, arrivals in report["arrivals"] for document_id, _ in arrivals):
            arrived = time.monotonic() - started
    await workers.ask(0, {"op": "close"})
    if arrived is None:
        print(f"  no watched document arrived within {WATCHER_READY_TIMEOUT:.0f} s: does bellcast watch?", flush=True)
    return arrived


async def _open_tabs(target: Any, workers: Workers, users: list[str], tabs: int) -> int:
    """Open `tabs` streams for each user, let them settle, forget what they got: how many opened."""
    answers = await workers.connect([target.stream_path(user, tab) for user in users for tab in range(tabs)])
    await asyncio.sleep(2.0)
    await workers.broadcast({"op": "reset"})
    return sum(answer["connected"] for answer in answers)


async def _at_rate(count: int, rate: float, one: Callable[[int], Awaitable[None]]) -> None:
    """Start `one(i)` for each i below `count`, the i-th i/rate seconds after the first; wait for them all."""
    started = time.perf_counter()
    tasks = []
    for index in range(count):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(index)))
    await asyncio.gather(*tasks)


def _count(streams: list[tuple[str, list[str]]], expected_of: Callable[[str], str]) -> dict[str, int]:
    """What each stream (its path, the keys it got) received against the one key it should have got once."""
    delivered = duplicates = missing = wrong = 0
    for path, keys in streams:
        expected = expected_of(path)
        counts = Counter(keys)
        delivered += counts.get(expected, 0) >= 1
        duplicates += max(0, counts.get(expected, 0) - 1)
        missing += counts.get(expected, 0) == 0
        wrong += sum(n for k, n in counts.items() if k != expected)
    return {"delivered": delivered, "missing": missing, "duplicates": duplicates, "misdelivered": wrong}


async def scenario_burst(target: Bellcast, workers: Workers, tabs: int, count: int) -> dict[str, Any]:
    """One user, `tabs` streams, `count` notifications created one after another as fast as the API answers."""
    paths = [target.stream_path("burst", t) for t in range(tabs)]
    await workers.ask(0, {"op": "connect", "paths": paths})
    await asyncio.sleep(1.0)
    producer = Producer(target.port, 1)
    await producer.start()
    started = time.perf_counter()
    statuses: Counter[int] = Counter()
    for i in range(count):
        path, headers, body = target.publish_request("burst", {"k": str(i), "t0": time.time()})
        statuses[await producer.post(path, headers, body)] += 1
    seconds = time.perf_counter() - started
    await producer.close()
    await asyncio.sleep(3.0)
    report = await workers.ask(0, {"op": "report"})
    expected = [str(i) for i in range(count)]
    in_order = sum(keys == expected for _, keys in report["keys"])
    duplicates = sum(len(keys) - len(set(keys)) for _, keys in report["keys"])
    received = sum(len(set(keys)) for _, keys in report["keys"])
    await workers.ask(0, {"op": "close"})
    result = {
        "tabs": tabs,
        "notifications": count,
        "creates_per_second": count / seconds,
        "received": received,
        "expected": count * tabs,
        "tabs_complete_and_in_order": in_order,
        "duplicates": duplicates,
        "create_statuses": {str(k): v for k, v in statuses.items()},
        "latency_ms": {
            "p50": 1000 * _percentile(report["latencies"], 0.5),
            "p99": 1000 * _percentile(report["latencies"], 0.99),
        },
    }
    print(f"  bellcast burst: {result}", flush=True)
    return result


async def scenario_changes(target: Bellcast, workers: Workers, users: int, tabs: int, rate: float) -> dict[str, Any]:
    """users x tabs streams; each user marks one notification read, at `rate` per second: every tab must get the
    `changed` event once; latency from the request to the event, and CPU per read (each role's, as in fan-out)."""
    producer = Producer(target.port, PRODUCER_CONNECTIONS)
    await producer.start()
    notification_of: dict[str, str] = {}
    for user in range(users):
        path, headers, body = target.publish_request(f"chg{user}", {"k": "setup", "t0": time.time()})
        status, answer = await producer.post_for_body(path, headers, body)
        assert status == 201, answer[:200]
        notification_of[f"chg{user}"] = json.loads(answer)["id"]
    readers = list(notification_of)
    connected = await _open_tabs(target, workers, readers, tabs)
    meters = _meters(target, workers)
    cpu_before = {role: meter.cpu_seconds() for role, meter in meters.items()}
    sent_at: dict[str, float] = {}
    statuses: Counter[int] = Counter()
    request_seconds: list[float] = []

    async def read(index: int) -> None:
        user = readers[index]
        notification_id = notification_of[user]
        token = target.authenticator.mint_user_token(user, 3600, time.time())
        sent_at[notification_id] = time.time()
        sent = time.perf_counter()
        path = f"/api/notifications/{notification_id}/read"
        statuses[await producer.post(path, {"Authorization": f"Bearer {token}"}, b"")] += 1
        request_seconds.append(time.perf_counter() - sent)

    await _at_rate(len(readers), rate, read)
    await producer.close()
    await asyncio.sleep(3.0)
    cpu_seconds = {role: meter.cpu_seconds() - cpu_before[role] for role, meter in meters.items()}
    reports = await workers.broadcast({"op": "report"})
    delivered = duplicates = missing = 0
    latencies: list[float] = []
    for report in reports:
        for path, changes in report["changes"]:
            expected = f"read:{notification_of[target.user_of(path)]}"
            arrivals = [at for key, at in changes if key == expected]
            delivered += len(arrivals) >= 1
            duplicates += max(0, len(arrivals) - 1)
            missing += not arrivals
            latencies.extend(at - sent_at[expected[5:]] for at in arrivals[:1])
    await workers.broadcast({"op": "close"})
    await asyncio.sleep(2.0)
    result = {
        "streams": connected,
        "expected_changes": users * tabs,
        "delivered": delivered,
        "missing": missing,
        "duplicates": duplicates,
        "read_statuses": {str(k): v for k, v in statuses.items()},
        "latency_ms": _quantiles_ms(latencies),
        "read_response_ms": _quantiles_ms(request_seconds),
        "cpu_ms_per_read": {role: 1000 * seconds / users for role, seconds in cpu_seconds.items()},
    }
    print(f"  bellcast changes: {result}", flush=True)
    return result


async def scenario_churn(
    target: Bellcast, workers: Workers, count: int, seconds: float, redis_url: str
) -> dict[str, Any]:
    """`count` connects and disconnects (half clean FIN, half RST) spread over `seconds`; then what is left."""

    paths = [target.stream_path(f"churn{i % 1000}", i) for i in range(count)]
    parts = _split(paths, workers.count)
    answers = await workers.ask_all([{"op": "churn", "paths": p, "rate": len(p) / seconds} for p in parts])
    ok = sum(a["ok"] for a in answers)
    failed = sum(a["failed"] for a in answers)
    client = redis.Redis.from_url(redis_url)

    def leftovers() -> tuple[dict[str, int], int]:
        # Every scenario's streams are closed by now: any registration left counts, whichever it was.
        registrations = {k.decode(): client.zcard(k) for k in client.scan_iter("bellcast:*:connections", count=1000)}
        inboxes = sum(1 for _ in client.scan_iter("bellcast:*:inbox:*", count=1000))
        return registrations, inboxes

    deadline = time.monotonic() + 10
    left = leftovers()
    while left != ({}, 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        left = leftovers()
    result = {
        "attempted": count,
        "completed": ok,
        "failed": failed,
        "registrations_left": sum(left[0].values()),
        "registrations_left_by_key": dict(sorted(left[0].items())[:20]),
        "inboxes_left": left[1],
        "checked_after_seconds": round(10 - max(0.0, deadline - time.monotonic()), 1),
    }
    client.close()
    print(f"  bellcast churn: {result}", flush=True)
    return result


# ---------------------------------------------------------------- report


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


def print_table(results: dict[str, Any]) -> None:
    bell, nchan, tornado = results["bellcast"], results.get("nchan"), results.get("tornado")
    if "hold" in bell:
        _print_hold(results, bell, nchan, tornado)
    if "fanout" in bell:
        _print_fanout(results, bell, nchan)
    if "burst" in bell:
        b = bell["burst"]
        print(
            f"\nScenario 3, burst: {b['received']}/{b['expected']} received, "
            f"{b['tabs_complete_and_in_order']}/{b['tabs']} tabs complete and in order, "
            f"{b['duplicates']} duplicates, {b['creates_per_second']:.0f} creates/s"
        )
    if "churn" in bell:
        c = bell["churn"]
        print(
            f"Scenario 4, churn: {c['completed']}/{c['attempted']} completed, {c['failed']} failed, "
            f"{c['registrations_left']} registrations and {c['inboxes_left']} inboxes left in Redis"
        )
    if "changes" in bell:
        c = bell["changes"]
        cpu = ", ".join(f"{role} {ms:.2f}" for role, ms in c["cpu_ms_per_read"].items())
        print(
            f"Scenario 5, changes: {c['delivered']}/{c['expected_changes']} tabs told of their user's read, "
            f"{c['missing']} missing, {c['duplicates']} duplicates; request to event "
            f"p50 {c['latency_ms']['p50']:.1f} ms, p99 {c['latency_ms']['p99']:.1f} ms; CPU ms per read: {cpu}"
        )
    if "watched" in bell:
        _print_watched(results, bell["watched"], bell.get("fanout", {}).get(_rate_key(results["fanout_rate"])))
    if "multiprocess" in bell:
        m = bell["multiprocess"]
        held = f"{m['streams']} of {m['target_streams']} streams held"
        rate = f"{m['connects_per_second']:.0f} connects/s"
        print(f"\nPROCESSES={m['processes']}: {held}, {m['failed']} failed, {rate}")


def _print_hold(results: dict[str, Any], bell: dict[str, Any], nchan: Any, tornado: Any) -> None:
    print("\nScenario 1, hold idle streams")
    print(
        f"{'streams':>8} {'server':>9} {'held':>7} {'failed':>6} {'conn/s':>8} {'µs CPU/conn':>11} "
        f"{'KB/stream':>10} {'idle CPU %':>10} {'steal %':>7}"
    )
    for name, data in (("bellcast", bell), ("nchan", nchan), ("tornado", tornado)):
        if not data:
            continue
        for step in data["hold"]["steps"]:
            print(
                f"{step['target_streams']:>8} {name:>9} {step['streams']:>7} {step['failed']:>6} "
                f"{step['connects_per_second']:>8.0f} {step['server_cpu_per_connect_us']:>11.0f} "
                f"{step['rss_per_stream_bytes'] / 1000:>10.1f} "
                f"{step['idle_cpu_percent']:>10.2f} {step['idle_host_percent']['steal']:>7.1f}"
            )
    if nchan:
        print("bellcast/nchan ratios:")
        for b, n in zip(bell["hold"]["steps"], nchan["hold"]["steps"], strict=False):
            rss_ratio = _ratio(b["rss_per_stream_bytes"], n["rss_per_stream_bytes"])
            print(
                f"  {b['target_streams']:>6} streams: RSS/stream {rss_ratio}, "
                f"connects/s {_ratio(b['connects_per_second'], n['connects_per_second'])}, "
                f"idle CPU {b['idle_cpu_percent']:.2f} % vs {n['idle_cpu_percent']:.2f} %"
            )
    if tornado:
        print("bellcast/minimal Tornado (no token, stores, log line or heartbeat) ratios:")
        for b, t in zip(bell["hold"]["steps"], tornado["hold"]["steps"], strict=False):
            print(
                f"  {b['target_streams']:>6} streams: CPU/connect "
                f"{_ratio(b['server_cpu_per_connect_us'], t['server_cpu_per_connect_us'])}, "
                f"connects/s {_ratio(b['connects_per_second'], t['connects_per_second'])}, "
                f"RSS/stream {_ratio(b['rss_per_stream_bytes'], t['rss_per_stream_bytes'])}"
            )
    pings = results.get("nchan_pings")
    if pings:
        step, own = pings["hold"]["steps"][-1], bell["hold"]["steps"][-1]
        print(
            f"With pings every {Settings().heartbeat_interval:.0f} s (bellcast's HEARTBEAT_INTERVAL), "
            f"nchan idles at {step['idle_cpu_percent']:.2f} % "
            f"for {step['streams']} streams; bellcast at {own['idle_cpu_percent']:.2f} %"
        )


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def server_side_ms(fanout: dict[str, Any]) -> float:
    """CPU ms per create of every server-side process: the server's and its stores'."""
    return sum(ms for role, ms in fanout["cpu_ms_per_create"].items() if role != "load generator")


def driver_us_per_insert(mongodb_url: str) -> float:
    """PyMongo's `AsyncMongoClient`: its client CPU per `insert_one` against the bench's MongoDB, measured alone
    (bench/driver_overhead.py), in µs."""
    measured = subprocess.run(
        [sys.executable, "-m", "bench.driver_overhead", "--url", mongodb_url, "--rounds", "3", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(json.loads(measured.stdout)["AsyncMongoClient"])


def _print_fanout(results: dict[str, Any], bell: dict[str, Any], nchan: Any) -> None:
    tornado = results.get("tornado")
    driver_us = bell.get("driver_us_per_insert")
    if driver_us is not None:
        print(
            f"\nPyMongo's client CPU per insert_one, measured alone against the same MongoDB: {driver_us:.0f} µs "
            "(a create makes one insert, or shares one with the creates that came while one was under way)"
        )
    within = []
    for rate, fanout in bell["fanout"].items():
        print(f"\nScenario 2, fan-out at {rate} creates/s")
        others = {
            name: data["fanout"][rate]
            for name, data in (("tornado", tornado), ("nchan", nchan))
            if data and rate in data.get("fanout", {})
        }
        for name, f in (("bellcast", fanout), *others.items()):
            _print_deliveries(name, f)
        for name, f in others.items():
            b, o = fanout["latency_ms"], f["latency_ms"]
            server = _ratio(fanout["cpu_ms_per_create"]["server"], f["cpu_ms_per_create"]["server"])
            print(
                f"  bellcast/{name}: p50 {_ratio(b['p50'], o['p50'])}, p99 {_ratio(b['p99'], o['p99'])}, "
                f"CPU per create of the server {server}, "
                f"of every server-side process (with its stores) {_ratio(server_side_ms(fanout), server_side_ms(f))}"
            )
            if driver_us is not None and name == "tornado":
                # What bellcast's process spends beside the driver's client side of one insert a create.
                less = _ratio(
                    fanout["cpu_ms_per_create"]["server"] - driver_us / 1000, f["cpu_ms_per_create"]["server"]
                )
                print(f"  bellcast/tornado, the server less one insert's driver CPU: {less}")
        if "tornado" in others and fanout["latency_ms"]["p99"] <= 5 * others["tornado"]["latency_ms"]["p99"]:
            within.append(rate)
    if tornado:
        print(f"\nfan-out rates at which bellcast's p99 is within 5x the minimal Tornado server's: {within or 'none'}")


def _print_watched(results: dict[str, Any], w: dict[str, Any], fanout: dict[str, Any] | None) -> None:
    """The watched collection beside the API of the same server, whose creates the watcher delivers too, and
    beside bellcast's own collection (scenario 2) when the run had it."""
    passes = len(w["watched"]["passes"])
    print(
        f"\nScenario 6, watched collection: {results['fanout_rate']:.0f} documents/s inserted straight into "
        f"MongoDB, then as many API creates/s (which its watcher delivers too), on one bellcast watching it; "
        f"{passes} pass(es) of each"
    )
    first = w["first_delivery_seconds"]
    print(f"  first document's event after {first:.1f} s" if first is not None else "  no watched document arrived")
    _print_deliveries("watched", w["watched"], "insert")
    _print_deliveries("API", w["api"], "create")
    a, b = w["watched"]["latency_ms"], w["api"]["latency_ms"]
    print(f"  watched/API: p50 {_ratio(a['p50'], b['p50'])}, p99 {_ratio(a['p99'], b['p99'])}")
    if fanout is not None:
        c = fanout["latency_ms"]
        print(
            f"  watched/scenario 2 (API, bellcast's own collection, no watcher): "
            f"p50 {_ratio(a['p50'], c['p50'])}, p99 {_ratio(a['p99'], c['p99'])}"
        )


def _print_deliveries(name: str, f: dict[str, Any], create: str = "create") -> None:
    """One path's pooled passes: completeness, latency, CPU, and how busy the machine was."""
    print(
        f"  {name:>9}: {f['delivered']}/{f['expected_deliveries']} delivered, {f['missing']} missing, "
        f"{f['duplicates']} duplicates, {f['misdelivered']} misdelivered, {create} → receive "
        f"p50 {f['latency_ms']['p50']:.1f} ms, p99 {f['latency_ms']['p99']:.1f} ms, max {f['latency_ms']['max']:.1f} ms"
    )
    if len(f["passes"]) > 1:
        each = ", ".join(
            f"{run['latency_ms']['p50']:.1f}/{run['latency_ms']['p99']:.1f}/{run['latency_ms']['max']:.1f}"
            for run in f["passes"]
        )
        print(f"  {'':>9}  {len(f['passes'])} passes pooled; each pass's p50/p99/max (ms): {each}")
    cpu = ", ".join(f"{role} {ms:.2f}" for role, ms in f["cpu_ms_per_create"].items())
    print(f"  {'':>9}  CPU per {create} and its deliveries (ms): {cpu}")
    if "redis_requests_per_create" in f:
        print(f"  {'':>9}  requests read by Redis per {create}: {f['redis_requests_per_create']:.2f}")
    host = ", ".join(f"{run['host_percent']['busy']:.0f}/{run['host_percent']['steal']:.1f}" for run in f["passes"])
    print(f"  {'':>9}  while the {create}s were made, the machine's cores busy/stolen by the host, % per pass: {host}")


def draw_plots(results: dict[str, Any], out_dir: Path, stamp: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    if "fanout" in results["bellcast"]:
        _draw_latency(plt, results, out_dir, stamp)
    if "hold" in results["bellcast"]:
        _draw_memory(plt, results, out_dir, stamp)


def _draw_latency(plt: Any, results: dict[str, Any], out_dir: Path, stamp: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("bellcast", "tornado", "nchan"):
        data = results.get(name)
        for rate, fanout in (data or {}).get("fanout", {}).items():
            if fanout["latencies_ms"]:
                values = sorted(fanout["latencies_ms"])
                ax.plot(values, [i / len(values) for i in range(len(values))], label=f"{name}, {rate}/s")
    ax.set_xscale("log")
    ax.set_xlabel("create → receive latency (ms, log scale)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title(f"Fan-out latency, 1,000 users x 10 tabs\n{stamp}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "latency.png", dpi=110)
    plt.close(fig)


def _draw_memory(plt: Any, results: dict[str, Any], out_dir: Path, stamp: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("bellcast", "nchan", "tornado"):
        data = results.get(name)
        if data and "hold" in data:
            steps = data["hold"]["steps"]
            ax.plot(
                [s["streams"] for s in steps],
                [(s["rss_bytes"] - data["hold"]["baseline_rss_bytes"]) / 1e6 for s in steps],
                marker="o",
                label=f"{name} (RSS above idle baseline)",
            )
    ax.set_xlabel("open streams")
    ax.set_ylabel("MB")
    ax.set_title(f"Memory versus streams\n{stamp}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "memory.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


async def run_target(
    target: Any, args: argparse.Namespace, redis_url: str | None, hold_seconds: float | None = None
) -> dict[str, Any]:
    """The scenarios of `args` that `target` runs; its holds last `hold_seconds` when given."""
    target.profile_dir = args.profile
    target.no_warm_up = args.no_warm_up
    target.loop_stalls = args.loop_stalls
    target.start()
    workers = Workers(args.workers, target.port)
    await workers.start()
    try:
        result = {}
        if "hold" in args.scenarios:
            seconds, last = (hold_seconds, None) if hold_seconds else (args.hold_seconds, args.last_hold_seconds)
            result["hold"] = await scenario_hold(target, workers, args.sizes, seconds, last)
        if "fanout" in args.scenarios:
            result["fanout"] = {
                _rate_key(rate): await scenario_fanout(target, workers, args.users, 10, rate, args.fanout_passes)
                for rate in args.fanout_rates
            }
        if isinstance(target, Bellcast) and "burst" in args.scenarios:
            result["burst"] = await scenario_burst(target, workers, 10, args.burst)
        if isinstance(target, Bellcast) and "changes" in args.scenarios:
            result["changes"] = await scenario_changes(target, workers, args.users, 10, args.fanout_rate)
        if isinstance(target, Bellcast) and "churn" in args.scenarios:
            assert redis_url is not None
            result["churn"] = await scenario_churn(target, workers, args.churn, args.churn_seconds, redis_url)
        return result
    finally:
        await workers.stop()
        target.stop()


async def run_hold_only(
    target: Any, args: argparse.Namespace, sizes: list[int], hold_seconds: float, last_hold_seconds: float | None
) -> dict[str, Any]:
    target.start()
    workers = Workers(args.workers, target.port)
    await workers.start()
    try:
        return {"hold": await scenario_hold(target, workers, sizes, hold_seconds, last_hold_seconds)}
    finally:
        await workers.stop()
        target.stop()


async def run_multiprocess(
    args: argparse.Namespace, mongodb_url: str, redis_url: str, log_path: Path
) -> dict[str, Any]:
    target = Bellcast(mongodb_url, redis_url, processes=2, log_path=log_path)
    target.start()
    workers = Workers(args.workers + 2, target.port)
    await workers.start()
    try:
        size = args.multiprocess_streams
        paths = [target.stream_path(f"mp{i}", 0) for i in range(size)]
        answers = await workers.connect(paths)
        await asyncio.sleep(5.0)
        held = sum(r["open"] for r in await workers.broadcast({"op": "report"}))
        seconds = max(a["seconds"] for a in answers)
        connected = sum(a["connected"] for a in answers)
        result = {
            "processes": 2,
            "target_streams": size,
            "streams": held,
            "failed": sum(a["failed"] for a in answers),
            "connects_per_second": connected / seconds if seconds else 0.0,
            "rss_bytes": target.meter().rss(),
        }
        print(f"  bellcast PROCESSES=2: {result}", flush=True)
        await workers.broadcast({"op": "close"})
        return result
    finally:
        await workers.stop()
        target.stop()


async def run_watched(args: argparse.Namespace, mongodb_url: str, redis_url: str, log_path: Path) -> dict[str, Any]:
    """Scenario 6 on a bellcast of its own, started to watch WATCHED_COLLECTION as Laravel's notifications."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url, tz_aware=True)
    try:
        database = client[MONGODB_DB]
        if WATCHED_COLLECTION not in await database.list_collection_names():
            await database.create_collection(WATCHED_COLLECTION)
        source = {"SOURCE_COLLECTION": WATCHED_COLLECTION, "SOURCE_SCHEMA": "laravel"}
        target = Bellcast(mongodb_url, redis_url, args.processes, log_path, env=source)
        target.start()
        workers = Workers(args.workers, target.port)
        await workers.start()
        try:
            return await scenario_watched(
                target, workers, database[WATCHED_COLLECTION], args.users, 10, args.fanout_rate, args.fanout_passes
            )
        finally:
            await workers.stop()
            target.stop()
    finally:
        await client.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes and short holds, to try the harness")
    parser.add_argument("--skip-nchan", action="store_true")
    parser.add_argument("--skip-multiprocess", action="store_true")
    parser.add_argument("--skip-tornado", action="store_true", help="skip the minimal Tornado server")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--processes", type=int, default=1, help="bellcast's PROCESSES for the scenarios (default 1, as the targets)"
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: set(text.split(",")),
        default=set(SCENARIOS),
        help=f"which to run, comma-separated (default all: {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(size) for size in text.split(",")],
        help="the hold's stream counts, comma-separated (default 1000,5000,10000,18000)",
    )
    parser.add_argument(
        "--hold-seconds", type=float, help="each hold's length (default 60; the largest: the safety scan interval + 40)"
    )
    parser.add_argument(
        "--fanout-passes", type=int, help="fan-out passes at each rate, pooled (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--fanout-rates",
        type=lambda text: [float(rate) for rate in text.split(",")],
        default=[200.0, 500.0],
        help="the fan-out's creates per second, each run in turn, comma-separated (default 200,500, the targets')",
    )
    parser.add_argument(
        "--fanout-rate",
        type=float,
        default=200.0,
        help="creates (or reads) per second of the changes and the watched scenario (default 200)",
    )
    parser.add_argument(
        "--users",
        type=int,
        help="users of the fan-out, changes and watched scenarios, 10 tabs each (default 1000; 100 with --quick)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="measure each fan-out user's first create (by default each user is sent one, unmeasured, first)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="record py-spy samples of each server-side process during each pass's creates into this directory "
        "(then: python -m bench.roles DIR)",
    )
    parser.add_argument(
        "--loop-stalls",
        action="store_true",
        help=f"run bellcast with a watchdog on its event loop (bench/stalls.py): each pass counts the waits over "
        f"{STALL_SECONDS * 1000:g} ms while its creates were made, and how much of them the loop thread ran",
    )
    parser.add_argument("--plots", type=Path, default=ROOT / "docs" / "bench")
    args = parser.parse_args()
    if not args.scenarios <= set(SCENARIOS):
        parser.error(f"--scenarios: choose from {','.join(SCENARIOS)}")
    quick = args.quick
    args.sizes = args.sizes or ([200, 1000] if quick else [1000, 5000, 10000, 18000])
    # Unless told otherwise, the largest hold spans a whole safety scan interval and more, so that its
    # idle CPU includes them.
    args.last_hold_seconds = None if quick or args.hold_seconds else Settings().safety_scan_interval + 40.0
    args.hold_seconds = args.hold_seconds or (5.0 if quick else 60.0)
    args.users = args.users or (100 if quick else 1000)
    args.fanout_passes = args.fanout_passes or (1 if quick else 3)
    args.burst = 200 if quick else 1000
    args.churn = 1000 if quick else 10000
    args.churn_seconds = 10.0 if quick else 60.0
    args.multiprocess_streams = 2000 if quick else 30000
    return args


async def main() -> None:
    args = parse_args()
    stamp = (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"
    )
    print(f"bellcast benchmark — {stamp}", flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="bellcast-bench-"))
    stores: list[Any] = []
    mongodb_url = os.environ.get("MONGODB_URL")
    redis_url = os.environ.get("REDIS_URL")
    if not mongodb_url:
        stores.append(EmbeddedMongo(log_dir / "stores").start())
        mongodb_url = stores[-1].url
    if not redis_url:
        stores.append(EmbeddedRedis(log_dir / "stores").start())
        redis_url = stores[-1].url
    results: dict[str, Any] = {
        "machine": stamp,
        "quick": args.quick,
        "fanout_rate": args.fanout_rate,
        "fanout_rates": args.fanout_rates,
        "processes": args.processes,
    }
    try:
        bell = Bellcast(mongodb_url, redis_url, processes=args.processes, log_path=log_dir / "bellcast.log")
        results["bellcast"] = await run_target(bell, args, redis_url) if args.scenarios - {"watched"} else {}
        if "fanout" in args.scenarios:
            results["bellcast"]["driver_us_per_insert"] = driver_us_per_insert(mongodb_url)
        if "watched" in args.scenarios:
            results["bellcast"]["watched"] = await run_watched(args, mongodb_url, redis_url, log_dir / "watched.log")
        if not args.skip_multiprocess:
            results["bellcast"]["multiprocess"] = await run_multiprocess(
                args, mongodb_url, redis_url, log_dir / "mp.log"
            )
        if not args.skip_nchan:
            if shutil.which("nginx") and NCHAN_MODULE.exists():
                results["nchan"] = await run_target(Nchan(1, log_dir), args, None)
            if shutil.which("nginx") and NCHAN_MODULE.exists() and "hold" in args.scenarios:
                # The same idle hold with pings as often as bellcast's heartbeats: what the heartbeat costs anyone.
                pings = Nchan(1, log_dir, ping_interval=round(Settings().heartbeat_interval))
                results["nchan_pings"] = await run_hold_only(
                    pings, args, args.sizes[-1:], args.hold_seconds, args.last_hold_seconds
                )
            else:
                print("nginx with the Nchan module is not installed: no baseline (make bench installs it)")
        if not args.skip_tornado and args.scenarios & {"hold", "fanout"}:
            # Idle, it does nothing (no heartbeats): its holds are only long enough to read its RSS.
            tornado = MinimalTornado(redis_url, log_dir)
            results["tornado"] = await run_target(tornado, args, None, hold_seconds=TORNADO_HOLD_SECONDS)
    finally:
        for store in stores:
            store.stop()
    print_table(results)
    args.output.write_text(json.dumps(results, indent=1))
    draw_plots(results, args.plots, stamp)
    print(f"\nwrote {args.output} and the plots in {args.plots}; server logs in {log_dir}")


if __name__ == "__main__":
    asyncio.run(main())
