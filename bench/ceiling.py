"""``jobplatform bench ceiling``: the most one writer sustains, and where its time goes.

On an uncapped PostgreSQL of its own, a backlog is queued first (small status intents only, or
roster chunks only), then one writer (in this process, nothing else running) drains it. The
writer's loop is timed by phase: ``collect`` (broker fetch from Redis, decoding and validating
intents, batching), ``commit`` (the transaction: building the batch, COPY, upserts, ledger,
and the intent log append, timed on its own), ``ack`` (Redis) and ``pace`` (waiting for the
database time budget). CPU is split between this process (the writer's Python and client
libraries), PostgreSQL's server processes (their group's accounting) and Redis (``INFO cpu``;
a shared Redis also counts its other clients).
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg
import redis

from bench._common import markdown_table, proc_cpu_seconds
from bench._harness import TEMPLATE
from bench._instance import EmulatedInstance, InstanceConfig
from bench._platform import broker_namespace
from bench._workload import TENANT_ID, Workload, prepare_template
from jobplatform.auth import Keyring, keyring_of
from jobplatform.broker import Queues, build_broker
from jobplatform.emit import IntentEmitter
from jobplatform.settings import Settings
from schemas import BaseIntent, RosterChunk
from schemas.intents import AnyIntent, VideoProcessing, VideoReady, VideoRendition
from writer.batcher import Batch
from writer.engine import Commit, Hooks, IntentLogWriter, Writer
from writer.lanes import Item

T = TypeVar("T")
PHASES = ("collect", "commit", "intent_log", "ack", "pace")


class _Phases(Hooks):
    """Time spent in each phase of the writer's loop, from its hooks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.first: float | None = None
        self.last = 0.0
        self._began: dict[str, float] = {}

    def timed(self, phase: str, call: Callable[[], T]) -> T:
        start = time.monotonic()
        try:
            return call()
        finally:
            self.seconds[phase] += time.monotonic() - start

    def _begin(self, phase: str) -> None:
        self._began[phase] = time.monotonic()

    def _end(self, phase: str) -> float:
        end = time.monotonic()
        self.seconds[phase] += end - self._began.pop(phase, end)
        return end

    def before_collect(self) -> None:
        self._begin("collect")
        if self.first is None:
            self.first = self._began["collect"]

    def after_collect(self, batch: Batch) -> None:
        self._end("collect")

    def before_pace(self, batch: Batch) -> None:
        self._begin("pace")

    def after_pace(self, batch: Batch) -> None:
        self._end("pace")

    def after_commit(self, commit: Commit) -> None:
        self.seconds["commit"] += commit.ended - commit.started

    def before_ack(self, items: Sequence[Item]) -> None:
        self._begin("ack")

    def after_ack(self, items: Sequence[Item]) -> None:
        self.last = self._end("ack")


class _TimedLog:
    """The intent log, its appends timed."""

    def __init__(self, inner: IntentLogWriter, phases: _Phases) -> None:
        self.inner = inner
        self.phases = phases

    def append(self, batch_seq: int, intents: Sequence[BaseIntent]) -> None:
        self.phases.timed("intent_log", lambda: self.inner.append(batch_seq, intents))

    def close(self) -> None:
        self.inner.close()


def small_intents(count: int) -> Iterator[AnyIntent]:
    """Status changes of ``count // 2`` videos: processing, then ready."""
    now = datetime.now(UTC)
    for n in range(count // 2):
        video_id = uuid.UUID(int=n + 1, version=4)
        yield VideoProcessing(tenant_id=TENANT_ID, video_id=video_id, occurred_at=now)
        hls = f"tenants/{TENANT_ID}/videos/{video_id}/hls/"
        yield VideoReady(
            tenant_id=TENANT_ID, video_id=video_id, occurred_at=now,
            hls_key=hls + "master.m3u8", duration_s=60.0,
            renditions=(VideoRendition(name="720p", width=1280, height=720, bandwidth=2_800_000,
                                       playlist_key=hls + "720p.m3u8"),),
        )


def roster_chunks(rows: int, chunk_rows: int, files: int) -> Iterator[AnyIntent]:
    """Roster chunks of ``files`` overlapping imports (the incident's kind of data)."""
    workload = Workload(files=files, rows_per_file=max(1, rows // files))
    now = datetime.now(UTC)
    for roster in workload.rosters:
        for index, start in enumerate(range(0, len(roster.rows), chunk_rows)):
            yield RosterChunk(tenant_id=TENANT_ID, import_id=roster.import_id,
                              lecture_id=roster.lecture_id, chunk_index=index,
                              rows=roster.rows[start:start + chunk_rows], occurred_at=now)


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class _Scraper:
    """The writer's metrics endpoint, served and scraped every ``every_s`` during a drain."""

    def __init__(self, writer: Writer, every_s: float) -> None:
        from writer.metrics import WriterMetrics

        self.metrics = WriterMetrics()
        writer.hooks = (*writer.hooks, self.metrics)
        self.server = self.metrics.serve(writer, port=0, host="127.0.0.1")
        self.every_s = every_s
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import urllib.request

        url = f"http://127.0.0.1:{self.server.port}/metrics"
        while not self._stop.wait(self.every_s):
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
            self.scrapes += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self.server.close()


class _NoAuth(Keyring):
    """Neither signs nor checks: the baseline that measures what authentication costs."""

    def __init__(self) -> None:
        super().__init__({"bench-baseline": "b" * 32})

    def mac(self, actor: str, body: bytes) -> str:
        return "unsigned"

    def check(self, actor: str, body: bytes, mac: object) -> str | None:
        return None


def drain(instance: EmulatedInstance, settings: Settings, redis_url: str, name: str,
          intents: list[AnyIntent], intent_log: bool, timeout_s: float,
          scrape_s: float | None = None, signed: bool = True) -> dict[str, Any]:
    """Queue ``intents``, then let one writer drain them; measure the drain. With
    ``scrape_s``, the writer serves its metrics and they are scraped that often. With
    ``signed`` (the default, as in production) the intents carry MACs the writer checks."""
    url = instance.create_database(name, template=TEMPLATE)
    rows = sum(len(i.rows) for i in intents if isinstance(i, RosterChunk))
    try:
        with broker_namespace(redis_url, "bench-ceiling") as namespace, \
                tempfile.TemporaryDirectory(prefix="jobplatform-ceiling-") as state:
            run_settings = settings.model_copy(update={
                "broker_namespace": namespace, "database_url": url,
                "jobplatform_state_dir": Path(state),
            })
            broker = build_broker(run_settings, redis_url, set_global=False)
            keyring = keyring_of(broker) if signed else _NoAuth()
            emitter = IntentEmitter(broker, Queues.from_settings(run_settings), keyring=keyring)
            for intent in intents:
                emitter.emit(intent)
            phases = _Phases()
            log_writer: IntentLogWriter | None = None
            if intent_log:
                from writer.intentlog import IntentLog

                log_writer = _TimedLog(IntentLog.from_settings(run_settings), phases)
            writer = Writer(run_settings.writer, database_url=url, broker=broker,
                            queues=Queues.from_settings(run_settings),
                            log_writer=log_writer, hooks=[phases], keyring=keyring)
            client = redis.Redis.from_url(redis_url)
            monitor = psycopg.connect(instance.admin_url(name), autocommit=True)
            scraper = _Scraper(writer, scrape_s) if scrape_s else None
            scrapes = 0
            try:
                result = _measure(instance, writer, phases, monitor, client, len(intents),
                                  timeout_s)
            finally:
                if scraper is not None:
                    scraper.close()
                    scrapes = scraper.scrapes
                monitor.close()
                client.close()
                broker.close()
    finally:
        instance.drop_database(name)
    wall = result["drain_s"]
    if scrape_s:
        result["scrapes"] = scrapes
    result.update(intents=len(intents), rows=rows,
                  intents_per_s=len(intents) / wall if wall else None,
                  rows_per_s=rows / wall if wall and rows else None)
    return result


def _measure(instance: EmulatedInstance, writer: Writer, phases: _Phases,
             monitor: psycopg.Connection[tuple[Any, ...]], client: redis.Redis, expected: int,
             timeout_s: float) -> dict[str, Any]:
    monitor_pid = monitor.info.backend_pid
    server0 = instance.cpu_seconds() - proc_cpu_seconds(monitor_pid)
    redis0 = _redis_cpu(client)
    process0 = time.process_time()
    thread = threading.Thread(target=writer.run, name="writer")
    with writer:
        thread.start()
        deadline = time.monotonic() + timeout_s
        done = 0
        while done < expected and time.monotonic() < deadline:
            time.sleep(0.05)
            row = monitor.execute("SELECT count(*) FROM writer_ledger").fetchone()
            done = int(row[0]) if row else 0
        writer.stop()
        thread.join()
        stats = writer.get_stats()
    server = instance.cpu_seconds() - proc_cpu_seconds(monitor_pid) - server0
    # From the writer's first fetch to its last ack.
    drain_s = phases.last - phases.first if phases.first is not None else 0.0
    loop = {p: phases.seconds.get(p, 0.0) for p in PHASES}
    # The intent log is appended inside the transaction: show the commit without it.
    loop["commit"] -= loop["intent_log"]
    return {
        "complete": done >= expected,
        "drain_s": drain_s,
        "batches": stats.get("batches"),
        "commit_ms_p50": stats.get("commit_ms_p50"),
        "commit_ms_p99": stats.get("commit_ms_p99"),
        "db_share": stats.get("db_share"),
        "phase_s": loop,
        "cpu_s": {
            "writer_process": time.process_time() - process0,
            "postgresql": server,
            "redis": _redis_cpu(client) - redis0,
        },
    }


@click.command(name="ceiling")
@click.option("--small", "small_count", type=click.IntRange(min=2), default=20_000,
              show_default=True, help="Small status intents in the first backlog.")
@click.option("--rows", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Roster rows in the second backlog.")
@click.option("--chunk-rows", type=click.IntRange(1, 5000), default=500, show_default=True)
@click.option("--budget", type=click.FloatRange(0.01, 1.0), default=1.0, show_default=True,
              help="The writer's database time budget (WRITER_DB_BUDGET) for these runs; 1.0 "
                   "measures the ceiling, the default setting paces below it.")
@click.option("--intent-log/--no-intent-log", default=True, show_default=True,
              help="Append applied intents to the write-intent log, as the writer does.")
@click.option("--timeout-s", type=click.FloatRange(min=1), default=300.0, show_default=True)
@click.option("--metrics-runs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Then drain the small backlog this many times with the metrics endpoint "
                   "served and scraped, and as many without, alternately: medians and ratio.")
@click.option("--scrape-s", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Scrape interval of the metrics runs (Prometheus' default is 15 s).")
@click.option("--auth-runs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Then drain each backlog this many times with signed intents the writer "
                   "checks, and as many unsigned and unchecked, alternately: medians and ratio.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(small_count: int, rows: int, chunk_rows: int, budget: float, intent_log: bool,
            timeout_s: float, metrics_runs: int, scrape_s: float, auth_runs: int,
            as_json: bool) -> None:
    """One writer draining a backlog on an uncapped database: intents/s, rows/s, time split."""
    from bench._common import machine
    from jobplatform.cli._common import echo_json, settings_from_env
    from jobplatform.logging import configure_logging
    from jobplatform.stack import ensure_services

    def echo(text: str) -> None:
        click.echo(text, err=as_json)

    settings = settings_from_env()
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    services = ensure_services(settings)
    settings = services.apply(settings)
    settings = settings.model_copy(update={
        "writer": settings.writer.model_copy(update={"db_budget": budget})})
    runs: dict[str, dict[str, Any]] = {}
    with EmulatedInstance(InstanceConfig(cpu_quota=None, max_connections=100)) as instance:
        echo(f"uncapped PostgreSQL {instance.version} on port {instance.port}")
        prepare_template(instance.create_database(TEMPLATE), 20)
        echo(f"small intents: queueing {small_count:,} ...")
        runs["small"] = drain(instance, settings, services.redis_url, "ceiling_small",
                              list(small_intents(small_count)), intent_log, timeout_s)
        echo(f"roster chunks: queueing {rows:,} rows in chunks of {chunk_rows} ...")
        runs["roster"] = drain(instance, settings, services.redis_url, "ceiling_roster",
                               list(roster_chunks(rows, chunk_rows, 20)), intent_log, timeout_s)
        metrics_ab = None
        if metrics_runs:
            metrics_ab = _metrics_ab(instance, settings, services.redis_url, small_count,
                                     intent_log, timeout_s, metrics_runs, scrape_s, echo)
        auth_ab = None
        if auth_runs:
            auth_ab = {
                "small": _auth_ab(instance, settings, services.redis_url,
                                  list(small_intents(small_count)), intent_log, timeout_s,
                                  auth_runs, "small", echo),
                "roster": _auth_ab(instance, settings, services.redis_url,
                                   list(roster_chunks(rows, chunk_rows, 20)), intent_log,
                                   timeout_s, auth_runs, "roster", echo),
            }
        result = {
            "instance": {**instance.describe(), "machine": machine()},
            "writer_settings": settings.writer.model_dump(mode="json"),
            "intent_log": intent_log,
            **runs,
            "metrics_ab": metrics_ab,
            "auth_ab": auth_ab,
        }
    if as_json:
        echo_json(result)
        return
    click.echo("")
    click.echo(table(runs))
    if metrics_ab is not None:
        click.echo("")
        click.echo(f"metrics on/off, small intents, {metrics_runs} alternate runs each, "
                   f"scraped every {scrape_s} s: median intents/s on "
                   f"{metrics_ab['median_on']:,.0f}, off {metrics_ab['median_off']:,.0f}, "
                   f"ratio {metrics_ab['ratio']:.3f}; writer CPU per 1,000 intents on "
                   f"{metrics_ab['cpu_per_1000_on']:.3f} s, off "
                   f"{metrics_ab['cpu_per_1000_off']:.3f} s, ratio "
                   f"{metrics_ab['cpu_ratio']:.3f}")
    if auth_ab is not None:
        click.echo("")
        for what, ab in auth_ab.items():
            click.echo(f"signed/unsigned, {what}, {auth_runs} alternate runs each: median "
                       f"{ab['unit']}/s signed {ab['median_on']:,.0f}, unsigned "
                       f"{ab['median_off']:,.0f}, ratio {ab['ratio']:.3f}; writer CPU per "
                       f"1,000 intents signed {ab['cpu_per_1000_on']:.3f} s, unsigned "
                       f"{ab['cpu_per_1000_off']:.3f} s, ratio {ab['cpu_ratio']:.3f}")


def _auth_ab(instance: EmulatedInstance, settings: Settings, redis_url: str,
             intents: list[AnyIntent], intent_log: bool, timeout_s: float, runs: int,
             label: str, echo: Callable[[str], None]) -> dict[str, Any]:
    """``intents`` drained signed (each MAC checked by the writer) and unsigned (nothing
    checked), alternately: medians of throughput (rows/s for roster chunks) and their ratio."""
    import statistics

    unit = "rows" if any(isinstance(i, RosterChunk) for i in intents) else "intents"
    rate: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    for n in range(runs):
        for signed in ((True, False) if n % 2 == 0 else (False, True)):
            result = drain(instance, settings, redis_url, f"ceiling_auth_{label}_{n}", intents,
                           intent_log, timeout_s, signed=signed)
            if not result["complete"]:
                raise click.ClickException(f"{label} run {n + 1} did not drain in {timeout_s} s")
            per_s = float(result[f"{unit}_per_s"] or 0.0)
            rate[signed].append(per_s)
            per_k = result["cpu_s"]["writer_process"] / len(intents) * 1000
            cpu[signed].append(per_k)
            echo(f"  {label} run {n + 1} {'signed  ' if signed else 'unsigned'}: "
                 f"{per_s:,.0f} {unit}/s, writer CPU {per_k:.3f} s per 1,000 intents")
    on, off = statistics.median(rate[True]), statistics.median(rate[False])
    cpu_on, cpu_off = statistics.median(cpu[True]), statistics.median(cpu[False])
    return {"unit": unit, "on": rate[True], "off": rate[False], "median_on": on,
            "median_off": off, "ratio": on / off if off else None,
            "cpu_per_1000_on": cpu_on, "cpu_per_1000_off": cpu_off,
            "cpu_ratio": cpu_on / cpu_off if cpu_off else None}


def _metrics_ab(instance: EmulatedInstance, settings: Settings, redis_url: str, count: int,
                intent_log: bool, timeout_s: float, runs: int, scrape_s: float,
                echo: Callable[[str], None]) -> dict[str, Any]:
    """The small backlog drained with metrics served and scraped, and without, alternately
    (so the machine's noise falls on both): medians of intents/s and their ratio."""
    import statistics

    intents = list(small_intents(count))
    on: list[float] = []
    off: list[float] = []
    cpu: dict[bool, list[float]] = {True: [], False: []}
    for n in range(runs):
        for enabled in ((True, False) if n % 2 == 0 else (False, True)):
            result = drain(instance, settings, redis_url, f"ceiling_metrics_{n}", intents,
                           intent_log, timeout_s, scrape_s if enabled else None)
            rate = float(result["intents_per_s"] or 0.0)
            (on if enabled else off).append(rate)
            # the writer process's CPU (its threads, the scraper's included) per 1,000 intents
            per_k = result["cpu_s"]["writer_process"] / len(intents) * 1000
            cpu[enabled].append(per_k)
            echo(f"  run {n + 1} metrics {'on ' if enabled else 'off'}: {rate:,.0f} intents/s, "
                 f"writer CPU {per_k:.3f} s per 1,000")
    median_on, median_off = statistics.median(on), statistics.median(off)
    cpu_on, cpu_off = statistics.median(cpu[True]), statistics.median(cpu[False])
    return {"on": on, "off": off, "median_on": median_on, "median_off": median_off,
            "ratio": median_on / median_off if median_off else None,
            "cpu_per_1000_on": cpu_on, "cpu_per_1000_off": cpu_off,
            "cpu_ratio": cpu_on / cpu_off if cpu_off else None}


def table(runs: dict[str, dict[str, Any]]) -> str:
    header = ["", *runs]
    flat = [_flatten(r) for r in runs.values()]
    labels = [
        ("intents", "intents"), ("rows", "rows"), ("drain s", "drain_s"),
        ("intents/s", "intents_per_s"), ("rows/s", "rows_per_s"), ("batches", "batches"),
        ("transaction ms p50", "commit_ms_p50"), ("transaction ms p99", "commit_ms_p99"),
        *[(f"wall in {p} s", f"phase_s.{p}") for p in PHASES],
        *[(f"CPU {w} s", f"cpu_s.{w}") for w in ("writer_process", "postgresql", "redis")],
    ]
    return markdown_table(header, [[label, *(f.get(key) for f in flat)]
                                   for label, key in labels])


def _flatten(run: dict[str, Any]) -> dict[str, Any]:
    out = dict(run)
    for group in ("phase_s", "cpu_s"):
        out.update({f"{group}.{k}": v for k, v in run[group].items()})
    return out
