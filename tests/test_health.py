"""`/healthz` says which store cannot be reached."""

from __future__ import annotations

import json

import pytest

from server import make_app, start_runtime
from services.embedded import free_port


@pytest.mark.gen_test(timeout=30)
async def test_healthz_answers_503_naming_an_unreachable_redis(http_client, settings, store_urls):
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port

    mongodb_url, _ = store_urls
    runtime = await start_runtime(settings, mongodb_url, f"redis://127.0.0.1:{free_port()}/0")
    sock, port = bind_unused_port()
    server = HTTPServer(make_app(runtime, settings))
    server.add_sockets([sock])
    try:
        response = await http_client.fetch(f"http://127.0.0.1:{port}/healthz", raise_error=False)
        assert response.code == 503
        assert json.loads(response.body) == {
            "status": "unavailable",
            "checks": {"mongodb": "ok", "redis": "unreachable"},
        }
    finally:
        server.stop()
        await runtime.mongo.client.drop_database(settings.mongodb_db)
        await runtime.close()
