"""bellcast's wiring: read the settings, start the stores' clients, build the services, serve, shut down in order."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tornado import httpserver, web
from tornado.netutil import bind_sockets

import handlers
from services.auth import Authenticator
from services.cache import CacheObserver, DeliveryCache
from services.delivery import CommandBatcher, StreamTiming, WakeupHub
from services.embedded import die_with_parent
from services.health import HealthService
from services.notifications import NotificationService
from services.ratelimit import ProducerRateLimiter, RateLimit
from services.stores import MONGO_DRIVERS, MongoConnection, connect_redis
from services.streams import StreamLimits, StreamRegistry

log = logging.getLogger("bellcast")

SHUTDOWN_GRACE_SECONDS = 5.0
WORKER_RESTART_DELAY = 1.0
# Room for connection storms: thousands of browsers reconnecting at once after a restart.
LISTEN_BACKLOG = 4096
STARTUP_SUBSCRIBE_TIMEOUT = 5.0
DEVELOPMENT_TOKEN_LIFETIME = 24 * 3600
DEVELOPMENT_SECRETS_FILE = "development-secrets.json"
# Bodies above the larger of this and twice MAX_BODY_BYTES are cut off unread (a bare 400);
# up to it, the API answers a JSON 413 past MAX_BODY_BYTES.
MAX_REQUEST_BODY_BYTES = 1024 * 1024


class SettingsError(ValueError):
    """A setting has a value bellcast cannot run with."""


def _positive_number(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return number


def _non_negative_number(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError("must be a number of at least 0")
    return number


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _positive_integer(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a whole number of at least 1")
    return number


def _process_count(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 256:
        raise ValueError("must be a number of processes between 0 (one per core) and 256")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return number


def _driver(value: str) -> str:
    if value not in MONGO_DRIVERS:
        raise ValueError(f"must be one of {', '.join(MONGO_DRIVERS)}")
    return value


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not re.match(rf"^({'|'.join(schemes)})://", value):
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value

    return parse


def _secret(value: str) -> str:
    if len(value) < 16:
        raise ValueError("must be at least 16 characters")
    if value.lstrip().startswith(("-----BEGIN", "ssh-")):
        # An HS256 secret shared with the token issuer, never a key pair's public half (algorithm confusion).
        raise ValueError("must be a shared secret, not a PEM or SSH key")
    return value


def _claim(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


_ORIGIN_PATTERN = re.compile(r"^(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?$")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _origins(value: str) -> tuple[str, ...]:
    origins: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        match = _ORIGIN_PATTERN.match(item.lower())
        if match is None:
            raise ValueError(f"{item!r} is not an origin: use scheme://host[:port], no path, no wildcard")
        scheme, host, port = match.groups()
        # Browsers send Origin without the scheme's default port, and compare it exactly.
        origins.append(f"{scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS[scheme] else ""))
    return tuple(origins)


def _database_name(value: str) -> str:
    if not re.match(r"^[A-Za-z0-9_-]{1,63}$", value):
        raise ValueError("must be 1 to 63 letters, digits, _ or -")
    return value


@dataclass(frozen=True)
class Setting:
    """One configuration variable: its environment name, parser, default and help."""

    field: str
    parse: Callable[[str], Any]
    default: str | None
    help: str

    @property
    def env(self) -> str:
        """Its environment variable."""
        return self.field.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "address to listen on"),
    Setting("port", _port, "8888", "port to listen on"),
    Setting("mongodb_url", _url("mongodb", "mongodb\\+srv"), None, "MongoDB URL; unset starts an embedded SecantusDB"),
    Setting("mongodb_db", _database_name, "bellcast", "MongoDB database name"),
    Setting("mongo_driver", _driver, "pymongo", "MongoDB driver: pymongo (AsyncMongoClient) or motor"),
    Setting("redis_url", _url("redis", "rediss", "unix"), None, "Redis URL; unset starts an embedded valkey-server"),
    Setting("data_dir", str, "./var", "where the embedded servers keep their data"),
    Setting("jwt_secret", _secret, None, "HS256 secret of user tokens; unset generates a development secret"),
    Setting("api_key", _secret, None, "producers' key (X-API-Key); unset generates a development key"),
    Setting("jwt_audience", _claim, None, "when set, user tokens must name it in `aud`; unset refuses any `aud`"),
    Setting("jwt_issuer", _claim, None, "when set, user tokens must carry it as `iss`"),
    Setting("poll_interval", _positive_number, "1.0", "seconds between a stream's cache scans without wake-up hints"),
    Setting("heartbeat_interval", _positive_number, "15", "seconds of silence before a stream sends a heartbeat"),
    Setting("wakeup_hints", _boolean, "true", "wake streams through one Redis pub/sub subscription per process"),
    Setting(
        "max_streams", _positive_integer, "19000", "streams one process holds at most (keep below its open-file limit)"
    ),
    Setting("max_streams_per_user", _positive_integer, "20", "streams one user may hold at once, across processes"),
    Setting(
        "stream_write_timeout", _positive_number, "30", "seconds a client may leave a write unread before it is dropped"
    ),
    Setting("processes", _process_count, "1", "worker processes sharing the port; 0 starts one per core"),
    Setting("max_body_bytes", _positive_integer, "65536", "largest JSON request body in bytes; larger ones get 413"),
    Setting(
        "producer_rate_limit",
        _non_negative_number,
        "500",
        "notifications per second one API key may create on average, across all processes; 0 turns the limit off",
    ),
    Setting(
        "producer_rate_window",
        _positive_number,
        "10",
        "seconds of a rate-limit window: a key may send PRODUCER_RATE_LIMIT times this at once, then waits",
    ),
    Setting(
        "store_timeout", _positive_number, "5", "seconds a MongoDB or Redis call may take before the request gets 503"
    ),
    Setting("safety_scan_interval", _positive_number, "30", "with hints, seconds between a stream's own scans"),
    Setting(
        "cors_origins",
        _origins,
        "",
        "comma-separated origins whose pages may use the API and stream (https://app.example.com); empty: same origin",
    ),
)


@dataclass(frozen=True)
class Settings:
    """bellcast's configuration, parsed and checked once."""

    host: str = "127.0.0.1"
    port: int = 8888
    mongodb_url: str | None = None
    mongodb_db: str = "bellcast"
    mongo_driver: str = "pymongo"
    redis_url: str | None = None
    data_dir: str = "./var"
    jwt_secret: str | None = None
    api_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    poll_interval: float = 1.0
    heartbeat_interval: float = 15.0
    wakeup_hints: bool = True
    max_streams: int = 19000
    max_streams_per_user: int = 20
    stream_write_timeout: float = 30.0
    processes: int = 1
    max_body_bytes: int = 64 * 1024
    producer_rate_limit: float = 500.0
    producer_rate_window: float = 10.0
    store_timeout: float = 5.0
    safety_scan_interval: float = 30.0
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.heartbeat_interval < self.poll_interval:
            raise SettingsError("HEARTBEAT_INTERVAL must be at least POLL_INTERVAL")

    @property
    def stream_timing(self) -> StreamTiming:
        """The timing every stream follows."""
        return StreamTiming(
            poll_interval=self.poll_interval,
            heartbeat_interval=self.heartbeat_interval,
            safety_scan_interval=self.safety_scan_interval,
            wakeup_hints=self.wakeup_hints,
        )

    @property
    def stream_limits(self) -> StreamLimits:
        """The limits every stream obeys."""
        return StreamLimits(self.max_streams, self.max_streams_per_user, self.stream_write_timeout)

    @property
    def producer_rate(self) -> RateLimit:
        """How often one API key may create notifications."""
        return RateLimit(self.producer_rate_limit, self.producer_rate_window)

    @property
    def request_body_cutoff(self) -> int:
        """Bodies above this many bytes are cut off unread; below it, the API answers a JSON 413."""
        return max(MAX_REQUEST_BODY_BYTES, 2 * self.max_body_bytes)

    @property
    def development(self) -> bool:
        """True when secrets were generated rather than configured."""
        return self.jwt_secret is None or self.api_key is None

    @property
    def development_routes(self) -> bool:
        """True when neither secret is configured: only then may the demo page mint tokens and send notifications."""
        return self.jwt_secret is None and self.api_key is None


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Settings from command-line flags, then environment variables, then defaults."""
    parser = argparse.ArgumentParser(prog="bellcast", description="Real-time in-app notifications over SSE.")
    for setting in SETTINGS:
        flag = "--" + setting.field.replace("_", "-")
        parser.add_argument(flag, dest=setting.field, help=f"{setting.help} (env {setting.env})")
    arguments = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = arguments[setting.field]
        if raw is None:
            raw = environ.get(setting.env) or setting.default
        if raw is None:
            continue
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as error:
            shown = "<hidden>" if setting.field in ("jwt_secret", "api_key") else repr(raw)
            raise SettingsError(f"{setting.env}={shown}: {error}") from None
    return Settings(**values)


@dataclass
class Runtime:
    """The stores' clients and the services built on them."""

    mongo: MongoConnection
    redis: Any
    batcher: CommandBatcher
    wakeups: WakeupHub
    notifications: NotificationService
    delivery_cache: DeliveryCache
    authenticator: Authenticator
    health: HealthService
    streams: StreamRegistry
    rate_limiter: ProducerRateLimiter

    async def close(self) -> None:
        """Stop listening for hints and watching streams, then close the stores' clients."""
        await self.streams.close()
        await self.wakeups.close()
        await self.batcher.close()
        await self.mongo.close()
        await self.redis.aclose()


async def start_runtime(settings: Settings, mongodb_url: str, redis_url: str) -> Runtime:
    """Create the clients in the running loop, the services, and register the observers (once)."""
    mongo = MongoConnection(mongodb_url, settings.mongodb_db, settings.mongo_driver, settings.store_timeout)
    redis = connect_redis(redis_url, settings.store_timeout)
    notifications = NotificationService(mongo.database)
    batcher = CommandBatcher(redis)
    wakeups = WakeupHub(redis)
    delivery_cache = DeliveryCache(redis, batcher, publish_hints=settings.wakeup_hints)
    notifications.register_observer(CacheObserver(delivery_cache))
    assert settings.jwt_secret is not None and settings.api_key is not None
    runtime = Runtime(
        mongo=mongo,
        redis=redis,
        batcher=batcher,
        wakeups=wakeups,
        notifications=notifications,
        delivery_cache=delivery_cache,
        authenticator=Authenticator(settings.jwt_secret, settings.api_key, settings.jwt_audience, settings.jwt_issuer),
        health=HealthService({"mongodb": notifications.ping, "redis": delivery_cache.ping}),
        streams=StreamRegistry(settings.stream_write_timeout),
        rate_limiter=ProducerRateLimiter(redis, settings.producer_rate),
    )
    await notifications.ensure_indexes()
    # With or without hints, the subscription tells when Redis went away and came back.
    wakeups.start()
    try:
        await asyncio.wait_for(wakeups.wait_subscribed(), STARTUP_SUBSCRIBE_TIMEOUT)
    except TimeoutError:
        log.warning("no subscription to Redis yet; streams rely on their own scans until there is")
    runtime.streams.start_watchdog()
    return runtime


def make_app(runtime: Runtime, settings: Settings, development: bool = False) -> web.Application:
    """The Tornado application: routes, and the services handed to handlers through its settings.

    `development` (neither secret configured) adds the demo page's token and test-notification routes.
    """
    routes = handlers.default_handlers + (handlers.development_handlers if development else [])
    return web.Application(
        routes,
        default_handler_class=handlers.NotFoundHandler,
        static_path=str(Path(__file__).parent / "static"),
        static_handler_class=handlers.WidgetStaticFileHandler,
        template_path=str(Path(__file__).parent / "templates"),
        log_function=log_request,
        notifications=runtime.notifications,
        delivery_cache=runtime.delivery_cache,
        authenticator=runtime.authenticator,
        producer_rate_limiter=runtime.rate_limiter,
        max_body_bytes=settings.max_body_bytes,
        health=runtime.health,
        streams=runtime.streams,
        wakeups=runtime.wakeups,
        stream_timing=settings.stream_timing,
        stream_limits=settings.stream_limits,
        cors_origins=frozenset(settings.cors_origins),
        development=development,
    )


def log_request(handler: web.RequestHandler) -> None:
    """Access log line, with any token in the query string redacted."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    uri = handlers.redacted_uri(handler.request.uri or "")
    duration_ms = 1000.0 * handler.request.request_time()
    logging.getLogger("tornado.access").log(
        level, "%d %s %s (%s) %.2fms", status, handler.request.method, uri, handler.request.remote_ip, duration_ms
    )


def _development_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets generated once for development and kept in DATA_DIR, so tokens survive restarts."""
    path = data_dir / DEVELOPMENT_SECRETS_FILE
    if path.exists():
        return dict(json.loads(path.read_text()))
    generated = {"jwt_secret": secrets.token_urlsafe(32), "api_key": secrets.token_urlsafe(24)}
    data_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(generated))
    return generated


class EmbeddedStores:
    """The embedded MongoDB and Redis servers started for settings that name no URL; stopped on exit."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._started: list[Any] = []

    def __enter__(self) -> Settings:
        """Start what is missing; the settings returned name both stores."""
        from services.embedded import EmbeddedMongo, EmbeddedRedis  # only needed without external stores

        settings = self._settings
        data_dir = Path(settings.data_dir)
        try:
            if settings.mongodb_url is None:
                self._started.append(EmbeddedMongo(data_dir).start())
                settings = replace(settings, mongodb_url=self._started[-1].url)
                log.info("MongoDB: embedded SecantusDB at %s, data in %s", settings.mongodb_url, data_dir / "mongodb")
            else:
                log.info("MongoDB: %s", _without_password(settings.mongodb_url))
            if settings.redis_url is None:
                self._started.append(EmbeddedRedis(data_dir).start())
                settings = replace(settings, redis_url=self._started[-1].url)
                log.info("Redis: embedded valkey-server at %s", settings.redis_url)
            else:
                log.info("Redis: %s", _without_password(settings.redis_url))
        except BaseException:
            self.__exit__()
            raise
        return settings

    def __exit__(self, *exc_info: object) -> None:
        for server in reversed(self._started):
            server.stop()
        self._started.clear()


def with_development_secrets(settings: Settings) -> Settings:
    """Fill in a generated JWT secret and API key where none is configured."""
    generated = _development_secrets(Path(settings.data_dir))
    return replace(
        settings,
        jwt_secret=settings.jwt_secret or generated["jwt_secret"],
        api_key=settings.api_key or generated["api_key"],
    )


async def serve(settings: Settings, sockets: list[socket.socket], development_routes: bool = False) -> None:
    """Serve on the bound sockets until SIGINT or SIGTERM; then stop accepting, end the streams, close."""
    assert settings.mongodb_url is not None and settings.redis_url is not None
    runtime = await start_runtime(settings, settings.mongodb_url, settings.redis_url)
    app = make_app(runtime, settings, development_routes)
    server = httpserver.HTTPServer(app, xheaders=False, max_body_size=settings.request_body_cutoff)
    server.add_sockets(sockets)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)
    await stop_requested.wait()
    log.info("shutting down: %d open streams", len(runtime.streams))
    server.stop()
    runtime.streams.end_all()
    try:
        await asyncio.wait_for(runtime.streams.wait_until_empty(), SHUTDOWN_GRACE_SECONDS)
        await asyncio.wait_for(server.close_all_connections(), SHUTDOWN_GRACE_SECONDS)
    except TimeoutError:
        log.warning("some connections did not close within %.0f s", SHUTDOWN_GRACE_SECONDS)
    await runtime.close()


def run_processes(count: int, settings: Settings, sockets: list[socket.socket], development_routes: bool) -> int:
    """Fork `count` workers that share the bound sockets, each with its own loop and store clients.

    The parent forwards SIGINT and SIGTERM to them and restarts one that dies on its own.
    """
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            die_with_parent()
            status = 0
            try:
                asyncio.run(serve(settings, sockets, development_routes))
            except BaseException:
                log.exception("worker %d failed", index)
                status = 1
            finally:
                logging.shutdown()
                os._exit(status)
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for index in range(count):
        spawn(index)
    log.info("started %d worker processes: %s", count, ", ".join(map(str, children)))
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid)
        if not stopping:
            log.error("worker %d (pid %d) ended with status %d; starting another", index, pid, status)
            time.sleep(WORKER_RESTART_DELAY)
            spawn(index)
    return 0


def _without_password(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def _print_development_help(settings: Settings) -> None:
    assert settings.jwt_secret is not None and settings.api_key is not None
    authenticator = Authenticator(settings.jwt_secret, settings.api_key)
    token = authenticator.mint_user_token("demo", DEVELOPMENT_TOKEN_LIFETIME, time.time())
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"""
Development mode: JWT_SECRET and API_KEY were generated (kept in {settings.data_dir}/{DEVELOPMENT_SECRETS_FILE}).
  API key:                  {settings.api_key}
  token for user "demo":    {token}
Open the demo page with the bell: {base}/
Try it:
  curl -N '{base}/notifications/stream?access_token={token}'
  curl -X POST {base}/api/notifications -H 'X-API-Key: {settings.api_key}' \\
       -H 'Content-Type: application/json' -d '{{"user_id": "demo", "title": "Hello"}}'
""",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python server.py` and the `bellcast` command."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except SettingsError as error:
        print(f"bellcast: invalid setting {error}", file=sys.stderr)
        return 2
    development = settings.development
    development_routes = settings.development_routes
    if development:
        settings = with_development_secrets(settings)
    try:
        sockets = bind_sockets(settings.port, settings.host, backlog=LISTEN_BACKLOG)
    except OSError as error:
        print(f"bellcast: cannot listen on {settings.host}:{settings.port}: {error}", file=sys.stderr)
        return 1
    processes = settings.processes or os.cpu_count() or 1
    with EmbeddedStores(settings) as settings:
        log.info("MongoDB driver: %s; %d process%s", settings.mongo_driver, processes, "" if processes == 1 else "es")
        log.info("bellcast listening on http://%s:%d", settings.host, settings.port)
        if development:
            _print_development_help(settings)
        if settings.cors_origins:
            log.info("CORS: pages of %s may use the API and stream", ", ".join(settings.cors_origins))
        if processes == 1:
            asyncio.run(serve(settings, sockets, development_routes))
        else:
            run_processes(processes, settings, sockets, development_routes)
    log.info("bellcast stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
