"""Running the server: on an event loop, and in worker processes sharing the listening sockets (pre-fork)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from services.embedded import die_with_parent
from services.metrics import MetricsDirectory

log = logging.getLogger("bellcast")

WORKER_RESTART_DELAY = 1.0


def run_processes(count: int, work: Callable[[int], None], on_ended: Callable[[int], None] | None = None) -> int:
    """Fork `count` workers, each running `work(index)`, and wait until every one has ended.

    The parent forwards SIGINT and SIGTERM to them and restarts one that dies on its own; `on_ended(pid)`
    is called for each worker that ended.
    """
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            die_with_parent()
            status = 0
            try:
                work(index)
            except BaseException:
                log.exception("worker %d failed", index)
                status = 1
            finally:
                logging.shutdown()
                os._exit(status)
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for index in range(count):
        spawn(index)
    log.info("started %d worker processes: %s", count, ", ".join(map(str, children)))
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid)
        if on_ended is not None:
            on_ended(pid)
        if not stopping:
            log.error("worker %d (pid %d) ended with status %d; starting another", index, pid, status)
            time.sleep(WORKER_RESTART_DELAY)
            if not stopping:  # a signal during the delay: no worker left to forward it to
                spawn(index)
    return 0


def run_event_loop(event_loop: str, main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on a new event loop of the kind EVENT_LOOP names: uvloop or asyncio's own."""
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


@contextlib.contextmanager
def metrics_shared_by_workers(metrics_directory: MetricsDirectory | None) -> Iterator[None]:
    """Share the workers' metrics through the directory while they run; remove it when they are done."""
    if metrics_directory is None:
        yield
        return
    # The one environment variable bellcast sets rather than reads: prometheus-client's multiprocess mode
    # takes the directory of each worker's metrics from PROMETHEUS_MULTIPROC_DIR, and forked workers inherit it.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_directory.path
    metrics_directory.share()
    log.info("metrics: shared by the worker processes in %s", metrics_directory.path)
    try:
        yield
    finally:
        metrics_directory.remove()
