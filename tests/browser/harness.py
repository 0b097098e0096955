"""What the browser tests run against: bellcast as `python server.py`, and host pages on another origin."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import json
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pymongo

from services.auth import Authenticator
from services.notifications import utc_now, validate_new_notification
from tests.support import SERVER_PY, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these, Chromium's own calls home are refused by a closed network, many at a time.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """Debian's Chromium (or BELLCAST_CHROMIUM); None when there is none."""
    for candidate in (os.environ.get("BELLCAST_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class BellcastProcess(ServerProcess):
    """`python server.py` in development mode (generated secrets) on the session's stores."""

    def __init__(self, data_dir: Path, store_urls: tuple[str, str], cors: str, flags: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        super().__init__(
            store_urls,
            data_dir / "bellcast.log",
            [*SERVER_PY, "--data-dir", str(data_dir), "--poll-interval", "0.1", "--cors-origins", cors, *flags],
            JWT_SECRET=None,
            API_KEY=None,
        )

    def _secrets(self) -> dict[str, str]:
        return dict(json.loads((self.data_dir / "development-secrets.json").read_text()))

    def token(self, user_id: str, lifetime: int = 3600) -> str:
        """A user token signed with the generated secret, as the host app's backend would mint it."""
        secrets = self._secrets()
        return Authenticator(secrets["jwt_secret"], secrets["api_key"]).mint_user_token(user_id, lifetime, time.time())

    def create(self, user_id: str, title: str, **fields: Any) -> dict[str, Any]:
        """Create a notification through the producer API (X-API-Key)."""
        request = urllib.request.Request(
            self.base_url + "/api/notifications",
            data=json.dumps({"user_id": user_id, "title": title, **fields}).encode(),
            headers={"Content-Type": "application/json", "X-API-Key": self._secrets()["api_key"]},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return dict(json.loads(answer.read()))

    def request(self, method: str, path: str, user_id: str) -> dict[str, Any]:
        """A user's API request, outside the browser (another device of the same user); {} for a 204."""
        request = urllib.request.Request(
            self.base_url + path, headers={"Authorization": f"Bearer {self.token(user_id)}"}, method=method
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
            return dict(json.loads(body)) if body else {}

    def store_quietly(self, user_id: str, *titles: str, age: datetime.timedelta = datetime.timedelta(0)) -> None:
        """Store notifications in MongoDB without telling any stream: while this process is down, say.

        `age`: how long ago they were created, as their `created_at` says.
        """
        with self._mongo() as client:
            documents = []
            for title in titles:
                fields = {"user_id": user_id, "title": title}
                notification = validate_new_notification(fields, now=utc_now() - age)
                documents.append(notification.to_document())
                time.sleep(0.002)  # distinct created_at, in order
            client[self.database]["notifications"].insert_many(documents)

    @contextlib.contextmanager
    def _mongo(self) -> Iterator[Any]:
        client: Any = pymongo.MongoClient(self.environ["MONGODB_URL"], tz_aware=True)
        try:
            yield client
        finally:
            client.close()


class HostPages:
    """A plain web server on another origin, serving host pages the tests write."""

    def __init__(self, port: int) -> None:
        pages: dict[str, bytes] = {}
        self._pages = pages

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path.split("?")[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(body or b"not found")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        """The host pages' origin (not bellcast's)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HostPages:
        """Serve in a thread."""
        self._thread.start()
        return self

    def serve(self, path: str, html: str) -> str:
        """Publish a page; returns its URL."""
        self._pages[path] = html.encode()
        return self.origin + path

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
