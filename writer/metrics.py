"""The writer's Prometheus metrics: a :class:`~writer.engine.hooks.Hooks` and a collector.

:class:`WriterMetrics` observes each commit (batch size, commit time, intents applied) and
each dead letter through the writer's hooks; at each scrape its collector reads
:meth:`Writer.get_stats`, the lanes' depths in Redis and the writer's role. Nothing here runs
on the loop thread except the hooks: they count, and while the writer is active one of them
samples the database server's connections (:func:`sample_connections`, every
``connections_interval_s``, on the writer's own connection between two batches) so that
``connections over 0.8 x max_connections`` needs no exporter and no second connection::

    metrics = WriterMetrics()
    writer = Writer.from_settings(settings, broker, hooks=[metrics])
    server = metrics.serve(writer, port=9101)    # /metrics /healthz /readyz
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from jobplatform.logging import get_logger
from jobplatform.metrics import MetricsServer, oldest_ready_age_ms, queue_depths
from writer.engine.hooks import Commit, DeadLetterEntry, Hooks
from writer.stats import COUNTERS

if TYPE_CHECKING:
    from writer.batcher import Batch
    from writer.engine.writer import Writer
    from writer.lanes import Item

__all__ = ["ConnectionSample", "WriterMetrics", "sample_connections", "writer_readiness"]

log = get_logger("writer")

#: Batch sizes in intents; commit times in seconds (the target is ``WRITER_TARGET_TXN_MS``).
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000)
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
ROLES = ("starting", "standby", "active", "stopped")
#: At most this many ``application`` label values per scrape; the rest add up under "other".
MAX_APPLICATIONS = 20


@dataclass(frozen=True, slots=True)
class ConnectionSample:
    """The client connections of a PostgreSQL server at one moment, and its limits."""

    counts: dict[tuple[str, str], int]
    """``(state, application_name) -> connections``: client backends of the whole server
    (every database), as ``pg_stat_activity`` lists them. A state PostgreSQL does not show this
    role (another role's session, without ``pg_read_all_stats``) is ``unknown``; an empty
    application name is ``unnamed``."""
    max_connections: int
    reserved: int
    """Slots only superusers (and, from PostgreSQL 16, ``pg_use_reserved_connections``) may
    take: ``superuser_reserved_connections`` + ``reserved_connections``."""
    at: float
    """``time.monotonic()`` when it was taken."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())


_CONNECTIONS = """
SELECT coalesce(state, 'unknown'), coalesce(nullif(application_name, ''), 'unnamed'),
       count(*)::int,
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
         + coalesce(current_setting('reserved_connections', true), '0')::int
FROM pg_stat_activity WHERE backend_type = 'client backend'
GROUP BY 1, 2
"""


def sample_connections(conn: psycopg.Connection[Any], *,
                       statement_timeout_ms: int = 1000) -> ConnectionSample:
    """Count the server's client connections by state and application on ``conn`` (which
    is one of them), in one short transaction bounded by ``statement_timeout_ms``."""
    with conn.transaction():
        conn.execute("SELECT set_config('statement_timeout', %s, true)",
                     (f"{statement_timeout_ms}ms",))
        rows = conn.execute(_CONNECTIONS).fetchall()
    counts = {(str(state), str(app)): int(n) for state, app, n, _, _ in rows}
    # ``conn`` itself is a client backend, so there is always a row.
    max_connections, reserved = (int(rows[0][3]), int(rows[0][4])) if rows else (0, 0)
    return ConnectionSample(counts, max_connections, reserved, time.monotonic())


def writer_readiness(writer: Writer) -> tuple[bool, str]:
    """Ready when active (and the intent log records), or standing by with a live database
    connection."""
    role = writer.stats.role
    if role == "active" and writer.stats.intent_log_error:
        return False, ("active, holding its batch: the intent log cannot record it "
                       f"({writer.stats.intent_log_error})")
    if role == "active":
        return True, "active"
    if role == "standby" and writer.backend_pid is not None:
        return True, "standby with a live connection"
    if role == "standby":
        return False, "standby without a database connection"
    return False, role


class WriterMetrics(Hooks):
    """Counts commits and dead letters; :meth:`serve` exposes them with the writer's stats."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 connections_interval_s: float = 5.0) -> None:
        """``connections_interval_s``: how often the active writer counts the database's
        connections (0: never); a sample older than 3 intervals is no longer served."""
        self.connections_interval_s = connections_interval_s
        self.registry = registry if registry is not None else CollectorRegistry()
        self.batch_intents = Histogram(
            "jobplatform_writer_batch_intents", "Messages per committed batch transaction.",
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.commit_seconds = Histogram(
            "jobplatform_writer_commit_seconds", "Batch transaction time, BEGIN to COMMIT.",
            buckets=COMMIT_BUCKETS, registry=self.registry)
        self.applied = Counter(
            "jobplatform_writer_intents_applied",
            "Intents newly applied (the ledger did not hold them).", registry=self.registry)
        self.dead_letters = Counter(
            "jobplatform_writer_dead_letters",
            "Messages stored in writer_dead_letters instead of being applied.", ("queue",),
            registry=self.registry)
        self._lock = threading.Lock()
        self._held_oldest_ms: float | None = None
        self._bound: Writer | None = None
        self._connections: ConnectionSample | None = None
        self._next_sample = 0.0

    # --- hooks (the loop thread) -----------------------------------------------------------

    def before_collect(self) -> None:
        """Between two batches of the active writer: count the database's connections when
        due, on the writer's idle connection (charged to the database time budget)."""
        writer = self._bound
        if writer is None or self.connections_interval_s <= 0:
            return
        now = time.monotonic()
        if now < self._next_sample:
            return
        self._next_sample = now + self.connections_interval_s
        conn = writer.session.conn
        if conn is None or conn.closed or conn.broken:
            return
        try:
            sample = sample_connections(conn)
        except psycopg.Error as exc:  # the batch that follows meets the outage and retries
            log.warning("could not count the database's connections", error=str(exc))
            return
        finally:
            writer.budget.spent(now, time.monotonic())
        with self._lock:
            self._connections = sample

    def after_collect(self, batch: Batch) -> None:
        oldest = min((item.timestamp_ms for item in batch.items), default=None)
        with self._lock:
            self._held_oldest_ms = None if oldest is None else float(oldest)

    def after_commit(self, commit: Commit) -> None:
        self.batch_intents.observe(len(commit.items))
        self.commit_seconds.observe(commit.ended - commit.started)
        self.applied.inc(len(commit.intents))

    def on_dead_letter(self, entries: Sequence[DeadLetterEntry]) -> None:
        for entry in entries:
            self.dead_letters.labels(entry.queue).inc()

    def after_ack(self, items: Sequence[Item]) -> None:
        with self._lock:
            self._held_oldest_ms = None

    def on_role_change(self, old: str, new: str) -> None:
        if new != "active":
            with self._lock:
                self._held_oldest_ms = None
                # Only the active writer reports them, so writers scraped together add up to
                # the server's count once.
                self._connections = None

    # --- scrape ----------------------------------------------------------------------------

    def bind(self, writer: Writer) -> None:
        """Add the collector of ``writer``'s stats, depths and role to :attr:`registry`, and
        let the hooks count the database's connections on its connection."""
        if self._bound is None:
            self.registry.register(_WriterCollector(writer, self))
            self._bound = writer

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, writer: Writer, *, port: int, host: str = "0.0.0.0") -> MetricsServer:  # noqa: S104
        """Start ``/metrics``, ``/healthz`` and ``/readyz`` for ``writer`` on a thread."""
        self.bind(writer)
        return MetricsServer(port, exposition=self.exposition,
                             ready=lambda: writer_readiness(writer), host=host).start()

    def held_age_ms(self, now_ms: float) -> float:
        with self._lock:
            held = self._held_oldest_ms
        return 0.0 if held is None else max(0.0, now_ms - held)

    def connections(self) -> ConnectionSample | None:
        """The latest count of the database's connections, unless it is stale."""
        with self._lock:
            sample = self._connections
        if sample is None or time.monotonic() - sample.at > 3 * self.connections_interval_s:
            return None
        return sample


class _WriterCollector:
    def __init__(self, writer: Writer, metrics: WriterMetrics) -> None:
        self.writer = writer
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only: no call of collect() on register

    def collect(self) -> Iterable[Metric]:
        writer = self.writer
        stats = writer.get_stats()
        for name in COUNTERS:
            counter = CounterMetricFamily(f"jobplatform_writer_{name}",
                                          f"Writer counter {name} (see Writer.get_stats).")
            counter.add_metric((), float(stats[name]))
            yield counter
        stages = CounterMetricFamily("jobplatform_writer_stage_seconds",
                                     "Wall time the writer's loop spent in each stage.",
                                     labels=("stage",))
        for stage, seconds in stats["time_s"].items():
            stages.add_metric((stage,), float(seconds))
        yield stages
        yield _gauge("jobplatform_writer_up", "1 while the writer process runs.", 1)
        role = GaugeMetricFamily("jobplatform_writer_role", "1 for the writer's current role.",
                                 labels=("role",))
        for name in ROLES:
            role.add_metric((name,), 1.0 if stats["role"] == name else 0.0)
        yield role
        yield _gauge("jobplatform_writer_active", "1 while this writer holds the lock.",
                     1 if stats["role"] == "active" else 0)
        pid = writer.backend_pid
        info = GaugeMetricFamily("jobplatform_writer_info",
                                 "The writer's name and its PostgreSQL backend pid (the lock "
                                 "holder when active).", labels=("name", "backend_pid"))
        info.add_metric((writer.name, "" if pid is None else str(pid)), 1.0)
        yield info
        yield _gauge("jobplatform_writer_db_connections",
                     "PostgreSQL connections the writer holds (its own and, while active, "
                     "the fast lane's).", len(writer.backend_pids))
        yield _gauge("jobplatform_writer_db_share",
                     "Share of wall time the writer kept PostgreSQL busy (sliding window).",
                     stats["db_share"])
        yield _gauge("jobplatform_writer_db_budget", "WRITER_DB_BUDGET.", stats["db_budget"])
        yield _gauge("jobplatform_writer_batch_rows_cap", "Row cap of the next batch.",
                     stats["batch_rows_cap"])
        yield _gauge("jobplatform_writer_commit_p99_seconds",
                     "p99 transaction time of the last 4,096 batches.",
                     stats["commit_ms_p99"] / 1000)
        yield from self._queues()
        yield from self._intent_log()
        yield from self._database()

    def _database(self) -> Iterable[Metric]:
        """The server's client connections, as the active writer last counted them."""
        sample = self.metrics.connections()
        if sample is None:
            return
        family = GaugeMetricFamily(
            "jobplatform_database_connections",
            "Client connections of the PostgreSQL server (pg_stat_activity), by state and "
            "application_name; counted by the active writer.", labels=("state", "application"))
        ranked = sorted(sample.counts.items(), key=lambda item: -item[1])
        other: dict[str, int] = {}
        apps: set[str] = set()
        for (state, app), n in ranked:
            if app in apps or len(apps) < MAX_APPLICATIONS:
                apps.add(app)
                family.add_metric((state, app), float(n))
            else:
                other[state] = other.get(state, 0) + n
        for state, n in sorted(other.items()):
            family.add_metric((state, "other"), float(n))
        yield family
        yield _gauge("jobplatform_database_max_connections",
                     "The server's max_connections.", sample.max_connections)
        yield _gauge("jobplatform_database_reserved_connections",
                     "Slots of max_connections reserved for superusers "
                     "(superuser_reserved_connections + reserved_connections).", sample.reserved)
        yield _gauge("jobplatform_database_connections_age_seconds",
                     "Age of the connection count.", time.monotonic() - sample.at)

    def _intent_log(self) -> Iterable[Metric]:
        """The write-intent log's segments and shipping, when it keeps stats."""
        get_stats = getattr(self.writer.log_writer, "get_stats", None)
        if not callable(get_stats):
            return
        stats = get_stats()
        for name in ("batches", "intents", "bytes", "segments_opened", "segments_closed",
                     "segments_shipped", "ship_failures"):
            if name in stats:
                counter = CounterMetricFamily(f"jobplatform_writer_intent_log_{name}",
                                              f"Write-intent log: {name.replace('_', ' ')}.")
                counter.add_metric((), float(stats[name]))
                yield counter
        if getattr(self.writer.log_writer, "shipper", None) is not None:
            yield _gauge("jobplatform_writer_intent_log_unshipped_segments",
                         "Closed segments not shipped to S3 yet.",
                         stats.get("segments_closed", 0) - stats.get("segments_shipped", 0))
        if "sync_ms_max" in stats:
            yield _gauge("jobplatform_writer_intent_log_sync_max_seconds",
                         "Longest fsync of an append.", float(stats["sync_ms_max"]) / 1000)

    def _queues(self) -> Iterable[Metric]:
        writer = self.writer
        client: Any = writer.broker.client
        namespace = writer.broker.namespace
        lanes = writer.queues.writes
        backlog = GaugeMetricFamily(
            "jobplatform_writer_backlog",
            "Messages of each lane: ready, unacked (prefetched or in a batch), delayed, dead.",
            labels=("queue", "state"))
        for depth in queue_depths(client, namespace, lanes):
            for state in ("ready", "unacked", "delayed", "dead"):
                backlog.add_metric((depth.queue, state), float(getattr(depth, state)))
        yield backlog
        now_ms = time.time() * 1000
        oldest = max([self.metrics.held_age_ms(now_ms)]
                     + [oldest_ready_age_ms(client, namespace, lane, now_ms) for lane in lanes])
        yield _gauge("jobplatform_writer_lag_seconds",
                     "Age of the oldest intent waiting (in a lane or the batch in hand); "
                     "0 when idle.", oldest / 1000)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))
