"""bellcast's settings, each declared once: its environment variable, type, default and help.

Each field of `Settings` is one setting; its environment variable is the field's name in capitals, its
command-line flag the name with dashes (`poll_interval`: `POLL_INTERVAL`, `--poll-interval`). The flags,
the checks and README's configuration table all come from these declarations:
`python -m services.settings --markdown` prints the table, `--update-readme` rewrites it in README.md.
This module is the only one that reads the environment's settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from services.cache import DEFAULT_INBOX_CAP, REGISTRATION_RENEWAL_INTERVAL
from services.connection import StreamTiming
from services.logs import LOG_FORMATS, LOG_LEVELS
from services.ratelimit import RateLimit
from services.sources import SOURCE_SCHEMAS, MappedSchema, make_schema, source_fields, source_filter
from services.stores import MONGO_DRIVERS
from services.streams import StreamLimits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Tornado's own cutoff, a backstop: every handler refuses a body longer than its endpoint takes, with a JSON
# 413 and before reading it (handlers/base.py, BoundedBody); Tornado cuts off bodies above the larger of this
# and twice MAX_BODY_BYTES unread with a bare 400, whatever the handler.
MAX_REQUEST_BODY_BYTES = 1024 * 1024
# A ticket rides in a URL, which proxies and browsers may keep: it must be spent or worthless within minutes.
MAX_STREAM_TICKET_TTL = 300.0

README_TABLE_START = "<!-- settings-table:start -->"
README_TABLE_END = "<!-- settings-table:end -->"
UPDATE_README_COMMAND = "python -m services.settings --update-readme"

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting has a value bellcast cannot run with."""


# Parsers: from the text of a flag or an environment variable to the setting's value; ValueError says why not.


def positive_number(value: str) -> float:
    """A finite number above 0."""
    number = float(value)
    if not number > 0 or math.isinf(number):
        raise ValueError("must be a positive number of seconds")
    return number


def non_negative_number(value: str) -> float:
    """A finite number of at least 0."""
    number = float(value)
    if not number >= 0 or math.isinf(number):
        raise ValueError("must be a number of at least 0")
    return number


def positive_integer(value: str) -> int:
    """A whole number of at least 1."""
    number = int(value)
    if number < 1:
        raise ValueError("must be a whole number of at least 1")
    return number


def non_negative_integer(value: str) -> int:
    """A whole number of at least 0."""
    number = int(value)
    if number < 0:
        raise ValueError("must be a whole number of at least 0")
    return number


def boolean(value: str) -> bool:
    """true, yes, on or 1; false, no, off or 0."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def one_of(choices: Iterable[str], ignore_case: bool = False) -> Callable[[str], str]:
    """A parser that takes only one of `choices`."""
    allowed = tuple(choices)

    def parse(value: str) -> str:
        chosen = value.lower() if ignore_case else value
        if chosen not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return chosen

    return parse


def process_count(value: str) -> int:
    """0 (one per core) to 256."""
    number = int(value)
    if not 0 <= number <= 256:
        raise ValueError("must be a number of processes between 0 (one per core) and 256")
    return number


def port_number(value: str) -> int:
    """0 to 65535."""
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return number


def url(*schemes: str) -> Callable[[str], str]:
    """A parser that takes URLs of these schemes (regular expressions) only."""

    def parse(value: str) -> str:
        if not re.match(rf"^({'|'.join(schemes)})://", value):
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value

    return parse


def secret(value: str) -> str:
    """At least 16 characters."""
    if len(value) < 16:
        raise ValueError("must be at least 16 characters")
    return value


def claim(value: str) -> str:
    """Not blank."""
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def hs256_secret(value: str) -> str:
    """A shared HS256 secret of at least 32 bytes."""
    if value.lstrip().startswith(("-----BEGIN", "ssh-")):
        # An HS256 secret shared with the token issuer, never a key pair's public half (algorithm confusion).
        raise ValueError("must be a shared secret, not a PEM or SSH key")
    # RFC 7518 asks HS256 keys for at least 256 bits; PyJWT warns on every token below that.
    if len(value.encode()) < 32:
        raise ValueError("must be at least 32 bytes")
    return value


_ORIGIN_PATTERN = re.compile(r"^(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?$")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def origins(value: str) -> tuple[str, ...]:
    """Comma-separated origins, each scheme://host[:port], normalized as browsers send them."""
    parsed: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        match = _ORIGIN_PATTERN.match(item.lower())
        if match is None:
            raise ValueError(f"{item!r} is not an origin: use scheme://host[:port], no path, no wildcard")
        scheme, host, port = match.groups()
        # Browsers send Origin without the scheme's default port, and compare it exactly.
        parsed.append(f"{scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS[scheme] else ""))
    return tuple(parsed)


def networks(value: str) -> tuple[Network, ...]:
    """Comma-separated IP addresses or networks."""
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip())
    except ValueError:
        raise ValueError("must be comma-separated IP addresses or networks, such as 127.0.0.1,10.0.0.0/8") from None


def collection_name(value: str) -> str:
    """A MongoDB collection's name: 1 to 120 characters, no `$`, not a system collection."""
    if not 1 <= len(value) <= 120 or "$" in value or "\0" in value or value.startswith(("system.", ".")):
        raise ValueError("must be a collection name: 1 to 120 characters, without $, not system.*")
    return value


def database_name(value: str) -> str:
    """1 to 63 letters, digits, _ or -."""
    if not re.match(r"^[A-Za-z0-9_-]{1,63}$", value):
        raise ValueError("must be 1 to 63 letters, digits, _ or -")
    return value


@dataclass(frozen=True)
class Declaration:
    """What a field of `Settings` needs besides its name and default to be a setting."""

    parse: Callable[[str], Any]
    # Markdown, as README's table shows it; the command line shows it without the backticks.
    help: str
    # What the table and the help show instead of the default's value ("generated"); by default the value,
    # "unset" for None and "empty" for an empty tuple.
    shown_default: str | None = None
    # Never echoed in an error message.
    hidden: bool = False


def setting(
    default: T, parse: Callable[[str], T], help: str, *, shown_default: str | None = None, hidden: bool = False
) -> T:
    """Declare one setting: a field of `Settings` with its default, its parser and its help."""
    declaration = Declaration(parse, help, shown_default, hidden)
    return dataclasses.field(default=default, metadata={"setting": declaration})


@dataclass(frozen=True)
class Settings:
    """bellcast's configuration, parsed and checked once. Tests build their own."""

    host: str = setting("127.0.0.1", str, "address to listen on")
    port: int = setting(8888, port_number, "port to listen on")
    mongodb_url: str | None = setting(
        None,
        url("mongodb", "mongodb\\+srv"),
        "MongoDB URL (`mongodb://` or `mongodb+srv://`); unset starts an embedded SecantusDB",
    )
    mongodb_db: str = setting("bellcast", database_name, "database name")
    mongo_driver: str = setting("pymongo", one_of(MONGO_DRIVERS), "`pymongo` (PyMongo's `AsyncMongoClient`) or `motor`")
    redis_url: str | None = setting(
        None,
        url("redis", "rediss", "unix"),
        "Redis URL (`redis://`, `rediss://`, `unix://`); unset starts an embedded valkey-server",
    )
    redis_cluster: bool = setting(
        False,
        boolean,
        "`true`: `REDIS_URL` names a node of a Redis Cluster; unset `REDIS_URL` then starts an embedded "
        "three-node cluster",
    )
    data_dir: str = setting("./var", str, "where the embedded servers and development secrets live")
    jwt_secret: str | None = setting(
        None,
        hs256_secret,
        "HS256 secret of user tokens, at least 32 bytes; a PEM or SSH key is refused",
        shown_default="generated",
        hidden=True,
    )
    api_key: str | None = setting(
        None,
        secret,
        "the producers' key, sent as `X-API-Key`, at least 16 characters",
        shown_default="generated",
        hidden=True,
    )
    poll_interval: float = setting(
        1.0, positive_number, "with `WAKEUP_HINTS=false`, seconds between a stream's cache scans"
    )
    heartbeat_interval: float = setting(
        30.0,
        positive_number,
        "an idle stream gets a `: heartbeat` comment about this often (within a sixth of it); at least "
        "`POLL_INTERVAL`; keep it below every proxy's idle timeout (nginx's `proxy_read_timeout` and AWS ALB's "
        "idle timeout default to 60 s)",
    )
    wakeup_hints: bool = setting(
        True,
        boolean,
        "wake streams through one Redis pub/sub subscription per process; `false`: every stream polls its inbox",
    )
    safety_scan_interval: float = setting(
        200.0,
        positive_number,
        "with hints, seconds between a stream's own scans (catches a lost hint); at most 200",
    )
    max_streams: int = setting(
        19000,
        positive_integer,
        "streams one process holds; past it the stream answers 503 with `Retry-After` (keep it below the "
        "open-file limit)",
    )
    max_streams_per_user: int = setting(
        20,
        positive_integer,
        "streams one user may hold at once across all processes (counted in Redis); past it 429 with `Retry-After`",
    )
    stream_write_timeout: float = setting(
        30.0,
        positive_number,
        "seconds a client may leave a write unread before its stream is dropped; also the stream socket's "
        "`TCP_USER_TIMEOUT` (Linux), so a client that vanished without closing is dropped within about "
        "`HEARTBEAT_INTERVAL` + this",
    )
    max_replay: int = setting(
        1000,
        positive_integer,
        "notifications a stream replays after a `Last-Event-ID`; past it the stream sends one `resync` event "
        "instead and the bell reloads its list",
    )
    max_queued_per_stream: int = setting(
        DEFAULT_INBOX_CAP,
        positive_integer,
        "notifications Redis queues for one stream; past it the stream catches up from MongoDB instead, so a "
        "stream that falls behind costs bounded memory and bounded reads",
    )
    max_concurrent_recoveries: int = setting(
        8,
        positive_integer,
        "MongoDB reads of what streams missed (after a Redis outage or a `Last-Event-ID`) one process runs at "
        "once; the tabs of a user share one, and the rest wait, so creates and lists keep their connections",
    )
    source_collection: str | None = setting(
        None,
        collection_name,
        "a collection of `MONGODB_DB` where the app writes its own notifications: bellcast watches it with a change "
        "stream (MongoDB must be a replica set), delivers each inserted document, and reads and marks that "
        "collection; unset: bellcast's own `notifications`",
    )
    source_schema: str | None = setting(
        None,
        one_of(SOURCE_SCHEMAS),
        "`laravel`: `SOURCE_COLLECTION` holds Laravel's database notifications as laravel-mongodb writes them; "
        "unset: the paths of `SOURCE_FIELDS`",
    )
    source_fields: Mapping[str, str] | None = setting(
        None,
        source_fields,
        "where `SOURCE_COLLECTION`'s documents keep bellcast's fields, as comma-separated `field=path` pairs: "
        "`user_id=userId,title=title,body=description,url=href,created_at=createdAt,read_at=readAt`; a field not "
        "named keeps its own name",
    )
    source_filter: Mapping[str, Any] | None = setting(
        None,
        source_filter,
        "a MongoDB query (JSON) narrowing which documents of `SOURCE_COLLECTION` are notifications for users: "
        '`{"notifiable_type": "App\\\\Models\\\\User"}`',
    )
    processes: int = setting(1, process_count, "worker processes sharing the port; `0` starts one per core")
    event_loop: str = setting("uvloop", one_of(("uvloop", "asyncio")), "`uvloop` (less CPU per connect) or `asyncio`")
    jwt_audience: str | None = setting(
        None, claim, "when set, user tokens must name it in `aud`; unset, tokens with any `aud` are refused"
    )
    jwt_issuer: str | None = setting(None, claim, "when set, user tokens must carry it as `iss`")
    max_body_bytes: int = setting(
        64 * 1024,
        positive_integer,
        "largest body of a create (`POST /api/notifications`, `user_ids` included), in bytes; a longer one gets "
        "413 before it is read",
    )
    max_token_lifetime: float = setting(
        7 * 24 * 3600.0,
        non_negative_number,
        "seconds a user token may be valid for (`exp` less `iat`, or less now without `iat`); longer ones are "
        "refused; `0` accepts any",
    )
    stream_ticket_ttl: float = setting(
        30.0,
        positive_number,
        "seconds a stream ticket (`POST /notifications/stream-ticket`) may wait to open its one stream; at most "
        f"{MAX_STREAM_TICKET_TTL:g}",
    )
    header_timeout: float = setting(
        20.0,
        positive_number,
        "seconds a client may take to send a request's headers, and a kept-alive connection may wait for its "
        "next request (keep a proxy's upstream keep-alive timeout below it)",
    )
    body_timeout: float = setting(30.0, positive_number, "seconds a client may take to send a request's body")
    max_connections: int = setting(
        0,
        non_negative_integer,
        "client connections one process holds at most; past it a new one is closed at once; `0`: the open-file "
        "limit less 512 kept for the stores",
    )
    max_connections_per_client: int = setting(
        1000,
        non_negative_integer,
        "connections one client address may hold at once (trusted proxies excepted); `0` turns the cap off, as "
        "behind a proxy that caps them itself",
    )
    producer_rate_limit: float = setting(
        500.0,
        non_negative_number,
        "notifications per second one API key may create on average, across all processes and nodes sharing the "
        "Redis; `0` turns the limit off",
    )
    producer_rate_window: float = setting(
        10.0,
        positive_number,
        "seconds of one rate-limit window: a key may create `PRODUCER_RATE_LIMIT` times this many at once, then waits "
        "for the window to end",
    )
    store_timeout: float = setting(
        5.0,
        positive_number,
        "seconds a MongoDB or Redis call may take (MongoDB's `timeoutMS` and server selection, Redis's socket "
        "timeouts) before the request answers 503",
    )
    cors_origins: tuple[str, ...] = setting(
        (),
        origins,
        "comma-separated exact origins (`https://app.example.com,http://localhost:3000`) whose pages may use the "
        "API and the stream; empty: same origin only; `*` is refused",
    )
    trusted_proxies: tuple[Network, ...] = setting(
        (),
        networks,
        "reverse proxies (addresses or networks, comma-separated: `127.0.0.1,10.0.0.0/8`) whose `X-Real-IP`, "
        "`X-Forwarded-For` and `X-Forwarded-Proto` bellcast believes; unset, it believes no one and logs the "
        "peer's address",
        shown_default="unset",
    )
    metrics_token: str | None = setting(
        None,
        secret,
        "Bearer token that `/metrics` and `/status` require, at least 16 characters; unset: they answer 404 "
        "(except on `METRICS_PORT`)",
        hidden=True,
    )
    metrics_port: int | None = setting(
        None,
        port_number,
        "a second port, on `HOST`, serving only `/metrics`, `/status`, `/healthz` and `/readyz`; open unless "
        "`METRICS_TOKEN` is set",
    )
    status_interval: float = setting(5.0, positive_number, "seconds between the status page's samples of the metrics")
    log_format: str = setting(
        "auto",
        one_of(LOG_FORMATS),
        "`json`, `text`, or `auto`: text when the secrets were generated (`make run`), JSON otherwise",
    )
    log_level: str = setting(
        "info",
        one_of(LOG_LEVELS, ignore_case=True),
        "`debug`, `info`, `warning` or `error`. At `info` every request is logged, and each stream twice (when it "
        "opens and when it ends); at `warning` only refused requests and failures",
    )
    shutdown_delay: float = setting(
        0.0,
        non_negative_number,
        "seconds between `/readyz` turning 503 on SIGTERM and bellcast no longer accepting connections",
    )

    def __post_init__(self) -> None:
        if (self.jwt_secret is None) != (self.api_key is None):
            # Half configured is a deployment's mistake: never generate the other, nor print either.
            raise SettingsError("JWT_SECRET and API_KEY go together: set both, or neither for development")
        if self.heartbeat_interval < self.poll_interval:
            raise SettingsError("HEARTBEAT_INTERVAL must be at least POLL_INTERVAL")
        if self.safety_scan_interval > REGISTRATION_RENEWAL_INTERVAL:
            # Streams renew their registration on these scans.
            raise SettingsError(f"SAFETY_SCAN_INTERVAL must be at most {REGISTRATION_RENEWAL_INTERVAL:.0f} seconds")
        if self.stream_ticket_ttl > MAX_STREAM_TICKET_TTL:
            raise SettingsError(f"STREAM_TICKET_TTL must be at most {MAX_STREAM_TICKET_TTL:g} seconds")
        if self.source_collection is None and (self.source_schema or self.source_fields or self.source_filter):
            raise SettingsError("SOURCE_SCHEMA, SOURCE_FIELDS and SOURCE_FILTER describe SOURCE_COLLECTION: set it too")
        if self.source_collection is not None:
            try:
                make_schema(self.source_schema, self.source_fields or {}, self.source_filter)
            except ValueError as error:
                raise SettingsError(f"SOURCE_FIELDS: {error}") from None
        if (
            self.redis_cluster
            and self.redis_url is not None
            and not re.match(r"^rediss?://[^/?]*/?0?(\?|$)", self.redis_url)
        ):
            raise SettingsError(
                "REDIS_CLUSTER needs a redis:// or rediss:// REDIS_URL of database 0 (a cluster has no other)"
            )

    @property
    def source(self) -> MappedSchema | None:
        """The schema of `SOURCE_COLLECTION`'s documents; None without one."""
        if self.source_collection is None:
            return None
        return make_schema(self.source_schema, self.source_fields or {}, self.source_filter)

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
        return StreamLimits(self.max_streams, self.max_streams_per_user, self.stream_write_timeout, self.max_replay)

    @property
    def producer_rate(self) -> RateLimit:
        """How often one API key may create notifications."""
        return RateLimit(self.producer_rate_limit, self.producer_rate_window)

    @property
    def request_body_cutoff(self) -> int:
        """Tornado cuts off bodies above this many bytes unread: a backstop behind each endpoint's own limit."""
        return max(MAX_REQUEST_BODY_BYTES, 2 * self.max_body_bytes)

    @property
    def generates_secrets(self) -> bool:
        """True when neither JWT_SECRET nor API_KEY is set (development): bellcast generates both, keeps them in
        DATA_DIR, prints how to try them, and serves the demo page's token and test-notification routes."""
        return self.jwt_secret is None and self.api_key is None

    @property
    def json_logs(self) -> bool:
        """LOG_FORMAT, with auto resolved: a person reads `make run`'s terminal, a collector reads a deployment's."""
        if self.log_format == "auto":
            return not self.generates_secrets
        return self.log_format == "json"

    @property
    def metrics_enabled(self) -> bool:
        """True when /metrics and /status are served somewhere: METRICS_TOKEN or METRICS_PORT is set."""
        return self.metrics_token is not None or self.metrics_port is not None


@dataclass(frozen=True)
class Setting:
    """One setting as the command line, the environment and README's table see it."""

    field: str
    default: Any
    declaration: Declaration

    @property
    def env(self) -> str:
        """Its environment variable."""
        return self.field.upper()

    @property
    def flag(self) -> str:
        """Its command-line flag."""
        return "--" + self.field.replace("_", "-")

    @property
    def help(self) -> str:
        """Its help as Markdown."""
        return self.declaration.help

    @property
    def shown_default(self) -> str:
        """Its default as README's table and the command line's help show it."""
        if self.declaration.shown_default is not None:
            return self.declaration.shown_default
        if self.default is None:
            return "unset"
        if self.default == ():
            return "empty"
        if isinstance(self.default, bool):
            return f"`{str(self.default).lower()}`"
        if isinstance(self.default, float):
            return f"`{self.default:g}`"
        return f"`{self.default}`"

    def value(self, flag: str | None, environ: Mapping[str, str]) -> Any:
        """Its value from its flag, else its environment variable (unless empty), else its default."""
        raw = flag if flag is not None else environ.get(self.env) or None
        if raw is None:
            return self.default
        try:
            return self.declaration.parse(raw)
        except ValueError as error:
            shown = "<hidden>" if self.declaration.hidden else repr(raw)
            raise SettingsError(f"{self.env}={shown}: {error}") from None


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(each.name, each.default, each.metadata["setting"]) for each in dataclasses.fields(Settings)
)
SETTINGS_BY_FIELD = {each.field: each for each in SETTINGS}


def _plain(markdown: str) -> str:
    # argparse formats help with %: a literal one is doubled.
    return markdown.replace("`", "").replace("%", "%%")


def add_flags(parser: argparse.ArgumentParser, fields: Sequence[str] | None = None) -> None:
    """Add the flag of each setting (of those named in `fields`, by default all) to `parser`."""
    for each in SETTINGS if fields is None else [SETTINGS_BY_FIELD[name] for name in fields]:
        shown = f"{_plain(each.help)}; default: {_plain(each.shown_default)} (env {each.env})"
        parser.add_argument(each.flag, dest=each.field, metavar=each.env, help=shown)


def settings_from(arguments: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from parsed flags (None where not given), then environment variables, then defaults.

    `environ` is the process's environment unless given.
    """
    environ = os.environ if environ is None else environ
    return Settings(**{each.field: each.value(arguments.get(each.field), environ) for each in SETTINGS})


def read_setting(field: str, arguments: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Any:
    """One setting alone, from its flag, environment variable or default; the others are not checked."""
    return SETTINGS_BY_FIELD[field].value(arguments.get(field), os.environ if environ is None else environ)


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Settings from the flags `argv` of `bellcast serve`, then environment variables, then defaults."""
    parser = argparse.ArgumentParser(prog="bellcast serve")
    add_flags(parser)
    return settings_from(vars(parser.parse_args(argv)), environ)


def markdown_table() -> str:
    """README's configuration table: one row per setting, in the order they are declared."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    rows += [f"| `{each.env}` | {each.shown_default} | {each.help} |" for each in SETTINGS]
    return "\n".join(rows) + "\n"


def readme_table(readme: str) -> str:
    """The configuration table as it stands between README's markers."""
    start = readme.index(README_TABLE_START) + len(README_TABLE_START)
    return readme[start : readme.index(README_TABLE_END, start)].strip("\n") + "\n"


def with_table(readme: str) -> str:
    """README with the generated table between its markers."""
    start = readme.index(README_TABLE_START) + len(README_TABLE_START)
    end = readme.index(README_TABLE_END, start)
    return f"{readme[:start]}\n{markdown_table()}{readme[end:]}"


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.settings", description="README's configuration table, from the declarations."
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print the table")
    action.add_argument("--update-readme", action="store_true", help="write it between README.md's markers")
    arguments = parser.parse_args(argv)
    if arguments.markdown:
        print(markdown_table(), end="")
        return 0
    readme = Path(__file__).resolve().parent.parent / "README.md"
    readme.write_text(with_table(readme.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
