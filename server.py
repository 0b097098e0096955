"""bellcast's entry point and wiring: read the settings, start the stores' clients, build the services, serve.

Shutdown runs in order: readiness off, stop accepting, end the streams, close the connections, then the stores.
The command line, the process supervisor and the development set-up live in `services/` beside the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado import httpserver, web
from tornado.netutil import bind_sockets

if __package__:
    # Installed from the wheel, this is `bellcast.server`, and the modules it imports sit beside it in
    # site-packages/bellcast/: first on the path, so that no other distribution's `handlers` or `services`
    # (nor a folder of that name where the command runs) is taken for them.
    sys.path.insert(0, os.path.dirname(__file__))

import handlers
from handlers.connections import BoundedHTTPServer
from services.attempts import FailedAttempts
from services.auth import Authenticator
from services.cache import CacheObserver, CountsCache, DeliveryCache
from services.command_batcher import CommandBatcher
from services.command_line import parse_command, print_token
from services.connection import MAX_ENTRIES_PER_SEND
from services.development import EmbeddedStores, UnsafeSecretsFile, print_how_to_try, with_generated_secrets
from services.expiry import ExpirySweeper
from services.health import HealthService
from services.logs import LOG_LEVELS, UserIdHasher, configure_logging
from services.memory import ScheduledFullCollections
from services.metrics import Metrics, MetricsDirectory
from services.notifications import COLLECTION, NotificationService
from services.ratelimit import ProducerRateLimiter
from services.recovery import RECOVERY_JITTER_SECONDS, RecoveryReads
from services.redis_backend import RedisBackend, connect_redis_backend
from services.settings import Settings, SettingsError, parse_settings, settings_from
from services.status import StatusHistory
from services.stores import MongoConnection
from services.streams import StreamRegistry
from services.supervisor import metrics_shared_by_workers, run_event_loop, run_processes
from services.tickets import StreamTickets
from services.wakeups import WakeupHub
from services.watcher import SourceWatcher, change_streams_unavailable

# What a program using bellcast's service layer imports from here (docs/api.md), settings included.
__all__ = ["Runtime", "Settings", "SettingsError", "make_app", "make_metrics_app", "parse_settings", "start_runtime"]

log = logging.getLogger("bellcast")

SHUTDOWN_GRACE_SECONDS = 5.0
# Room for connection storms: thousands of browsers reconnecting at once after a restart.
LISTEN_BACKLOG = 4096
STARTUP_SUBSCRIBE_TIMEOUT = 5.0


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
    recovery_reads: RecoveryReads
    expiry: ExpirySweeper
    # With SOURCE_COLLECTION: the app's collection's watcher (one process of the deployment watches at a time).
    watcher: SourceWatcher | None
    delivery_cache: DeliveryCache
    authenticator: Authenticator
    health: HealthService
    streams: StreamRegistry
    metrics: Metrics
    status_history: StatusHistory
    status_sign_in_attempts: FailedAttempts
    user_hasher: UserIdHasher
    rate_limiter: ProducerRateLimiter
    stream_tickets: StreamTickets

    async def close(self) -> None:
        """Stop sampling, watching the source, listening for hints and watching streams, then close the stores'
        clients."""
        if self.watcher is not None:
            await self.watcher.close()
        await self.status_history.close()
        await self.health.close()
        await self.streams.close()
        await self.expiry.close()
        await self.recovery_reads.close()
        await self.notifications.close()
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
    source = settings.source
    collection = settings.source_collection or COLLECTION
    batcher = CommandBatcher(redis_backend, settings.store_timeout, metrics)
    notifications = NotificationService(mongo.database, metrics, collection, source, CountsCache(batcher))
    wakeups = WakeupHub(redis_backend, batcher)
    delivery_cache = DeliveryCache(
        redis_backend, batcher, settings.wakeup_hints, metrics, inbox_cap=settings.max_queued_per_stream
    )
    # Told of creates as changes: each new notification and the counts after it reach a stream together.
    notifications.register_change_observer(CacheObserver(delivery_cache, wakeups))
    assert settings.jwt_secret is not None and settings.api_key is not None
    runtime = Runtime(
        mongo=mongo,
        redis=redis,
        redis_backend=redis_backend,
        batcher=batcher,
        wakeups=wakeups,
        notifications=notifications,
        recovery_reads=RecoveryReads(
            notifications, metrics, settings.max_concurrent_recoveries, RECOVERY_JITTER_SECONDS, MAX_ENTRIES_PER_SEND
        ),
        expiry=ExpirySweeper(notifications, batcher),
        watcher=None
        if source is None
        else SourceWatcher(mongo.database, collection, source, notifications, batcher, metrics),
        delivery_cache=delivery_cache,
        authenticator=Authenticator(
            settings.jwt_secret,
            settings.api_key,
            settings.jwt_audience,
            settings.jwt_issuer,
            max_lifetime=settings.max_token_lifetime,
        ),
        health=HealthService({"mongodb": notifications.ping, "redis": delivery_cache.ping}, metrics),
        streams=StreamRegistry(settings.heartbeat_interval, settings.stream_write_timeout, delivery_cache, metrics),
        metrics=metrics,
        status_history=StatusHistory(metrics, settings.status_interval),
        status_sign_in_attempts=FailedAttempts(),
        user_hasher=UserIdHasher(settings.jwt_secret),
        rate_limiter=ProducerRateLimiter(redis_backend, settings.producer_rate),
        stream_tickets=StreamTickets(batcher, settings.stream_ticket_ttl),
    )
    await notifications.ensure_indexes()
    # With or without hints, the subscription tells when Redis went away and came back.
    wakeups.start()
    try:
        await asyncio.wait_for(wakeups.wait_subscribed(), STARTUP_SUBSCRIBE_TIMEOUT)
    except TimeoutError:
        log.warning("no subscription to Redis yet; streams rely on their own scans until there is")
    runtime.streams.start()
    runtime.expiry.start()
    if runtime.watcher is not None:
        runtime.watcher.start()
    if settings.metrics_enabled:
        runtime.status_history.start()
    return runtime


def make_app(runtime: Runtime, settings: Settings, development_routes: bool = False) -> web.Application:
    """The Tornado application: routes, and the services handed to handlers through its settings.

    `development_routes` (`Settings.generates_secrets`, taken before the secrets were generated) adds the demo
    page's token and test-notification routes.
    """
    routes = handlers.default_handlers + (handlers.development_handlers if development_routes else [])
    metrics_access = handlers.ACCESS_TOKEN if settings.metrics_token is not None else handlers.ACCESS_OFF
    return _application(runtime, settings, routes, metrics_access, development_routes)


def make_metrics_app(runtime: Runtime, settings: Settings) -> web.Application:
    """The METRICS_PORT listener's application: the metrics, the status page and the probes, nothing else.

    Open without METRICS_TOKEN: the port, reachable only where the operator lets it be, is the protection.
    """
    metrics_access = handlers.ACCESS_TOKEN if settings.metrics_token is not None else handlers.ACCESS_OPEN
    return _application(runtime, settings, handlers.metrics_port_handlers, metrics_access, False)


def _application(
    runtime: Runtime, settings: Settings, routes: list[Any], metrics_access: str, development_routes: bool
) -> web.Application:
    return web.Application(
        routes,
        default_handler_class=handlers.NotFoundHandler,
        static_path=str(Path(__file__).parent / "static"),
        static_handler_class=handlers.WidgetStaticFileHandler,
        template_path=str(Path(__file__).parent / "templates"),
        log_function=handlers.log_request,
        config=settings,
        notifications=runtime.notifications,
        recovery_reads=runtime.recovery_reads,
        delivery_cache=runtime.delivery_cache,
        authenticator=runtime.authenticator,
        producer_rate_limiter=runtime.rate_limiter,
        stream_tickets=runtime.stream_tickets,
        health=runtime.health,
        streams=runtime.streams,
        wakeups=runtime.wakeups,
        metrics=runtime.metrics,
        status_history=runtime.status_history,
        status_sign_in_attempts=runtime.status_sign_in_attempts,
        user_hasher=runtime.user_hasher,
        metrics_access=metrics_access,
        # Apart from `config`: a test may give one application's streams other timing.
        stream_timing=settings.stream_timing,
        stream_limits=settings.stream_limits,
        development_routes=development_routes,
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
    server = BoundedHTTPServer(
        app,
        trusted_proxies=settings.trusted_proxies,
        max_body_size=settings.request_body_cutoff,
        max_connections=settings.max_connections or None,
        max_connections_per_client=settings.max_connections_per_client,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        on_refused=metrics.count_refused_connection,
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python server.py` and the `bellcast` command: `serve` (the default) or `token`."""
    arguments = parse_command(sys.argv[1:] if argv is None else argv)
    try:
        if arguments["command"] == "token":
            return print_token(arguments)
        settings = settings_from(arguments)
        generates_secrets = settings.generates_secrets
        if generates_secrets:
            settings = with_generated_secrets(settings)
    except UnsafeSecretsFile as error:
        print(f"bellcast: {error}", file=sys.stderr)
        return 2
    except SettingsError as error:
        print(f"bellcast: invalid setting {error}", file=sys.stderr)
        return 2
    configure_logging("json" if settings.json_logs else "text", LOG_LEVELS[settings.log_level])
    try:
        sockets = bind_sockets(settings.port, settings.host, backlog=LISTEN_BACKLOG)
        metrics_sockets = [] if settings.metrics_port is None else bind_sockets(settings.metrics_port, settings.host)
    except OSError as error:
        print(f"bellcast: cannot listen on {settings.host}: {error}", file=sys.stderr)
        return 1
    processes = settings.processes or os.cpu_count() or 1
    metrics_directory = MetricsDirectory() if processes > 1 and settings.metrics_enabled else None
    with EmbeddedStores(settings) as settings, metrics_shared_by_workers(metrics_directory):
        if settings.source_collection is not None and (problem := asyncio.run(change_streams_unavailable(settings))):
            print(
                f"bellcast: SOURCE_COLLECTION={settings.source_collection} needs a MongoDB that serves change streams "
                f"(a replica set; a single node is enough: mongod --replSet rs0, then rs.initiate()): {problem}",
                file=sys.stderr,
            )
            return 2
        log.info("MongoDB driver: %s; %d process%s", settings.mongo_driver, processes, "" if processes == 1 else "es")
        log.info("bellcast listening on http://%s:%d", settings.host, settings.port)
        if generates_secrets:
            print_how_to_try(settings)
        if settings.cors_origins:
            log.info("CORS: pages of %s may use the API and stream", ", ".join(settings.cors_origins))
        if settings.metrics_port is not None:
            log.info("metrics and status page on http://%s:%d", settings.host, settings.metrics_port)

        def worker(index: int) -> None:
            shared = metrics_directory.path if metrics_directory else None
            serving = serve(
                settings,
                sockets,
                generates_secrets,
                metrics_sockets=metrics_sockets,
                process=index,
                metrics_directory=shared,
            )
            run_event_loop(settings.event_loop, serving)

        if processes == 1:
            worker(0)
        else:
            run_processes(processes, worker, metrics_directory.process_ended if metrics_directory else None)
    log.info("bellcast stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
