"""The original pattern: every worker talks to PostgreSQL itself, as the Django service did.

Each worker is a thread with its own connection, opened by a job's first query and closed when
the job ends (Django under a task runner with the default ``CONN_MAX_AGE=0``: the runner closes
old connections around each task); a connection refused fails the job. Like Django on
psycopg 3: client-side parameter binding (``ClientCursor``), no prepared statements,
autocommit off with one transaction per ``atomic`` block, a statement timeout and a connect
timeout. Threads suffice because the capped server is the bottleneck and psycopg releases the
GIL while it waits.

- Video worker, per job: ``SELECT ... FOR UPDATE`` then an UPDATE to ``processing`` (committed),
  the encode, then the same to ``ready``. Encoding runs on the worker machines, not on the
  database host, so it is emulated by waiting ``encode_s`` with the connection open and idle (a
  CPU-burning stand-in would only compete with the server for this machine's two cores).
- AI worker, per file: one transaction; per row ``get_or_create`` of the student (SELECT, then
  INSERT in a savepoint, as Django's ``get_or_create`` does inside ``atomic``) and then of the
  enrollment; the import's status row at the start and the end.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors

from bench._workload import TENANT_ID, Roster, Workload

_STUDENT_COLUMNS = ("id, tenant_id, phone, name, parent_phone, school, grade, birth_date,"
                    " created_at, updated_at")


@dataclass(frozen=True, slots=True)
class BaselineOptions:
    statement_timeout_ms: int = 5000
    connect_timeout_s: int = 5
    savepoints: bool = True
    """Wrap each create in a savepoint, as Django's ``get_or_create`` does."""


@dataclass
class BaselineResult:
    """What the workers saw; times are seconds since the phase started."""

    video_ms: list[float] = field(default_factory=list)
    video_updates_failed: int = 0
    video_jobs_failed: int = 0
    ai_jobs_failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    statements: int = 0
    max_txn_ms: float = 0.0
    import_done_s: float = 0.0
    """When the last roster job ended, committed or failed."""
    wall_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self, kind: str, reason: str) -> None:
        with self.lock:
            self.failures[reason] += 1
            if kind == "video":
                self.video_jobs_failed += 1
            else:
                self.ai_jobs_failed += 1

    def txn(self, ms: float) -> None:
        with self.lock:
            self.max_txn_ms = max(self.max_txn_ms, ms)


def classify(exc: BaseException) -> str:
    """The failure reasons the incident report counts."""
    if isinstance(exc, errors.DeadlockDetected):
        return "deadlock detected"
    if isinstance(exc, errors.QueryCanceled):
        return "statement timeout"
    if isinstance(exc, errors.LockNotAvailable):
        return "lock timeout"
    text = str(exc)
    if "too many clients" in text or "remaining connection slots are reserved" in text:
        return "too many clients"
    if "timeout expired" in text or "timed out" in text:
        return "connect timeout"
    if isinstance(exc, psycopg.OperationalError):
        return "connection error"
    return f"other: {type(exc).__name__}"


class _Connection:
    """A worker's persistent connection, made on first use and dropped when it breaks."""

    def __init__(self, url: str, options: BaselineOptions, application_name: str) -> None:
        self.url = url
        self.options = options
        self.application_name = application_name
        self.conn: psycopg.Connection[tuple[Any, ...]] | None = None

    def get(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(
                self.url,
                autocommit=False,
                prepare_threshold=None,
                cursor_factory=psycopg.ClientCursor,
                connect_timeout=self.options.connect_timeout_s,
                application_name=self.application_name,
                options=f"-c statement_timeout={self.options.statement_timeout_ms}",
            )
        return self.conn

    def after_error(self) -> None:
        if self.conn is None:
            return
        if self.conn.broken or self.conn.closed:
            self.conn = None
            return
        try:
            self.conn.rollback()
        except psycopg.Error:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _set_video_status(conn: psycopg.Connection[tuple[Any, ...]], video_id: object,
                      status: str, rank: int) -> int:
    now = datetime.now(UTC)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, tenant_id, status, attempt, status_rank, source_key, hls_key, duration_s,"
            " renditions, error, queued_at, started_at, finished_at, updated_at"
            " FROM videos WHERE id = %s LIMIT 21 FOR UPDATE",
            (video_id,),
        )
        if cur.fetchone() is None:
            raise LookupError(f"video {video_id} not found")
        stamp = "started_at" if status == "processing" else "finished_at"
        cur.execute(
            f"UPDATE videos SET status = %s, status_rank = %s, {stamp} = %s, updated_at = %s,"
            " hls_key = %s WHERE id = %s",
            (status, rank, now, now,
             f"hls/{video_id}/master.m3u8" if status == "ready" else None, video_id),
        )
    conn.commit()
    return 3


def video_worker(url: str, options: BaselineOptions, workload: Workload, worker: int,
                 result: BaselineResult, t0: float) -> None:
    connection = _Connection(url, options, f"bench-video-{worker}")
    for video_id in workload.videos_of(worker):
        try:
            for status, rank in (("processing", 1), ("ready", 2)):
                if status == "ready":
                    time.sleep(workload.encode_s)
                event = time.monotonic()
                try:
                    statements = _set_video_status(connection.get(), video_id, status, rank)
                except (psycopg.Error, LookupError) as exc:
                    connection.after_error()
                    with result.lock:
                        result.video_updates_failed += 1
                    result.failed("video", classify(exc))
                    break
                took = (time.monotonic() - event) * 1000
                with result.lock:
                    result.video_ms.append(took)
                    result.statements += statements
                result.txn(took)
        finally:
            connection.close()


def _get_or_create(cur: psycopg.Cursor[tuple[Any, ...]], select: str, select_args: tuple[Any, ...],
                   insert: str, insert_args: tuple[Any, ...], savepoints: bool,
                   savepoint: str) -> tuple[object, int]:
    """Django's get_or_create: get; else create (in a savepoint); on a race, get again."""
    cur.execute(select, select_args)
    row = cur.fetchone()
    if row is not None:
        return row[0], 1
    if not savepoints:
        cur.execute(insert, insert_args)
        created = cur.fetchone()
        assert created is not None
        return created[0], 2
    cur.execute(f"SAVEPOINT {savepoint}")
    try:
        cur.execute(insert, insert_args)
    except errors.UniqueViolation:
        cur.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
        cur.execute(select, select_args)
        again = cur.fetchone()
        assert again is not None
        return again[0], 5
    created = cur.fetchone()
    assert created is not None
    cur.execute(f"RELEASE SAVEPOINT {savepoint}")
    return created[0], 4


def import_roster(conn: psycopg.Connection[tuple[Any, ...]], roster: Roster,
                  savepoints: bool, worker: int) -> int:
    """One file in one transaction, per row; returns the statements it ran."""
    now = datetime.now(UTC)
    statements = 0
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO roster_imports (id, tenant_id, lecture_id, status, status_rank,"
            " total, started_at, updated_at) VALUES (%s, %s, %s, 'parsing', 1, %s, %s, %s)",
            (roster.import_id, TENANT_ID, roster.lecture_id, len(roster.rows), now, now),
        )
        conn.commit()
        savepoint = f"s{worker}_x1"
        for row in roster.rows:
            student_id, n = _get_or_create(
                cur,
                f"SELECT {_STUDENT_COLUMNS} FROM students"
                " WHERE (phone = %s AND tenant_id = %s) LIMIT 21",
                (row.phone, TENANT_ID),
                "INSERT INTO students (tenant_id, phone, name, parent_phone, school, grade,"
                " birth_date, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id",
                (TENANT_ID, row.phone, row.name, row.parent_phone, row.school, row.grade,
                 row.birth_date, now, now),
                savepoints, savepoint,
            )
            statements += n
            _, n = _get_or_create(
                cur,
                "SELECT id, lecture_id, student_id, import_id, enrolled_at FROM enrollments"
                " WHERE (lecture_id = %s AND student_id = %s) LIMIT 21",
                (roster.lecture_id, student_id),
                "INSERT INTO enrollments (lecture_id, student_id, import_id, enrolled_at)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (roster.lecture_id, student_id, roster.import_id, now),
                savepoints, savepoint,
            )
            statements += n
        cur.execute(
            "UPDATE roster_imports SET status = 'done', status_rank = 4, valid = %s,"
            " created = %s, finished_at = %s, updated_at = %s WHERE id = %s",
            (len(roster.rows), len(roster.rows), datetime.now(UTC), datetime.now(UTC),
             roster.import_id),
        )
    conn.commit()
    return statements + 3


def ai_worker(url: str, options: BaselineOptions, workload: Workload, worker: int,
              result: BaselineResult, t0: float) -> None:
    connection = _Connection(url, options, f"bench-ai-{worker}")
    for roster in workload.rosters_of(worker):
        start = time.monotonic()
        try:
            statements = import_roster(connection.get(), roster, options.savepoints, worker)
        except psycopg.Error as exc:
            connection.after_error()
            result.failed("ai", classify(exc))
            end = time.monotonic()
        else:
            end = time.monotonic()
            with result.lock:
                result.rows += len(roster.rows)
                result.statements += statements
        finally:
            connection.close()
        result.txn((end - start) * 1000)
        with result.lock:
            result.import_done_s = max(result.import_done_s, end - t0)


def run_baseline(url: str, workload: Workload, options: BaselineOptions) -> BaselineResult:
    """All workers at once, each on its own thread; returns when all are done."""
    result = BaselineResult()
    t0 = time.monotonic()
    threads = [
        threading.Thread(target=_after, args=(delay, target, url, options, workload, worker,
                                              result, t0), name=f"{target.__name__}-{worker}")
        for delay, target, worker in workload.start_plan(ai_worker, video_worker)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.wall_s = time.monotonic() - t0
    return result


def _after(delay: float, target: Callable[..., None], *args: Any) -> None:
    time.sleep(delay)
    target(*args)
