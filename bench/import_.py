"""``jobplatform bench import``: a roster file in S3 becomes committed rows, end to end.

The whole path a user waits for, on this machine, through the real processes:

- the file (``--rows``, generated once: six columns as schools export them, mixed phone
  spellings; ``--invalid-every`` adds rows with an invalid phone, and with them the error
  report) is uploaded to S3 before the clock starts;
- ``Publisher.publish(ImportRoster)`` starts the clock; the job goes to the ``ai`` queue;
- the **actor**: ``dramatiq actors.worker --queues ai`` as the Procfile runs it (``--ai-processes``
  1, ``--ai-threads`` 2) downloads, parses, validates and emits ``roster.chunk`` intents;
- the **writer**: ``jobplatform writer`` applies them on its one connection, logs them, and
  marks the import ``done`` in its progress record;
- the clock stops when ``Publisher.status()`` first reads ``done``: that is when a user sees it.

Each run gets a fresh database on the configured (or local) PostgreSQL, a fresh broker
namespace and fresh processes. One import alone, then ``--several`` imports at once (the same
rows split into that many files, published together; the ``ai`` pool then runs as many at once
as it has threads).

Where the time goes: the actor's own timings (its progress record's ``timings``: download,
parse, validate, building chunks, encoding, the Redis sends, the report) and the writer's stage
times (its stats' ``time_s``: fetch, decode, plan, log encode, begin, ledger, COPY, the other
statements, the kinds' Python, the log append, COMMIT, ack, pace), each over the import's wall
time. The two processes run at once, so their shares add up to more than one.

CPU: the actor's processes, the writer's process and its PostgreSQL backend (``/proc``: the
server must be local), Redis (``INFO``; a shared Redis counts its other clients too). The
floor: the same valid rows, deduplicated, by plain COPY into empty tables (``bench writer``'s
method E) in the same run; the writer's server CPU per row is reported beside it.

``--baseline PATH`` runs the same imports with the actor and the writer taken from another
checkout (e.g. a worktree of main), alternating with this one run by run: medians and ratios.
``--quick`` is a small run that checks the benchmark works (the test suite uses it).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import psycopg
import redis

from bench._common import (
    children_of,
    fmt,
    machine,
    markdown_table,
    percentile,
    proc_cpu_seconds,
    ratio,
)
from bench._feed import StatusSender, VideoNotices
from bench._platform import WriterProcess, broker_namespace
from jobplatform.settings import PROJECT_ROOT, Settings
from jobplatform.stack import Services

TENANT_ID = 1
FIRST_LECTURE = 100
#: The actor's stages, in the order an import passes them.
ACTOR_STAGES = ("download_s", "parse_s", "validate_s", "chunks_s", "encode_s", "send_s",
                "emit_s", "report_s")
#: The writer's busy stages (``idle`` is left out: it is the rest of the wall time).
WRITER_STAGES = ("fetch", "decode", "plan", "log_encode", "begin", "ledger", "copy",
                 "statements", "kinds", "log", "commit", "ack", "pace")


# --- the code under test ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Code:
    """Where the actor's and the writer's code come from."""

    label: str
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.root)}


def _check_checkout(path: Path) -> Path:
    path = path.resolve()
    for package in ("jobplatform", "actors", "writer", "schemas"):
        if not (path / package / "__init__.py").is_file():
            raise click.BadParameter(f"{path} has no {package}/ package: not a checkout",
                                     param_hint="--baseline")
    return path


# --- the files -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RosterFile:
    path: Path
    rows: int
    lecture_id: int


def make_files(folder: Path, rows: int, count: int, invalid_every: int, *,
               start: int = 0, lecture_id: int = FIRST_LECTURE) -> list[RosterFile]:
    """``count`` files sharing ``rows`` rows, each with its own students and lecture."""
    from bench.roster import write_roster

    each, extra = divmod(rows, count)
    files = []
    for n in range(count):
        size = each + (1 if n < extra else 0)
        path = folder / f"roster-{start}-{rows}-{count}-{n}.xlsx"
        if not path.exists():
            write_roster(path, size, start=start, invalid_every=invalid_every)
        files.append(RosterFile(path, size, lecture_id + n))
        start += size
    return files


#: The warm-up import's rows: students numbered from here, never in a measured file.
WARM_UP_START = 9_000_000
WARM_UP_ROWS = 50


def valid_rows(files: Sequence[RosterFile]) -> list[Any]:
    """What the actor sends of ``files``: their valid rows, validated as the actor does."""
    from actors.roster import Limits, open_roster

    rows: list[Any] = []
    for found in files:
        with open_roster(found.path, Limits(max_rows=10_000_000, max_cells=100_000_000)) as r:
            r.validate(rows.extend)
    return rows


# --- the processes ---------------------------------------------------------------------------

class ActorProcess:
    """``dramatiq actors.worker --queues ai`` from ``code``, its output in a file."""

    def __init__(self, code: Code, env: dict[str, str], processes: int, threads: int,
                 log_path: Path) -> None:
        self.code = code
        self.env = {**os.environ, **env, **code.env}
        self.args = [sys.executable, "-m", "dramatiq", "actors.worker", "--queues",
                     env.get("QUEUE_AI", "ai"), "--processes", str(processes),
                     "--threads", str(threads)]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=self.code.root,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        found = [self.proc.pid]
        for pid in found:
            found.extend(p for p in children_of(pid) if p not in found)
        return found

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in self.pids())

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the actor exited:\n{self.log()[-3000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # once: dramatiq drains (see the runner)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _heartbeats(client: redis.Redis, namespace: str) -> set[Any]:
    members: list[Any] = list(client.zrange(f"{namespace}:__heartbeats__", 0, -1))
    return set(members)


def _wait_new_consumer(client: redis.Redis, namespace: str, before: set[Any],
                       actor: ActorProcess, timeout_s: float) -> None:
    """Until a broker other than those in ``before`` beats: the actor consumes its queue."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _heartbeats(client, namespace) - before:
            return
        actor.check()
        time.sleep(0.05)
    raise RuntimeError(f"the actor did not consume within {timeout_s:.0f} s:\n"
                       f"{actor.log()[-3000:]}")


def _writer_backend(conn: psycopg.Connection[Any]) -> int:
    from writer.db import APPLICATION_NAME

    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = %s ORDER BY backend_start DESC LIMIT 1", (APPLICATION_NAME,)
    ).fetchone()
    if row is None:
        raise RuntimeError("the writer holds no connection to the database")
    return int(row[0])


def _redis_cpu(client: redis.Redis) -> float:
    info: Any = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


# --- one run ---------------------------------------------------------------------------------

@dataclass
class Context:
    settings: Settings
    services: Services
    ai_processes: int = 1
    ai_threads: int = 2
    timeout_s: float = 600.0
    writer_env: dict[str, str] = field(default_factory=dict)
    fast_rate: float = 20.0
    """Video status intents a second sent while the imports run (0: none)."""

    @property
    def server_url(self) -> str:
        return self.services.database_url

    @property
    def admin_url(self) -> str:
        from writer.db import with_database

        return with_database(self.server_url, "postgres")


def run_imports(ctx: Context, code: Code, files: Sequence[RosterFile],
                warm_up: RosterFile) -> dict[str, Any]:
    """Publish one import per file at once; measure until ``status()`` says each is done.

    A small import (``warm_up``) runs first, off the clock: a worker that has run before has
    its modules loaded and its connections open, and so has a writer."""
    from bench.writer import Dataset, fresh_database
    from jobplatform.publish import Publisher
    from jobplatform.s3 import ensure_bucket
    from schemas import ImportRoster

    redis_url = ctx.services.redis_url
    with ExitStack() as stack:
        url = stack.enter_context(
            fresh_database(ctx.server_url, "import", Dataset((), ()), preload=False))
        namespace = stack.enter_context(broker_namespace(redis_url, "bench-import"))
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jp-bench-import-")))
        settings = ctx.services.apply(ctx.settings).model_copy(update={
            "broker_namespace": namespace, "database_url": url, "jobplatform_state_dir": state})
        env = {**ctx.services.environ(), "DATABASE_URL": url, "BROKER_NAMESPACE": namespace,
               "JOBPLATFORM_STATE_DIR": str(state), "LOG_FORMAT": "json",
               "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
               # The stats (with their stage times) are read when the clock starts.
               "WRITER_STATS_INTERVAL_S": "0.2"}
        client = redis.Redis.from_url(redis_url)
        stack.callback(client.close)
        monitor = psycopg.connect(url, autocommit=True, application_name="bench-monitor")
        stack.callback(monitor.close)

        writer = WriterProcess(url, redis_url, namespace, {**env, **ctx.writer_env},
                               checkout=code.root)
        stack.callback(writer.close)
        writer.start(url)
        publisher = Publisher(settings)
        stack.callback(publisher.close)
        ensure_bucket(publisher.s3, settings.s3.bucket)
        keys = [publisher.upload(f.path, TENANT_ID, "roster", f.path.name)
                for f in (warm_up, *files)]
        before = _heartbeats(client, namespace)
        actor = ActorProcess(code, env, ctx.ai_processes, ctx.ai_threads, state / "actor.log")
        stack.callback(actor.stop)
        actor.start()
        _wait_new_consumer(client, namespace, before, actor, 60.0)
        jobs = [ImportRoster(tenant_id=TENANT_ID, import_id=uuid.uuid4(), lecture_id=f.lecture_id,
                             source_key=key, filename=f.path.name)
                for f, key in zip((warm_up, *files), keys, strict=True)]
        first = jobs.pop(0)
        publisher.publish(first)
        _wait_done(publisher, [first], time.perf_counter(), actor, writer, ctx.timeout_s)
        backend = _writer_backend(monitor)
        writer_pid = writer.proc.pid if writer.proc is not None else 0
        writer_before = _published_stats(client, namespace, wait_s=5.0,
                                         after=time.time())

        notices = stack.enter_context(VideoNotices(url))
        sender = StatusSender(settings, ctx.fast_rate, TENANT_ID) if ctx.fast_rate else None
        cpu0 = (actor.cpu_seconds(), proc_cpu_seconds(writer_pid), proc_cpu_seconds(backend),
                _redis_cpu(client))
        started = time.perf_counter()
        begin = datetime.now(UTC)
        if sender is not None:
            sender.__enter__()
        try:
            for job in jobs:
                publisher.publish(job)
            done = _wait_done(publisher, jobs, started, actor, writer, ctx.timeout_s)
        finally:
            if sender is not None:
                sender.__exit__(None, None, None)
        wall = max(done.values())
        end = begin + timedelta(seconds=wall)
        cpu1 = (actor.cpu_seconds(), proc_cpu_seconds(writer_pid), proc_cpu_seconds(backend),
                _redis_cpu(client))
        statuses = [publisher.status(job) for job in jobs]
        fast = _fast_latency(notices, sender, begin, end) if sender is not None else None
        lectures = [f.lecture_id for f in files]
        row = monitor.execute(
            "SELECT count(DISTINCT student_id), count(*) FROM enrollments"
            " WHERE lecture_id = ANY(%s)", (lectures,)
        ).fetchone()
        assert row is not None
        students, enrollments = int(row[0]), int(row[1])
        actor.stop()
        writer.stop()
        stats = _published_stats(client, namespace, wait_s=5.0, role="stopped")
    stats["time_s"] = _minus(stats.get("time_s"), writer_before.get("time_s"))
    rows = sum(int(s.progress.get("valid") or 0) for s in statuses)
    report = _report(code, files, rows, students, enrollments, wall, done, statuses, stats,
                     tuple(b - a for a, b in zip(cpu0, cpu1, strict=True)))
    report["fast"] = fast
    return report


def _fast_latency(notices: VideoNotices, sender: StatusSender, begin: datetime,
                  end: datetime) -> dict[str, Any]:
    """Event to commit of the status intents that occurred while the imports ran: from each
    one's ``occurred_at`` (stamped as it was enqueued) to its commit's notification."""
    if sender.error is not None:
        raise sender.error
    window = [i for i in sender.sent if begin <= i.occurred_at <= end]
    if not notices.wait(sender.sent, 30.0):
        raise RuntimeError("status intents not committed 30 s after the imports were done")
    if notices.error is not None:
        raise notices.error
    latency = []
    for intent in window:
        at = notices.committed_at(intent)
        assert at is not None, "waited for"
        latency.append((at - intent.occurred_at).total_seconds() * 1000)
    return {"rate_per_s": sender.rate_per_s, "intents": len(window),
            "p50_ms": percentile(latency, 50), "p99_ms": percentile(latency, 99),
            "max_ms": max(latency, default=None)}


def _published_stats(client: redis.Redis, namespace: str, *, wait_s: float,
                     role: str | None = None, after: float = 0.0) -> dict[str, Any]:
    """The writer's stats as it published them: the first with ``role`` (when given) and
    published after ``after`` (epoch seconds), waiting up to ``wait_s``."""
    from jobplatform.progress import writer_stats_key

    deadline = time.monotonic() + wait_s
    while True:
        raw = client.get(writer_stats_key(namespace))
        found: dict[str, Any] = json.loads(raw) if raw else {}
        if (role is None or found.get("role") == role) and float(found.get("at", 0)) > after:
            return found
        if time.monotonic() >= deadline:
            return found
        time.sleep(0.02)


def _minus(after: Any, before: Any) -> dict[str, float] | None:
    """Stage times of the measured part: the stats at the end less those at the start."""
    if not isinstance(after, dict):
        return None
    base = before if isinstance(before, dict) else {}
    return {k: float(v) - float(base.get(k) or 0.0) for k, v in after.items()}


def _wait_done(publisher: Any, jobs: Sequence[Any], started: float, actor: ActorProcess,
               writer: WriterProcess, timeout_s: float) -> dict[str, float]:
    """Seconds from ``started`` to the first ``status()`` reading ``done``, per job."""
    done: dict[str, float] = {}
    deadline = started + timeout_s
    while len(done) < len(jobs):
        now = time.perf_counter()
        if now > deadline:
            raise RuntimeError(f"{len(jobs) - len(done)} imports not done in {timeout_s:.0f} s")
        for job in jobs:
            if job.job_id in done:
                continue
            status = publisher.status(job)
            if status.state == "done":
                done[job.job_id] = time.perf_counter() - started
            elif status.state == "failed":
                raise RuntimeError(f"import {job.job_id} failed: {status.error}")
        actor.check()
        if writer.proc is not None and writer.proc.poll() is not None:
            raise RuntimeError(f"the writer exited:\n{writer.log()[-3000:]}")
        time.sleep(0.01)
    return done


def _report(code: Code, files: Sequence[RosterFile], rows: int, students: int,
            enrollments: int, wall: float, done: dict[str, float], statuses: Sequence[Any],
            stats: dict[str, Any], cpu: tuple[float, ...]) -> dict[str, Any]:
    actor_cpu, writer_cpu, backend_cpu, redis_cpu = cpu
    timings = [s.progress.get("timings") for s in statuses]
    actor_stages: dict[str, float] | None = None
    if all(isinstance(t, dict) for t in timings):
        actor_stages = {k: sum(float(t.get(k) or 0.0) for t in timings if t is not None)
                        for k in ACTOR_STAGES}
    spent = stats.get("time_s")
    writer_stages = ({k: float(spent.get(k) or 0.0) for k in WRITER_STAGES}
                     if isinstance(spent, dict) else None)
    return {
        "code": code.label,
        "imports": len(files),
        "file_rows": sum(f.rows for f in files),
        "rows": rows,
        "students": students,
        "enrollments": enrollments,
        "time_to_done_s": wall,
        "time_to_done_each_s": sorted(done.values()),
        "rows_per_s": rows / wall if wall else None,
        "cpu_s": {"actor": actor_cpu, "writer_process": writer_cpu,
                  "writer_backend": backend_cpu, "redis": redis_cpu},
        "server_cpu_us_per_row": backend_cpu / rows * 1e6 if rows else None,
        "cpu_us_per_row": sum(cpu) / rows * 1e6 if rows else None,
        "writer": {k: stats.get(k) for k in ("batches", "rows", "commit_ms_p50",
                                            "commit_ms_p99", "commit_ms_max", "db_retries",
                                            "dead")},
        "actor_stages_s": actor_stages,
        "writer_stages_s": writer_stages,
    }


def copy_floor(ctx: Context, rows: Sequence[Any]) -> dict[str, Any]:
    """``bench writer``'s method E on these rows: plain COPY into empty tables."""
    from bench.writer import Dataset, _run_method, method_e

    data = Dataset(tuple(rows), ())
    measured = _run_method(ctx.server_url, ctx.admin_url, "E", data, preload=False,
                           make=lambda url: method_e(url, data))
    unique = len(data.unique)
    return {"rows": unique, "server_cpu_s": measured.server_cpu_s, "wall_s": measured.wall_s,
            "server_cpu_us_per_row": measured.server_cpu_s / unique * 1e6 if unique else None}


# --- the command -----------------------------------------------------------------------------

@click.command(name="import")
@click.option("--rows", type=click.IntRange(min=100), default=200_000, show_default=True,
              help="Rows of the roster (split over the files of the several-at-once run).")
@click.option("--several", type=click.IntRange(min=0), default=4, show_default=True,
              help="Imports published at once in the second run (0: none).")
@click.option("--invalid-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Every N-th row has an invalid phone, so each import writes an error "
                   "report (0: a clean file).")
@click.option("--repeat", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Runs of each; figures are medians.")
@click.option("--baseline", "baseline_path", type=click.Path(file_okay=False, path_type=Path),
              help="A checkout whose actor and writer run the same imports, alternating with "
                   "this checkout's.")
@click.option("--ai-processes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--ai-threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--floor/--no-floor", default=True, show_default=True,
              help="Measure plain COPY of the same rows (the floor) in the same run.")
@click.option("--fast-rate", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Video status intents a second sent while the imports run; their event to "
                   "commit latency is reported (0: none).")
@click.option("--writer-env", multiple=True, metavar="NAME=VALUE",
              help="An extra environment variable for the writer (e.g. WRITER_TARGET_TXN_MS=40).")
@click.option("--quick", is_flag=True, help="2,000 rows, two at once: checks the benchmark runs.")
@click.option("--timeout-s", type=click.FloatRange(min=1), default=600.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--plot", is_flag=True, help="Write docs/bench/import.png and import.json.")
def command(rows: int, several: int, invalid_every: int, repeat: int, baseline_path: Path | None,
            ai_processes: int, ai_threads: int, floor: bool, fast_rate: float,
            writer_env: tuple[str, ...], quick: bool, timeout_s: float, as_json: bool,
            plot: bool) -> None:
    """A roster in S3 to committed rows through the real actor and writer: rows/s, stages, CPU."""
    from jobplatform.cli._common import echo_json, settings_from_env
    from jobplatform.logging import configure_logging
    from jobplatform.stack import ensure_services

    def echo(text: str) -> None:
        click.echo(text, err=True)

    if quick:
        rows, several, repeat = 2_000, 2, 1
    extra = {}
    for item in writer_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}",
                                     param_hint="--writer-env")
        extra[name] = value
    settings = settings_from_env()
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    services = ensure_services(settings)
    ctx = Context(settings, services, ai_processes, ai_threads, timeout_s, extra, fast_rate)
    codes = [Code("current", PROJECT_ROOT)]
    if baseline_path is not None:
        codes.insert(0, Code("baseline", _check_checkout(baseline_path)))
    scenarios = [("one", 1)] + ([("several", several)] if several > 1 else [])
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    floors: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="jp-bench-import-files-") as folder:
        files = {name: make_files(Path(folder), rows, count, invalid_every)
                 for name, count in scenarios}
        [warm_up] = make_files(Path(folder), WARM_UP_ROWS, 1, invalid_every,
                               start=WARM_UP_START, lecture_id=FIRST_LECTURE - 1)
        sent = valid_rows(files["one"]) if floor else []
        for attempt in range(repeat):
            order = codes if attempt % 2 == 0 else list(reversed(codes))
            for name, _ in scenarios:
                for code in order:
                    echo(f"run {attempt + 1}/{repeat}: {name} import(s), {code.label} ...")
                    result = run_imports(ctx, code, files[name], warm_up)
                    runs.setdefault(name, {}).setdefault(code.label, []).append(result)
                    echo(f"  {result['rows']:,} rows done in {result['time_to_done_s']:.2f} s"
                         f" ({result['rows_per_s']:,.0f} rows/s)")
            if floor:
                measured = copy_floor(ctx, sent)
                floors.setdefault("one", []).append(measured)
                echo(f"  floor: plain COPY of {measured['rows']:,} rows, server CPU "
                     f"{measured['server_cpu_s']:.2f} s")
    report = summarize(runs, floors, codes)
    report.update(rows=rows, several=several, invalid_every=invalid_every, repeat=repeat,
                  ai_processes=ai_processes, ai_threads=ai_threads, writer_env=extra,
                  fast_rate=fast_rate,
                  baseline=str(baseline_path) if baseline_path else None, machine=machine())
    if plot:
        for path in plot_import(report):
            echo(f"wrote {path}")
    if as_json:
        echo_json(report)
    else:
        click.echo(table(report))


# --- medians, ratios, the table --------------------------------------------------------------

def _median(values: Sequence[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float)]
    return statistics.median(numbers) if numbers and len(numbers) == len(values) else None


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs (nested groups figure by figure)."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r.get(key) for r in runs]
        if isinstance(first, dict):
            nested = [v for v in values if isinstance(v, dict)]
            out[key] = median_run(nested) if len(nested) == len(values) else None
        elif isinstance(first, int | float) and not isinstance(first, bool):
            out[key] = _median(values)
        else:
            out[key] = first
    return out


RATIOS = (("time_to_done_s", "time to done"), ("rows_per_s", "rows/s"),
          ("cpu_us_per_row", "CPU per row, all processes"),
          ("server_cpu_us_per_row", "server CPU per row"),
          ("fast.p99_ms", "status change p99, event to commit"))


def summarize(runs: dict[str, dict[str, list[dict[str, Any]]]],
              floors: dict[str, list[dict[str, Any]]], codes: Sequence[Code]
              ) -> dict[str, Any]:
    report: dict[str, Any] = {"scenarios": {}}
    floor_run_ = median_run(floors["one"]) if floors.get("one") else None
    report["floor"] = floor_run_
    for name, by_code in runs.items():
        medians = {label: median_run(found) for label, found in by_code.items()}
        scenario: dict[str, Any] = {"medians": medians, "runs": by_code}
        if "baseline" in medians:
            base, cur = medians["baseline"], medians["current"]
            scenario["ratios"] = {key: ratio(_get(cur, key), _get(base, key))
                                  for key, _ in RATIOS}
        if floor_run_ is not None:
            for found in medians.values():
                found["server_cpu_vs_floor"] = ratio(found.get("server_cpu_us_per_row"),
                                                     floor_run_["server_cpu_us_per_row"])
        report["scenarios"][name] = scenario
    report["codes"] = {c.label: str(c.root) for c in codes}
    return report


def table(report: dict[str, Any]) -> str:
    lines: list[str] = []
    floor_ = report.get("floor")
    for scenario in report["scenarios"].values():
        medians = scenario["medians"]
        labels = list(medians)
        first = medians[labels[0]]
        lines.append(f"{first['imports']} import(s) at once, {first['file_rows']:,} rows in all"
                     f" ({report['repeat']} run(s), medians):")
        rows = [
            ("rows committed (valid)", "rows"), ("time to done s", "time_to_done_s"),
            ("rows/s end to end", "rows_per_s"), ("CPU actor s", "cpu_s.actor"),
            ("CPU writer process s", "cpu_s.writer_process"),
            ("CPU writer backend s", "cpu_s.writer_backend"), ("CPU redis s", "cpu_s.redis"),
            ("CPU per row, all us", "cpu_us_per_row"),
            ("server CPU per row us", "server_cpu_us_per_row"),
            ("server CPU / floor", "server_cpu_vs_floor"),
            ("writer batches", "writer.batches"), ("transaction ms p99", "writer.commit_ms_p99"),
            ("status changes sent", "fast.intents"),
            ("status change p50 ms (event to commit)", "fast.p50_ms"),
            ("status change p99 ms (event to commit)", "fast.p99_ms"),
        ]
        header = ["", *labels]
        ratios = scenario.get("ratios")
        if ratios:
            header.append("current / baseline")
        body = []
        for label, key in rows:
            values = [_get(medians[c], key) for c in labels]
            line = [label, *values]
            if ratios:
                line.append(ratios.get(key) if key in ratios else None)
            body.append(line)
        lines += [markdown_table(header, body), ""]
        current = medians.get("current", {})
        wall = current.get("time_to_done_s") or 0.0
        stage_rows = []
        for who, key in (("actor", "actor_stages_s"), ("writer", "writer_stages_s")):
            stages = current.get(key) or {}
            for stage, seconds in stages.items():
                if seconds:
                    stage_rows.append((who, stage.removesuffix("_s"), seconds,
                                       seconds / wall if wall else None))
        if stage_rows:
            lines += [f"where the time goes (current, of {fmt(wall, 2)} s to done; the actor"
                      " and the writer run at once):",
                      markdown_table(("process", "stage", "s", "share of wall"), stage_rows), ""]
    if floor_:
        lines.append(f"floor: plain COPY of {floor_['rows']:,} rows into empty tables, server CPU"
                     f" {fmt(floor_['server_cpu_s'], 2)} s"
                     f" ({fmt(floor_['server_cpu_us_per_row'], 1)} us per row)")
    return "\n".join(lines)


def _get(found: dict[str, Any], key: str) -> Any:
    value: Any = found
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# --- the chart -------------------------------------------------------------------------------

def plot_import(report: dict[str, Any]) -> list[Path]:
    """docs/bench/import.png: each process's stages over the wall time, per scenario; CPU per
    row beside the floor. And the data, import.json."""
    from bench import _plots

    plt = _plots._pyplot()
    out = _plots.OUT
    out.mkdir(parents=True, exist_ok=True)
    scenarios = report["scenarios"]
    fig, axes = plt.subplots(len(scenarios) + 1, 1, figsize=(11, 2.6 * (len(scenarios) + 1)))
    cmap = plt.get_cmap("tab20")
    stages = [("actor", s) for s in ACTOR_STAGES] + [("writer", s) for s in WRITER_STAGES]
    colors = {stage: cmap(i % 20) for i, stage in enumerate(stages)}
    for ax, scenario in zip(axes, scenarios.values(), strict=False):
        current = scenario["medians"]["current"]
        wall = current["time_to_done_s"]
        for y, (who, key) in enumerate((("actor", "actor_stages_s"),
                                        ("writer", "writer_stages_s"))):
            left = 0.0
            for stage, seconds in (current.get(key) or {}).items():
                if not seconds:
                    continue
                ax.barh(y, seconds, left=left, color=colors[(who, stage)],
                        label=f"{who}: {stage.removesuffix('_s')}")
                if seconds > wall * 0.04:
                    ax.text(left + seconds / 2, y, stage.removesuffix("_s"), ha="center",
                            va="center", fontsize=7)
                left += seconds
        ax.axvline(wall, color="black", linestyle="--", linewidth=1)
        ax.text(wall, 1.45, f" done {wall:.2f} s", fontsize=8, va="center")
        ax.set_yticks([0, 1], ["actor", "writer"])
        ax.set_xlabel("seconds (busy time per stage; the dashed line is time to done)")
        ax.set_title(f"{current['imports']} import(s), {current['rows']:,} rows: "
                     f"{current['rows_per_s']:,.0f} rows/s end to end", fontsize=10)
    ax = axes[-1]
    one = scenarios["one"]["medians"]
    groups = list(one)
    parts = ("actor", "writer_process", "writer_backend", "redis")
    for i, label in enumerate(groups):
        left = 0.0
        rows = one[label]["rows"] or 1
        for part in parts:
            value = one[label]["cpu_s"][part] / rows * 1e6
            ax.barh(i, value, left=left, color=cmap(parts.index(part) * 2 + 1), label=part
                    if i == 0 else None)
            ax.text(left + value / 2, i, f"{part}\n{value:.1f}", ha="center", va="center",
                    fontsize=7)
            left += value
    floor_ = report.get("floor")
    ticks = list(groups)
    if floor_:
        ax.barh(len(groups), floor_["server_cpu_us_per_row"], color="grey")
        ax.text(floor_["server_cpu_us_per_row"], len(groups),
                f" {floor_['server_cpu_us_per_row']:.1f}", va="center", fontsize=8)
        ticks.append("floor (COPY)")
    ax.set_yticks(range(len(ticks)), ticks)
    ax.set_xlabel("CPU microseconds per row, one import (server: the writer's backend)")
    m = report["machine"]
    fig.suptitle(f"bench import: {report['rows']:,}-row .xlsx from S3 to committed rows; "
                 f"{m['nproc']} cores ({m['cpu_model']}), load {m['load_average_1m']}",
                 fontsize=10)
    fig.tight_layout()
    path = out / "import.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    data = out / "import.json"
    data.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return [path, data]

