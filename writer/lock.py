"""One active writer: a PostgreSQL advisory lock on the writer's own connection.

The active writer holds the session-level lock on ``WRITER_LOCK_KEY``; a standby polls
:func:`try_acquire` on its own connection and gets the lock the moment the active writer's
session ends (a crash or kill closes the socket; the server releases the lock). Each batch also
takes the transaction-level lock on the same key and connection (:func:`begin_batch`): a
writer whose session was lost and reconnected cannot apply a batch while another holds the lock.
"""

from __future__ import annotations

from psycopg import Connection


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


def guard(conn: Connection[tuple[object, ...]], key: int) -> None:
    """Take the transaction lock in an open transaction; :class:`LockLost` if another holds it."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,)).fetchone()
    if row is None or not row[0]:
        raise LockLost(f"advisory lock {key} is held by another writer")


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
