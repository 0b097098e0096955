"""Fixtures: real MongoDB-wire and Redis servers, and a bellcast served on a real socket.

* ``io_loop``: pytest-tornado's per-test loop, which also collects what the test left open.
* ``store_urls`` (session): ``TEST_MONGODB_URL`` / ``TEST_REDIS_URL`` when set, else an
  embedded SecantusDB and valkey-server started once for the whole run; the sockets PyMongo itself leaves
  open to that MongoDB do not fail a test (`_let_pass_pymongos_unclosed_sockets`).
* ``cluster_url`` (session): a node of a three-node Redis Cluster on loopback
  (``TEST_REDIS_CLUSTER_URL``, else valkey-servers started on first use).
* ``redis_cluster``: False; a test marked ``also_on_cluster`` runs a second time with True.
* ``redis_url``: the session's Redis, or with ``redis_cluster`` its cluster.
* ``mongo_driver``: "pymongo"; parametrize it to run a test on Motor too.
* ``wakeup_hints``: every test that uses ``settings`` runs twice, with hints and with polling.
* ``stream_write_timeout``, ``max_streams``, ``heartbeat_interval``, ``max_replay``: what a test may parametrize.
* ``settings``: test settings — fast polling, a fresh database name per test.
* ``runtime``: the services on the real stores, with a clean database and cache.
* ``runtime_without_redis``: the services on the session's MongoDB and a Redis URL where nothing listens.
* ``app``: the Tornado application pytest-tornado's ``http_server`` serves.
* ``api``: the JSON API as a producer and as users (``tests.support.API``).
* ``open_stream``: opens SSE streams on raw sockets (with a user's token, or a stream ticket), closed after the test.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from collections.abc import Iterator

import pytest
from pymongo.uri_parser import parse_uri
from tornado.ioloop import IOLoop

from server import Runtime, Settings, make_app, start_runtime
from services.embedded import EmbeddedMongo, EmbeddedRedis, EmbeddedRedisCluster, free_port
from tests.support import API, RestartableRedis, SSEStream


@pytest.fixture
def io_loop() -> Iterator[IOLoop]:
    """pytest-tornado's loop, whose leftovers stay with their test: a socket whose transport closed in the
    loop's last iteration closes in one more, and what the test left open is collected as it ends, so its
    ResourceWarning fails this test rather than whichever later one the collector happens to interrupt."""
    loop = IOLoop()
    loop.make_current()
    yield loop
    loop.run_sync(lambda: asyncio.sleep(0))
    loop.clear_current()
    loop.close(all_fds=True)
    gc.collect()


def _let_pass_pymongos_unclosed_sockets(config: pytest.Config, mongodb_url: str) -> None:
    """PyMongo 4.20's async pool does not close the socket of a connection it is opening when the attempt is
    cancelled (PYTHON-5867; mongodb/mongo-python-driver#2858 was closed unmerged). A client's close cancels its
    background task, which opens connections whenever the pool is below minPoolSize (10, bellcast's default),
    as it is once a command cancelled at shutdown has cost the pool its connection: now and then a runtime's
    close leaves one socket to the collector, whose ResourceWarning would fail a test. Let those pass, and
    only those: a socket to this session's MongoDB (apart from the driver only a test's relay, tests/relay.py,
    makes one; a client bellcast left open warns as "Unclosed AsyncMongoClient" instead)."""
    for _, port in parse_uri(mongodb_url)["nodelist"]:
        config.addinivalue_line(
            "filterwarnings", rf"ignore:unclosed <socket\.socket .*raddr=\('[^']*', {port}\)>:ResourceWarning"
        )


@pytest.fixture(scope="session")
def store_urls(pytestconfig: pytest.Config) -> Iterator[tuple[str, str]]:
    """(MongoDB URL, Redis URL) of real servers for the whole session."""
    started: list[EmbeddedMongo | EmbeddedRedis] = []
    mongodb_url = os.environ.get("TEST_MONGODB_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    try:
        if not mongodb_url:
            started.append(EmbeddedMongo(None).start())
            mongodb_url = started[-1].url
        if not redis_url:
            started.append(EmbeddedRedis(None).start())
            redis_url = started[-1].url
        _let_pass_pymongos_unclosed_sockets(pytestconfig, mongodb_url)
        yield mongodb_url, redis_url
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A node of a Redis Cluster of three primaries, started once, when a test first needs it."""
    url = os.environ.get("TEST_REDIS_CLUSTER_URL")
    if url:
        yield url
        return
    cluster = EmbeddedRedisCluster(None, nodes=3).start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests marked `also_on_cluster` against a single Redis and against the Redis Cluster."""
    if metafunc.definition.get_closest_marker("also_on_cluster"):
        metafunc.parametrize("redis_cluster", [False, True], ids=["redis", "cluster"])


@pytest.fixture
def redis_cluster() -> bool:
    return False


@pytest.fixture
def redis_url(request, store_urls: tuple[str, str], redis_cluster: bool) -> str:
    """The session's Redis, or its cluster (started only for the first test that uses it)."""
    return request.getfixturevalue("cluster_url") if redis_cluster else store_urls[1]


@pytest.fixture
def private_redis() -> Iterator[RestartableRedis]:
    """A Redis of this test's own that it may stop and start again; a module that uses it points
    `store_urls` at it."""
    server = RestartableRedis()
    yield server
    server.stop()


@pytest.fixture
def mongo_driver() -> str:
    return "pymongo"


@pytest.fixture(params=[True, False], ids=["hints", "polling"])
def wakeup_hints(request) -> bool:
    """Streams woken by pub/sub hints, or polling their inbox every tick: both must deliver everything."""
    return bool(request.param)


@pytest.fixture
def stream_write_timeout() -> float:
    return 30.0


@pytest.fixture
def max_streams() -> int:
    return 1000


@pytest.fixture
def heartbeat_interval() -> float:
    return 0.5


@pytest.fixture
def max_replay() -> int:
    return 1000


@pytest.fixture
def settings(
    mongo_driver: str,
    wakeup_hints: bool,
    stream_write_timeout: float,
    max_streams: int,
    heartbeat_interval: float,
    max_replay: int,
    redis_cluster: bool,
) -> Settings:
    return Settings(
        mongodb_db=f"bellcast_test_{uuid.uuid4().hex[:12]}",
        mongo_driver=mongo_driver,
        jwt_secret="test-secret-" + "x" * 32,
        api_key="test-api-key-" + "y" * 16,
        poll_interval=0.05,
        heartbeat_interval=heartbeat_interval,
        wakeup_hints=wakeup_hints,
        max_streams_per_user=5,
        max_streams=max_streams,
        stream_write_timeout=stream_write_timeout,
        max_replay=max_replay,
        # Long enough that, with hints, a test passes only if the hint woke the stream.
        safety_scan_interval=30.0,
        redis_cluster=redis_cluster,
        # Off, so that no test counts against another; tests/test_limits.py turns it on.
        producer_rate_limit=0.0,
    )


@pytest.fixture
def mongodb_url(store_urls: tuple[str, str]) -> str:
    """The MongoDB the runtime uses (a module may put a relay in front of it)."""
    return store_urls[0]


@pytest.fixture
def runtime(io_loop, settings: Settings, mongodb_url: str, redis_url: str) -> Iterator[Runtime]:
    async def start() -> Runtime:
        started = await start_runtime(settings, mongodb_url, redis_url)
        await started.redis.flushdb()
        return started

    started = io_loop.run_sync(start)
    yield started

    async def stop() -> None:
        if started.watcher is not None:  # its change stream would hold the database's drop up
            await started.watcher.close()
        await started.mongo.client.drop_database(settings.mongodb_db)
        await started.close()

    io_loop.run_sync(stop)


@pytest.fixture
def runtime_without_redis(io_loop, settings: Settings, store_urls: tuple[str, str]) -> Iterator[Runtime]:
    mongodb_url, _ = store_urls
    started = io_loop.run_sync(lambda: start_runtime(settings, mongodb_url, f"redis://127.0.0.1:{free_port()}/0"))
    yield started

    async def stop() -> None:
        await started.mongo.client.drop_database(settings.mongodb_db)
        await started.close()

    io_loop.run_sync(stop)


@pytest.fixture
def app(runtime: Runtime, settings: Settings):
    return make_app(runtime, settings)


@pytest.fixture
def api(http_client, base_url: str, settings: Settings, runtime: Runtime) -> API:
    assert settings.api_key is not None
    return API(http_client, base_url, settings.api_key, runtime.authenticator)


@pytest.fixture
def open_stream(http_server, base_url: str, api: API):
    opened: list[SSEStream] = []

    async def open_(
        user_id: str | None,
        last_event_id: str | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        ticket: str | None = None,
    ) -> SSEStream:
        if token is None and user_id is not None:
            token = api.token(user_id)
        stream = await SSEStream.open(base_url, token, last_event_id, headers, ticket=ticket)
        opened.append(stream)
        return stream

    yield open_
    for stream in opened:
        stream.close()
