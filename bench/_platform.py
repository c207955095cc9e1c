"""The same jobs through the platform: workers emit write intents, one writer applies them.

The workers are threads that publish the intents the actors emit (``video.processing`` at the
start of an encode and ``video.ready`` at its end; ``roster.status`` parsing, the rows in
``roster.chunk`` intents of ``chunk_rows``, then ``roster.status`` writing) with
:class:`~jobplatform.emit.IntentEmitter` to Redis, on the same start plan and encode times as
the baseline. Excel parsing and encoding happen on the worker machines and cost the database
nothing, so they are not run here. ONE writer (``jobplatform writer``, a subprocess with its
own settings from the environment) applies them to the database.

Times come from the database itself: ``track_commit_timestamp`` gives the commit time of the
transaction that recorded each intent in the writer's ledger, and ``applied_at`` (``now()``)
that transaction's start; latency is commit time minus the intent's ``occurred_at``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench._common import proc_cpu_seconds, stop_process
from bench._workload import TENANT_ID, Roster, Workload
from jobplatform.auth import development_keys_file, keyring_for
from jobplatform.broker import Queues, build_broker
from jobplatform.emit import IntentEmitter
from jobplatform.settings import Settings
from schemas import RosterChunk
from schemas.intents import AnyIntent, RosterStatus, VideoProcessing, VideoReady, VideoRendition


@dataclass
class Emitted:
    """What the producers published, to be matched with what the writer committed."""

    video: dict[uuid.UUID, tuple[uuid.UUID, datetime]] = field(default_factory=dict)
    """intent id -> (video id, occurred_at)"""
    roster: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    """intent id -> import id"""
    emit_failures: Counter[str] = field(default_factory=Counter)
    failed_videos: set[uuid.UUID] = field(default_factory=set)
    failed_imports: set[uuid.UUID] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def intents(self) -> int:
        return len(self.video) + len(self.roster)


def _now() -> datetime:
    return datetime.now(UTC)


def _emit_video(emitter: IntentEmitter, workload: Workload, worker: int, out: Emitted) -> None:
    for video_id in workload.videos_of(worker):
        try:
            first = VideoProcessing(tenant_id=TENANT_ID, video_id=video_id, occurred_at=_now())
            emitter.emit(first)
            with out.lock:
                out.video[first.intent_id] = (video_id, first.occurred_at)
            time.sleep(workload.encode_s)
            hls = f"tenants/{TENANT_ID}/videos/{video_id}/hls/"
            ready = VideoReady(
                tenant_id=TENANT_ID, video_id=video_id, occurred_at=_now(),
                hls_key=hls + "master.m3u8", duration_s=workload.encode_s,
                renditions=(VideoRendition(name="720p", width=1280, height=720,
                                           bandwidth=2_800_000,
                                           playlist_key=hls + "720p.m3u8"),),
            )
            emitter.emit(ready)
            with out.lock:
                out.video[ready.intent_id] = (video_id, ready.occurred_at)
        except redis.RedisError as exc:
            with out.lock:
                out.emit_failures[f"broker: {type(exc).__name__}"] += 1
                out.failed_videos.add(video_id)


def roster_intents(roster: Roster, chunk_rows: int) -> Iterator[AnyIntent]:
    """The intents the roster actor emits for one parsed file."""
    base = {"tenant_id": TENANT_ID, "import_id": roster.import_id,
            "lecture_id": roster.lecture_id}
    yield RosterStatus(**base, status="parsing", occurred_at=_now(),
                       source_key=f"tenants/{TENANT_ID}/rosters/{roster.import_id}.xlsx")
    chunks = [roster.rows[i:i + chunk_rows] for i in range(0, len(roster.rows), chunk_rows)]
    for index, rows in enumerate(chunks):
        yield RosterChunk(**base, chunk_index=index, rows=rows, occurred_at=_now())
    yield RosterStatus(**base, status="writing", occurred_at=_now(), total=len(roster.rows),
                       valid=len(roster.rows), invalid=0, duplicates=0, chunks=len(chunks))


def _emit_rosters(emitter: IntentEmitter, workload: Workload, worker: int, out: Emitted,
                  chunk_rows: int) -> None:
    for roster in workload.rosters_of(worker):
        try:
            for intent in roster_intents(roster, chunk_rows):
                emitter.emit(intent)
                with out.lock:
                    out.roster[intent.intent_id] = roster.import_id
        except redis.RedisError as exc:
            with out.lock:
                out.emit_failures[f"broker: {type(exc).__name__}"] += 1
                out.failed_imports.add(roster.import_id)


def run_producers(settings: Settings, redis_url: str, workload: Workload, chunk_rows: int
                  ) -> tuple[Emitted, float]:
    """Every producer on its thread, on the baseline's start plan; returns when all emitted."""
    broker = build_broker(settings, redis_url, set_global=False)
    emitter = IntentEmitter(broker, Queues.from_settings(settings))
    out = Emitted()

    def ai(worker: int) -> None:
        _emit_rosters(emitter, workload, worker, out, chunk_rows)

    def video(worker: int) -> None:
        _emit_video(emitter, workload, worker, out)

    def after(delay: float, target: Callable[[int], None], worker: int) -> None:
        time.sleep(delay)
        target(worker)

    t0 = time.monotonic()
    threads = [threading.Thread(target=after, args=item, name=f"producer-{n}")
               for n, item in enumerate(workload.start_plan(ai, video))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    broker.close()
    return out, time.monotonic() - t0


# --- the writer process -----------------------------------------------------------------------


class WriterUnavailable(RuntimeError):
    """``jobplatform writer`` is not there (yet) or did not start."""


def writer_available() -> bool:
    try:
        from writer import engine  # noqa: F401
    except ImportError:
        return False
    return True


def shared_keys_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process the keys ``settings`` sign with.

    A child with a state folder of its own would otherwise make a development key of its own,
    and refuse every intent this process signs.
    """
    auth = settings.auth
    env: dict[str, str] = {}
    if auth.keys is not None:
        env["AUTH_KEYS"] = auth.keys.get_secret_value()
    if auth.keys_file is not None:
        env["AUTH_KEYS_FILE"] = str(auth.keys_file)
    if not env:
        keyring_for(settings)  # makes the development key file when there is none
        env["AUTH_KEYS_FILE"] = str(development_keys_file(settings))
    if auth.signing_key is not None:
        env["AUTH_SIGNING_KEY"] = auth.signing_key
    return env


class WriterProcess:
    """``jobplatform writer`` as a subprocess pointed at one database and broker namespace."""

    def __init__(self, database_url: str, redis_url: str, namespace: str,
                 env: dict[str, str] | None = None, *, checkout: Path | None = None) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix="jobplatform-bench-writer-"))
        #: Where the writer's code comes from (another checkout, e.g. a baseline's), or None
        #: for the installed one.
        self.checkout = checkout
        self.env = {
            **os.environ,
            **({"PYTHONPATH": str(checkout)} if checkout is not None else {}),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "BROKER_NAMESPACE": namespace,
            "JOBPLATFORM_STATE_DIR": str(self.state_dir),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.state_dir / "writer.log"

    def start(self, admin_url: str, timeout_s: float = 60.0) -> None:
        """Start it and wait until it holds the active writer's lock (it is then consuming)."""
        if not writer_available():
            raise WriterUnavailable("writer.engine is not in this checkout yet")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jobplatform", "writer"], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, cwd=self.checkout,
            )
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(admin_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise WriterUnavailable(f"the writer exited at start:\n{self.log()[-3000:]}")
                row = conn.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                    " WHERE l.locktype = 'advisory' AND l.granted"
                    " AND d.datname = current_database()"
                ).fetchone()
                if row and row[0]:
                    return
                time.sleep(0.1)
        raise WriterUnavailable(f"the writer took no lock in {timeout_s:.0f} s:\n"
                                f"{self.log()[-3000:]}")

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)


@contextlib.contextmanager
def broker_namespace(redis_url: str, prefix: str = "bench") -> Iterator[str]:
    """A fresh broker namespace; its keys are deleted afterwards."""
    namespace = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield namespace
    finally:
        client = redis.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start:start + 1000])
        finally:
            client.close()


# --- what the database says ----------------------------------------------------------------


@dataclass
class Applied:
    """Per intent: commit time; per batch: transaction time; dead letters with reasons."""

    committed: dict[uuid.UUID, datetime] = field(default_factory=dict)
    txn_ms: list[float] = field(default_factory=list)
    dead: dict[uuid.UUID, str] = field(default_factory=dict)


def wait_applied(conn: psycopg.Connection[tuple[Any, ...]], expected: int, timeout_s: float,
                 interval_s: float = 0.1) -> bool:
    """Wait until the ledger and the dead letters account for ``expected`` intents."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM writer_ledger)"
            " + (SELECT count(DISTINCT intent_id) FROM writer_dead_letters)"
        ).fetchone()
        if row is not None and int(row[0]) >= expected:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


def read_applied(conn: psycopg.Connection[tuple[Any, ...]]) -> Applied:
    applied = Applied()
    for intent_id, committed in conn.execute(
        "SELECT intent_id, pg_xact_commit_timestamp(xmin) FROM writer_ledger"
    ):
        applied.committed[intent_id] = committed
    applied.txn_ms = [
        float(ms) for (ms,) in conn.execute(
            "SELECT extract(epoch FROM max(pg_xact_commit_timestamp(xmin)) - min(applied_at))"
            " * 1000 FROM writer_ledger GROUP BY batch_seq"
        )
    ]
    for intent_id, reason in conn.execute(
        "SELECT intent_id, reason FROM writer_dead_letters WHERE intent_id IS NOT NULL"
    ):
        applied.dead[intent_id] = reason
    return applied
