"""``jobplatform bench shards``: the writer's ceiling with 1, 2 and 4 shards, on each broker.

One uncapped PostgreSQL of the benchmark's own (as ``bench ceiling``). For each broker and each
shard count N, a backlog spread over 16 tenants (pinned round-robin to the shards with
``WRITER_SHARD_MAP``, so each shard gets the same share) is queued first; then N writer
processes (``jobplatform writer --shard K/N``, each its own process as in production) start at
once, gated by the benchmark holding their advisory locks until every one is up. Measured:

- **intents/s and rows/s**, over the middle half of the drain (25% to 75% of the backlog
  applied, sampled from the ledger every 50 ms: every writer is running then, so start-up skew
  is left out) and over the whole drain;
- **CPU seconds** of PostgreSQL's server processes, of the writer processes, and of the broker
  (Redis' ``INFO cpu``, or RabbitMQ's ``beam.smp`` from ``/proc``), per 1,000 rows (a status
  change is one row);
- **machine busy**: the share of every core busy during the drain (``/proc/stat``), and the
  share the drain's own processes (PostgreSQL, writers, broker) account for: on a shared
  2-core machine the difference is other work, and a busy share near 1 is where shards stop
  adding throughput;
- **fast p99** (``mixed``): with the roster backlog draining, 200 status changes a second are
  sent; each
  one's latency is its ledger row's transaction time less its send time (the commit follows
  within that transaction's duration, whose p99 the writers report).

Backlogs: ``small`` (status changes, weight 1), ``roster`` (chunks of 500 rows), and ``mixed``:
the roster backlog with the fast stream beside it (``--fast-rate``), where the fast lane's
priority (``WRITER_BULK_SHARE``) holds bulk work back while status changes wait.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import psycopg
import redis

from bench._common import markdown_table, proc_cpu_seconds
from bench._harness import TEMPLATE
from bench._instance import EmulatedInstance, InstanceConfig
from bench._platform import broker_namespace
from bench._workload import prepare_template
from jobplatform.broker import Queues, build_broker
from jobplatform.emit import IntentEmitter
from jobplatform.settings import PROJECT_ROOT, Settings, WriterSettings
from schemas import RosterChunk, StudentRow
from schemas.intents import AnyIntent, VideoProcessing, VideoReady, VideoRendition
from writer.db import session_options

TENANTS = 16
LECTURE_BASE = 500_000
DEFAULT_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/%2F"


def shard_table(count: int) -> str:
    """Tenants 1..TENANTS pinned round-robin to ``count`` shards (equal shares)."""
    return ",".join(f"{t}={(t - 1) % count}" for t in range(1, TENANTS + 1))


def small_intents(count: int) -> Iterator[AnyIntent]:
    """``count`` status changes: processing then ready, for videos of every tenant in turn."""
    now = datetime.now(UTC)
    for n in range(count // 2):
        tenant = n % TENANTS + 1
        video_id = uuid.uuid4()
        yield VideoProcessing(tenant_id=tenant, video_id=video_id, occurred_at=now)
        yield VideoReady(
            tenant_id=tenant, video_id=video_id, occurred_at=now,
            hls_key=f"hls/{video_id}/master.m3u8", duration_s=60.0,
            renditions=(VideoRendition(name="720p", width=1280, height=720,
                                       bandwidth=2_800_000,
                                       playlist_key=f"hls/{video_id}/720p.m3u8"),))


def roster_chunks(rows: int, chunk_rows: int) -> Iterator[AnyIntent]:
    """``rows`` new students in chunks, one import per tenant, the tenants in turn."""
    now = datetime.now(UTC)
    imports = {t: uuid.uuid4() for t in range(1, TENANTS + 1)}
    per_tenant = max(chunk_rows, rows // TENANTS)
    for index in range(0, per_tenant, chunk_rows):
        for tenant in range(1, TENANTS + 1):
            batch = tuple(
                StudentRow(source_row=n + 2, name=f"학생{n}",
                           phone=f"010-{1000 + n // 10000:04d}-{n % 10000:04d}")
                for n in range(index, min(index + chunk_rows, per_tenant)))
            yield RosterChunk(tenant_id=tenant, import_id=imports[tenant],
                              lecture_id=LECTURE_BASE + tenant,
                              chunk_index=index // chunk_rows, rows=batch, occurred_at=now)


def broker_cpu(kind: str, client: redis.Redis) -> float:
    """CPU seconds the broker has used: Redis' own count, or RabbitMQ's Erlang VM's."""
    if kind == "redis":
        info = client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("beam"):
                total += proc_cpu_seconds(int(entry.name))
    return total


def machine_ticks() -> tuple[float, float]:
    """``(busy, total)`` CPU ticks of the whole machine, from ``/proc/stat``."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [float(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


class Run:
    """One drain: a backlog queued, N writer processes gated by the shards' locks."""

    def __init__(self, instance: EmulatedInstance, settings: Settings, redis_url: str,
                 kind: str, shards: int, name: str) -> None:
        self.instance = instance
        self.settings = settings
        self.redis_url = redis_url
        self.kind = kind
        self.shards = shards
        self.name = name

    def settings_for(self, namespace: str, state: Path, url: str) -> Settings:
        update: dict[str, Any] = {
            "broker_namespace": namespace, "database_url": url, "jobplatform_state_dir": state,
            "writer": self.settings.writer.model_copy(update={
                "shards": self.shards, "shard_map": shard_table(self.shards), "db_budget": 1.0,
                "stats_interval_s": 1.0}),
        }
        if self.kind == "rabbitmq":
            update.update(broker_url=self.settings.broker_url or DEFAULT_RABBITMQ,
                          queue_writes_fast=f"{namespace}.writes.fast",
                          queue_writes_bulk=f"{namespace}.writes.bulk",
                          queue_video=f"{namespace}.video", queue_ai=f"{namespace}.ai")
        else:
            update["broker_url"] = None
        return self.settings.model_copy(update=update)

    def env(self, run: Settings) -> dict[str, str]:
        writer = run.writer
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("WRITER_", "QUEUE_"))},
            "DATABASE_URL": str(run.database_url), "REDIS_URL": self.redis_url,
            "BROKER_NAMESPACE": run.broker_namespace,
            "JOBPLATFORM_STATE_DIR": str(run.jobplatform_state_dir),
            "WRITER_SHARDS": str(writer.shards), "WRITER_SHARD_MAP": writer.shard_map,
            "WRITER_DB_BUDGET": "1.0", "WRITER_STATS_INTERVAL_S": "1", "LOG_LEVEL": "WARNING",
            "QUEUE_WRITES_FAST": run.queue_writes_fast,
            "QUEUE_WRITES_BULK": run.queue_writes_bulk,
            "QUEUE_VIDEO": run.queue_video, "QUEUE_AI": run.queue_ai,
        }
        env.pop("BROKER_URL", None)
        if run.broker_url:
            env["BROKER_URL"] = run.broker_url
        return env

    def drain(self, intents: list[AnyIntent], *, fast_rate: float = 0.0,
              stream_s: float = 10.0, timeout_s: float = 300.0) -> dict[str, Any]:
        """Queue ``intents`` and drain them; with ``fast_rate``, a stream of status changes
        runs beside the drain for ``stream_s`` (the drain is measured until then)."""
        url = self.instance.create_database(self.name, template=TEMPLATE)
        try:
            with broker_namespace(self.redis_url, "bench-shards") as namespace, \
                    tempfile.TemporaryDirectory(prefix="jobplatform-shards-") as state:
                run = self.settings_for(namespace, Path(state), url)
                broker = build_broker(run, self.redis_url, set_global=False)
                try:
                    return self._drain(run, broker, intents, fast_rate, stream_s, timeout_s)
                finally:
                    if self.kind == "rabbitmq":
                        _delete_queues(broker, Queues.from_settings(run))
                    broker.close()
        finally:
            self.instance.drop_database(self.name)

    def _drain(self, run: Settings, broker: Any, intents: list[AnyIntent], fast_rate: float,
               stream_s: float, timeout_s: float) -> dict[str, Any]:
        emitter = IntentEmitter(broker, Queues.from_settings(run))
        # The backlog is queued fast (RabbitMQ without publisher confirms: one producer
        # waiting for each confirm sends a few hundred a second); the fast stream confirms.
        preload = build_broker(run.model_copy(update={"broker_confirm": False}),
                               self.redis_url, set_global=False)
        try:
            loader = IntentEmitter(preload, Queues.from_settings(run))
            for intent in intents:
                loader.emit(intent)
            if self.kind == "rabbitmq":
                preload.connection.process_data_events(1.0)
        finally:
            preload.close()
        base_key = WriterSettings().lock_key
        # (the writer's tables live in its own schema: WRITER_DB_SCHEMA)
        options = session_options(run.writer.db_schema)
        gate = psycopg.connect(str(run.database_url), autocommit=True, options=options)
        monitor = psycopg.connect(self.instance.admin_url(self.name), autocommit=True,
                                  options=options)
        client = redis.Redis.from_url(self.redis_url)
        processes: list[subprocess.Popen[bytes]] = []
        logs: list[Any] = []
        try:
            for k in range(self.shards):  # hold every shard's lock: the writers wait as standbys
                gate.execute("SELECT pg_advisory_lock(%s)", (base_key + k if self.shards > 1
                                                             else base_key,))
            env = self.env(run)
            for k in range(self.shards):
                log = open(Path(str(run.jobplatform_state_dir)) / f"writer-{k}.log", "wb")  # noqa: SIM115
                logs.append(log)
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "jobplatform", "writer", "--shard",
                     f"{k}/{self.shards}"],
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT))
            _wait_standing_by(monitor, self.shards, processes)
            chunked = any(isinstance(i, RosterChunk) for i in intents)
            expected = (sum(isinstance(i, RosterChunk) for i in intents) if chunked
                        else len(intents))
            rows = sum(i.weight() for i in intents)
            server0 = self.instance.cpu_seconds() - proc_cpu_seconds(monitor.info.backend_pid)
            broker0 = broker_cpu(self.kind, client)
            writers0 = sum(proc_cpu_seconds(p.pid) for p in processes)
            sender: _FastSender | None = None
            gate.execute("SELECT pg_advisory_unlock_all()")
            ticks0 = machine_ticks()
            start = time.monotonic()
            samples: list[tuple[float, int]] = []
            done = done_end = 0
            end: float | None = None
            # Progress of the backlog alone (the fast stream's intents are in the ledger too):
            # chunks applied for a roster backlog, ledger rows otherwise.
            progress = ("SELECT coalesce(sum(chunks_applied), 0) FROM roster_imports"
                        if chunked else "SELECT count(*) FROM writer_ledger")
            stream_until: float | None = None
            while time.monotonic() - start < timeout_s:
                row = monitor.execute(progress).fetchone()
                done = int(row[0]) if row else 0
                now = time.monotonic()
                samples.append((now, done))
                if fast_rate and sender is None and done > 0:
                    sender = _FastSender(emitter, fast_rate)  # once the writers apply
                    stream_until = now + stream_s
                over = stream_until is not None and now >= stream_until
                if (done >= expected or over) and end is None:
                    end = time.monotonic()
                    done_end = done
                    if sender is not None:
                        sender.stop()  # then wait until the last one sent is applied
                if end is not None and (sender is None or _all_applied(monitor, sender)):
                    break
                time.sleep(0.05)
            end = end or time.monotonic()
            ticks1 = machine_ticks()
            writers = sum(proc_cpu_seconds(p.pid) for p in processes) - writers0
            server = (self.instance.cpu_seconds() - proc_cpu_seconds(monitor.info.backend_pid)
                      - server0)
            brokers = broker_cpu(self.kind, client) - broker0
            fast = _fast_latencies(monitor, sender) if sender is not None else None
        finally:
            for p in processes:
                p.terminate()
            for p in processes:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            # each writer publishes its last stats as it stops
            stats = _shard_stats(client, run.broker_namespace, self.shards)
            for log in logs:
                log.close()
            gate.close()
            monitor.close()
            client.close()
        first = next((t for t, n in samples if n > 0), start)
        wall = max(1e-6, end - first)
        steady = _steady_rate(samples, expected)
        if fast_rate:  # the stream's window: what the backlog got beside it
            steady = done_end / wall
        cores = os.cpu_count() or 1
        busy = (ticks1[0] - ticks0[0]) / max(1.0, ticks1[1] - ticks0[1])
        result: dict[str, Any] = {
            "broker": self.kind, "shards": self.shards, "complete": done >= expected,
            "intents": len(intents), "rows": rows, "drain_s": wall,
            "intents_per_s": steady * len(intents) / expected if steady else None,
            "intents_per_s_whole": len(intents) / wall,
            "rows_per_s": steady * rows / len(intents) if steady else None,
            "cpu_s": {"postgresql": server, "writers": writers, "broker": brokers},
            "cpu_per_1000": {k: v / rows * 1000 for k, v in
                             {"postgresql": server, "writers": writers,
                              "broker": brokers}.items()},
            "machine_busy": busy,
            "ours_busy": (server + writers + brokers) / (end - start) / cores,
            "load_average_1m": os.getloadavg()[0],
            "commit_ms_p99": max((s.get("commit_ms_p99") or 0.0) for s in stats) if stats
            else None,
            "batches": sum(int(s.get("batches") or 0) for s in stats),
        }
        if fast is not None:
            result["fast"] = fast
        return result


class _FastSender:
    """Status changes at ``rate`` per second until stopped; remembers when each was sent."""

    def __init__(self, emitter: IntentEmitter, rate: float) -> None:
        self.emitter = emitter
        self.rate = rate
        self.sent_at: dict[uuid.UUID, float] = {}
        self._stop = threading.Event()
        self.stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def sent(self) -> int:
        return len(self.sent_at)

    def _run(self) -> None:
        n = 0
        began = time.monotonic()
        while not self._stop.is_set():
            tenant = n % TENANTS + 1
            intent = VideoProcessing(tenant_id=tenant, video_id=uuid.uuid4(),
                                     occurred_at=datetime.now(UTC))
            self.emitter.emit(intent)
            self.sent_at[intent.intent_id] = time.time()
            n += 1
            pause = began + n / self.rate - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)
        self.stopped = True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _all_applied(monitor: psycopg.Connection[tuple[Any, ...]], sender: _FastSender) -> bool:
    row = monitor.execute("SELECT count(*) FROM writer_ledger WHERE intent_id = ANY(%s)",
                          (list(sender.sent_at),)).fetchone()
    return bool(row and int(row[0]) >= sender.sent)


def _fast_latencies(monitor: psycopg.Connection[tuple[Any, ...]],
                    sender: _FastSender) -> dict[str, Any]:
    ids = list(sender.sent_at)
    rows = monitor.execute(
        "SELECT intent_id, extract(epoch FROM applied_at) FROM writer_ledger"
        " WHERE intent_id = ANY(%s)", (ids,)).fetchall()
    lat = sorted((float(str(at)) - sender.sent_at[uuid.UUID(str(i))]) * 1000 for i, at in rows)
    if not lat:
        return {"sent": len(ids), "applied": 0}
    return {"sent": len(ids), "applied": len(lat),
            "p50_ms": statistics.median(lat), "p99_ms": lat[min(len(lat) - 1,
                                                              int(0.99 * len(lat)))],
            "max_ms": lat[-1]}


def _steady_rate(samples: list[tuple[float, int]], expected: int) -> float | None:
    """Intents per second between 25% and 75% of the backlog applied."""
    low = next(((t, n) for t, n in samples if n >= expected * 0.25), None)
    high = next(((t, n) for t, n in samples if n >= expected * 0.75), None)
    if low is None or high is None or high[0] <= low[0]:
        return None
    return (high[1] - low[1]) / (high[0] - low[0])


def _wait_standing_by(monitor: psycopg.Connection[tuple[Any, ...]], count: int,
                      processes: list[subprocess.Popen[bytes]]) -> None:
    """Until ``count`` writer connections exist (each writer connects while it stands by)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise click.ClickException("a writer process exited early; see its log")
        row = monitor.execute("SELECT count(*) FROM pg_stat_activity"
                              " WHERE application_name = 'jobplatform-writer'").fetchone()
        if row and int(row[0]) >= count:
            time.sleep(1.0)  # their first lock polls have failed: they wait as standbys
            return
        time.sleep(0.1)
    raise click.ClickException("the writers did not connect within 120 s")


def _shard_stats(client: redis.Redis, namespace: str, shards: int) -> list[dict[str, Any]]:
    from jobplatform.progress import writer_stats_key

    keys = [writer_stats_key(namespace, k if shards > 1 else None) for k in range(shards)]
    return [json.loads(raw) for raw in client.mget(keys) if raw]


def _delete_queues(broker: Any, queues: Queues) -> None:
    for queue in queues.all_writes:
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            try:
                broker.channel.queue_delete(queue=name)
            except Exception:  # a queue never declared: its channel closed, open another
                del broker.channel


@click.command(name="shards")
@click.option("--shards", "counts", default="1,2,4", show_default=True,
              help="Shard counts to measure, comma-separated.")
@click.option("--brokers", default="redis,rabbitmq", show_default=True,
              help="Brokers: redis (REDIS_URL), rabbitmq (BROKER_URL, else the local one).")
@click.option("--small", "small_count", type=click.IntRange(min=1000), default=40_000,
              show_default=True, help="Status changes in the small backlog.")
@click.option("--rows", type=click.IntRange(min=1000), default=160_000, show_default=True,
              help="Roster rows in the roster backlog.")
@click.option("--fast-rate", type=click.FloatRange(min=0), default=200.0, show_default=True,
              help="Status changes per second sent while the roster backlog drains.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs of each case; medians are reported.")
@click.option("--plot", is_flag=True, help="Write docs/bench/shards.png.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(counts: str, brokers: str, small_count: int, rows: int, fast_rate: float,
            repeat: int, plot: bool, as_json: bool) -> None:
    """The writer's ceiling with N shards on one PostgreSQL, on Redis and on RabbitMQ."""
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
    shard_counts = [int(c) for c in counts.split(",") if c.strip()]
    kinds = [k.strip() for k in brokers.split(",") if k.strip()]
    small = list(small_intents(small_count))
    roster = list(roster_chunks(rows, 500))
    cases: list[dict[str, Any]] = []
    with EmulatedInstance(InstanceConfig(cpu_quota=None, max_connections=100)) as instance:
        echo(f"uncapped PostgreSQL {instance.version} on port {instance.port}")
        prepare_template(instance.create_database(TEMPLATE), 1)
        for kind in kinds:
            for n in shard_counts:
                for backlog, intents, rate in (("small", small, 0.0), ("roster", roster, 0.0),
                                               ("mixed", roster, fast_rate)):
                    found = []
                    for r in range(repeat):
                        echo(f"{kind}, {n} shard(s), {backlog}: run {r + 1} ...")
                        found.append(Run(instance, settings, services.redis_url, kind, n,
                                         f"shards_{kind}_{n}_{backlog}_{r}").drain(
                                             intents, fast_rate=rate))
                    case = _median(found)
                    case["backlog"] = backlog
                    cases.append(case)
                    echo(f"  {case['intents_per_s'] or 0:,.0f} intents/s, "
                         f"{case['rows_per_s'] or 0:,.0f} rows/s")
        result = {"instance": {**instance.describe(), "machine": machine()},
                  "tenants": TENANTS, "cases": cases, "ratios": _ratios(cases)}
    if plot:
        from bench._plots import shards_plot

        path = shards_plot(result, PROJECT_ROOT / "docs" / "bench" / "shards.png")
        echo(f"plot: {path}")
    if as_json:
        echo_json(result)
        return
    click.echo("")
    click.echo(table(cases))


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda r: r["intents_per_s"] or 0.0)
    middle = dict(ordered[len(ordered) // 2])
    middle["runs"] = [r["intents_per_s"] for r in runs]
    return middle


def _ratios(cases: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(c["broker"], c["shards"], c["backlog"]): c for c in cases}
    out: dict[str, Any] = {}
    for (kind, n, backlog), case in by.items():
        one = by.get((kind, 1, backlog))
        if one and n > 1 and one["intents_per_s"] and case["intents_per_s"]:
            out[f"{kind}_{backlog}_{n}_vs_1"] = case["intents_per_s"] / one["intents_per_s"]
        redis_case = by.get(("redis", n, backlog))
        if kind == "rabbitmq" and redis_case and redis_case["intents_per_s"] and \
                case["intents_per_s"]:
            out[f"rabbitmq_vs_redis_{backlog}_{n}"] = (case["intents_per_s"]
                                                       / redis_case["intents_per_s"])
    return out


def table(cases: list[dict[str, Any]]) -> str:
    header = ["broker", "shards", "backlog", "intents/s", "rows/s", "whole drain intents/s",
              "PG CPU s /1k rows", "writers CPU s /1k", "broker CPU s /1k", "txn p99 ms",
              "fast p99 ms", "machine busy", "of it ours"]
    rows = [[c["broker"], c["shards"], c["backlog"], c["intents_per_s"], c["rows_per_s"],
             c["intents_per_s_whole"], c["cpu_per_1000"]["postgresql"],
             c["cpu_per_1000"]["writers"], c["cpu_per_1000"]["broker"], c["commit_ms_p99"],
             (c.get("fast") or {}).get("p99_ms"), c["machine_busy"], c["ours_busy"]]
            for c in cases]
    return markdown_table(header, rows)
