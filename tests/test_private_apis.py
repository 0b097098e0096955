"""Every use of a dependency's private or undocumented API, in one list, with the version that was checked.

A private name can change in any release. Each entry names the distribution whose pin in constraints.txt
guards it (or the Python version, for the standard library); when that pin moves, these tests fail until
someone has read the new version's code for the names below and updated `checked_with`.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PrivateUse:
    """One private name bellcast relies on, where, why, and the version its behaviour was checked with."""

    distribution: str  # as pinned in constraints.txt; "python" for the standard library
    checked_with: str
    name: str  # module:attribute.path
    used_in: str  # a file of the package that uses it
    pattern: str  # what that file contains where it uses it
    why: str


PRIVATE_USES = (
    PrivateUse(
        "tornado",
        "6.6.1",
        "tornado.ioloop:PeriodicCallback._update_next",
        "services/connection.py",
        "super()._update_next",
        "it and the `_next_timeout` it sets: ticks rounded to a shared step, so that many timers fall due together",
    ),
    PrivateUse(
        "tornado",
        "6.6.1",
        "tornado.httpserver:_ProxyAdapter",
        "handlers/proxy.py",
        "httpserver._ProxyAdapter",
        "the forwarded-headers adapter of xheaders=True, applied only to connections from trusted proxies, "
        "less X-Scheme (its headers_received is overridden)",
    ),
    PrivateUse(
        "python",
        "3.11",
        "logging:_srcfile",
        "services/logs.py",
        "logging._srcfile = None",
        "the Logging HOWTO's documented optimisation: no stack walk per record for a file and line never logged",
    ),
    PrivateUse(
        "prometheus_client",
        "0.26.0",
        "prometheus_client.values:MultiProcessValue",
        "services/metrics.py",
        "prometheus_values.ValueClass = prometheus_values.MultiProcessValue()",
        "PROCESSES=N shares the workers' metrics once the directory is known, after the module was imported",
    ),
    PrivateUse(
        "redis",
        "8.1.0",
        "redis.asyncio.client:Redis.parse_response",
        "services/redis_backend.py",
        "redis.parse_response(connection",
        "the batcher writes packed commands on a kept connection and reads the replies as the client would",
    ),
    PrivateUse(
        "redis",
        "8.1.0",
        "redis.asyncio.connection:AbstractConnection.send_packed_command",
        "services/redis_backend.py",
        "send_packed_command(",
        "the same batcher: one write of the commands hiredis packed",
    ),
)


def pinned_versions() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            pins[match.group(1).lower().replace("-", "_")] = match.group(2)
    pins["python"] = f"{sys.version_info.major}.{sys.version_info.minor}"
    return pins


@pytest.mark.parametrize("use", PRIVATE_USES, ids=lambda use: use.name)
def test_each_private_name_was_checked_with_the_pinned_version_and_still_exists(use: PrivateUse) -> None:
    pinned = pinned_versions().get(use.distribution.lower().replace("-", "_"))
    assert pinned == use.checked_with, (
        f"{use.distribution} is pinned at {pinned}, but {use.name} was checked with {use.checked_with}: read the new "
        f"version's code for it (used in {use.used_in}: {use.why}), then update checked_with in {__file__}"
    )
    module_name, attribute_path = use.name.split(":")
    found: object = importlib.import_module(module_name)
    for attribute in attribute_path.split("."):
        found = getattr(found, attribute)


@pytest.mark.parametrize("use", PRIVATE_USES, ids=lambda use: use.name)
def test_each_listed_use_is_where_the_list_says(use: PrivateUse) -> None:
    assert use.pattern in (ROOT / use.used_in).read_text(), f"{use.used_in} no longer uses {use.name}: update the list"


# A module's private name reached from outside it: `module._name` or `super()._name`. os._exit is public.
_PRIVATE_ACCESS = re.compile(r"(?<![\w.])(?!self\.|cls\.|os\._exit)([A-Za-z_][\w]*|super\(\))\._(?!_)[A-Za-z]\w*")


def test_no_private_name_of_a_dependency_is_used_without_being_listed() -> None:
    listed = {(use.used_in, use.pattern) for use in PRIVATE_USES}
    sources = [ROOT / "server.py", *sorted((ROOT / "handlers").glob("*.py")), *sorted((ROOT / "services").glob("*.py"))]
    unlisted = []
    for source in sources:
        relative = str(source.relative_to(ROOT))
        for number, line in enumerate(source.read_text().splitlines(), 1):
            for match in _PRIVATE_ACCESS.finditer(line):
                if not any(file == relative and pattern in line for file, pattern in listed):
                    unlisted.append(f"{relative}:{number}: {match.group(0)}")
    assert not unlisted, "private names used but not listed in PRIVATE_USES:\n" + "\n".join(unlisted)
