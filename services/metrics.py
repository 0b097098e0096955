"""bellcast's Prometheus metrics: one `Metrics` object per process, made by the wiring and handed in.

Every metric carries the label ``process``: the worker's index (``"0"`` when there is one
process). With ``PROCESSES=N`` the values live in memory-mapped files in a directory that the
parent creates before forking (prometheus-client's multiprocess mode, `MetricsDirectory`),
so whichever worker answers a scrape reports every worker. Labelling by index rather than pid
keeps a restarted worker's counters going on from its predecessor's: the collector adds up
the files of every pid that had the same labels.

The hot path stays cheap: children of labelled metrics are bound once, here; a delivered
batch costs one counter increment and one histogram observation per entry.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

NAMESPACE = "bellcast"
STORES = ("mongodb", "redis")
# From a few milliseconds (a hint wakes the stream at once) to a minute (an outage recovered).
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SCAN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
PIPELINE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
# Where `created_at` starts in a notification's JSON: the last key but `read_at`, whose value is a
# timestamp or null, so the last occurrence is the notification's own even if `data` holds the key.
_CREATED_AT_KEY = b'"created_at":"'
_TIMESTAMP_LENGTH = len("2026-01-02T03:04:05.678Z")


def created_at_of(payload: bytes | str) -> float | None:
    """The `created_at` (Unix time) of a notification's compact JSON, without parsing the rest; None if absent."""
    data = payload.encode() if isinstance(payload, str) else payload
    start = data.rfind(_CREATED_AT_KEY)
    if start < 0:
        return None
    start += len(_CREATED_AT_KEY)
    try:
        return datetime.datetime.fromisoformat(data[start : start + _TIMESTAMP_LENGTH].decode()).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The numbers the status page draws, summed over every process, at one moment."""

    time: float
    open_streams: dict[str, float]
    delivered: float
    created: float
    lag_buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last

    @property
    def open_streams_total(self) -> float:
        """Open streams of all processes."""
        return sum(self.open_streams.values())


class MetricsDirectory:
    """The directory where the workers of `PROCESSES=N` share their metrics; the parent owns it.

    prometheus-client chooses where values live when it is imported, from the environment
    variable PROMETHEUS_MULTIPROC_DIR; `share()` makes the metrics created from then on (in
    the workers, after the fork) write to this directory. The wiring sets the variable too,
    which prometheus-client reads when a worker creates its metrics.
    """

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="bellcast-metrics-")

    def share(self) -> None:
        """Make every metric created from now on, in this process and its children, live in the directory."""
        prometheus_values.ValueClass = prometheus_values.MultiProcessValue()

    def process_ended(self, pid: int) -> None:
        """A worker died: its live gauges (open streams) go; its counters stay in the sums."""
        mark_process_dead(pid, self.path)

    def remove(self) -> None:
        """Delete the directory and every value in it."""
        shutil.rmtree(self.path, ignore_errors=True)


class Metrics:
    """This process's metrics, and the text a scrape answers.

    `directory` is the shared directory of `PROCESSES=N`: a scrape then reports every worker.
    Without it the metrics live in a registry of this object's own (tests make many).
    """

    def __init__(self, process: str = "0", directory: str | None = None) -> None:
        # No `_created` series (a switch of the whole library): multiprocess mode has none, and one
        # process should expose what several do.
        disable_created_metrics()
        self.process = process
        self._directory = directory
        self.registry = CollectorRegistry()
        if directory is not None:
            MultiProcessCollector(self.registry, path=directory)
        own = None if directory is not None else self.registry
        label = ("process",)
        self.streams_open = Gauge(
            "streams_open",
            "Event streams open now.",
            label,
            namespace=NAMESPACE,
            registry=own,
            multiprocess_mode="livesum",
        ).labels(process)
        self.streams_opened = Counter(
            "streams_opened", "Event streams opened.", label, namespace=NAMESPACE, registry=own
        ).labels(process)
        self.streams_closed = Counter(
            "streams_closed", "Event streams closed, for any reason.", label, namespace=NAMESPACE, registry=own
        ).labels(process)
        self.notifications_created = Counter(
            "notifications_created", "Notifications stored.", label, namespace=NAMESPACE, registry=own
        ).labels(process)
        delivered = Counter(
            "entries_delivered",
            "Notifications written and flushed to a stream: live (from the cache) or catch_up (from MongoDB).",
            (*label, "source"),
            namespace=NAMESPACE,
            registry=own,
        )
        self._delivered_live = delivered.labels(process, "live")
        self._delivered_catch_up = delivered.labels(process, "catch_up")
        self.delivery_lag = Histogram(
            "delivery_lag_seconds",
            "From a notification's created_at to the flush that sent it live on a stream.",
            label,
            namespace=NAMESPACE,
            registry=own,
            buckets=LAG_BUCKETS,
        ).labels(process)
        self.cache_scan = Histogram(
            "cache_scan_duration_seconds",
            "Reading a stream's inbox in Redis, for the scans that found something to send.",
            label,
            namespace=NAMESPACE,
            registry=own,
            buckets=SCAN_BUCKETS,
        ).labels(process)
        self.redis_pipeline_commands = Histogram(
            "redis_pipeline_commands",
            "Commands per pipeline the streams send to Redis: how many streams share each round trip.",
            label,
            namespace=NAMESPACE,
            registry=own,
            buckets=PIPELINE_BUCKETS,
        ).labels(process)
        safety_scans = Counter(
            "safety_scans",
            "Inboxes looked at by the streams' safety scans, by what they held: nothing, entries that "
            "no wake-up hint had announced yet (a hint lost, or still on its way), or no registration "
            "(Redis evicted or lost it: the stream registers again and catches up from MongoDB).",
            (*label, "found"),
            namespace=NAMESPACE,
            registry=own,
        )
        self.safety_scans_empty = safety_scans.labels(process, "nothing")
        self.safety_scans_found = safety_scans.labels(process, "entries")
        self.safety_scans_unregistered = safety_scans.labels(process, "no_registration")
        recovery_reads = Counter(
            "recovery_reads",
            "Reads from MongoDB of what streams missed (after a Redis outage, a lost registration or a "
            "Last-Event-ID): run, or shared with another stream of the same user that asked the same.",
            (*label, "outcome"),
            namespace=NAMESPACE,
            registry=own,
        )
        self.recovery_reads = recovery_reads.labels(process, "run")
        self.recovery_reads_shared = recovery_reads.labels(process, "shared")
        self.changes_delivered = Counter(
            "changes_delivered",
            "`changed` events (a user's notifications read, seen, archived, deleted, created..., with the counts) "
            "written and flushed to a stream.",
            label,
            namespace=NAMESPACE,
            registry=own,
        ).labels(process)
        self.source_documents = Counter(
            "source_documents",
            "Documents inserted into SOURCE_COLLECTION that the watcher delivered to their users' streams.",
            label,
            namespace=NAMESPACE,
            registry=own,
        ).labels(process)
        self._source_skipped = Counter(
            "source_documents_skipped",
            "Documents inserted into SOURCE_COLLECTION that are no notification bellcast can show, by what they "
            "lack (no user, no title, no creation time).",
            (*label, "reason"),
            namespace=NAMESPACE,
            registry=own,
        )
        self.source_catch_ups = Counter(
            "source_catch_ups",
            "Times the watcher's resume point was gone (the oplog rolled over) and it caught up by creation time.",
            label,
            namespace=NAMESPACE,
            registry=own,
        ).labels(process)
        self.source_watching = Gauge(
            "source_watching",
            "1 while this process holds the lease and watches SOURCE_COLLECTION (one process per deployment).",
            label,
            namespace=NAMESPACE,
            registry=own,
            multiprocess_mode="livesum",
        ).labels(process)
        self._observer_failures = Counter(
            "observer_failures",
            "Observers that raised on a stored notification.",
            (*label, "observer"),
            namespace=NAMESPACE,
            registry=own,
        )
        self.slow_clients_dropped = Counter(
            "slow_clients_dropped",
            "Streams closed because their client left a write unread or unacknowledged for STREAM_WRITE_TIMEOUT.",
            label,
            namespace=NAMESPACE,
            registry=own,
        ).labels(process)
        self._connections_refused = Counter(
            "connections_refused",
            "Client connections closed as soon as accepted: their address held MAX_CONNECTIONS_PER_CLIENT "
            "(per_client), or the process MAX_CONNECTIONS (total).",
            (*label, "reason"),
            namespace=NAMESPACE,
            registry=own,
        )
        store_errors = Counter(
            "store_errors",
            "Store operations that failed because the store was unreachable or too slow.",
            (*label, "store"),
            namespace=NAMESPACE,
            registry=own,
        )
        self._store_errors = {store: store_errors.labels(process, store) for store in STORES}

    def delivered(self, entries: Sequence[tuple[str, bytes | str]], live: bool) -> None:
        """A batch was flushed to a stream: count it, and for live entries observe their lag."""
        if not live:
            self._delivered_catch_up.inc(len(entries))
            return
        self._delivered_live.inc(len(entries))
        now = time.time()
        for _, payload in entries:
            created = created_at_of(payload)
            if created is not None:
                # Clocks of different machines disagree a little: never a negative lag.
                self.delivery_lag.observe(max(0.0, now - created))

    def source_skipped(self, reason: str) -> None:
        """The watcher met a document that does not map to a notification."""
        self._source_skipped.labels(self.process, reason).inc()

    def observer_failed(self, observer: str) -> None:
        """An observer raised."""
        self._observer_failures.labels(self.process, observer).inc()

    def count_refused_connection(self, reason: str) -> None:
        """A client connection was closed at accept ("per_client" or "total")."""
        self._connections_refused.labels(self.process, reason).inc()

    def store_error(self, store: str) -> None:
        """An operation on `store` ("mongodb" or "redis") failed for want of the store."""
        self._store_errors[store].inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Every metric (of every process) in the format the Accept header prefers, and its content type.

        Prometheus's text format 0.0.4 unless the scraper asks for OpenMetrics or a later text format.
        """
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    def snapshot(self) -> Snapshot:
        """The status page's numbers now, summed over processes."""
        open_streams: dict[str, float] = {}
        delivered = created = 0.0
        buckets: dict[float, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == f"{NAMESPACE}_streams_open":
                    process = sample.labels.get("process", "0")
                    open_streams[process] = open_streams.get(process, 0.0) + sample.value
                elif sample.name == f"{NAMESPACE}_entries_delivered_total":
                    delivered += sample.value
                elif sample.name == f"{NAMESPACE}_notifications_created_total":
                    created += sample.value
                elif sample.name == f"{NAMESPACE}_delivery_lag_seconds_bucket":
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
        return Snapshot(
            time=time.time(),
            open_streams=dict(sorted(open_streams.items())),
            delivered=delivered,
            created=created,
            lag_buckets=tuple(sorted(buckets.items())),
        )


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram's cumulative buckets, as Prometheus's histogram_quantile estimates it.

    Linear within the bucket it falls in; in the +Inf bucket, the largest finite bound. None without observations.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound
