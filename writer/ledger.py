"""Retention of ``writer_ledger``: the active writer deletes old ids in small batches.

An id kept in the ledger is what makes a redelivered intent a no-op; once it is deleted, the same
intent arriving again would be applied again. The retention must therefore exceed the longest
time a message can wait in the queues.
"""

from __future__ import annotations

from psycopg import Connection

from writer import lock

#: Most rows one prune transaction deletes: a few milliseconds of work, like a small batch.
PRUNE_ROWS = 5000

_PRUNE = (
    "DELETE FROM writer_ledger WHERE ctid = ANY(ARRAY("
    " SELECT ctid FROM writer_ledger"
    " WHERE applied_at < now() - make_interval(days => %s) LIMIT %s))"
)


def prune(conn: Connection[tuple[object, ...]], *, lock_key: int, retention_days: int,
          statement_timeout_ms: int, limit: int = PRUNE_ROWS) -> int:
    """Delete up to ``limit`` ledger rows older than ``retention_days`` in one short transaction.

    The transaction takes the writer's transaction-level lock first (:func:`writer.lock.guard`,
    :class:`writer.lock.LockLost` when another writer holds it). Returns the rows deleted.
    """
    with conn.transaction():
        lock.guard(conn, lock_key)
        conn.execute("SELECT set_config('statement_timeout', %s, true)",
                     (f"{statement_timeout_ms}ms",))
        return conn.execute(_PRUNE, (retention_days, limit)).rowcount
