"""The fast lane on a connection of its own: status changes beside the bulk work, not after it.

With ``WRITER_FAST_CONNECTION`` (the default) the active writer applies ``writes.fast`` on a
second connection, from a thread of its own, each batch in a short transaction of its own. A
status change then waits for its own transaction, never for the bulk transaction in flight on
the writer's first connection. The writer holds at most these two connections, and a standby
one. The guarantees hold across both (README, The writer):

- **One active writer.** A fast-lane transaction begins by proving that the writer's own
  session still holds the writer lock, while holding the fast-lane key shared
  (:func:`writer.lock.begin_fast`); a writer that takes over waits for that key exclusively
  before its first batch (:func:`writer.lock.bar_fast_lanes`). So no fast-lane transaction of
  a writer that lost the lock commits after its successor began.
- **The ledger.** One table, one unique id per intent, whichever connection claims it.
- **The log's order.** Both connections append to the intent log and COMMIT one at a time,
  renumbering a batch that reaches its COMMIT behind a later-numbered one
  (:class:`writer.engine.apply.CommitOrder`): the log is in commit order.
- **The budget.** Fast-lane transactions are charged to it and never held by it, as before.

The lane's life follows the writer's role: the leader hands it the fast lane when the writer
becomes active (:meth:`FastLane.hand`) and pauses it, waiting for the batch in hand, before it
puts held messages back (:meth:`FastLane.pause`). A lost lock found here stands the writer
down through the leader, from the writer's own loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import psycopg
from dramatiq.brokers.redis import RedisBroker
from psycopg_pool import NullConnectionPool

from jobplatform.logging import get_logger
from writer import lock
from writer.batcher import Batch, BatchSizer, Limits
from writer.db import APPLICATION_NAME, deadline
from writer.engine.ack import Acker
from writer.engine.apply import Applier
from writer.engine.session import (
    DB_OUTAGES,
    REDIS_ERRORS,
    Abandoned,
    BatchTooSlow,
    IntentLogUnavailable,
    LogOutage,
    _timed_out,
    writer_pool,
)
from writer.lanes import Lane
from writer.pacing import Backoff

if TYPE_CHECKING:
    from writer.engine.writer import Writer

log = get_logger("writer")

T = TypeVar("T")
Conn = psycopg.Connection[tuple[object, ...]]

#: ``application_name`` of the fast lane's connection (the doctor counts it as the writer's).
FAST_APPLICATION_NAME = f"{APPLICATION_NAME}-fast"


class FastSession:
    """The fast lane's connection: opened on first use, dropped on an outage and tried again
    with backoff, in order, until it works or the lane is paused."""

    def __init__(self, lane: FastLane, database_url: str) -> None:
        self.lane = lane
        self.writer = lane.writer
        self.database_url = database_url
        self.pool: NullConnectionPool[Conn] | None = None
        self.conn: Conn | None = None
        self.proven_at = 0.0

    def open(self) -> None:
        self.pool = writer_pool(self.database_url, self.writer.settings, "writer-fast",
                                FAST_APPLICATION_NAME)
        self.pool.open()

    def close(self) -> None:
        self.drop()
        if self.pool is not None:
            self.pool.close()
            self.pool = None

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
            conn = self.conn = self.pool.getconn(timeout=5.0)
        return conn

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            assert self.pool is not None
            self.pool.putconn(conn)
        except Exception:
            conn.close()

    def _holder(self) -> int:
        pid = self.writer.session.backend_pid
        if pid is None or self.writer.session.locked_conn is None:
            raise lock.LockLost("the writer's own session holds no lock")
        return pid

    def begin(self, conn: Conn) -> int:
        settings = self.writer.settings
        batch_seq = lock.begin_fast(conn, settings.lock_key, self._holder(),
                                    settings.statement_timeout_ms)
        self.proven_at = time.monotonic()
        return batch_seq

    def guard(self, conn: Conn) -> None:
        lock.guard_fast(conn, self.writer.settings.lock_key, self._holder())

    def probe(self) -> None:
        """Before a fetch, when the last proof is older than ``WRITER_LOCK_PROBE_INTERVAL_MS``:
        prove on this connection, if it has one, that the writer's session still holds the
        lock (within ``WRITER_FENCE_TIMEOUT_MS``). :class:`~writer.lock.LockLost` when it does
        not; a connection that fails is dropped (the next batch opens another)."""
        settings = self.writer.settings
        conn = self.conn
        if conn is None or \
                time.monotonic() - self.proven_at < settings.lock_probe_interval_ms / 1000:
            return
        try:
            with deadline(conn, settings.fence_timeout_ms / 1000):
                self.guard(conn)
        except DB_OUTAGES as exc:
            self.drop()
            log.warning("the fast lane's lock probe failed", error=str(exc))
            return
        self.proven_at = time.monotonic()

    def with_db(self, work: Callable[[Conn], T]) -> T:
        writer = self.writer
        backoff = Backoff()
        log_outage = LogOutage(writer, "fast")
        timeouts = 0
        while True:
            if self.lane.paused or writer.stopping:
                raise Abandoned
            try:
                result = work(self.connection())
            except IntentLogUnavailable as exc:
                self.lane.sleep(log_outage.failed(exc))
                continue
            except DB_OUTAGES as exc:
                if _timed_out(exc):
                    timeouts += 1
                    if timeouts >= 3:
                        raise BatchTooSlow(f"statement timeout, {timeouts} times: {exc}") from exc
                self.drop()
                writer.stats.count(db_retries=1)
                if backoff.attempts == 0 or backoff.attempts % 10 == 0:
                    log.warning("database unavailable; the fast lane holds its batch",
                                error=str(exc), attempt=backoff.attempts)
                self.lane.sleep(backoff.next())
                continue
            log_outage.over()
            return result


class FastLane:
    """Takes batches from ``writes.fast`` and applies them on :class:`FastSession`."""

    def __init__(self, writer: Writer, database_url: str) -> None:
        settings = writer.settings
        self.writer = writer
        # On Redis only: dramatiq's RabbitMQ consumers live on their thread's connection.
        self.enabled = settings.fast_connection and isinstance(writer.broker, RedisBroker)
        self.session = FastSession(self, database_url)
        #: Sizes the lane's batches for ``WRITER_TARGET_TXN_MS`` (a status change weighs one
        #: row), as the collector's sizer does the bulk work's.
        self.sizer = BatchSizer(settings.target_txn_ms, settings.batch_min_rows,
                                settings.batch_max_rows)
        self.applier = Applier(writer, self.session, lanes=self._lanes, sizer=self.sizer,
                               lock_lost=self._lock_lost)
        self.acker = Acker(writer)
        self.base_limits = Limits.from_settings(settings)
        self._lane: Lane | None = None
        self._state = threading.Condition()
        self._may_run = False
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def _lanes(self) -> Sequence[Lane]:
        return [self._lane] if self._lane is not None else []

    @property
    def backend_pid(self) -> int | None:
        return self.session.backend_pid

    @property
    def paused(self) -> bool:
        return not self._may_run

    # --- life cycle (the writer's loop thread) ---------------------------------------------

    def start(self) -> None:
        """Start the lane's thread; it waits until :meth:`hand` gives it a lane."""
        if not self.enabled or self._thread is not None:
            return
        self._closed = False
        self.session.open()
        self._thread = threading.Thread(target=self._loop, name="writer-fast-lane", daemon=True)
        self._thread.start()

    def hand(self, lane: Lane) -> None:
        """The writer is active: apply what ``lane`` brings."""
        with self._state:
            self._lane = lane
            self._may_run = True
            self._state.notify_all()

    def pause(self, timeout_s: float | None = None) -> bool:
        """Stop taking batches and wait until the batch in hand is settled (committed and
        acked, or given up); False when it still was after ``timeout_s``."""
        with self._state:
            self._may_run = False
            self._state.notify_all()
            settled = self._state.wait_for(lambda: not self._busy, timeout_s)
            if settled:
                self._lane = None
            return settled

    def close(self) -> None:
        if self._thread is None:
            return
        self.pause(timeout_s=30.0)
        with self._state:
            self._closed = True
            self._state.notify_all()
        self._thread.join(timeout=30.0)
        self._thread = None
        self.session.close()

    def sleep(self, seconds: float) -> None:
        """Wait up to ``seconds``, returning early when paused or closed."""
        deadline = time.monotonic() + seconds
        with self._state:
            while self._may_run and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._state.wait(min(left, 0.25))

    # --- the lane's thread -----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._state:
                while not self._may_run and not self._closed:
                    self._state.wait(0.25)
                if self._closed:
                    return
                lane = self._lane
                self._busy = True
            try:
                if lane is not None:
                    self._step(lane)
            except REDIS_ERRORS as exc:
                self.writer.stats.count(redis_retries=1)
                log.warning("redis unavailable to the fast lane", error=str(exc))
                self.sleep(Backoff(0.2, 2.0).next())
            except Exception:
                log.exception("the fast lane failed; it goes on")
                self.sleep(1.0)
            finally:
                with self._state:
                    self._busy = False
                    self._state.notify_all()

    def _step(self, lane: Lane) -> None:
        try:
            self.session.probe()
        except lock.LockLost as exc:
            self._lock_lost(str(exc))
            return
        batch = self._collect(lane)
        if batch.items and self.applier.process(batch):
            self.acker.ack(batch.items)

    def _collect(self, lane: Lane) -> Batch:
        """What the fast lane holds now, up to the batch limits (waiting up to the poll
        timeout when it is empty, and at most ``WRITER_BATCH_MAX_AGE_MS`` for more)."""
        limits = self.base_limits.with_rows(self.sizer.rows)
        max_age_ms = self.writer.settings.batch_max_age_ms
        batch = Batch()
        try:
            got = lane.take(limits.intents, wait=True)
            while got:
                left = batch.add_all(got, limits)
                if left:
                    lane.put_back(left)
                    break
                if batch.full(limits) or batch.age_ms() >= max_age_ms or self.paused:
                    break
                got = lane.take(limits.intents - len(batch), wait=False)
        finally:
            self.writer.stats.spend(lane.pop_spent())
        return batch

    def _lock_lost(self, reason: str) -> None:
        """The writer's session lost the lock: stop, and have the writer stand down."""
        with self._state:
            self._may_run = False
            self._state.notify_all()
        self.writer.leader.lose(reason)

