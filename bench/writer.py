"""``jobplatform bench writer``: the writer against the baselines of DESIGN section 6.

One generated roster (``--rows``, one tenant, one lecture, 10% of the students already present
- half of them identical, half with another school - and 2% of the rows repeated in the file)
is written by each method into a fresh database (``jp_bench_*``, dropped afterwards):

- ``A``: per-row get_or_create/update as an ORM does it (SELECT, then INSERT or UPDATE, per
  student and per enrollment), one long transaction, client-side binding, no prepared statements;
- ``C``: multi-row ``INSERT ... ON CONFLICT``, 1,000 rows a statement and a transaction;
- ``E``: plain COPY of the deduplicated rows into empty students and enrollments (the floor);
- ``Eb``: the same COPYs in transactions as large as the writer's (its rows per transaction
  in the same attempt, else ``WRITER_BATCH_MAX_ROWS``): what short transactions cost the
  floor itself, so the writer's own SQL is measured apart from its transaction size;
- ``writer``: the roster as the AI actor emits it (status intents and RosterChunk intents of
  500 rows), enqueued on ``writes.fast`` / ``writes.bulk`` of a fresh broker namespace by
  ``--producers`` threads (8; each its own Redis connections) and applied by a real
  :class:`~writer.engine.Writer` running in this process with the settings' limits and the
  write-intent log. The writer is started (connected, holding its lock, idle) before the clock
  starts; the clock runs from the first enqueue to the return of the COMMIT that settled the
  last intent. ``--feed direct`` instead calls :func:`writer.engine.apply_batch` in a loop;
- ``writer_reimport``: the same roster again, as a new import, on the writer's database.

Under load, on a fresh database each (``--backlog-rows``, 100,000 rows):

- ``fast_p99_ms``: video status intents sent 20 a second from their own thread while the
  producers enqueue the roster and the writer (default budget) drains it; latency is the wall
  clock when the writer's COMMIT returned minus the intent's ``occurred_at``, for intents that
  occurred from the first roster enqueue to the roster's last commit. (The shared server has
  ``track_commit_timestamp`` off, so the database cannot date commits.)
- ``budget_share``: the roster queued first, then a writer with ``WRITER_DB_BUDGET=0.25``
  drains it; its backend's utime+stime (its whole life) over the wall time from the writer's
  start to its last commit.

Server CPU is the utime+stime of the backends serving the measured connections, from /proc (the
server must be local). WAL is what pg_walinspect shows of records touching the method's database
and of the transactions that wrote them (autovacuum is off on the measured tables);
``wal_mb_server`` is the whole server's ``pg_current_wal_lsn()`` difference, other sessions'
work included, used for ``wal_mb`` when pg_walinspect is not available. Statements are counted
by the client (BEGIN and COMMIT included; a COPY counts as one; the writer's from its batch
results). Peak connections are the sessions seen in the method's database other than the
monitor's own: nothing but the method connects to it.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

import click
import psycopg
from psycopg import sql

from bench._common import fmt, markdown_table, percentile, proc_cpu_seconds, ratio
from bench._feed import Commit, CommitLog, FedWriter, Producers, StatusSender, WriterFailed
from jobplatform.settings import Settings
from schemas.intents import AnyIntent, RosterChunk, RosterStatus, StudentRow

Conn = psycopg.Connection[Any]


@dataclass
class Method:
    """A method ready to run: the server backends it writes through (connected before
    measuring, so connecting is not counted), the work to measure, and what ends it."""

    backend_pids: list[int]
    body: Callable[[Run], None]
    close: Callable[[], None]

    @classmethod
    def on(cls, conn: Conn, body: Callable[[Run], None]) -> Method:
        return cls([conn.info.backend_pid], body, conn.close)


TENANT_ID = 1
LECTURE_ID = 100
CHUNK_ROWS = 500
ORM_BATCH = 1000
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
_STUDENT_COLUMNS = ("tenant_id", "phone", "name", "parent_phone", "school", "grade",
                    "birth_date", "created_at", "updated_at")
_STUDENT_TYPES = ["int8", "text", "text", "text", "text", "int2", "date", "timestamptz",
                  "timestamptz"]
_TABLES = ("lectures", "students", "enrollments", "videos", "roster_imports", "writer_ledger")


# --- data ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dataset:
    """One roster file and the students the database holds before it is imported."""

    rows: tuple[StudentRow, ...]
    """The file, in order, duplicates included."""
    present: tuple[StudentRow, ...]

    @property
    def unique(self) -> list[StudentRow]:
        """The file deduplicated by phone, the later row winning (as the writer resolves it)."""
        return list({row.phone: row for row in self.rows}.values())


def generate(n: int, seed: int = 20240301) -> Dataset:
    rng = random.Random(seed)
    repeats = n * 2 // 100
    unique = n - repeats
    order = list(range(unique)) + [rng.randrange(unique) for _ in range(repeats)]
    rng.shuffle(order)
    rows = tuple(_student(i, source_row=pos + 1) for pos, i in enumerate(order))
    present_ids = rng.sample(range(unique), n // 10)
    present = tuple(
        _student(i, source_row=1, school="Old School" if k % 2 else None)
        for k, i in enumerate(present_ids)
    )
    return Dataset(rows, present)


def _student(i: int, *, source_row: int, school: str | None = None) -> StudentRow:
    return StudentRow.model_construct(
        source_row=source_row,
        name=f"Student {i}",
        phone=f"010-{i // 10000:04d}-{i % 10000:04d}",
        parent_phone=f"011-{i // 10000:04d}-{i % 10000:04d}",
        school=school or f"School {i % 40}",
        grade=i % 12 + 1,
        birth_date=date(2008, 1, 1) + timedelta(days=i % 1500),
    )


def _student_tuple(row: StudentRow) -> tuple[Any, ...]:
    return (TENANT_ID, row.phone, row.name, row.parent_phone, row.school, row.grade,
            row.birth_date, T0, T0)


def roster_intents(data: Dataset, import_id: uuid.UUID, start: datetime) -> list[AnyIntent]:
    """What the AI actor emits for the file: status changes and chunks of 500 rows."""
    chunks = [data.rows[i:i + CHUNK_ROWS] for i in range(0, len(data.rows), CHUNK_ROWS)]

    def status(name: str, seconds: int, **values: Any) -> RosterStatus:
        return RosterStatus(tenant_id=TENANT_ID, occurred_at=start + timedelta(seconds=seconds),
                            import_id=import_id, lecture_id=LECTURE_ID, status=name, **values)

    return [
        status("queued", 0, source_key=f"tenants/{TENANT_ID}/rosters/{import_id}.xlsx"),
        status("parsing", 1),
        *(
            RosterChunk(tenant_id=TENANT_ID, occurred_at=start + timedelta(seconds=2),
                        import_id=import_id, lecture_id=LECTURE_ID, chunk_index=n, rows=rows)
            for n, rows in enumerate(chunks)
        ),
        status("writing", 3, total=len(data.rows), valid=len(data.rows), chunks=len(chunks)),
    ]


def batches(intents: Sequence[AnyIntent], max_rows: int, max_intents: int) -> list[list[AnyIntent]]:
    """Split as the consumer does: close a batch at ``max_rows`` rows or ``max_intents``."""
    out: list[list[AnyIntent]] = [[]]
    rows = 0
    for intent in intents:
        size = len(intent.rows) if isinstance(intent, RosterChunk) else 0
        if out[-1] and (rows + size > max_rows or len(out[-1]) >= max_intents):
            out.append([])
            rows = 0
        out[-1].append(intent)
        rows += size
    return out


# --- measuring -----------------------------------------------------------------------------

@dataclass
class Measured:
    wall_s: float = 0.0
    rows_per_s: float = 0.0
    statements: int = 0
    server_cpu_s: float = 0.0
    wal_mb: float = 0.0
    """WAL of records touching the method's database, and of its transactions (pg_walinspect)."""
    wal_mb_server: float = 0.0
    """Everything the server logged meanwhile, other sessions' work included."""
    max_txn_ms: float = 0.0
    p99_txn_ms: float = 0.0
    peak_connections: int = 0
    transactions: int = 0
    txn_s: float = 0.0
    """Time inside the transactions; the rest of ``wall_s`` is the client's (fetching, acks,
    the writer's pacing to its database time budget)."""


@dataclass
class Run:
    """What a method reports to the harness while it runs."""

    statements: int = 0
    txn_ms: list[float] = field(default_factory=list)
    end: float | None = None
    """``time.perf_counter()`` when the work was done (the last commit), when the method knows
    it better than the return of its body."""

    @contextmanager
    def transaction(self, conn: Conn) -> Iterator[None]:
        start = time.perf_counter()
        with conn.transaction():
            yield
        self.txn_ms.append((time.perf_counter() - start) * 1000)
        self.statements += 2  # BEGIN, COMMIT

    def execute(self, cur: psycopg.Cursor[Any], query: Any, params: Any = None) -> Any:
        self.statements += 1
        return cur.execute(query, params)


#: WAL records between two positions that touch this database's relations, plus every record
#: (commits included) of the transactions that wrote such records.
_DATABASE_WAL = """
WITH r AS (
    SELECT xid, record_length, block_ref LIKE %(rel)s AS here
    FROM pg_get_wal_records_info(%(start)s::pg_lsn, %(end)s::pg_lsn)
), ours AS (
    SELECT DISTINCT xid::text AS xid FROM r WHERE here AND xid <> '0'::xid
)
SELECT coalesce(sum(record_length), 0) FROM r
WHERE here OR (xid <> '0'::xid AND xid::text IN (SELECT xid FROM ours))
"""


class _Monitor:
    """A thread on its own connection to the measured database: the most sessions seen in it
    (``pg_stat_activity``), and the WAL attributable to it, read every half second with
    pg_walinspect before the server recycles the segments (None when that fails)."""

    def __init__(self, url: str) -> None:
        self.peak = 0
        self.wal_bytes: float | None = 0.0
        self.error: str | None = None
        self._stop = threading.Event()
        self._conn = psycopg.connect(url, autocommit=True, application_name="bench-monitor")
        try:
            # A temporary slot keeps the WAL from here on until this session ends, however
            # often other sessions' checkpoints recycle segments.
            self._conn.execute("SELECT pg_create_physical_replication_slot(%s, true, true)",
                               (f"jp_bench_{uuid.uuid4().hex[:12]}",))
        except psycopg.Error as exc:
            self.error = f"no WAL-keeping slot: {str(exc).strip()}"
        #: Where the measured window starts.
        self.start_lsn = self._lsn = _wal_lsn(self._conn, "pg_current_wal_insert_lsn")
        row = self._conn.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        assert row is not None
        self._rel = f"%rel %/{row[0]}/%"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_wal = time.monotonic()
        while not self._stop.is_set():
            row = self._conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            self.peak = max(self.peak, int(row[0]) if row else 0)
            if time.monotonic() - last_wal > 0.5:
                self._read_wal()
                last_wal = time.monotonic()
            self._stop.wait(0.02)

    def _read_wal(self) -> None:
        if self.wal_bytes is None:
            return
        end = _wal_lsn(self._conn, "pg_current_wal_flush_lsn")
        try:
            row = self._conn.execute(_DATABASE_WAL, {
                "rel": self._rel, "start": self._lsn, "end": end,
            }).fetchone()
        except psycopg.Error as exc:
            self.wal_bytes = None
            self.error = "; ".join(filter(None, (self.error, str(exc).strip())))
            return
        self.wal_bytes += float(row[0]) if row else 0.0
        self._lsn = end

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._read_wal()
        self._conn.close()


def _wal_lsn(conn: Conn, function: str) -> str:
    row = conn.execute(sql.SQL("SELECT {}()::text").format(sql.Identifier(function))).fetchone()
    assert row is not None
    return str(row[0])


def measure(admin_url: str, url: str, pids: Sequence[int], rows: int,
            body: Callable[[Run], None]) -> Measured:
    """Run ``body`` and measure the server backends ``pids``."""

    with psycopg.connect(admin_url, autocommit=True) as admin:
        run = Run()
        monitor = _Monitor(url)
        lsn = monitor.start_lsn
        cpu = sum(proc_cpu_seconds(p) for p in pids)
        start = time.perf_counter()
        try:
            body(run)
        finally:
            wall = (time.perf_counter() if run.end is None else run.end) - start
            cpu = sum(proc_cpu_seconds(p) for p in pids) - cpu
            end = _wal_lsn(admin, "pg_current_wal_flush_lsn")
            row = admin.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)",
                                (end, lsn)).fetchone()
            monitor.stop()
    assert row is not None
    server_wal = float(row[0])
    wal = monitor.wal_bytes
    if wal is None:
        click.echo(f"WAL of the database not attributed ({monitor.error}); counting the "
                   "server's", err=True)
    return Measured(
        wall_s=wall, rows_per_s=rows / wall, statements=run.statements, server_cpu_s=cpu,
        wal_mb=(server_wal if wal is None else wal) / 1024**2, wal_mb_server=server_wal / 1024**2,
        max_txn_ms=max(run.txn_ms, default=0.0),
        p99_txn_ms=percentile(run.txn_ms, 99) or 0.0, peak_connections=monitor.peak,
        transactions=len(run.txn_ms), txn_s=sum(run.txn_ms) / 1000,
    )


# --- databases -----------------------------------------------------------------------------

@contextmanager
def fresh_database(server_url: str, label: str, data: Dataset, *,
                   preload: bool) -> Iterator[str]:
    """A migrated ``jp_bench_<label>_*`` database with the lecture (and the present students)."""
    from writer.db import drop_database, session_options, with_database
    from writer.migrate import upgrade

    # Every session of the benchmark sees the platform's tables as the writer does.
    url = with_database(server_url, f"jp_bench_{label.lower()}_{uuid.uuid4().hex[:8]}",
                        options=session_options())
    upgrade(url)
    try:
        with psycopg.connect(url) as conn:
            conn.execute("INSERT INTO lectures (id, tenant_id, created_at) VALUES (%s, %s, %s)",
                         (LECTURE_ID, TENANT_ID, T0))
            if preload:
                with conn.cursor().copy(_copy_students()) as copy:
                    copy.set_types(_STUDENT_TYPES)
                    for row in data.present:
                        copy.write_row(_student_tuple(row))
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            conn.execute("ANALYZE")
            # Autovacuum's WAL would land in whichever method's window it happens to run in.
            for name in _TABLES:
                conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(
                    sql.Identifier(name)))
        yield url
    finally:
        drop_database(url)


def _copy_students() -> sql.Composed:
    return sql.SQL("COPY students ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.SQL(", ").join(map(sql.Identifier, _STUDENT_COLUMNS))
    )


def _orm_connection(url: str) -> Conn:
    """As an ORM connects: client-side binding, never a prepared statement."""
    return psycopg.connect(url, prepare_threshold=None, cursor_factory=psycopg.ClientCursor)


# --- methods -------------------------------------------------------------------------------

def method_a(url: str, data: Dataset) -> Method:
    """Per row: get the student (SELECT), create or update it; then get or create the
    enrollment; all in one transaction."""
    conn = _orm_connection(url)

    def body(run: Run) -> None:
        cur = conn.cursor()
        with run.transaction(conn):
            for row in data.rows:
                values = (row.name, row.parent_phone, row.school, row.grade, row.birth_date)
                found = run.execute(
                    cur, "SELECT id, name, parent_phone, school, grade, birth_date FROM students"
                    " WHERE tenant_id = %s AND phone = %s LIMIT 21", (TENANT_ID, row.phone)
                ).fetchone()
                if found is None:
                    student_id = run.execute(
                        cur, "INSERT INTO students (tenant_id, phone, name, parent_phone, school,"
                        " grade, birth_date, created_at, updated_at)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                        _student_tuple(row),
                    ).fetchone()[0]
                else:
                    student_id = found[0]
                    if tuple(found[1:]) != values:
                        run.execute(
                            cur, "UPDATE students SET name = %s, parent_phone = %s, school = %s,"
                            " grade = %s, birth_date = %s, updated_at = %s WHERE id = %s",
                            (*values, T0, student_id),
                        )
                enrolled = run.execute(
                    cur, "SELECT id FROM enrollments WHERE lecture_id = %s AND student_id = %s"
                    " LIMIT 21", (LECTURE_ID, student_id)
                ).fetchone()
                if enrolled is None:
                    run.execute(
                        cur, "INSERT INTO enrollments (lecture_id, student_id, enrolled_at)"
                        " VALUES (%s, %s, %s) RETURNING id", (LECTURE_ID, student_id, T0)
                    )

    return Method.on(conn, body)


def method_c(url: str, data: Dataset) -> Method:
    """Multi-row ``INSERT ... ON CONFLICT DO UPDATE`` of 1,000 students, then their
    enrollments ``ON CONFLICT DO NOTHING``, one transaction per 1,000 rows."""
    conn = _orm_connection(url)
    unique = data.unique

    def body(run: Run) -> None:
        cur = conn.cursor()
        for start in range(0, len(unique), ORM_BATCH):
            part = unique[start:start + ORM_BATCH]
            with run.transaction(conn):
                students = sql.SQL(
                    "INSERT INTO students ({}) VALUES {} ON CONFLICT (tenant_id, phone) DO UPDATE"
                    " SET name = EXCLUDED.name, parent_phone = EXCLUDED.parent_phone,"
                    " school = EXCLUDED.school, grade = EXCLUDED.grade,"
                    " birth_date = EXCLUDED.birth_date, updated_at = EXCLUDED.updated_at"
                    " RETURNING id"
                ).format(
                    sql.SQL(", ").join(map(sql.Identifier, _STUDENT_COLUMNS)),
                    sql.SQL(", ").join(sql.SQL("(%s, %s, %s, %s, %s, %s, %s, %s, %s)")
                                       for _ in part),
                )
                params = [v for row in part for v in _student_tuple(row)]
                ids = [r[0] for r in run.execute(cur, students, params).fetchall()]
                enroll = sql.SQL(
                    "INSERT INTO enrollments (lecture_id, student_id, enrolled_at) VALUES {}"
                    " ON CONFLICT (lecture_id, student_id) DO NOTHING"
                ).format(sql.SQL(", ").join(sql.SQL("(%s, %s, %s)") for _ in ids))
                run.execute(cur, enroll, [v for i in ids for v in (LECTURE_ID, i, T0)])

    return Method.on(conn, body)


def method_e(url: str, data: Dataset, per_txn: int | None = None) -> Method:
    """COPY the deduplicated students into an empty table, read their ids, COPY enrollments:
    in one transaction, or in transactions of ``per_txn`` students each."""
    conn = psycopg.connect(url)
    unique = data.unique
    size = per_txn or len(unique) or 1

    def body(run: Run) -> None:
        cur = conn.cursor()
        for first in range(0, len(unique), size):
            part = unique[first:first + size]
            with run.transaction(conn):
                run.statements += 1
                with cur.copy(_copy_students()) as copy:
                    copy.set_types(_STUDENT_TYPES)
                    for row in part:
                        copy.write_row(_student_tuple(row))
                # One COPY into an empty table, or one of this session's alone: its ids are
                # the sequence's last len(part) values.
                [(last,)] = run.execute(cur, "SELECT currval(pg_get_serial_sequence("
                                             "'students', 'id'))").fetchall()
                run.statements += 1
                with cur.copy("COPY enrollments (lecture_id, student_id, enrolled_at)"
                              " FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "int8", "timestamptz"])
                    for student_id in range(last - len(part) + 1, last + 1):
                        copy.write_row((LECTURE_ID, student_id, T0))

    return Method.on(conn, body)


@dataclass(frozen=True)
class Feed:
    """What running the writer needs besides its database."""

    settings: Settings
    """The services applied (``redis_url`` set); the writer's limits and budget from here."""
    producers: int = 8
    """Producer threads enqueueing the intents together (Redis feed)."""
    intent_log: bool = True
    """Record applied intents in the write-intent log, as ``jobplatform writer`` does."""
    timeout_s: float = 600.0


def writer_direct(feed: Feed, url: str, intents: Sequence[AnyIntent]) -> Method:
    """The sink in a direct loop: one transaction per batch, as the consumer runs it."""
    from writer.db import connect
    from writer.engine import apply_batch

    settings = feed.settings.writer
    conn = connect(url)
    work = batches(intents, settings.batch_max_rows, settings.batch_max_intents)

    def body(run: Run) -> None:
        cur = conn.cursor()
        for batch in work:
            with run.transaction(conn):
                row = run.execute(cur, "SELECT pg_advisory_xact_lock(%s),"
                                  " nextval('writer_batch_seq')", (settings.lock_key,)).fetchone()
                result = apply_batch(conn, batch, batch_seq=int(row[1]))
                run.statements += result.statements

    return Method.on(conn, body)


def writer_redis(feed: Feed, url: str, intents: Sequence[AnyIntent]) -> Method:
    """The intents enqueued on a fresh broker namespace by ``feed.producers`` threads, applied
    by a real writer started (connected, holding its lock, idle) before the clock starts: the
    clock runs from the first enqueue to the return of the COMMIT that settled the last one."""
    with ExitStack() as stack:
        fed = stack.enter_context(FedWriter(feed.settings, url, intent_log=feed.intent_log))
        pid = fed.start()
        producers = stack.enter_context(Producers(fed.settings, feed.producers))
        close = stack.pop_all().close

    def body(run: Run) -> None:
        producers.emit(intents)
        fed.wait([intent.intent_id for intent in intents], feed.timeout_s)
        if fed.writer.backend_pid != pid:
            raise WriterFailed("the writer reconnected during the run: its server CPU is lost")
        commits = fed.clock.commits
        run.statements += sum(c.statements for c in commits)
        run.txn_ms += [c.ms for c in commits]
        run.end = max(c.end for c in commits)

    return Method([pid], body, close)


#: How the ``writer`` and ``writer_reimport`` methods get their intents to the sink.
WRITER_FEEDS: dict[str, Callable[[Feed, str, Sequence[AnyIntent]], Method]] = {
    "redis": writer_redis,
    "direct": writer_direct,
}


# --- the writer under load: fast-lane latency and the database time budget -----------------

FAST_RATE_PER_S = 20.0
BUDGET = 0.25


def fast_latency(feed: Feed, server_url: str, rows: int) -> dict[str, Any]:
    """Event-to-commit latency of video status intents sent 20 a second while a roster of
    ``rows`` rows is enqueued by the producers and drained, with the settings' writer limits.

    Latency is the wall clock when the COMMIT that settled the intent returned, minus its
    ``occurred_at`` (stamped as it was enqueued); counted for intents that occurred from the
    roster's first enqueue to its last commit.
    """
    data = generate(rows)
    roster = roster_intents(data, uuid.uuid4(), T0)
    with fresh_database(server_url, "fast", data, preload=True) as url, \
            FedWriter(feed.settings, url, intent_log=feed.intent_log) as fed, \
            Producers(fed.settings, feed.producers) as producers:
        fed.start()
        with StatusSender(fed.settings, FAST_RATE_PER_S, TENANT_ID) as sender:
            begin = datetime.now(UTC)
            producers.emit(roster)
            fed.wait([intent.intent_id for intent in roster], feed.timeout_s)
        if sender.error is not None:
            raise sender.error
        fed.wait([intent.intent_id for intent in sender.sent], feed.timeout_s)
        end = max(_committed(fed.clock, intent).at for intent in roster)
        window = [i for i in sender.sent if begin <= i.occurred_at <= end]
        latency = [(_committed(fed.clock, i).at - i.occurred_at).total_seconds() * 1000
                   for i in window]
    return {
        "rows": rows, "rate_per_s": FAST_RATE_PER_S, "intents": len(window),
        "roster_s": (end - begin).total_seconds(),
        "p50_ms": percentile(latency, 50), "p99_ms": percentile(latency, 99),
        "max_ms": max(latency, default=None),
    }


def budget_drain(feed: Feed, server_url: str, rows: int) -> dict[str, Any]:
    """A backlog of ``rows`` roster rows queued first, then drained by a writer with the
    database time budget at :data:`BUDGET`; ``share`` is its backend's CPU (utime+stime over
    the backend's whole life) over the wall time from the writer's start to its last commit."""
    data = generate(rows)
    roster = roster_intents(data, uuid.uuid4(), T0)
    with fresh_database(server_url, "budget", data, preload=True) as url, \
            FedWriter(feed.settings, url, intent_log=feed.intent_log, db_budget=BUDGET) as fed:
        with Producers(fed.settings, feed.producers) as producers:
            producers.emit(roster)
        pid = fed.start()
        fed.wait([intent.intent_id for intent in roster], feed.timeout_s)
        cpu = proc_cpu_seconds(pid)
        if fed.writer.backend_pid != pid:
            raise WriterFailed("the writer reconnected during the drain: its server CPU is lost")
        commits = fed.clock.commits
    wall = max(c.end for c in commits) - fed.started
    return {
        "rows": rows, "budget": BUDGET, "share": cpu / wall, "server_cpu_s": cpu,
        "drain_s": wall, "transaction_share": sum(c.ms for c in commits) / 1000 / wall,
        "transactions": len(commits),
    }


def _committed(clock: CommitLog, intent: AnyIntent) -> Commit:
    commit = clock.of(intent.intent_id)
    assert commit is not None, "waited for"
    return commit


def _run_method(server_url: str, admin_url: str, label: str, data: Dataset, *, preload: bool,
                make: Callable[[str], Method],
                then: Callable[[str], None] | None = None) -> Measured:
    with fresh_database(server_url, label, data, preload=preload) as url:
        measured = measure_method(admin_url, url, len(data.rows), make(url))
        if then is not None:
            then(url)
        return measured


def measure_method(admin_url: str, url: str, rows: int, method: Method) -> Measured:
    try:
        return measure(admin_url, url, method.backend_pids, rows, method.body)
    finally:
        method.close()


def _statements_source(admin_url: str) -> str:
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT count(*) FROM pg_stat_statements")
    except psycopg.Error:
        return "client"
    return "client (pg_stat_statements is also loaded on the server)"


# --- command -------------------------------------------------------------------------------

TARGETS = (
    # (label, numerator, denominator, metric, at least / at most, bound)
    ("server CPU: A / writer", "A", "writer", "server_cpu_s", ">=", 25.0),
    ("server CPU: C / writer", "C", "writer", "server_cpu_s", ">=", 1.5),
    ("server CPU: writer / E", "writer", "E", "server_cpu_s", "<=", 1.8),
    ("wall: C / writer", "C", "writer", "wall_s", ">=", 3.0),
    ("WAL: writer / writer_reimport", "writer", "writer_reimport", "wal_mb", ">=", 50.0),
)


METHODS = ("A", "C", "E", "writer", "Eb", "fast", "budget")


@click.command()
@click.option("--rows", type=click.IntRange(1000, 1_000_000), default=50_000, show_default=True,
              help="Rows in the generated roster file.")
@click.option("--methods", default=",".join(METHODS), show_default=True,
              help="Comma-separated subset of A, C, E, writer (writer includes the re-import), "
                   "Eb (E in the writer's transaction sizes), fast (fast_p99_ms) and budget "
                   "(budget_share).")
@click.option("--feed", type=click.Choice(sorted(WRITER_FEEDS)), default="redis",
              show_default=True,
              help="How the writer methods receive their intents: through Redis to a running "
                   "writer, or straight to its sink in a loop.")
@click.option("--producers", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Producer threads enqueueing the intents together (Redis feed).")
@click.option("--backlog-rows", type=click.IntRange(1000, 1_000_000), default=100_000,
              show_default=True, help="Roster rows streamed in (fast) and drained (budget).")
@click.option("--intent-log/--no-intent-log", default=True, show_default=True,
              help="The writer records applied intents in the write-intent log (as "
                   "`jobplatform writer` does by default).")
@click.option("--database-url", envvar="DATABASE_URL", show_envvar=True,
              help="The PostgreSQL server (local: its backends' CPU is read from /proc); "
                   "default: the stack's.")
@click.option("--repeat", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Runs of each method; each figure is the median of the runs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(rows: int, methods: str, feed: str, producers: int, backlog_rows: int,
            intent_log: bool, database_url: str | None, repeat: int, as_json: bool) -> None:
    """The writer against per-row ORM writes (A), multi-row upserts (C) and COPY (E)."""
    from jobplatform.cli._common import echo_json, settings_from_env
    from jobplatform.logging import configure_logging
    from jobplatform.stack import ensure_services
    from writer.db import with_database

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = set(chosen) - set(METHODS)
    if unknown:
        raise click.BadParameter(f"unknown methods {sorted(unknown)}", param_hint="--methods")
    settings = settings_from_env()
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    if database_url is not None:
        settings = settings.model_copy(update={"database_url": database_url})
    settings = ensure_services(settings).apply(settings)
    assert settings.database_url is not None
    database_url = settings.database_url
    admin_url = with_database(database_url, "postgres")
    context = Feed(settings, producers=producers, intent_log=intent_log)
    data = generate(rows)
    runs: dict[str, list[Measured]] = {}
    loaded: dict[str, list[dict[str, Any]]] = {}
    makers: dict[str, Callable[[str], Method]] = {
        "A": lambda url: method_a(url, data),
        "C": lambda url: method_c(url, data),
        "E": lambda url: method_e(url, data),
    }
    feed_fn = WRITER_FEEDS[feed]
    makers["writer"] = lambda url: feed_fn(context, url, roster_intents(data, uuid.uuid4(), T0))

    def reimport(url: str) -> None:
        again = roster_intents(data, uuid.uuid4(), T0 + timedelta(hours=1))
        runs.setdefault("writer_reimport", []).append(
            measure_method(admin_url, url, len(data.rows), feed_fn(context, url, again))
        )

    under_load = {"fast": fast_latency, "budget": budget_drain}
    for attempt in range(repeat):
        for name in ("E", "C", "A", "writer", "Eb", "fast", "budget"):
            if name not in chosen:
                continue
            if name == "Eb":
                per_txn = _writer_rows_per_txn(runs.get("writer", [])[attempt:], len(data.rows),
                                               settings.writer.batch_max_rows)
                makers["Eb"] = partial(_batched_floor, data=data, per_txn=per_txn)
            _progress(as_json, f"run {attempt + 1}/{repeat}: {name} ...")
            if name in under_load:
                loaded.setdefault(name, []).append(
                    under_load[name](context, database_url, backlog_rows))
                continue
            runs.setdefault(name, []).append(_run_method(
                database_url, admin_url, name, data, preload=name not in ("E", "Eb"),
                make=makers[name], then=reimport if name == "writer" else None,
            ))
    results = {name: _median(found) for name, found in runs.items()}
    report = _report(rows, feed, results, _statements_source(admin_url),
                     {name: _median_dict(found) for name, found in loaded.items()})
    report.update(repeat=repeat, producers=producers if feed == "redis" else None,
                  intent_log=intent_log, writer_settings=settings.writer.model_dump(mode="json"))
    if as_json:
        echo_json(report)
    else:
        click.echo(_table(report))


def _batched_floor(url: str, *, data: Dataset, per_txn: int) -> Method:
    return method_e(url, data, per_txn=per_txn)


def _writer_rows_per_txn(writer_runs: Sequence[Measured], rows: int, default: int) -> int:
    """The rows per transaction of this attempt's writer run (the first given), else
    ``default``."""
    if writer_runs and writer_runs[0].transactions:
        return max(1, round(rows / writer_runs[0].transactions))
    return default


def _median(runs: list[Measured]) -> Measured:
    """Each figure's median over the runs."""
    values = {
        name: sorted(getattr(r, name) for r in runs)[len(runs) // 2]
        for name in Measured.__dataclass_fields__
    }
    return Measured(**values)


def _median_dict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric figure's median over the runs (None when a run had none)."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        numbers = sorted(v for v in values if v is not None)
        out[key] = numbers[len(numbers) // 2] if len(numbers) == len(values) else None
    return out


def _progress(quiet: bool, text: str) -> None:
    if not quiet:
        click.echo(text, err=True)


def _report(rows: int, feed: str, results: dict[str, Measured], source: str,
            loaded: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from bench._common import machine

    report: dict[str, Any] = {"rows": rows, "writer_feed": feed, "statements_source": source}
    order = ("A", "C", "E", "Eb", "writer", "writer_reimport")
    report.update({name: asdict(results[name]) for name in order if name in results})
    checks = []

    def check(label: str, value: float | None, sense: str, bound: float) -> None:
        met = value is not None and {
            ">=": value >= bound, "<=": value <= bound, "<": value < bound}[sense]
        checks.append({"target": label, "value": value, "bound": f"{sense} {bound:g}",
                       "met": met})

    for label, num, den, metric, sense, bound in TARGETS:
        if num in results and den in results:
            check(label, ratio(getattr(results[num], metric), getattr(results[den], metric)),
                  sense, bound)
    writers = [results[n] for n in ("writer", "writer_reimport") if n in results]
    if writers:
        check("writer p99 transaction ms", max(w.p99_txn_ms for w in writers), "<", 100)
        check("peak connections of the writer", max(w.peak_connections for w in writers),
              "<=", 2)
    fast = loaded.get("fast")
    budget = loaded.get("budget")
    report["fast_p99_ms"] = fast["p99_ms"] if fast else None
    report["budget_share"] = budget["share"] if budget else None
    if fast:
        check("fast_p99_ms", fast["p99_ms"], "<", 100)
    if budget:
        check(f"budget_share (WRITER_DB_BUDGET={budget['budget']:g})", budget["share"], "<=",
              0.3)
    report["fast"] = fast
    report["budget"] = budget
    report["targets"] = checks
    report["machine"] = machine()
    return report


def _table(report: dict[str, Any]) -> str:
    names = [n for n in ("A", "C", "E", "Eb", "writer", "writer_reimport") if n in report]
    columns = ("wall_s", "rows_per_s", "statements", "server_cpu_s", "wal_mb", "max_txn_ms",
               "p99_txn_ms", "peak_connections", "transactions", "txn_s")
    feed = report["writer_feed"]
    if report.get("producers"):
        feed += f" ({report['producers']} producers)"
    lines = [
        f"{report['rows']:,} roster rows, writer feed: {feed}; "
        f"statements counted by the {report['statements_source']}",
        "",
        markdown_table(("method", *columns),
                       [(n, *(report[n][c] for c in columns)) for n in names]),
        "",
    ]
    if "writer" in report:
        w = report["writer"]
        for other in ("A", "C", "E", "Eb"):
            if other in report:
                o = report[other]
                lines.append(
                    f"writer vs {other}: server CPU {_x(o['server_cpu_s'], w['server_cpu_s'])},"
                    f" wall {_x(o['wall_s'], w['wall_s'])}, WAL {_x(o['wal_mb'], w['wal_mb'])},"
                    f" statements {_x(o['statements'], w['statements'])}"
                )
        lines.append("")
    fast = report.get("fast")
    if fast:
        lines.append(
            f"fast lane: {fast['intents']} video status intents at {fast['rate_per_s']:g}/s "
            f"while {fast['rows']:,} roster rows streamed in ({fmt(fast['roster_s'])} s): "
            f"event to commit p50 {fmt(fast['p50_ms'])} ms, p99 {fmt(fast['p99_ms'])} ms, "
            f"max {fmt(fast['max_ms'])} ms")
    budget = report.get("budget")
    if budget:
        lines.append(
            f"budget {budget['budget']:g}: {budget['rows']:,}-row backlog drained in "
            f"{fmt(budget['drain_s'])} s; writer backend CPU {fmt(budget['server_cpu_s'], 2)} s "
            f"= {fmt(budget['share'], 3)} of wall; in transactions "
            f"{fmt(budget['transaction_share'], 3)} of wall")
    if fast or budget:
        lines.append("")
    for item in report["targets"]:
        lines.append(f"{'met ' if item['met'] else 'MISSED'} {item['target']}: "
                     f"{fmt(item['value'], 2)} (target {item['bound']})")
    return "\n".join(lines)


def _x(other: float, writer: float) -> str:
    """'30x below' when the writer uses less than ``other``, '1.4x above' when more."""
    if not writer or not other:
        return "-"
    if other >= writer:
        return f"{other / writer:.1f}x below"
    return f"{writer / other:.1f}x above"
