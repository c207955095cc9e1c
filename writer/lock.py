"""One active writer: a PostgreSQL advisory lock on the writer's own connection.

The active writer holds the session-level lock on ``WRITER_LOCK_KEY``; a standby polls
:func:`try_acquire` on its own connection and gets the lock the moment the active writer's
session ends (a crash or kill closes the socket; the server releases the lock). Each batch also
takes the transaction-level lock on the same key and connection (:func:`begin_batch`): a
writer whose session was lost and reconnected cannot apply a batch while another holds the lock.
"""

from __future__ import annotations

from psycopg import Connection, sql
from psycopg.errors import LockNotAvailable


class LockLost(Exception):
    """Another writer holds the lock: this one must stop applying and stand by."""


def try_acquire(conn: Connection[tuple[object, ...]], key: int) -> bool:
    """Take the session lock if free (or already ours); never waits."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


def release(conn: Connection[tuple[object, ...]]) -> None:
    conn.execute("SELECT pg_advisory_unlock_all()")


def holder_pid(conn: Connection[tuple[object, ...]], key: int) -> int | None:
    """The backend pid holding the session lock, if any (for tests and diagnostics)."""
    row = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = (%s >> 32)::oid AND objid = (%s & 4294967295)::oid AND objsubid = 1"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (key, key),
    ).fetchone()
    return None if row is None else int(str(row[0]))


def holds(conn: Connection[tuple[object, ...]], key: int) -> bool:
    """Whether this session holds the session lock: the lock probe, one cheap round trip (the
    transaction lock, taken and released at once; outside a transaction)."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


def fence_hung_holder(conn: Connection[tuple[object, ...]], key: int,
                      stale_ms: int) -> int | None:
    """Terminate the session holding the lock when it has waited on its client for
    ``stale_ms``; the pid terminated, if one was.

    Waiting on its client: idle, idle in a transaction, or in a statement reading from the
    client (a COPY whose data stopped coming). A live writer never waits that long: it probes
    its lock every ``WRITER_LOCK_PROBE_INTERVAL_MS``. A stopped process (SIGSTOP, a paused VM)
    or a frozen network path leaves its socket open, so PostgreSQL would keep the session,
    and the lock, for as long as that lasts. Waits up to a second for the session to end.
    Needs the right to signal it (the same role, or ``pg_signal_backend``).
    """
    terminate = sql.SQL("pg_terminate_backend(a.pid, 1000)"
                        if conn.info.server_version >= 140000 else "pg_terminate_backend(a.pid)")
    statement = sql.SQL(
        "SELECT a.pid, {terminate} FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = (%(key)s >> 32)::oid"
        " AND l.objid = (%(key)s & 4294967295)::oid AND l.objsubid = 1"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND l.pid <> pg_backend_pid()"
        " AND (a.state LIKE 'idle%%' OR a.wait_event = 'ClientRead')"
        " AND a.state_change < clock_timestamp() - make_interval(secs => %(stale)s)"
    ).format(terminate=terminate)
    row = conn.execute(statement, {"key": key, "stale": stale_ms / 1000}).fetchone()
    return None if row is None else int(str(row[0]))


def guard(conn: Connection[tuple[object, ...]], key: int) -> None:
    """Take the transaction lock in an open transaction; :class:`LockLost` if another holds it."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,)).fetchone()
    if row is None or not row[0]:
        raise LockLost(f"advisory lock {key} is held by another writer")


# --- the fast lane's connection ---------------------------------------------------------------
#
# The active writer may apply fast intents on a second connection (writer.engine.fastlane).
# That connection cannot take the writer's lock (the writer's own session holds it), so each
# of its transactions proves instead that the writer's session still holds it, and takes a
# shared lock on the fast-lane key: the same 64 bits as the writer's key, as the two-integer
# advisory lock (a lock space of its own, objsubid 2, which no bigint key can collide with).
# A writer that takes over waits for that key exclusively before its first batch
# (:func:`bar_fast_lanes`): no fast-lane transaction of an earlier holder is then still in
# flight, and any later one finds the lock's holder is not its writer and applies nothing.


def _fast_key(key: int) -> tuple[int, int]:
    """The writer key's two halves as signed 32-bit integers (the two-integer lock form)."""
    def signed(half: int) -> int:
        return half - (1 << 32) if half >= 1 << 31 else half

    return signed((key >> 32) & 0xFFFFFFFF), signed(key & 0xFFFFFFFF)


_HELD_BY = (
    "EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND classid = (%(key)s >> 32)::oid AND objid = (%(key)s & 4294967295)::oid"
    " AND objsubid = 1 AND pid = %(holder)s"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
)


def begin_fast(conn: Connection[tuple[object, ...]], key: int, holder_pid: int,
               statement_timeout_ms: int) -> int:
    """First statement of a fast-lane transaction: the fast lane's shared lock, proof that the
    writer's session (backend ``holder_pid``) holds the writer's lock, a statement timeout, a
    batch number. Raises :class:`LockLost` when either is missing."""
    hi, lo = _fast_key(key)
    row = conn.execute(
        "SELECT pg_try_advisory_xact_lock_shared(%(hi)s, %(lo)s), " + _HELD_BY + ","
        " set_config('statement_timeout', %(timeout)s, true),"
        " nextval('writer_batch_seq')",
        {"hi": hi, "lo": lo, "key": key, "holder": holder_pid,
         "timeout": f"{statement_timeout_ms}ms"},
    ).fetchone()
    if row is None or not row[0]:
        raise LockLost("a writer taking over is barring the fast lane")
    if not row[1]:
        raise LockLost(f"advisory lock {key} is no longer held by this writer's session")
    return int(str(row[3]))


def guard_fast(conn: Connection[tuple[object, ...]], key: int, holder_pid: int) -> None:
    """:func:`guard` for the fast lane's connection (in an open transaction)."""
    hi, lo = _fast_key(key)
    row = conn.execute(
        "SELECT pg_try_advisory_xact_lock_shared(%(hi)s, %(lo)s), " + _HELD_BY,
        {"hi": hi, "lo": lo, "key": key, "holder": holder_pid},
    ).fetchone()
    if row is None or not (row[0] and row[1]):
        raise LockLost(f"advisory lock {key} is no longer held by this writer's session")


def bar_fast_lanes(conn: Connection[tuple[object, ...]], key: int, *,
                   wait_ms: int = 5000) -> list[int]:
    """Wait until no fast-lane transaction of an earlier lock holder is in flight; run by a
    writer that has just taken the lock, before its first batch (``conn`` in autocommit).

    Fast-lane transactions hold the fast-lane key shared until they end; this takes it
    exclusively for a moment. One still in flight after ``wait_ms`` (a writer that stopped
    in the middle of one) has its session terminated. Returns the pids terminated.
    """
    hi, lo = _fast_key(key)
    terminated: list[int] = []
    for attempt in (1, 2):
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{wait_ms}ms",))
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (hi, lo))
            return terminated
        except LockNotAvailable:
            if attempt == 2:
                raise
        rows = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND objsubid = 2 AND classid = (%(hi)s::int8 & 4294967295)::oid"
            " AND objid = (%(lo)s::int8 & 4294967295)::oid AND pid <> pg_backend_pid()"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            {"hi": hi, "lo": lo},
        ).fetchall()
        terminated += [int(str(r[0])) for r in rows]
    return terminated


def begin_batch(conn: Connection[tuple[object, ...]], key: int, statement_timeout_ms: int) -> int:
    """First statement of a batch transaction: the lock, a statement timeout, the batch number.

    Raises :class:`LockLost` when another session holds the lock.
    """
    row = conn.execute(
        "SELECT pg_try_advisory_xact_lock(%s),"
        " set_config('statement_timeout', %s, true),"
        " nextval('writer_batch_seq')",
        (key, f"{statement_timeout_ms}ms"),
    ).fetchone()
    if row is None or not row[0]:
        raise LockLost(f"advisory lock {key} is held by another writer")
    return int(str(row[2]))
