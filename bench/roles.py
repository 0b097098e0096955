"""Where a create's CPU goes, by role: py-spy's samples of each server-side process, taken while a fan-out
pass made its creates (`make bench` with `--profile DIR`), attributed to the roles of the delivery path.

Each sample is one stack; it goes to the first role, in the order below, with a frame that matches.
A role's share of a process's samples times that process's CPU per create (measured by the bench
with psutil, not by py-spy) gives its microseconds per create. Samples of a thread blocked in a
read (py-spy cannot always tell one from a running thread) are not counted.

usage: python -m bench.roles DIR   (prints the table of each profiled pass in DIR)
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

# The roles of each kind of process, each with the frames (a function's qualified name, or a file) that
# mark it; the first role a stack matches takes the sample.
ROLES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "bellcast": [
        ("counts read (driver)", ("NotificationService.counts", "NotificationService.recount")),
        # PyMongo runs each command's send, read and cancellation watch in tasks of its own, whose stacks
        # show none of bellcast's frames: any frame of the driver's marks its sample.
        ("insert (driver, its own tasks included)", ("InsertBatcher._insert", "pymongo/", "bson/", "motor/")),
        ("queueing (observers' scripts)", ("CacheObserver.", "DeliveryCache.enqueue")),
        (
            "Redis commands (pipelines: queue, scan, delete)",
            ("CommandBatcher.", "execute_pipeline", "hiredis.py", "redis/asyncio/connection.py"),
        ),
        ("POST: auth, body, validation, answer", ("NotificationsHandler.", "CreateHandler.", "BoundedBody.")),
        # Before the wake-up: an idle stream writes what a hint carried from within the hub's callback.
        (
            "stream: write and flush",
            ("LiveConnection.send", "LiveConnection.flush", "LiveConnection._send_now", "iostream.py"),
        ),
        (
            "stream: scan and ledger",
            (
                "LiveConnection._drain",
                "LiveConnection._take",
                "LiveConnection._scan",
                "LiveConnection.deliver",
                "LiveConnection.acknowledged",
            ),
        ),
        ("wake-up (pub/sub hint)", ("WakeupHub.", "read_hints", "wakeups.py")),
        ("HTTP server (parse, route, access log)", ("http1connection.py", "web.py", "access_log.py")),
        ("event loop and other", ("",)),
    ],
    "tornado": [
        ("Redis (publish, subscription)", ("Subscribers.listen", "hiredis.py", "redis/asyncio/")),
        ("POST: publish, answer", ("PublishHandler.",)),
        ("stream: write and flush", ("MinimalStreamHandler.", "iostream.py")),
        ("HTTP server (parse, route)", ("http1connection.py", "web.py")),
        ("event loop and other", ("",)),
    ],
    "mongodb": [
        ("insert", ("_insert (secantus/commands.py",)),
        ("aggregate (counts)", ("_aggregate (secantus/commands.py",)),
        ("find", ("_find (secantus/commands.py", "_get_more (secantus/commands.py")),
        ("update", ("_update (secantus/commands.py",)),
        ("per command (profile level, sessions, reply)", ("dispatch (secantus/commands.py",)),
        ("wire protocol and other", ("",)),
    ],
}
# The innermost frames of a thread that waits for its socket rather than runs.
WAITING = re.compile(r"^(_recv_exactly|recv_into|select|poll|wait|_wait_for_tstate_lock) ")


def role_samples(path: Path, kind: str) -> Counter[str]:
    """The samples of a py-spy raw file by role, the waiting ones left out."""
    roles = ROLES[kind]
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or WAITING.match(frames[-1]):
            continue
        for role, marks in roles:
            if any(mark in frame for frame in frames for mark in marks):
                counts[role] += int(number)
                break
    return counts


def table(profile: dict[str, str], cpu_ms_per_create: dict[str, float]) -> list[tuple[str, str, float]]:
    """(process, role, µs per create) for each profiled process of one pass."""
    rows = []
    for process, file in profile.items():
        kind = "bellcast" if process == "server" and "bellcast" in file else process
        kind = "tornado" if process == "server" and "tornado" in file else kind
        samples = role_samples(Path(file), kind)
        total = sum(samples.values()) or 1
        cpu_us = 1000 * cpu_ms_per_create.get(process, 0.0)
        rows += [(process, role, cpu_us * samples[role] / total) for role, _ in ROLES[kind] if samples[role]]
    return rows


def main() -> None:
    """Print the role table of every profiled pass recorded in DIR/profiles.json."""
    directory = Path(sys.argv[1])
    for entry in json.loads((directory / "profiles.json").read_text()):
        print(f"\n{entry['target']} {entry['label']} at {entry['rate']:g}/s: µs of CPU per create, by role")
        for process, role, us in table(entry["files"], entry["cpu_ms_per_create"]):
            print(f"  {process:>8}  {role:<50} {us:8.0f}")


if __name__ == "__main__":
    main()
