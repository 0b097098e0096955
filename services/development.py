"""Running bellcast on a laptop with nothing configured: generated secrets, embedded stores, a printed how-to-try.

Secrets are generated when JWT_SECRET or API_KEY is unset (`Settings.generates_secrets`) and kept in
DATA_DIR so that tokens survive restarts; embedded SecantusDB and valkey servers start when MONGODB_URL
or REDIS_URL is unset, and stop when bellcast does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from services.auth import mint_user_token
from services.settings import Settings, SettingsError

log = logging.getLogger("bellcast")

GENERATED_SECRETS_FILE = "development-secrets.json"
# The lifetime of the printed demo token and, by default, of `bellcast token`'s.
TRY_IT_TOKEN_LIFETIME = 24 * 3600


class UnsafeSecretsFile(SettingsError):
    """The generated secrets' file could have been read or written by someone else: its secrets are not secret."""


def stored_generated_secrets(data_dir: Path) -> dict[str, str] | None:
    """The secrets kept in DATA_DIR, if `serve` generated them there; UnsafeSecretsFile if others could touch them.

    A file another user owns, or one its group or anyone may read or write, may hold secrets someone else
    knows or chose: a token minted with them would be anyone's.
    """
    path = data_dir / GENERATED_SECRETS_FILE
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(status.st_mode) or status.st_uid != os.getuid() or status.st_mode & 0o077:
        raise UnsafeSecretsFile(
            f"{path} is not a file of this user's that only it can read and write (mode "
            f"{stat.S_IMODE(status.st_mode):o}): delete it to have new secrets generated, or chmod 600 it"
        )
    return dict(json.loads(path.read_text()))


def generated_secrets(data_dir: Path) -> dict[str, str]:
    """The JWT secret and API key generated once and kept in DATA_DIR (readable by its owner only)."""
    stored = stored_generated_secrets(data_dir)
    if stored is not None:
        return stored
    path = data_dir / GENERATED_SECRETS_FILE
    generated = {"jwt_secret": secrets.token_urlsafe(32), "api_key": secrets.token_urlsafe(24)}
    data_dir.mkdir(parents=True, exist_ok=True)
    # Created readable by its owner only, and never through a link someone left in its place.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(json.dumps(generated))
    return generated


def with_generated_secrets(settings: Settings) -> Settings:
    """Fill in the generated JWT secret and API key where none is configured."""
    generated = generated_secrets(Path(settings.data_dir))
    return replace(
        settings,
        jwt_secret=settings.jwt_secret or generated["jwt_secret"],
        api_key=settings.api_key or generated["api_key"],
    )


def without_password(url: str) -> str:
    """`url` with any password masked, for logs."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


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
                log.info("MongoDB: %s", without_password(settings.mongodb_url))
            # Any process of the machine can reach the port: only bellcast gets more than PING.
            password = secrets.token_urlsafe(24)
            if settings.redis_url is None and settings.redis_cluster:
                self._started.append(EmbeddedRedisCluster(data_dir, password=password).start())
                redis_url = self._started[-1].url
                settings = replace(settings, redis_url=redis_url)
                log.info("Redis: embedded three-node valkey cluster, one node at %s", without_password(redis_url))
            elif settings.redis_url is None:
                self._started.append(EmbeddedRedis(data_dir, password=password).start())
                redis_url = self._started[-1].url
                settings = replace(settings, redis_url=redis_url)
                log.info("Redis: embedded valkey-server at %s", without_password(redis_url))
            else:
                kind = "Redis Cluster" if settings.redis_cluster else "Redis"
                log.info("%s: %s", kind, without_password(settings.redis_url))
        except BaseException:
            self.__exit__()
            raise
        return settings

    def __exit__(self, *exc_info: object) -> None:
        for server in reversed(self._started):
            server.stop()
        self._started.clear()


def print_how_to_try(settings: Settings) -> None:
    """Print the generated API key, a token for user "demo", and the commands that try them."""
    assert settings.jwt_secret is not None
    token = mint_user_token(settings.jwt_secret, "demo", TRY_IT_TOKEN_LIFETIME, time.time())
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"""
Development mode: JWT_SECRET and API_KEY were generated (kept in {settings.data_dir}/{GENERATED_SECRETS_FILE}).
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
