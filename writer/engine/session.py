"""The database session stage: the writer's one connection, its lock, and outages.

One connection at a time (a pool of at most one), opened lazily. :meth:`Session.with_db` runs
work on the connection that holds the writer's session lock; on an outage it drops the
connection, backs off with jitter and runs the work again, in order, until it succeeds or the
writer stops.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import dramatiq
import psycopg
import redis
from psycopg_pool import NullConnectionPool

from jobplatform.logging import get_logger
from writer import lock
from writer.db import (
    APPLICATION_NAME,
    DeadlineConnection,
    configure_writer_session,
    deadline,
    writer_connect_kwargs,
)
from writer.errors import DatabaseUnavailable
from writer.pacing import Backoff

if TYPE_CHECKING:
    from jobplatform.settings import WriterSettings
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


class LogOutage:
    """One batch's wait for an intent log that cannot record it (a full disk, a read-only
    folder): the batch is held and retried with backoff, its messages unacked, and nothing
    more is consumed meanwhile. The database session and the lock are kept: handing the lock
    over would not make the log writable, and on a shared folder the writers would swap it
    back and forth for the whole episode. Said in the log, in the stats
    (``intent_log_error``, ``log_retries``) and in ``/readyz``."""

    def __init__(self, writer: Writer, lane: str) -> None:
        self.writer = writer
        self.lane = lane
        self.backoff = Backoff(0.2, 5.0)
        self.since: float | None = None

    def failed(self, exc: BaseException) -> float:
        """Record one failure; the seconds to wait before the next attempt."""
        stats = self.writer.stats
        stats.count(log_retries=1)
        error = str(exc.__cause__ or exc)
        attempt = self.backoff.attempts
        if self.since is None:
            self.since = time.monotonic()
            stats.gauge(intent_log_error=error)
            log.error("intent log unavailable: holding the batch, keeping the database "
                      "session and the lock, consuming nothing; retrying", error=error,
                      lane=self.lane)
        elif attempt % 10 == 0:
            log.error("intent log still unavailable; the batch is held", error=error,
                      lane=self.lane, attempt=attempt,
                      for_s=round(time.monotonic() - self.since, 1))
        return self.backoff.next()

    def over(self) -> None:
        """The batch was logged (and committed): say so if it had waited."""
        if self.since is None:
            return
        self.writer.stats.gauge(intent_log_error="")
        log.warning("intent log writable again; going on", lane=self.lane,
                    attempts=self.backoff.attempts,
                    after_s=round(time.monotonic() - self.since, 1))
        self.since = None


def _timed_out(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.errors.QueryCanceled):
            return True
        seen = seen.__cause__
    return False


def writer_pool(url: str, settings: WriterSettings, name: str,
                application_name: str) -> NullConnectionPool[Conn]:
    """A pool of at most one writer connection (not opened yet), each bounded on both ends
    (:func:`writer.db.configure_writer_session`)."""
    return NullConnectionPool(
        url, max_size=1, open=False, name=name, timeout=5.0,
        connection_class=DeadlineConnection,
        kwargs=writer_connect_kwargs(settings, application_name),
        configure=lambda conn: configure_writer_session(conn, settings),
    )


class Session:
    """The writer's connection to PostgreSQL."""

    def __init__(self, writer: Writer, database_url: str) -> None:
        self.writer = writer
        self.database_url = database_url
        self.pool: NullConnectionPool[Conn] | None = None
        self.conn: Conn | None = None
        self.locked_conn: Conn | None = None
        self.proven_at = 0.0
        """When (monotonic) this session last proved it holds the lock."""
        self.may_fence = True

    def open(self) -> None:
        """Create the pool; no connection is made yet."""
        self.pool = writer_pool(self.database_url, self.writer.settings, "writer",
                                APPLICATION_NAME)
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
            self.proven_at = time.monotonic()
            return True
        return False

    def fence(self) -> int | None:
        """As a standby: terminate the lock holder's session if it hung
        (:func:`writer.lock.fence_hung_holder`); the pid terminated, if one was."""
        settings = self.writer.settings
        if not self.may_fence:
            return None
        try:
            return lock.fence_hung_holder(self.connection(), settings.lock_key,
                                          settings.fence_timeout_ms)
        except psycopg.errors.InsufficientPrivilege as exc:
            self.may_fence = False
            log.warning("this standby may not terminate a hung lock holder's session (grant "
                        "its role pg_signal_backend, or run every writer as one role)",
                        error=str(exc))
            return None

    def probe(self) -> str | None:
        """Prove the lock is still this session's when the last proof is older than
        ``WRITER_LOCK_PROBE_INTERVAL_MS``: one round trip, within ``WRITER_FENCE_TIMEOUT_MS``.
        Why the writer must stand down, or None. Nothing is proved while no locked
        connection is idle (:meth:`with_db` is reconnecting, or a transaction is open)."""
        conn = self.conn
        settings = self.writer.settings
        if conn is None or conn is not self.locked_conn or \
                time.monotonic() - self.proven_at < settings.lock_probe_interval_ms / 1000:
            return None
        if not conn.closed and \
                conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            return None
        try:
            with deadline(conn, settings.fence_timeout_ms / 1000):
                held = lock.holds(conn, settings.lock_key)
        except DB_OUTAGES as exc:
            self.drop()
            return f"the writer's database session was lost: {exc}"
        if not held:
            return f"advisory lock {settings.lock_key} is no longer held by this session"
        self.proven_at = time.monotonic()
        return None

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
            self.proven_at = time.monotonic()
        return conn

    def begin(self, conn: Conn) -> int:
        """First statement of a batch transaction: the lock, the timeout, the batch number."""
        settings = self.writer.settings
        batch_seq = lock.begin_batch(conn, settings.lock_key, settings.statement_timeout_ms)
        self.proven_at = time.monotonic()
        return batch_seq

    def guard(self, conn: Conn) -> None:
        lock.guard(conn, self.writer.settings.lock_key)

    def with_db(self, work: Callable[[Conn], T]) -> T:
        """Run ``work`` on the locked connection; on an outage back off and retry, in order."""
        writer = self.writer
        backoff = Backoff()
        log_outage = LogOutage(writer, "writer")
        timeouts = 0
        while True:
            try:
                result = work(self.owned())
            except IntentLogUnavailable as exc:
                # The transaction was rolled back; the session and its lock stay.
                if writer.stopping:
                    raise Abandoned from exc
                writer.wait(log_outage.failed(exc))
                if writer.stopping:
                    raise Abandoned from exc
                continue
            except DB_OUTAGES as exc:
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
                continue
            log_outage.over()
            return result
