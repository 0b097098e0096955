"""The `bellcast` command: `bellcast [serve] [--setting VALUE ...]` and `bellcast token USER [--ttl SECONDS]`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from services.auth import mint_user_token
from services.development import GENERATED_SECRETS_FILE, TRY_IT_TOKEN_LIFETIME, stored_generated_secrets
from services.settings import add_flags, read_setting


def command_line() -> argparse.ArgumentParser:
    """The parser of both commands; `serve` has a flag per setting, `token` those it signs with."""
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
    add_flags(serve)
    token = commands.add_parser(
        "token",
        help="print a user token, for development",
        description="Print a token for USER signed with JWT_SECRET, or else with the development secret "
        f"that `bellcast serve` keeps in DATA_DIR/{GENERATED_SECRETS_FILE}.",
    )
    token.add_argument("user", metavar="USER", help="the user id the token is for (its `sub` claim)")
    token.add_argument(
        "--ttl",
        type=_token_lifetime,
        default=TRY_IT_TOKEN_LIFETIME,
        metavar="SECONDS",
        help="how long the token is valid (default %(default)s, a day)",
    )
    add_flags(token, ["jwt_secret", "data_dir"])
    return parser


def parse_command(argv: Sequence[str]) -> dict[str, Any]:
    """The command and its arguments; without a command (only flags, or nothing), `serve`."""
    words = list(argv)
    if not words or (words[0].startswith("-") and words[0] not in ("-h", "--help")):
        words.insert(0, "serve")
    return vars(command_line().parse_args(words))


def _token_lifetime(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number of seconds, not {value!r}")
    return seconds


def print_token(arguments: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> int:
    """`bellcast token`: print a token for USER, signed with JWT_SECRET or the generated secret; the exit status."""
    user_id, lifetime_seconds = arguments["user"], arguments["ttl"]
    jwt_secret = read_setting("jwt_secret", arguments, environ)
    data_dir = Path(read_setting("data_dir", arguments, environ))
    if jwt_secret is None:
        stored = stored_generated_secrets(data_dir)
        if stored is None:
            print(
                f"bellcast: no JWT_SECRET, and no development secret in {data_dir / GENERATED_SECRETS_FILE}: "
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
