"""bellcast's server with a watchdog on its event loop, for `make bench` with `--loop-stalls`.

A thread asks the loop to run a callback every `PERIOD_SECONDS`; when one waits longer than
`STALL_SECONDS`, it samples the loop thread's stack every millisecond until the callback runs, reads
the loop thread's CPU clock, and appends the stall to a JSON-lines file: when, how long, how much of it
the loop thread ran (little: it was waiting for a core; most: its own work blocked the loop), and the
stacks it was seen in. The bench counts the stalls that fell within each pass's creates. The sampler
needs the interpreter lock: a loop thread that holds it (running, or descheduled while running) is
sampled about once per switch interval (5 ms), one blocked in a system call about every millisecond.

usage: python -m bench.stalls FILE [bellcast's arguments]
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import server

PERIOD_SECONDS = 0.002
STALL_SECONDS = 0.005
SAMPLE_SECONDS = 0.001
# The innermost frames of a sampled stack that a record keeps.
STACK_DEPTH = 8


def watch(loop: asyncio.AbstractEventLoop, loop_thread: int, path: Path) -> None:
    """Record the loop's stalls in `path`, forever (a daemon thread's target)."""
    clock = time.pthread_getcpuclockid(loop_thread)
    with path.open("a") as out:
        while True:
            time.sleep(PERIOD_SECONDS)
            ran = threading.Event()
            started, cpu_started = time.time(), time.clock_gettime(clock)
            try:
                loop.call_soon_threadsafe(ran.set)
            except RuntimeError:  # the loop closed: the server is exiting
                return
            if ran.wait(STALL_SECONDS):
                continue
            stacks: Counter[str] = Counter()
            while not ran.wait(SAMPLE_SECONDS):
                if (frame := sys._current_frames().get(loop_thread)) is not None:
                    frames = traceback.extract_stack(frame)[-STACK_DEPTH:]
                    stacks[" < ".join(f"{Path(f.filename).name}:{f.name}:{f.lineno}" for f in reversed(frames))] += 1
            record = {
                "time": started,
                "wall_ms": 1000 * (time.time() - started),
                "loop_thread_cpu_ms": 1000 * (time.clock_gettime(clock) - cpu_started),
                "stacks": stacks.most_common(3),
            }
            out.write(json.dumps(record) + "\n")
            out.flush()


def watched(serve: Callable[..., Coroutine[Any, Any, Any]], path: Path) -> Callable[..., Coroutine[Any, Any, Any]]:
    """`serve`, with the watchdog started on the loop it runs in."""

    async def serve_watched(*args: Any, **kwargs: Any) -> Any:
        loop, loop_thread = asyncio.get_running_loop(), threading.get_ident()
        threading.Thread(target=watch, args=(loop, loop_thread, path), daemon=True, name="loop-watchdog").start()
        return await serve(*args, **kwargs)

    return serve_watched


def stalls_between(path: Path, start: float, end: float) -> list[dict[str, Any]]:
    """The stalls recorded in `path` that began between `start` and `end` (time.time())."""
    if not path.exists():
        return []
    records = (json.loads(line) for line in path.read_text().splitlines() if line)
    return [record for record in records if start <= record["time"] <= end]


def main() -> int:
    path, arguments = Path(sys.argv[1]), sys.argv[2:]
    server.serve = watched(server.serve, path)
    return server.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
