"""The database session stage: the writer's one connection, its lock, and outages.

One connection at a time (a pool of at most one), opened lazily. :meth:`Session.with_db` runs
work on the connection that holds the writer's session lock; on an outage it drops the
connection, backs off with jitter and runs the work again, in order, until it succeeds or the
writer stops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import dramatiq
import psycopg
import redis
from psycopg_pool import NullConnectionPool

from jobplatform.logging import get_logger
from writer import lock
from writer.db import APPLICATION_NAME, session_options
from writer.errors import DatabaseUnavailable
from writer.pacing import Backoff

if TYPE_CHECKING:
    from writer.engine.writer import Writer

log = get_logger("writer")

T = TypeVar("T")
Conn = psycopg.Connection[tuple[object, ...]]

#: Redis errors after which the writer reconnects and goes on.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    dramatiq.errors.BrokerConnectionError,
)
#: Database errors that mean "not now": hold the batch and retry.
DB_OUTAGES: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


class IntentLogUnavailable(Exception):
    """The intent log could not record a batch; the batch is rolled back and retried."""


class BatchTooSlow(Exception):
    """The batch hit ``WRITER_STATEMENT_TIMEOUT_MS`` again and again: split it, like bad data."""


class Abandoned(Exception):
    """A stop was requested while the database was down: the held batch goes back to Redis."""


_RETRIED: tuple[type[BaseException], ...] = (*DB_OUTAGES, IntentLogUnavailable)


def _timed_out(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.errors.QueryCanceled):
            return True
        seen = seen.__cause__
    return False


class Session:
    """The writer's connection to PostgreSQL."""

    def __init__(self, writer: Writer, database_url: str) -> None:
        self.writer = writer
        self.database_url = database_url
        self.pool: NullConnectionPool[Conn] | None = None
        self.conn: Conn | None = None
        self.locked_conn: Conn | None = None

    def open(self) -> None:
        """Create the pool; no connection is made yet."""
        self.pool = NullConnectionPool(
            self.database_url,
            max_size=1,
            open=False,
            name="writer",
            timeout=5.0,
            kwargs={
                "autocommit": True,
                "application_name": APPLICATION_NAME,
                "connect_timeout": 5,
                "options": session_options(self.writer.settings.db_schema),
                # A peer that vanishes without closing the socket is noticed in seconds.
                "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                "keepalives_count": 3, "tcp_user_timeout": 15_000,
            },
        )
        self.pool.open()

    def close(self) -> None:
        self.drop()
        if self.pool is not None:
            self.pool.close()

    @property
    def backend_pid(self) -> int | None:
        conn = self.conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    def connection(self) -> Conn:
        conn = self.conn
        if conn is not None and (conn.closed or conn.broken):
            self.drop()
            conn = None
        if conn is None:
            assert self.pool is not None
            conn = self.pool.getconn(timeout=5.0)
            self.conn = conn
            if not self.writer.tables_checked:
                self.writer.check_tables(conn)
        return conn

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self.locked_conn is conn:
            self.locked_conn = None
        assert self.pool is not None
        try:
            self.pool.putconn(conn)
        except Exception:
            conn.close()

    def try_lock(self) -> bool:
        """Take the writer's session lock on a (new) connection; never waits."""
        conn = self.connection()
        if lock.try_acquire(conn, self.writer.settings.lock_key):
            self.locked_conn = conn
            return True
        return False

    def unlock(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                lock.release(self.conn)
        self.locked_conn = None

    def owned(self) -> Conn:
        """The connection holding the session lock; re-taken after a reconnect."""
        conn = self.connection()
        if conn is not self.locked_conn:
            if not lock.try_acquire(conn, self.writer.settings.lock_key):
                raise lock.LockLost("another writer took the lock while this one reconnected")
            self.locked_conn = conn
        return conn

    def begin(self, conn: Conn) -> int:
        """First statement of a batch transaction: the lock, the timeout, the batch number."""
        settings = self.writer.settings
        return lock.begin_batch(conn, settings.lock_key, settings.statement_timeout_ms)

    def guard(self, conn: Conn) -> None:
        lock.guard(conn, self.writer.settings.lock_key)

    def with_db(self, work: Callable[[Conn], T]) -> T:
        """Run ``work`` on the locked connection; on an outage back off and retry, in order."""
        writer = self.writer
        backoff = Backoff()
        timeouts = 0
        while True:
            try:
                return work(self.owned())
            except _RETRIED as exc:
                if _timed_out(exc):
                    timeouts += 1
                    if timeouts >= 3:
                        raise BatchTooSlow(f"statement timeout, {timeouts} times: {exc}") from exc
                self.drop()
                writer.stats.count(db_retries=1)
                if backoff.attempts == 0 or backoff.attempts % 10 == 0:
                    log.warning("database unavailable; holding the batch", error=str(exc),
                                attempt=backoff.attempts)
                if writer.stopping:
                    raise Abandoned from exc
                writer.wait(backoff.next())
                if writer.stopping:
                    raise Abandoned from exc
