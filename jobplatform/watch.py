"""What ``jobplatform watch`` shows: jobs' progress, queue depths and the writer's stats.

Everything comes from Redis: the progress records actors keep (see :mod:`jobplatform.progress`),
the broker's queues, and the stats document the active writer publishes every
``WRITER_STATS_INTERVAL_S`` seconds under ``<namespace>:writer:stats``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from jobplatform.broker import Queues, heartbeats_key
from jobplatform.metrics import QueueDepth, oldest_ready_age_ms, queue_depths
from jobplatform.progress import ProgressStore, writer_stats_key
from jobplatform.publish import JobStatus, status_from_record, worker_silence
from jobplatform.settings import Settings

#: Finished jobs stay on screen this long after their last update.
DEFAULT_RECENT_S = 120.0
#: A writer whose broker heartbeat is older than this is not running (it beats every 5 s).
WRITER_SILENT_S = 20.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    jobs: list[JobStatus]
    queues: dict[str, int]
    """Messages not yet done per queue: ready, prefetched or in progress, and delayed."""
    writer: dict[str, Any] | None = None
    hidden: int = 0
    """Finished jobs older than the window, not listed."""
    dead: dict[str, int] = field(default_factory=dict)
    """Messages in dramatiq's dead-letter set (``<queue>.XQ``): jobs that failed in a way no
    status could record (their ids unreadable, or an actor crashed)."""
    depths: list[QueueDepth] = field(default_factory=list)
    writer_seen_s: float | None = None
    """Seconds since the writer of :attr:`writer` was last seen (its stats' time or its broker
    heartbeat, whichever is later); None without stats."""
    lag_ms: float = 0.0
    """Age of the oldest intent waiting in the writer's lanes; 0 when they are empty."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "jobs": [job.model_dump(mode="json") for job in self.jobs],
            "queues": self.queues,
            "writer": self.writer,
            "hidden": self.hidden,
            "dead": self.dead,
            "depths": {d.queue: {"ready": d.ready, "unacked": d.unacked,
                                 "delayed": d.delayed, "dead": d.dead} for d in self.depths},
            "writer_seen_s": self.writer_seen_s,
            "lag_ms": self.lag_ms,
        }


def read_jobs(store: ProgressStore, heartbeat_timeout_s: float = 10.0) -> list[JobStatus]:
    """Every job with a progress record, oldest update first; a running job whose worker
    stopped sending heartbeats is ``interrupted``."""
    records = {}
    for raw in store.client.scan_iter(match=store.key("*"), count=500):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        job_id = key[len(store.key("")):]
        record = store.get(job_id)
        if record:
            records[job_id] = record
    silent = worker_silence(store.client, store.namespace, records)
    jobs = [
        status_from_record(job_id, record, worker_silent_s=silent.get(job_id),
                           heartbeat_timeout_s=heartbeat_timeout_s)
        for job_id, record in records.items()
    ]
    jobs.sort(key=lambda j: (j.updated_at.timestamp() if j.updated_at else 0.0, j.job_id))
    return jobs


def read_writer_stats(client: redis.Redis, namespace: str) -> dict[str, Any] | None:
    raw = client.get(writer_stats_key(namespace))
    if raw is None:
        return None
    try:
        stats = json.loads(raw)
    except ValueError:
        return None
    return stats if isinstance(stats, dict) else None


def take_snapshot(
    client: redis.Redis, settings: Settings, *, recent_s: float = DEFAULT_RECENT_S
) -> Snapshot:
    now = time.time()
    store = ProgressStore(client, settings.broker_namespace)
    shown, hidden = [], 0
    for job in read_jobs(store, settings.worker_heartbeat_timeout_s):
        old = job.updated_at is not None and now - job.updated_at.timestamp() > recent_s
        if job.finished and old:
            hidden += 1
        else:
            shown.append(job)
    queues = Queues.from_settings(settings)
    ns = settings.broker_namespace
    depths = queue_depths(client, ns, (queues.video, queues.ai, *queues.all_writes))
    stats = read_writer_stats(client, ns)
    lanes = [d for d in depths if d.queue in queues.all_writes]
    lag = 0.0
    if any(d.waiting for d in lanes):
        lag = max([oldest_ready_age_ms(client, ns, q, now * 1000) for q in queues.all_writes]
                  + [float(stats.get("lag_ms", 0.0)) if stats else 0.0])
    return Snapshot(now, shown, {d.queue: d.waiting for d in depths}, stats, hidden,
                    {d.queue: d.dead for d in depths}, depths,
                    writer_seen(client, ns, stats, now), round(lag, 1))


def writer_seen(client: redis.Redis, namespace: str, stats: dict[str, Any] | None,
                now: float) -> float | None:
    """Seconds since the publishing writer last showed life: its stats' time or its broker
    heartbeat (a live writer beats every few seconds), whichever is later."""
    if stats is None:
        return None
    seen = [float(stats["at"])] if isinstance(stats.get("at"), int | float) else []
    broker_id = stats.get("broker_id")
    if isinstance(broker_id, str):
        beat = client.zscore(heartbeats_key(namespace), broker_id)
        if beat is not None:
            seen.append(float(beat) / 1000)
    return max(0.0, now - max(seen)) if seen else None


# --- rendering ------------------------------------------------------------------------------

def job_detail(job: JobStatus) -> str:
    """The figures that matter for the job's kind: speed for encodes, rows for imports."""
    p = job.progress
    parts: list[str] = []
    if job.state in ("failed", "interrupted") and job.error:
        return job.error[:120]
    if job.job_id.startswith("video:"):
        if isinstance(p.get("speed"), int | float) and job.state == "running":
            parts.append(f"{p['speed']:.2f}x")
        if p.get("hls_key"):
            parts.append(str(p["hls_key"]))
        if p.get("note") and job.state == "queued":
            parts.append(str(p["note"]))
    else:
        total = p.get("total")
        for name in ("rows", "written", "chunks", "invalid"):
            value = p.get(name)
            if isinstance(value, int):
                shown = f"{value:,}/{total:,}" if name == "rows" and total else f"{value:,}"
                parts.append(f"{'rows parsed' if name == 'rows' else name} {shown}")
        if p.get("report_key"):
            parts.append(f"report {p['report_key']}")
    return "  ".join(parts)


def job_percent(job: JobStatus) -> float | None:
    if job.percent is not None:
        return job.percent
    parsed, total = job.progress.get("rows"), job.progress.get("total")
    if isinstance(parsed, int) and isinstance(total, int) and total > 0:
        return 100.0 * parsed / total
    return None


_STATE_STYLE = {"queued": "yellow", "running": "cyan", "interrupted": "bold magenta",
                "writing": "blue", "done": "green",
                "failed": "bold red", "unknown": "dim"}


def render(snapshot: Snapshot) -> RenderableType:
    jobs = Table(title="jobs", title_justify="left", expand=True, show_edge=False)
    jobs.add_column("job", no_wrap=True)
    jobs.add_column("state", no_wrap=True)
    jobs.add_column("progress", ratio=1, min_width=12)
    jobs.add_column("%", justify="right", no_wrap=True)
    jobs.add_column("detail", ratio=2)
    for job in snapshot.jobs:
        percent = job_percent(job)
        state = job.state if job.step in (None, job.state) else f"{job.state}:{job.step}"
        jobs.add_row(
            job.job_id,
            Text(state, style=_STATE_STYLE[job.state]),
            ProgressBar(total=100, completed=percent or 0.0, width=None),
            "" if percent is None else f"{percent:.0f}%",
            job_detail(job),
        )
    if not snapshot.jobs:
        jobs.add_row("(no running jobs)", "", "", "", "")
    footer = Text("queues (ready+held+delayed): " + "  ".join(
        f"{d.queue} {d.waiting:,}" + (f" ({d.unacked:,} held, {d.delayed:,} delayed)"
                                      if d.unacked or d.delayed else "")
        for d in snapshot.depths) if snapshot.depths else "queues: " + "  ".join(
        f"{name} {depth:,}" for name, depth in snapshot.queues.items()))
    if snapshot.hidden:
        footer.append(f"\n({snapshot.hidden} older finished jobs not shown)")
    dead = {name: n for name, n in snapshot.dead.items() if n}
    if dead:
        footer.append(
            "\ndead letters (dramatiq's <queue>.XQ, kept 7 days): "
            + "  ".join(f"{name} {n:,}" for name, n in dead.items()), style="bold red")
    return Group(jobs, footer, render_writer(snapshot.writer, seen_s=snapshot.writer_seen_s,
                                             lag_ms=snapshot.lag_ms))


def _figure(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def render_writer(stats: dict[str, Any] | None, *, seen_s: float | None = None,
                  lag_ms: float | None = None) -> RenderableType:
    """The writer's figures in two short rows (fits 80 columns); a writer silent for more
    than :data:`WRITER_SILENT_S`, or stopped, is said to be so, whatever its last stats say."""
    if stats is None:
        return Text("writer: no stats published (not running, or WRITER_STATS_INTERVAL_S not yet "
                    "elapsed)", style="dim")
    role = str(stats.get("role"))
    if role == "stopped":
        ago = "" if seen_s is None else f" {seen_s:.0f} s ago"
        return Text(f"writer: stopped{ago} ({stats.get('name', '?')})", style="bold red")
    if seen_s is not None and seen_s > WRITER_SILENT_S:
        return Text(f"writer: no writer seen for {seen_s:.0f} s (last: {role} "
                    f"{stats.get('name', '?')})", style="bold red")
    lag = stats.get("lag_ms") if lag_ms is None else lag_ms
    rows = [
        {"role": role, "batches": stats.get("batches"), "batches/s": stats.get("batches_per_s"),
         "intents/s": stats.get("intents_per_s"), "rows": stats.get("rows")},
        {"lag ms": lag, "commit p50 ms": stats.get("commit_ms_p50"),
         "commit p99 ms": stats.get("commit_ms_p99"), "db share": stats.get("db_share"),
         "budget": stats.get("db_budget")},
    ]
    tables: list[RenderableType] = []
    for i, figures in enumerate(rows):
        table = Table(title="writer" if i == 0 else None, title_justify="left",
                      show_edge=False)
        for name in figures:
            table.add_column(name, justify="right", no_wrap=True)
        table.add_row(*(_figure(v) for v in figures.values()))
        tables.append(table)
    return Group(*tables)
