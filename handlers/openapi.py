"""`GET /api/openapi.json`: the OpenAPI 3.1 description of the HTTP API, kept true by tests/test_openapi.py."""

from __future__ import annotations

import functools
from pathlib import Path

from handlers.base import BaseHandler

OPENAPI_DOCUMENT = Path(__file__).with_name("openapi.json")


@functools.cache
def openapi_document() -> bytes:
    """The document as shipped beside this module, read once."""
    return OPENAPI_DOCUMENT.read_bytes()


class OpenAPIHandler(BaseHandler):
    """The API's description, for client generators, API explorers and contract tests."""

    def get(self) -> None:
        """The OpenAPI document as JSON."""
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(openapi_document())


default_handlers = [(r"/api/openapi\.json", OpenAPIHandler)]
