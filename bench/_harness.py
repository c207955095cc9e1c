"""Runs one workload both ways on one emulated instance and measures each the same way.

Per way: a fresh database cloned from a migrated template (lectures present, videos queued),
server CPU from the instance's group less the benchmark's own monitoring backends,
``pg_stat_activity`` sampled for connections and open transactions, statements from
``pg_stat_statements``, rows from the ``enrollments`` table.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import psycopg

from bench import _baseline, _platform
from bench._common import ActivitySampler, machine, percentile, proc_cpu_seconds, ratio
from bench._instance import APP_ROLE, EmulatedInstance, InstanceConfig
from bench._workload import Workload, create_videos, prepare_template
from jobplatform.settings import Settings

TEMPLATE = "bench_template"
_names = itertools.count(1)


@dataclass(frozen=True, slots=True)
class PlatformOptions:
    chunk_rows: int = 500
    timeout_s: float = 300.0
    writer_env: tuple[tuple[str, str], ...] = ()


class Harness:
    """One emulated instance, a template database, and the broker for the platform's runs."""

    def __init__(self, instance: EmulatedInstance, settings: Settings, redis_url: str,
                 lectures: int) -> None:
        self.instance = instance
        self.settings = settings
        self.redis_url = redis_url
        prepare_template(instance.create_database(TEMPLATE), lectures)

    def fresh_database(self, workload: Workload) -> tuple[str, str]:
        name = f"bench_run_{next(_names)}"
        url = self.instance.create_database(name, template=TEMPLATE)
        create_videos(url, workload)
        with psycopg.connect(self.instance.admin_url(name), autocommit=True) as conn:
            conn.execute("ANALYZE")
        return name, url

    # --- the two ways ------------------------------------------------------------------------

    def baseline(self, workload: Workload, options: _baseline.BaselineOptions) -> dict[str, Any]:
        name, url = self.fresh_database(workload)
        try:
            with _Measured(self.instance, name) as measured:
                result = _baseline.run_baseline(url, workload, options)
            report = measured.report()
            report.update(
                jobs=workload.files + workload.video_jobs,
                failed_jobs=result.ai_jobs_failed + result.video_jobs_failed,
                failed_ai_jobs=result.ai_jobs_failed,
                failed_video_jobs=result.video_jobs_failed,
                failures=dict(result.failures.most_common()),
                video_updates=len(result.video_ms),
                video_updates_failed=result.video_updates_failed,
                video_p50_ms=percentile(result.video_ms, 50),
                video_p99_ms=percentile(result.video_ms, 99),
                import_s=result.import_done_s,
                wall_s=result.wall_s,
                max_txn_ms=max(result.max_txn_ms, report["max_txn_ms"]),
            )
            return _finish(report)
        finally:
            self.instance.drop_database(name)

    def platform(self, workload: Workload, options: PlatformOptions) -> dict[str, Any]:
        name, url = self.fresh_database(workload)
        try:
            with _platform.broker_namespace(self.redis_url) as namespace:
                settings = self.settings.model_copy(update={"broker_namespace": namespace})
                writer = _platform.WriterProcess(
                    url, self.redis_url, namespace,
                    {**_platform.shared_keys_env(settings), **dict(options.writer_env)})
                try:
                    writer.start(self.instance.admin_url(name))
                    return self._platform_run(name, settings, workload, options, writer)
                finally:
                    writer.close()
        finally:
            self.instance.drop_database(name)

    def _platform_run(self, name: str, settings: Settings, workload: Workload,
                      options: PlatformOptions, writer: _platform.WriterProcess
                      ) -> dict[str, Any]:
        started = datetime.now(UTC)
        writer_cpu0 = writer.cpu_seconds()
        with _Measured(self.instance, name) as measured:
            emitted, _ = _platform.run_producers(settings, self.redis_url, workload,
                                                 options.chunk_rows)
            complete = _platform.wait_applied(measured.conn, emitted.intents, options.timeout_s)
            wall_s = (datetime.now(UTC) - started).total_seconds()
        writer_cpu = writer.cpu_seconds() - writer_cpu0
        with psycopg.connect(self.instance.admin_url(name), autocommit=True) as conn:
            applied = _platform.read_applied(conn)
            done = {row[0] for row in conn.execute(
                "SELECT id FROM roster_imports WHERE status = 'done'")}
        report = measured.report()

        failures: Counter[str] = Counter(emitted.emit_failures)
        failed_videos = set(emitted.failed_videos)
        latencies = []
        for intent_id, (video_id, occurred) in emitted.video.items():
            if intent_id in applied.committed:
                delay = applied.committed[intent_id] - occurred
                latencies.append(delay.total_seconds() * 1000)
            elif video_id not in failed_videos:
                failed_videos.add(video_id)
                failures["dead letter: " + applied.dead[intent_id] if intent_id in applied.dead
                         else "not applied in time"] += 1
        failed_imports = set(emitted.failed_imports)
        last_commit = max([started, *(applied.committed[i] for i in emitted.roster
                                      if i in applied.committed)])
        for roster in workload.rosters:
            if roster.import_id not in done and roster.import_id not in failed_imports:
                failed_imports.add(roster.import_id)
                failures["import not done in time"] += 1
        import_s = (last_commit - started).total_seconds()
        report.update(
            jobs=workload.files + workload.video_jobs,
            failed_jobs=len(failed_imports) + len(failed_videos),
            failed_ai_jobs=len(failed_imports),
            failed_video_jobs=len(failed_videos),
            failures=dict(failures.most_common()),
            video_updates=len(latencies),
            video_updates_failed=len(emitted.video) - len(latencies),
            video_p50_ms=percentile(latencies, 50),
            video_p99_ms=percentile(latencies, 99),
            import_s=import_s,
            wall_s=wall_s,
            complete=complete,
            intents=emitted.intents,
            writer_batches=len(applied.txn_ms),
            p99_txn_ms=percentile(applied.txn_ms, 99),
            max_txn_ms=max([report["max_txn_ms"], *applied.txn_ms]),
            writer_process_cpu_s=writer_cpu,
        )
        return _finish(report)


def _finish(report: dict[str, Any]) -> dict[str, Any]:
    rows = report["rows"]
    report["rows_per_s"] = ratio(rows, report["import_s"]) if rows else 0.0
    per_row = ratio(report["server_cpu_s"], rows)
    report["server_cpu_ms_per_row"] = per_row * 1000 if per_row is not None else None
    return report


class _Measured:
    """Server CPU, connections, open transactions and statements over one phase."""

    def __init__(self, instance: EmulatedInstance, dbname: str) -> None:
        self.instance = instance
        self.dbname = dbname
        self.sampler = ActivitySampler(instance.admin_url(dbname), usename=APP_ROLE,
                                       interval_s=0.1)
        self.conn: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(
            instance.admin_url(dbname), autocommit=True, application_name="bench-monitor")
        self._result: dict[str, Any] = {}

    def _monitor_cpu(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in self._monitor_pids)

    def __enter__(self) -> _Measured:
        self.sampler.__enter__()
        self._monitor_pids = [self.conn.info.backend_pid, self.sampler.backend_pid]
        self._statements = _statements(self.conn)
        time.sleep(0.2)  # the sampler's first query
        self._cpu0 = self.instance.cpu_seconds() - self._monitor_cpu()
        self._throttled0 = self.instance.throttled_s()
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                cpu = self.instance.cpu_seconds() - self._monitor_cpu() - self._cpu0
                throttled = self.instance.throttled_s()
                row = self.conn.execute("SELECT count(*) FROM enrollments").fetchone()
                statements = _statements(self.conn)
                self._result = {
                    "server_cpu_s": cpu,
                    "server_cpu_share": cpu / max(time.monotonic() - self._t0, 1e-9),
                    "throttled_s": None if throttled is None or self._throttled0 is None
                    else throttled - self._throttled0,
                    "rows": int(row[0]) if row else 0,
                    "statements": None if statements is None or self._statements is None
                    else statements - self._statements,
                }
        finally:
            self.sampler.__exit__(*exc)
            self.conn.close()

    def report(self) -> dict[str, Any]:
        peaks = self.sampler.peaks
        return {**self._result, "peak_connections": peaks.peak_connections,
                "max_txn_ms": peaks.max_txn_ms}


def _statements(conn: psycopg.Connection[tuple[Any, ...]]) -> int | None:
    """Statements the application role ran in this database so far (pg_stat_statements)."""
    try:
        row = conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s"
            " JOIN pg_roles r ON r.oid = s.userid"
            " WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND r.rolname = %s", (APP_ROLE,),
        ).fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


# --- what incident and scaling share on the command line --------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def instance_options(func: F) -> F:
    """The emulated instance's and the baseline's limits as options."""
    options = [
        click.option("--cpu-quota", type=click.FloatRange(min=0.01), default=0.2, show_default=True,
                     help="Server CPU cap, in cores (db.t4g.micro at its baseline: 0.2)."),
        click.option("--uncapped", is_flag=True, help="Do not cap the server's CPU."),
        click.option("--max-connections", type=click.IntRange(min=5), default=25,
                     show_default=True, help="The instance's max_connections."),
        click.option("--statement-timeout-ms", type=click.IntRange(min=0), default=5000,
                     show_default=True, help="The baseline's per-statement timeout (0: none)."),
        click.option("--connect-timeout-s", type=click.IntRange(min=1), default=5,
                     show_default=True, help="The baseline's connect timeout."),
        click.option("--savepoints/--no-savepoints", default=True, show_default=True,
                     help="Baseline creates in a savepoint each, as Django's get_or_create."),
        click.option("--chunk-rows", type=click.IntRange(1, 5000), default=500, show_default=True,
                     help="Rows per roster.chunk intent (ROSTER_CHUNK_ROWS)."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
        click.option("--plot", is_flag=True, help="Write PNG charts under docs/bench/."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@contextlib.contextmanager
def open_harness(cpu_quota: float | None, max_connections: int, lectures: int,
                 echo: Callable[[str], None]) -> Iterator[Harness]:
    """Start the emulated instance and the template; teardown always runs."""
    from jobplatform.cli._common import settings_from_env
    from jobplatform.stack import ensure_services

    settings = settings_from_env()
    services = ensure_services(settings)
    config = InstanceConfig(cpu_quota=cpu_quota, max_connections=max_connections)
    with EmulatedInstance(config) as instance:
        echo(f"emulated instance: PostgreSQL {instance.version} on port {instance.port}, "
             f"max_connections {max_connections}, CPU: {instance.cap.describe()}")
        for note in instance.cap_notes:
            echo(f"  (not used: {note})")
        yield Harness(instance, services.apply(settings), services.redis_url, lectures)


def baseline_options(statement_timeout_ms: int, connect_timeout_s: int, savepoints: bool
                     ) -> _baseline.BaselineOptions:
    return _baseline.BaselineOptions(statement_timeout_ms=statement_timeout_ms,
                                     connect_timeout_s=connect_timeout_s, savepoints=savepoints)


def describe(harness: Harness, baseline: _baseline.BaselineOptions, platform: PlatformOptions
             ) -> dict[str, Any]:
    return {
        **harness.instance.describe(),
        "machine": machine(),
        "baseline_statement_timeout_ms": baseline.statement_timeout_ms,
        "baseline_connect_timeout_s": baseline.connect_timeout_s,
        "baseline_savepoints": baseline.savepoints,
        "chunk_rows": platform.chunk_rows,
        "writer_settings": harness.settings.writer.model_dump(mode="json"),
    }


def publish(name: str, result: dict[str, Any], plot: bool, as_json: bool,
            echo: Callable[[str], None]) -> bool:
    """Charts and the data behind them under docs/bench/ (``--plot``); the JSON object on
    stdout (``--json``). True when the JSON was printed (no table wanted then)."""
    if plot:
        import json

        from bench import _plots

        draw: Callable[[dict[str, Any]], list[Any]] = getattr(_plots, f"plot_{name}")
        for path in draw(result):
            echo(f"wrote {path}")
        data = _plots.OUT / f"{name}.json"
        data.write_text(json.dumps(result, indent=1, default=str) + "\n")
        echo(f"wrote {data}")
    if as_json:
        from jobplatform.cli._common import echo_json

        echo_json(result)
    return as_json
