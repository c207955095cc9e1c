"""The writer: one active process that applies write intents in short batched transactions.

Shaped like ``psycopg_pool.ConnectionPool``: explicit settings, :meth:`Writer.open` /
:meth:`Writer.close` (or ``with``), :meth:`Writer.run` until :meth:`Writer.stop`,
:meth:`Writer.get_stats` / :meth:`Writer.pop_stats`.

One batch::

    take from writes.fast first, then writes.bulk (capped share when fast intents wait)
    malformed messages -> writer_dead_letters (own short transaction)
    BEGIN; pg_try_advisory_xact_lock; SET LOCAL statement_timeout; nextval('writer_batch_seq')
    apply_batch -> intent log append (durable) -> COMMIT -> ack (one pipelined round trip)

Batch rows are capped so that a transaction takes about ``WRITER_TARGET_TXN_MS``
(:class:`writer.batcher.BatchSizer`, learned from the commits). The database time budget
(``WRITER_DB_BUDGET``) paces bulk work only: while it is spent, the bulk lane waits and a few
status changes are still applied at once (their time is charged to the budget too).

A batch failing on data is split in halves until the failing intent is alone; that intent goes
to the dead letters and the rest commit. On a database outage the batch is held (neither acked
nor requeued), retried in order after a backoff with jitter; a thread keeps the broker's
heartbeat alive meanwhile, so dramatiq does not hand the held messages to anyone else.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar
from uuid import UUID

import dramatiq
import psycopg
import redis
from dramatiq.brokers.redis import RedisBroker
from psycopg_pool import NullConnectionPool

from jobplatform.broker import Queues
from jobplatform.logging import get_logger
from jobplatform.progress import ProgressStore, writer_stats_key
from jobplatform.settings import Settings, WriterSettings
from schemas.intents import AnyIntent
from schemas.jobs import roster_job_id
from writer import dead, ledger, lock
from writer.batcher import Batch, BatchSizer, Limits
from writer.coalesce import Plan, plan
from writer.db import APPLICATION_NAME
from writer.errors import DataApplyError, DatabaseUnavailable
from writer.lanes import Item, Lane, requeue_unacked
from writer.pacing import Backoff, DbBudget
from writer.sink import BatchResult, apply_batch
from writer.stats import WriterStats

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


class IntentLogWriter(Protocol):
    """Where applied intents are recorded, outside PostgreSQL.

    :meth:`append` is called after a batch was applied and before it commits; it must be
    durable when it returns (a raise rolls the batch back; the writer retries it later).
    """

    def append(self, batch_seq: int, intents: Sequence[AnyIntent]) -> None: ...

    def close(self) -> None: ...


class IntentLogUnavailable(Exception):
    """The intent log could not record a batch; the batch is rolled back and retried."""


_RETRIED: tuple[type[BaseException], ...] = (*DB_OUTAGES, IntentLogUnavailable)


class BatchTooSlow(Exception):
    """The batch hit ``WRITER_STATEMENT_TIMEOUT_MS`` again and again: split it, like bad data."""


def _timed_out(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.errors.QueryCanceled):
            return True
        seen = seen.__cause__
    return False


class _Abandoned(Exception):
    """A stop was requested while the database was down: the held batch goes back to Redis."""


def _consumers_key(namespace: str) -> str:
    # Broker ids of every process that consumed the writer's queues and may hold messages.
    return f"{namespace}:writer:consumers"


class Writer:
    """The batching consumer of ``writes.fast`` and ``writes.bulk``."""

    def __init__(
        self,
        settings: WriterSettings,
        *,
        database_url: str,
        broker: RedisBroker,
        queues: Queues,
        log_writer: IntentLogWriter | None = None,
        standby_poll_s: float = 0.5,
        heartbeat_s: float = 5.0,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.broker = broker
        self.queues = queues
        self.log_writer = log_writer
        self.standby_poll_s = standby_poll_s
        self.heartbeat_s = heartbeat_s
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.base_limits = Limits.from_settings(settings)
        self.sizer = BatchSizer(settings.target_txn_ms, settings.batch_min_rows,
                                settings.batch_max_rows)
        self.limits = self.base_limits
        self.bulk_limits = self.limits.scaled(settings.bulk_share)
        self.budget = DbBudget(settings.db_budget)

        self._stop = threading.Event()
        self._closed = threading.Event()
        self._opened = False
        self._pool: NullConnectionPool[Conn] | None = None
        self._conn: Conn | None = None
        self._locked_conn: Conn | None = None
        self._fast: Lane | None = None
        self._bulk: Lane | None = None
        self._redis_dirty = False
        self._bulk_rows_avg = float(max(1, self.limits.rows))
        self._stats = WriterStats(db_budget=settings.db_budget, batch_rows_cap=self.sizer.rows)
        self._stats_lock = threading.Lock()
        self._alive = time.monotonic()
        self._next_stats = time.monotonic() + settings.stats_interval_s
        self._last_emit: tuple[float, int, int] = (time.monotonic(), 0, 0)
        self._heartbeat: threading.Thread | None = None
        self._next_prune = time.monotonic()

    @classmethod
    def from_settings(cls, settings: Settings, broker: RedisBroker, *,
                      log_writer: IntentLogWriter | None = None, **kwargs: Any) -> Writer:
        if not settings.database_url:
            raise ValueError("settings.database_url is not set (resolve the services first)")
        return cls(settings.writer, database_url=settings.database_url, broker=broker,
                   queues=Queues.from_settings(settings), log_writer=log_writer, **kwargs)

    # --- life cycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Create the connection pool (no connection yet) and start the heartbeat thread."""
        if self._opened:
            return
        self._pool = NullConnectionPool(
            self.database_url,
            max_size=1,
            open=False,
            name="writer",
            timeout=5.0,
            kwargs={
                "autocommit": True,
                "application_name": APPLICATION_NAME,
                "connect_timeout": 5,
                # A peer that vanishes without closing the socket is noticed in seconds.
                "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                "keepalives_count": 3, "tcp_user_timeout": 15_000,
            },
        )
        self._pool.open()
        self._stop.clear()
        self._closed.clear()
        self._opened = True
        self._heartbeat = threading.Thread(target=self._beat, name="writer-heartbeat",
                                           daemon=True)
        self._heartbeat.start()

    def close(self) -> None:
        """Stop, put held messages back, release the lock and close everything."""
        self.stop()
        if not self._opened:
            return
        self._shutdown()
        self._closed.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)
        if self._pool is not None:
            self._pool.close()
        if self.log_writer is not None:
            self.log_writer.close()
        self._opened = False

    def __enter__(self) -> Writer:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in hand (safe from signal handlers)."""
        self._stop.set()

    @property
    def active(self) -> bool:
        return self._fast is not None

    @property
    def backend_pid(self) -> int | None:
        """PostgreSQL backend pid of the writer's connection (the lock holder when active)."""
        conn = self._conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    def run(self) -> None:
        """Apply intents until :meth:`stop`; as a standby, wait for the lock first."""
        self.open()
        log.info("writer started", name=self.name, broker_id=self.broker.broker_id,
                 lock_key=self.settings.lock_key, budget=self.settings.db_budget)
        try:
            while not self._stop.is_set():
                self._tick()
                if not self._ensure_active():
                    continue
                batch = self._collect(bulk_after=time.monotonic() + self.budget.delay())
                if batch.items:
                    self._pace(batch)
                    self._process(batch)
                elif self._redis_dirty:
                    self._recover_redis()
                self._prune_ledger()
        finally:
            self._shutdown()
        log.info("writer stopped", name=self.name, **self._stats.snapshot())

    # --- stats -----------------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """Counters since open (or the last :meth:`pop_stats`) and the latest gauges.

        Counters: ``batches``, ``intents``, ``applied``, ``rows``, ``coalesced``,
        ``skipped_duplicate``, ``skipped_unchanged``, ``dead``, ``rejected``, ``bisections``,
        ``db_retries``, ``redis_retries``, ``lost_lock``, ``acks``, ``ledger_pruned``. Gauges:
        ``role``, ``lag_ms`` (age of the oldest message of the last batch at commit),
        ``lag_max_ms``, ``db_share`` (measured share of wall time in transactions), ``db_budget``,
        ``backlog_fast`` / ``backlog_bulk``, ``commit_ms_mean|p50|p99|max|count`` (transaction
        time of the last 4,096 batches), ``batch_rows_cap`` (row cap of the next batch, sized
        for ``WRITER_TARGET_TXN_MS``) and ``ms_per_row`` (transaction time per row it learned).
        """
        with self._stats_lock:
            self._stats.db_share = self.budget.used()
            return self._stats.snapshot()

    def pop_stats(self) -> dict[str, Any]:
        """:meth:`get_stats`, then reset the counters, ``lag_max_ms`` and the histogram."""
        with self._stats_lock:
            self._stats.db_share = self.budget.used()
            return self._stats.pop()

    def _tick(self) -> None:
        now = time.monotonic()
        self._alive = now
        if now >= self._next_stats:
            self._next_stats = now + self.settings.stats_interval_s
            self._emit_stats()

    def _emit_stats(self) -> None:
        stats = self.get_stats()
        then, batches, intents = self._last_emit
        now = time.monotonic()
        elapsed = max(now - then, 1e-6)
        stats["batches_per_s"] = round(max(0, stats["batches"] - batches) / elapsed, 2)
        stats["intents_per_s"] = round(max(0, stats["intents"] - intents) / elapsed, 1)
        self._last_emit = (now, stats["batches"], stats["intents"])
        log.info("writer stats", **stats)
        if stats["role"] != "active":
            return
        document = {**stats, "name": self.name, "broker_id": self.broker.broker_id,
                    "at": time.time()}
        ttl = max(60, int(self.settings.stats_interval_s * 3))
        try:
            self.broker.client.set(writer_stats_key(self.broker.namespace), json.dumps(document),
                                   ex=ttl)
        except REDIS_ERRORS as exc:
            log.warning("could not publish stats", error=str(exc))

    def _beat(self) -> None:
        """Heartbeat thread: any broker command refreshes this broker's heartbeat in Redis.

        It beats only while the main loop shows signs of life, so a wedged writer still
        loses its messages to the broker's requeue after the heartbeat timeout.
        """
        stall_s = max(3 * self.heartbeat_s, self.broker.heartbeat_timeout / 1000 * 0.75)
        while not self._closed.wait(self.heartbeat_s):
            if time.monotonic() - self._alive > stall_s:
                continue
            try:
                fast = int(self.broker.do_qsize(self.queues.writes_fast))
                bulk = int(self.broker.do_qsize(self.queues.writes_bulk))
            except REDIS_ERRORS:
                continue
            with self._stats_lock:
                self._stats.backlog_fast, self._stats.backlog_bulk = fast, bulk

    # --- roles -----------------------------------------------------------------------------

    def _set_role(self, role: str) -> None:
        if self._stats.role != role:
            log.info("writer role", role=role, name=self.name)
            self._stats.role = role

    def _ensure_active(self) -> bool:
        if self.active:
            return True
        try:
            conn = self._connection()
            if lock.try_acquire(conn, self.settings.lock_key):
                self._locked_conn = conn
                self._become_active()
                return True
        except DB_OUTAGES as exc:
            self._drop_connection()
            log.warning("database unavailable while waiting for the lock", error=str(exc))
        except REDIS_ERRORS as exc:
            log.warning("redis unavailable while taking over", error=str(exc))
        self._set_role("standby")
        self._wait(random.uniform(self.standby_poll_s, 2 * self.standby_poll_s))
        return False

    def _become_active(self) -> None:
        """Take over: requeue what earlier writers left unacked, then start consuming."""
        client = self.broker.client
        key = _consumers_key(self.broker.namespace)
        me = self.broker.broker_id
        recovered = 0
        for raw in client.smembers(key):
            other = raw.decode() if isinstance(raw, bytes) else str(raw)
            if other == me:
                continue
            for queue in self.queues.writes:
                recovered += requeue_unacked(self.broker, queue, other)
            client.srem(key, other)
        client.sadd(key, me)
        settings = self.settings
        # What lives now (modules, schemas, settings, whatever the process held before) stays:
        # full collections then scan only what the writer allocated since, not all of it.
        gc.freeze()
        self._fast = Lane(self.broker, self.queues.writes_fast,
                          max_intent_bytes=settings.max_intent_bytes,
                          poll_timeout_ms=settings.poll_timeout_ms)
        self._bulk = Lane(self.broker, self.queues.writes_bulk,
                          max_intent_bytes=settings.max_intent_bytes,
                          poll_timeout_ms=settings.poll_timeout_ms)
        self._set_role("active")
        log.info("writer active", name=self.name, recovered=recovered)

    def _step_down(self, reason: str) -> None:
        log.warning("writer lost the lock; standing by", reason=reason)
        with self._stats_lock:
            self._stats.lost_lock += 1
        self._release_lanes()
        self._locked_conn = None
        self._set_role("standby")

    def _release_lanes(self) -> bool:
        """Requeue everything the lanes hold; False when Redis could not be reached."""
        ok = True
        for lane in (self._fast, self._bulk):
            if lane is None:
                continue
            try:
                lane.release()
            except REDIS_ERRORS as exc:
                ok = False
                log.warning("could not requeue held messages", queue=lane.queue, error=str(exc))
            lane.close()
        self._fast = self._bulk = None
        return ok

    def _shutdown(self) -> None:
        if self._pool is None:
            return
        was_active = self.active
        released = self._release_lanes()
        if was_active and released:
            with contextlib.suppress(*REDIS_ERRORS):
                self.broker.client.srem(_consumers_key(self.broker.namespace),
                                        self.broker.broker_id)
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                lock.release(self._conn)
        self._drop_connection()
        if was_active:
            self._emit_stats()
        self._set_role("stopped")

    # --- database --------------------------------------------------------------------------

    def _connection(self) -> Conn:
        conn = self._conn
        if conn is not None and (conn.closed or conn.broken):
            self._drop_connection()
            conn = None
        if conn is None:
            assert self._pool is not None
            conn = self._pool.getconn(timeout=5.0)
            self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._locked_conn is conn:
            self._locked_conn = None
        assert self._pool is not None
        try:
            self._pool.putconn(conn)
        except Exception:
            conn.close()

    def _owned_connection(self) -> Conn:
        """The connection holding the session lock; re-taken after a reconnect."""
        conn = self._connection()
        if conn is not self._locked_conn:
            if not lock.try_acquire(conn, self.settings.lock_key):
                raise lock.LockLost("another writer took the lock while this one reconnected")
            self._locked_conn = conn
        return conn

    def _with_db(self, work: Callable[[Conn], T]) -> T:
        """Run ``work`` on the locked connection; on an outage back off and retry, in order."""
        backoff = Backoff()
        timeouts = 0
        while True:
            try:
                return work(self._owned_connection())
            except _RETRIED as exc:
                if _timed_out(exc):
                    timeouts += 1
                    if timeouts >= 3:
                        raise BatchTooSlow(f"statement timeout, {timeouts} times: {exc}") from exc
                self._drop_connection()
                with self._stats_lock:
                    self._stats.db_retries += 1
                if backoff.attempts == 0 or backoff.attempts % 10 == 0:
                    log.warning("database unavailable; holding the batch", error=str(exc),
                                attempt=backoff.attempts)
                if self._stop.is_set():
                    raise _Abandoned from exc
                self._wait(backoff.next())
                if self._stop.is_set():
                    raise _Abandoned from exc

    def _pace(self, batch: Batch) -> None:
        """Wait out the database time budget, unless the batch is a few fast intents.

        Only bulk work is paced: status changes (fast intents only, at most
        ``WRITER_BATCH_MIN_ROWS`` rows) are applied at once, their time charged to the budget
        like any other, so the bulk work after them waits that much longer.
        """
        if batch.bulk.intents == 0 and batch.total.rows <= self.sizer.min_rows:
            return
        delay = self.budget.delay()
        if delay > 0:
            self._wait(delay)

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, 0.25))
            self._tick()

    # --- ledger retention ------------------------------------------------------------------

    def _prune_due(self) -> bool:
        return self.active and not self._stop.is_set() and time.monotonic() >= self._next_prune

    def _prune_ledger(self) -> None:
        """Delete one small batch of expired ledger ids when it is due.

        Due every ``WRITER_LEDGER_PRUNE_INTERVAL_S``, and again right away after a prune that
        deleted a full batch; never while the queues hold a backlog (as the heartbeat last saw
        them, or before it saw them) or the database time budget is spent. Its transaction is
        charged to the budget like a batch's.
        """
        if not self._prune_due():
            return
        with self._stats_lock:
            backlog = self._stats.backlog_fast != 0 or self._stats.backlog_bulk != 0
        if backlog or self.budget.delay() > 0:
            return
        settings = self.settings
        start = time.monotonic()
        try:
            deleted = ledger.prune(self._owned_connection(), lock_key=settings.lock_key,
                                   retention_days=settings.ledger_retention_days,
                                   statement_timeout_ms=settings.statement_timeout_ms)
        except lock.LockLost as exc:
            self._step_down(str(exc))
            return
        except DB_OUTAGES as exc:
            log.warning("could not prune the ledger; trying again later", error=str(exc))
            deleted = 0
        finally:
            end = time.monotonic()
            self.budget.spent(start, end)
        more = deleted >= ledger.PRUNE_ROWS
        self._next_prune = end + (0.0 if more else settings.ledger_prune_interval_s)
        if deleted:
            with self._stats_lock:
                self._stats.ledger_pruned += deleted
            log.info("ledger pruned", rows=deleted, more=more)

    # --- batches ---------------------------------------------------------------------------

    def _collect(self, *, bulk_after: float = 0.0) -> Batch:
        """Natural batching: take what is there now, fast lane first, up to the limits.

        An idle writer waits up to the poll timeout on the fast lane; a batch is closed when
        both lanes come back empty, a limit is reached or it is ``batch_max_age_ms`` old.
        The bulk lane is left alone until ``bulk_after`` (monotonic): while the database time
        budget is spent, fast intents still come through. An idle writer returns an empty batch
        when the ledger's pruning is due.
        """
        assert self._fast is not None
        assert self._bulk is not None
        self._size_limits()
        fast, bulk, limits = self._fast, self._bulk, self.limits
        batch = Batch()
        bulk_blocked = False
        try:
            while True:
                room = limits.intents - len(batch)
                got = fast.take(room, wait=False) if room > 0 else []
                left = batch.add_all(got, limits)
                if left:
                    fast.put_back(left)
                    return batch
                progress = bool(got)
                if not bulk_blocked and time.monotonic() >= bulk_after:
                    capped = batch.fast_count > 0 or fast.has_pending
                    bulk_limits = self.bulk_limits if capped else limits
                    want = self._bulk_want(batch, bulk_limits)
                    if want > 0:
                        taken = bulk.take(want, wait=False)
                        left = batch.add_all(taken, limits, bulk_limits=bulk_limits)
                        self._learn_bulk(taken)
                        if left:
                            bulk.put_back(left)
                            bulk_blocked = True
                        progress = progress or len(left) < len(taken)
                    else:
                        bulk_blocked = True
                if batch.full(limits) or (batch.items and (
                        not progress or batch.age_ms() >= self.settings.batch_max_age_ms)):
                    return batch
                if not progress:
                    if self._stop.is_set() or fast.undecodable or bulk.undecodable:
                        return batch
                    self._tick()
                    idle = fast.take(limits.intents, wait=True)
                    batch.add_all(idle, limits)
                    if not idle and (self._stop.is_set() or self._redis_dirty
                                     or self._prune_due()):
                        return batch
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)
            return batch

    def _size_limits(self) -> None:
        """The row limit of the next batch: the sizer's cap (``WRITER_TARGET_TXN_MS``)."""
        rows = self.sizer.rows
        if rows != self.limits.rows:
            self.limits = self.base_limits.with_rows(rows)
            self.bulk_limits = self.limits.scaled(self.settings.bulk_share)

    def _bulk_want(self, batch: Batch, bulk_limits: Limits) -> int:
        room = min(self.limits.intents - len(batch), bulk_limits.intents - batch.bulk.intents)
        rows_room = min(self.limits.rows - batch.total.rows, bulk_limits.rows - batch.bulk.rows)
        if room <= 0 or (rows_room <= 0 and batch.items):
            return 0
        return max(1, min(room, int(rows_room / self._bulk_rows_avg)))

    def _learn_bulk(self, items: list[Item]) -> None:
        for item in items:
            self._bulk_rows_avg = 0.8 * self._bulk_rows_avg + 0.2 * max(1, item.rows)

    def _redis_failed(self, exc: BaseException) -> None:
        with self._stats_lock:
            self._stats.redis_retries += 1
        log.warning("redis unavailable", error=str(exc))
        self._redis_dirty = True
        self._wait(Backoff(0.2, 2.0).next())

    def _recover_redis(self) -> None:
        """After a Redis error, requeue whatever a half-done fetch may have left held."""
        try:
            for lane in (self._fast, self._bulk):
                if lane is not None:
                    lane.release()
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)
            return
        self._redis_dirty = False

    def _process(self, batch: Batch) -> None:
        try:
            self._dead_letter_malformed(batch)
            valid = batch.valid
            self._apply(valid)
        except _Abandoned:
            log.info("stopping during an outage: the held batch goes back to the queue",
                     messages=len(batch))
            return
        except lock.LockLost as exc:
            self._step_down(str(exc))
            return
        now_ms = time.time() * 1000
        with self._stats_lock:
            self._stats.intents += len(valid)
            self._stats.lag_ms = max(0.0, now_ms - batch.oldest_ms())
            self._stats.lag_max_ms = max(self._stats.lag_max_ms, self._stats.lag_ms)
        self._ack(batch.items)

    def _dead_letter_malformed(self, batch: Batch) -> None:
        found: list[tuple[Lane, str, bytes]] = []
        for lane in (self._fast, self._bulk):
            if lane is not None and lane.undecodable:
                try:
                    found += [(lane, rid, raw) for rid, raw in lane.quarantine()]
                except REDIS_ERRORS as exc:
                    self._redis_failed(exc)
        rejected = batch.rejected
        if not rejected and not found:
            return
        entries = [dict(item.describe(), queue=item.queue, body_text=item.body,
                        reason=str(item.reason)) for item in rejected]
        entries += [{"intent_id": None, "kind": None, "tenant_id": None, "queue": lane.queue,
                     "body_text": raw.decode("utf-8", "replace"),
                     "reason": "undecodable message: not a dramatiq message envelope"}
                    for lane, _, raw in found]
        for entry in entries:
            log.warning("malformed intent dead-lettered", queue=entry["queue"],
                        reason=entry["reason"])
        self._record_dead(entries)
        with self._stats_lock:
            self._stats.rejected += len(entries)
        for lane, rid, _ in found:
            self._retry_redis(partial(lane.ack_ids, [rid]))

    def _record_dead(self, entries: list[dict[str, Any]]) -> None:
        def work(conn: Conn) -> None:
            with conn.transaction():
                lock.guard(conn, self.settings.lock_key)
                for entry in entries:
                    dead.record(conn, **entry)
        self._with_db(work)
        with self._stats_lock:
            self._stats.dead += len(entries)

    def _apply(self, items: list[Item]) -> None:
        """Commit ``items``; on a data error split them until the culprit is alone."""
        if not items:
            return
        try:
            work = self._prepare(items)
            result = self._with_db(lambda conn: self._commit(conn, items, work))
        except (_Abandoned, lock.LockLost):
            raise
        except Exception as exc:
            self._isolate(items, exc)
            return
        self._account(result)
        if result.finished_imports:
            self._report_finished(result.finished_imports)

    def _report_finished(self, imports: list[dict[str, Any]]) -> None:
        """Mark finished imports ``done`` in their progress records, so a job's status needs no
        database read. Best effort: the database already says ``done``."""
        store = ProgressStore(self.broker.client, self.broker.namespace)
        for counts in imports:
            job_id = roster_job_id(counts.pop("import_id"))
            try:
                store.update(job_id, step="done", percent=100.0, **counts)
            except REDIS_ERRORS as exc:
                log.warning("could not record a finished import's status", job_id=job_id,
                            error=str(exc))

    def _isolate(self, items: list[Item], exc: Exception) -> None:
        reason = exc.reason if isinstance(exc, DataApplyError) else (
            f"{type(exc).__name__}: {exc}")
        if len(items) == 1:
            item = items[0]
            log.warning("poison intent dead-lettered", reason=reason, **{
                k: str(v) for k, v in item.describe().items()})
            self._record_dead([dict(item.describe(), queue=item.queue, body_text=item.body,
                                    reason=reason)])
            return
        culprits: set[UUID] = set(exc.intent_ids) if isinstance(exc, DataApplyError) else set()
        named = [i for i in items if i.intent is not None and i.intent.intent_id in culprits]
        if named and len(named) < len(items):
            rest = [i for i in items if i not in named]
            for item in named:
                self._isolate([item], exc)
            self._apply(rest)
            return
        with self._stats_lock:
            self._stats.bisections += 1
        middle = len(items) // 2
        self._apply(items[:middle])
        self._apply(items[middle:])

    def _prepare(self, items: list[Item]) -> Plan:
        """The client's work that needs no transaction, done before it begins: coalescing
        (:func:`writer.coalesce.plan`) and encoding the intent log's record."""
        work = plan(item.intent for item in items if item.intent is not None)
        prepare = getattr(self.log_writer, "prepare", None)
        if prepare is not None:
            prepare(work.intents)
        return work

    def _commit(self, conn: Conn, items: list[Item], work: Plan) -> BatchResult:
        """One batch transaction; ``work`` is the plan of ``items``, made before it began.

        The cyclic garbage collector is held off meanwhile: a full collection (tens of
        milliseconds with many live objects) then runs between transactions, not inside one.
        """
        by_id = {intent.intent_id: intent for intent in work.intents}
        gc_was_on = gc.isenabled()
        gc.disable()
        start = time.monotonic()
        try:
            with conn.transaction():
                batch_seq = lock.begin_batch(conn, self.settings.lock_key,
                                             self.settings.statement_timeout_ms)
                result = apply_batch(conn, work, batch_seq=batch_seq)
                if self.log_writer is not None and result.applied:
                    try:
                        self.log_writer.append(batch_seq, [by_id[i] for i in result.applied])
                    except Exception as exc:
                        raise IntentLogUnavailable(f"intent log append failed: {exc}") from exc
        finally:
            end = time.monotonic()
            if gc_was_on:
                gc.enable()
            self.budget.spent(start, end)
        ms = (end - start) * 1000
        cap = self.sizer.observe(sum(item.rows for item in items if item.intent is not None), ms)
        with self._stats_lock:
            self._stats.commit_ms.add(ms)
            self._stats.batch_rows_cap = cap
            self._stats.ms_per_row = self.sizer.ms_per_row or 0.0
        return result

    def _account(self, result: BatchResult) -> None:
        with self._stats_lock:
            stats = self._stats
            stats.batches += 1
            stats.applied += len(result.applied)
            stats.rows += result.rows
            stats.coalesced += result.coalesced
            stats.skipped_duplicate += result.duplicates
            stats.skipped_unchanged += result.students_unchanged

    def _ack(self, items: list[Item]) -> None:
        for lane in (self._fast, self._bulk):
            if lane is None:
                continue
            mine = [item for item in items if item.queue == lane.queue]
            if mine:
                self._retry_redis(partial(lane.ack, mine))
                with self._stats_lock:
                    self._stats.acks += len(mine)

    def _retry_redis(self, call: Callable[[], object]) -> None:
        """Retry a Redis call until it succeeds, or give up when stopping.

        Giving up loses nothing: what was committed and not acked is redelivered later and
        skipped by the ledger.
        """
        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                call()
                return
            except REDIS_ERRORS as exc:
                with self._stats_lock:
                    self._stats.redis_retries += 1
                if backoff.attempts == 0:
                    log.warning("redis unavailable; retrying", error=str(exc))
                if self._stop.is_set():
                    log.warning("stopping with unacked committed messages; they are skipped "
                                "on redelivery", error=str(exc))
                    return
                self._wait(backoff.next())
