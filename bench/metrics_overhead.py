"""What the metrics cost a stream per delivered batch: `python -m bench.metrics_overhead`.

Times the stream handler's hooks (`Metrics.delivered` and the scan histogram) for batches of 1
and 10 notifications, with the metrics in memory (one process) and in shared files (PROCESSES=N),
next to encoding the same events, which every delivery does anyway.
"""

from __future__ import annotations

import os
import subprocess
import sys
import timeit

from services.metrics import Metrics, MetricsDirectory
from services.notifications import utc_now, validate_new_notification
from services.sse import encode_event

ROUNDS = 20000


def measure(shared: bool) -> None:
    """Print the cost per batch and per notification in one mode."""
    directory = MetricsDirectory() if shared else None
    try:
        if directory is not None:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory.path
            directory.share()
        metrics = Metrics("0", directory.path if directory else None)
        fields = {"user_id": "alice", "title": "Build #128 passed", "body": "All 412 tests green on main."}
        notification = validate_new_notification(fields, now=utc_now())
        entry = (str(notification.id), notification.to_json().encode())
        mode = "shared files" if shared else "in memory"
        for size in (1, 10):
            batch = [entry] * size

            def hooks(batch: list[tuple[str, bytes]] = batch) -> None:
                metrics.delivered(batch, live=True)
                metrics.cache_scan.observe(0.0004)

            seconds = timeit.timeit(hooks, number=ROUNDS) / ROUNDS
            print(
                f"{mode:>12}, batch of {size:2}: {seconds * 1e6:5.2f} µs per batch, {seconds / size * 1e6:5.2f} µs each"
            )
        encoding = timeit.timeit(lambda: encode_event(entry[0], "notification", entry[1]), number=ROUNDS) / ROUNDS
        print(f"{mode:>12}, for scale, encoding one event: {encoding * 1e6:5.2f} µs")
    finally:
        if directory is not None:
            directory.remove()


if __name__ == "__main__":
    if sys.argv[1:] == ["--shared"]:
        measure(shared=True)
    else:
        measure(shared=False)
        # A process of its own: shared mode switches prometheus-client's value class for good.
        subprocess.run([sys.executable, "-m", "bench.metrics_overhead", "--shared"], check=True)
