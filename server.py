"""bellcast's wiring: read the settings, start the stores' clients, build the services, serve, shut down in order."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tornado import httpserver, web
from tornado.netutil import bind_sockets

import handlers
from handlers.proxy import Network, TrustedProxyHTTPServer
from services.auth import Authenticator, mint_user_token
from services.cache import REGISTRATION_RENEWAL_INTERVAL, CacheObserver, DeliveryCache
from services.command_batcher import CommandBatcher
from services.connection import StreamTiming
from services.embedded import die_with_parent
from services.health import HealthService
from services.logs import LOG_FORMATS, UserIdHasher, configure_logging, fields
from services.memory import ScheduledFullCollections
from services.metrics import Metrics, MetricsDirectory
from services.notifications import NotificationService
from services.ratelimit import ProducerRateLimiter, RateLimit
from services.redis_backend import RedisBackend, connect_redis_backend
from services.status import StatusHistory
from services.stores import MONGO_DRIVERS, MongoConnection
from services.streams import StreamLimits, StreamRegistry
from services.wakeups import WakeupHub

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


def _one_of(choices: Iterable[str], ignore_case: bool = False) -> Callable[[str], str]:
    allowed = tuple(choices)

    def parse(value: str) -> str:
        chosen = value.lower() if ignore_case else value
        if chosen not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return chosen

    return parse


LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _positive_integer(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a whole number of at least 1")
    return number


def _event_loop(value: str) -> str:
    if value not in ("uvloop", "asyncio"):
        raise ValueError("must be uvloop or asyncio")
    return value


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


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not re.match(rf"^({'|'.join(schemes)})://", value):
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value

    return parse


def _secret(value: str) -> str:
    if len(value) < 16:
        raise ValueError("must be at least 16 characters")
    return value


def _claim(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _jwt_secret(value: str) -> str:
    if value.lstrip().startswith(("-----BEGIN", "ssh-")):
        # An HS256 secret shared with the token issuer, never a key pair's public half (algorithm confusion).
        raise ValueError("must be a shared secret, not a PEM or SSH key")
    # RFC 7518 asks HS256 keys for at least 256 bits; PyJWT warns on every token below that.
    if len(value.encode()) < 32:
        raise ValueError("must be at least 32 bytes")
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


def _networks(value: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip())
    except ValueError:
        raise ValueError("must be comma-separated IP addresses or networks, such as 127.0.0.1,10.0.0.0/8") from None


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
    Setting("mongo_driver", _one_of(MONGO_DRIVERS), "pymongo", "MongoDB driver: pymongo (AsyncMongoClient) or motor"),
    Setting("redis_url", _url("redis", "rediss", "unix"), None, "Redis URL; unset starts an embedded valkey-server"),
    Setting(
        "redis_cluster",
        _boolean,
        "false",
        "REDIS_URL names a node of a Redis Cluster (unset: an embedded three-node cluster is started)",
    ),
    Setting("data_dir", str, "./var", "where the embedded servers keep their data"),
    Setting("jwt_secret", _jwt_secret, None, "HS256 secret of user tokens; unset generates a development secret"),
    Setting("api_key", _secret, None, "producers' key (X-API-Key); unset generates a development key"),
    Setting("jwt_audience", _claim, None, "when set, user tokens must name it in `aud`; unset refuses any `aud`"),
    Setting("jwt_issuer", _claim, None, "when set, user tokens must carry it as `iss`"),
    Setting("poll_interval", _positive_number, "1.0", "seconds between a stream's cache scans without wake-up hints"),
    Setting(
        "heartbeat_interval",
        _positive_number,
        "30",
        "seconds of silence before a stream sends a heartbeat; keep it below every proxy's idle timeout",
    ),
    Setting("wakeup_hints", _boolean, "true", "wake streams through one Redis pub/sub subscription per process"),
    Setting(
        "max_streams", _positive_integer, "19000", "streams one process holds at most (keep below its open-file limit)"
    ),
    Setting("max_streams_per_user", _positive_integer, "20", "streams one user may hold at once, across processes"),
    Setting(
        "stream_write_timeout",
        _positive_number,
        "30",
        "seconds a client may leave a write unread before it is dropped; also the stream socket's TCP_USER_TIMEOUT "
        "(Linux), so a client that vanished without closing (host gone, network cut) is dropped within about "
        "HEARTBEAT_INTERVAL plus this",
    ),
    Setting("event_loop", _event_loop, "uvloop", "asyncio event loop: uvloop (faster, Linux and macOS) or asyncio"),
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
    Setting(
        "safety_scan_interval",
        _positive_number,
        "200",
        "with hints, seconds between a stream's own scans, which catch a lost hint; at most 200",
    ),
    Setting(
        "cors_origins",
        _origins,
        "",
        "comma-separated origins whose pages may use the API and stream (https://app.example.com); empty: same origin",
    ),
    Setting(
        "trusted_proxies",
        _networks,
        None,
        "reverse proxies (IP addresses or networks, comma-separated) whose X-Real-IP, X-Forwarded-For and "
        "X-Forwarded-Proto are believed; unset believes no one",
    ),
    Setting(
        "metrics_token",
        _secret,
        None,
        "Bearer token that /metrics and /status require; unset: they answer 404 (except on METRICS_PORT)",
    ),
    Setting("metrics_port", _port, None, "a second port, on HOST, serving only /metrics, /status, /healthz, /readyz"),
    Setting("status_interval", _positive_number, "5", "seconds between the status page's samples of the metrics"),
    Setting("log_format", _one_of(LOG_FORMATS), "auto", "json, text, or auto: text with generated secrets, else json"),
    Setting(
        "log_level",
        _one_of(LOG_LEVELS, ignore_case=True),
        "info",
        "debug, info, warning or error; info logs every request, and each stream when it opens and when it ends",
    ),
    Setting(
        "shutdown_delay",
        _non_negative_number,
        "0",
        "seconds between /readyz turning 503 and no longer accepting connections, for load balancers to notice",
    ),
)
_SETTINGS_BY_FIELD = {setting.field: setting for setting in SETTINGS}
_HIDDEN_SETTINGS = ("jwt_secret", "api_key", "metrics_token")


@dataclass(frozen=True)
class Settings:
    """bellcast's configuration, parsed and checked once."""

    host: str = "127.0.0.1"
    port: int = 8888
    mongodb_url: str | None = None
    mongodb_db: str = "bellcast"
    mongo_driver: str = "pymongo"
    redis_url: str | None = None
    redis_cluster: bool = False
    data_dir: str = "./var"
    jwt_secret: str | None = None
    api_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    poll_interval: float = 1.0
    heartbeat_interval: float = 30.0
    wakeup_hints: bool = True
    max_streams: int = 19000
    max_streams_per_user: int = 20
    stream_write_timeout: float = 30.0
    event_loop: str = "uvloop"
    processes: int = 1
    max_body_bytes: int = 64 * 1024
    producer_rate_limit: float = 500.0
    producer_rate_window: float = 10.0
    store_timeout: float = 5.0
    safety_scan_interval: float = 200.0
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    metrics_token: str | None = None
    metrics_port: int | None = None
    status_interval: float = 5.0
    log_format: str = "auto"
    log_level: str = "info"
    shutdown_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.heartbeat_interval < self.poll_interval:
            raise SettingsError("HEARTBEAT_INTERVAL must be at least POLL_INTERVAL")
        if self.safety_scan_interval > REGISTRATION_RENEWAL_INTERVAL:
            # Streams renew their registration on these scans.
            raise SettingsError(f"SAFETY_SCAN_INTERVAL must be at most {REGISTRATION_RENEWAL_INTERVAL:.0f} seconds")
        if (
            self.redis_cluster
            and self.redis_url is not None
            and not re.match(r"^rediss?://[^/?]*/?0?(\?|$)", self.redis_url)
        ):
            raise SettingsError(
                "REDIS_CLUSTER needs a redis:// or rediss:// REDIS_URL of database 0 (a cluster has no other)"
            )

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
    def metrics_enabled(self) -> bool:
        """True when /metrics and /status are served somewhere: METRICS_TOKEN or METRICS_PORT is set."""
        return self.metrics_token is not None or self.metrics_port is not None

    @property
    def json_logs(self) -> bool:
        """LOG_FORMAT, with auto resolved: a person reads `make run`'s terminal, a collector reads a deployment's."""
        if self.log_format == "auto":
            return not self.development
        return self.log_format == "json"

    @property
    def development_routes(self) -> bool:
        """True when neither secret is configured: only then may the demo page mint tokens and send notifications."""
        return self.jwt_secret is None and self.api_key is None


def command_line() -> argparse.ArgumentParser:
    """`bellcast [serve] [--setting VALUE ...]` and `bellcast token USER [--ttl SECONDS]`."""
    parser = argparse.ArgumentParser(
        prog="bellcast",
        description="Real-time in-app notifications over Server-Sent Events.",
        epilog="Without a command bellcast serves: `bellcast --port 9000` is `bellcast serve --port 9000`.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the API and the event streams (the default)",
        description="Serve the API and the event streams. Each flag can also be set by the environment "
        "variable named in its help; flags win.",
    )
    _add_setting_flags(serve, SETTINGS)
    token = commands.add_parser(
        "token",
        help="print a user token, for development",
        description="Print a token for USER signed with JWT_SECRET, or else with the development secret "
        f"that `bellcast serve` keeps in DATA_DIR/{DEVELOPMENT_SECRETS_FILE}.",
    )
    token.add_argument("user", metavar="USER", help="the user id the token is for (its `sub` claim)")
    token.add_argument(
        "--ttl",
        type=_token_lifetime,
        default=DEVELOPMENT_TOKEN_LIFETIME,
        metavar="SECONDS",
        help="how long the token is valid (default %(default)s, a day)",
    )
    _add_setting_flags(token, [_SETTINGS_BY_FIELD["jwt_secret"], _SETTINGS_BY_FIELD["data_dir"]])
    return parser


def _add_setting_flags(parser: argparse.ArgumentParser, settings: Sequence[Setting]) -> None:
    for setting in settings:
        flag = "--" + setting.field.replace("_", "-")
        parser.add_argument(flag, dest=setting.field, help=f"{setting.help} (env {setting.env})")


def _token_lifetime(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number of seconds, not {value!r}")
    return seconds


def setting_value(setting: Setting, flag: str | None, environ: Mapping[str, str]) -> Any:
    """One setting from its flag, else its environment variable, else its default; None when unset."""
    raw = flag if flag is not None else environ.get(setting.env) or setting.default
    if raw is None:
        return None
    try:
        return setting.parse(raw)
    except ValueError as error:
        shown = "<hidden>" if setting.field in _HIDDEN_SETTINGS else repr(raw)
        raise SettingsError(f"{setting.env}={shown}: {error}") from None


def settings_from(arguments: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Settings from parsed `serve` flags, then environment variables, then defaults."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        value = setting_value(setting, arguments.get(setting.field), environ)
        if value is not None:
            values[setting.field] = value
    return Settings(**values)


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Settings from `bellcast serve`'s flags `argv`, then environment variables, then defaults."""
    return settings_from(vars(command_line().parse_args(["serve", *argv])), environ)


@dataclass
class Runtime:
    """The stores' clients and the services built on them."""

    mongo: MongoConnection
    redis: Any
    # One Redis server or a cluster, chosen once here: the delivery path asks it what differs.
    redis_backend: RedisBackend
    batcher: CommandBatcher
    wakeups: WakeupHub
    notifications: NotificationService
    delivery_cache: DeliveryCache
    authenticator: Authenticator
    health: HealthService
    streams: StreamRegistry
    metrics: Metrics
    status_history: StatusHistory
    user_hasher: UserIdHasher
    rate_limiter: ProducerRateLimiter

    async def close(self) -> None:
        """Stop sampling, listening for hints and watching streams, then close the stores' clients."""
        await self.status_history.close()
        await self.streams.close()
        await self.wakeups.close()
        await self.batcher.close()
        await self.mongo.close()
        await self.redis_backend.aclose()


async def start_runtime(
    settings: Settings, mongodb_url: str, redis_url: str, metrics: Metrics | None = None
) -> Runtime:
    """Create the clients in the running loop, the services, and register the observers (once).

    `metrics` are this process's; by default a set of its own (one process, or a test).
    """
    if metrics is None:
        metrics = Metrics()
    mongo = MongoConnection(mongodb_url, settings.mongodb_db, settings.mongo_driver, settings.store_timeout)
    redis_backend = connect_redis_backend(redis_url, settings.redis_cluster, settings.store_timeout)
    redis = redis_backend.client
    notifications = NotificationService(mongo.database, metrics)
    batcher = CommandBatcher(redis_backend, settings.store_timeout, metrics)
    wakeups = WakeupHub(redis_backend, batcher)
    delivery_cache = DeliveryCache(redis_backend, batcher, publish_hints=settings.wakeup_hints, metrics=metrics)
    notifications.register_observer(CacheObserver(delivery_cache, wakeups))
    assert settings.jwt_secret is not None and settings.api_key is not None
    runtime = Runtime(
        mongo=mongo,
        redis=redis,
        redis_backend=redis_backend,
        batcher=batcher,
        wakeups=wakeups,
        notifications=notifications,
        delivery_cache=delivery_cache,
        authenticator=Authenticator(settings.jwt_secret, settings.api_key, settings.jwt_audience, settings.jwt_issuer),
        health=HealthService({"mongodb": notifications.ping, "redis": delivery_cache.ping}, metrics),
        streams=StreamRegistry(settings.heartbeat_interval, settings.stream_write_timeout, delivery_cache, metrics),
        metrics=metrics,
        status_history=StatusHistory(metrics, settings.status_interval),
        user_hasher=UserIdHasher(settings.jwt_secret),
        rate_limiter=ProducerRateLimiter(redis_backend, settings.producer_rate),
    )
    await notifications.ensure_indexes()
    # With or without hints, the subscription tells when Redis went away and came back.
    wakeups.start()
    try:
        await asyncio.wait_for(wakeups.wait_subscribed(), STARTUP_SUBSCRIBE_TIMEOUT)
    except TimeoutError:
        log.warning("no subscription to Redis yet; streams rely on their own scans until there is")
    runtime.streams.start()
    if settings.metrics_enabled:
        runtime.status_history.start()
    return runtime


def make_app(runtime: Runtime, settings: Settings, development: bool = False) -> web.Application:
    """The Tornado application: routes, and the services handed to handlers through its settings.

    `development` (neither secret configured) adds the demo page's token and test-notification routes.
    """
    routes = handlers.default_handlers + (handlers.development_handlers if development else [])
    metrics_access = handlers.ACCESS_TOKEN if settings.metrics_token is not None else handlers.ACCESS_OFF
    return _application(runtime, settings, routes, metrics_access, development)


def make_metrics_app(runtime: Runtime, settings: Settings) -> web.Application:
    """The METRICS_PORT listener's application: the metrics, the status page and the probes, nothing else.

    Open without METRICS_TOKEN: the port, reachable only where the operator lets it be, is the protection.
    """
    metrics_access = handlers.ACCESS_TOKEN if settings.metrics_token is not None else handlers.ACCESS_OPEN
    return _application(runtime, settings, handlers.metrics_port_handlers, metrics_access, False)


def _application(
    runtime: Runtime, settings: Settings, routes: list[Any], metrics_access: str, development: bool
) -> web.Application:
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
        metrics=runtime.metrics,
        status_history=runtime.status_history,
        user_hasher=runtime.user_hasher,
        metrics_token=settings.metrics_token,
        metrics_access=metrics_access,
        stream_timing=settings.stream_timing,
        stream_limits=settings.stream_limits,
        cors_origins=frozenset(settings.cors_origins),
        development=development,
    )


def log_request(handler: web.RequestHandler) -> None:
    """Access log line, with any token in the query string redacted; successful probes and scrapes at debug level.

    Its fields: status, method, uri, remote_ip, duration_ms, request_id, the user's pseudonym, and for a
    stream (logged when it ends) events_sent and ended_by.
    """
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    extra: dict[str, Any] = {}
    if isinstance(handler, handlers.RequestIdentified):
        extra = handler.log_fields()
        if status < 400 and handler.quiet_access_log:
            level = logging.DEBUG
    request = handler.request
    uri = handlers.redacted_uri(request.uri or "")
    duration_ms = round(1000.0 * request.request_time(), 2)
    logging.getLogger("tornado.access").log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        uri,
        request.remote_ip,
        duration_ms,
        extra=fields(
            status=status, method=request.method, uri=uri, remote_ip=request.remote_ip, duration_ms=duration_ms, **extra
        ),
    )


def _stored_development_secrets(data_dir: Path) -> dict[str, str] | None:
    """The development secrets kept in DATA_DIR, if `serve` generated them there."""
    path = data_dir / DEVELOPMENT_SECRETS_FILE
    return dict(json.loads(path.read_text())) if path.exists() else None


def _development_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets generated once for development and kept in DATA_DIR, so tokens survive restarts."""
    stored = _stored_development_secrets(data_dir)
    if stored is not None:
        return stored
    path = data_dir / DEVELOPMENT_SECRETS_FILE
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
        from services.embedded import EmbeddedMongo, EmbeddedRedis, EmbeddedRedisCluster  # without external stores

        settings = self._settings
        data_dir = Path(settings.data_dir)
        try:
            if settings.mongodb_url is None:
                self._started.append(EmbeddedMongo(data_dir).start())
                settings = replace(settings, mongodb_url=self._started[-1].url)
                log.info("MongoDB: embedded SecantusDB at %s, data in %s", settings.mongodb_url, data_dir / "mongodb")
            else:
                log.info("MongoDB: %s", _without_password(settings.mongodb_url))
            if settings.redis_url is None and settings.redis_cluster:
                self._started.append(EmbeddedRedisCluster(data_dir).start())
                settings = replace(settings, redis_url=self._started[-1].url)
                log.info("Redis: embedded three-node valkey cluster, one node at %s", settings.redis_url)
            elif settings.redis_url is None:
                self._started.append(EmbeddedRedis(data_dir).start())
                settings = replace(settings, redis_url=self._started[-1].url)
                log.info("Redis: embedded valkey-server at %s", settings.redis_url)
            else:
                kind = "Redis Cluster" if settings.redis_cluster else "Redis"
                log.info("%s: %s", kind, _without_password(settings.redis_url))
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


async def serve(
    settings: Settings,
    sockets: list[socket.socket],
    development_routes: bool = False,
    *,
    metrics_sockets: Sequence[socket.socket] = (),
    process: int = 0,
    metrics_directory: str | None = None,
) -> None:
    """Serve on the bound sockets until SIGINT or SIGTERM; then turn unready, stop accepting, end the streams, close.

    `process` is the worker's index; with `metrics_directory` its metrics are shared with the other workers'.
    """
    assert settings.mongodb_url is not None and settings.redis_url is not None
    metrics = Metrics(str(process), metrics_directory)
    runtime = await start_runtime(settings, settings.mongodb_url, settings.redis_url, metrics)
    app = make_app(runtime, settings, development_routes)
    server = TrustedProxyHTTPServer(
        app, trusted_proxies=settings.trusted_proxies, max_body_size=settings.request_body_cutoff
    )
    server.add_sockets(sockets)
    servers: list[httpserver.HTTPServer] = [server]
    if metrics_sockets:
        servers.append(httpserver.HTTPServer(make_metrics_app(runtime, settings), xheaders=False))
        servers[-1].add_sockets(metrics_sockets)
    # From here on, what start-up made lives as long as the process: no full collection need traverse it.
    collector = ScheduledFullCollections()
    collector.start()
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)
    await stop_requested.wait()
    # Readiness first: load balancers stop sending new clients while this process still serves them.
    runtime.health.begin_shutdown()
    log.info("shutting down: %d open streams; /readyz answers 503", len(runtime.streams))
    if settings.shutdown_delay:
        await asyncio.sleep(settings.shutdown_delay)
    server.stop()
    runtime.streams.end_all()
    # Closed streams still deregister from Redis after they have ended: the stores close after that.
    released = await _within_grace(runtime.streams.wait_until_all_released(), "some streams had not ended")
    for metrics_server in servers[1:]:
        metrics_server.stop()
    for each in servers:
        await _within_grace(each.close_all_connections(), "some connections did not close")
    if not released:
        # A stream whose last write waited on its client ends once its connection is closed, and deregisters.
        await _within_grace(runtime.streams.wait_until_all_released(), "some streams did not deregister")
    await collector.close()
    await runtime.close()


async def _within_grace(step: Coroutine[Any, Any, None], warning: str) -> bool:
    """Await one step of the shutdown for at most SHUTDOWN_GRACE_SECONDS: False, with `warning` logged, if it overran.

    Each step has its own grace, so that a stream that cannot end does not also keep every other
    connection from being closed.
    """
    try:
        await asyncio.wait_for(step, SHUTDOWN_GRACE_SECONDS)
    except TimeoutError:
        log.warning("%s within %.0f s", warning, SHUTDOWN_GRACE_SECONDS)
        return False
    return True


def run_loop(event_loop: str, main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on a new event loop of the chosen kind; uvloop takes about a quarter less CPU per connect."""
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def run_processes(
    count: int,
    settings: Settings,
    sockets: list[socket.socket],
    development_routes: bool,
    metrics_sockets: Sequence[socket.socket] = (),
    metrics_directory: MetricsDirectory | None = None,
) -> int:
    """Fork `count` workers that share the bound sockets, each with its own loop and store clients.

    The parent forwards SIGINT and SIGTERM to them and restarts one that dies on its own. With
    `metrics_directory`, the workers share their metrics there; a dead worker's open streams leave the sums.
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
                run_loop(
                    settings.event_loop,
                    serve(
                        settings,
                        sockets,
                        development_routes,
                        metrics_sockets=metrics_sockets,
                        process=index,
                        metrics_directory=metrics_directory.path if metrics_directory else None,
                    ),
                )
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
        if metrics_directory is not None:
            metrics_directory.process_ended(pid)
        if not stopping:
            log.error("worker %d (pid %d) ended with status %d; starting another", index, pid, status)
            time.sleep(WORKER_RESTART_DELAY)
            if not stopping:  # a signal during the delay: no worker left to forward it to
                spawn(index)
    return 0


@contextlib.contextmanager
def _shared(metrics_directory: MetricsDirectory | None) -> Iterator[None]:
    """Share the workers' metrics through the directory while they run; remove it when they are done."""
    if metrics_directory is None:
        yield
        return
    # prometheus-client's multiprocess mode: where a worker's metrics live is read from the environment.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_directory.path
    metrics_directory.share()
    log.info("metrics: shared by the worker processes in %s", metrics_directory.path)
    try:
        yield
    finally:
        metrics_directory.remove()


def _without_password(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def _print_development_help(settings: Settings) -> None:
    assert settings.jwt_secret is not None
    token = mint_user_token(settings.jwt_secret, "demo", DEVELOPMENT_TOKEN_LIFETIME, time.time())
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


def print_token(user_id: str, lifetime_seconds: int, arguments: Mapping[str, Any], environ: Mapping[str, str]) -> int:
    """`bellcast token`: print a token for `user_id`, signed with JWT_SECRET or the development secret."""
    jwt_secret = setting_value(_SETTINGS_BY_FIELD["jwt_secret"], arguments.get("jwt_secret"), environ)
    data_dir = Path(setting_value(_SETTINGS_BY_FIELD["data_dir"], arguments.get("data_dir"), environ))
    if jwt_secret is None:
        stored = _stored_development_secrets(data_dir)
        if stored is None:
            print(
                f"bellcast: no JWT_SECRET, and no development secret in {data_dir / DEVELOPMENT_SECRETS_FILE}: "
                "set JWT_SECRET, or run `bellcast serve` once with this DATA_DIR",
                file=sys.stderr,
            )
            return 2
        jwt_secret = stored["jwt_secret"]
    if not user_id:
        print("bellcast: USER must not be empty", file=sys.stderr)
        return 2
    now = time.time()
    print(mint_user_token(jwt_secret, user_id, lifetime_seconds, now))
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(now) + lifetime_seconds))
    print(f"bellcast: token for user {user_id!r}, valid until {expires}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python server.py` and the `bellcast` command: `serve` (the default) or `token`."""
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or (words[0].startswith("-") and words[0] not in ("-h", "--help")):
        words.insert(0, "serve")
    arguments = vars(command_line().parse_args(words))
    try:
        if arguments["command"] == "token":
            return print_token(arguments["user"], arguments["ttl"], arguments, os.environ)
        settings = settings_from(arguments, os.environ)
    except SettingsError as error:
        print(f"bellcast: invalid setting {error}", file=sys.stderr)
        return 2
    configure_logging("json" if settings.json_logs else "text", LOG_LEVELS[settings.log_level])
    development = settings.development
    development_routes = settings.development_routes
    if development:
        settings = with_development_secrets(settings)
    try:
        sockets = bind_sockets(settings.port, settings.host, backlog=LISTEN_BACKLOG)
        metrics_sockets = [] if settings.metrics_port is None else bind_sockets(settings.metrics_port, settings.host)
    except OSError as error:
        print(f"bellcast: cannot listen on {settings.host}: {error}", file=sys.stderr)
        return 1
    processes = settings.processes or os.cpu_count() or 1
    metrics_directory = MetricsDirectory() if processes > 1 and settings.metrics_enabled else None
    with EmbeddedStores(settings) as settings, _shared(metrics_directory):
        log.info("MongoDB driver: %s; %d process%s", settings.mongo_driver, processes, "" if processes == 1 else "es")
        log.info("bellcast listening on http://%s:%d", settings.host, settings.port)
        if development:
            _print_development_help(settings)
        if settings.cors_origins:
            log.info("CORS: pages of %s may use the API and stream", ", ".join(settings.cors_origins))
        if settings.metrics_port is not None:
            log.info("metrics and status page on http://%s:%d", settings.host, settings.metrics_port)
        if processes == 1:
            run_loop(settings.event_loop, serve(settings, sockets, development_routes, metrics_sockets=metrics_sockets))
        else:
            run_processes(processes, settings, sockets, development_routes, metrics_sockets, metrics_directory)
    log.info("bellcast stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
