"""The chores: the broker heartbeat, stats, and ledger pruning.

- The heartbeat thread refreshes this consumer's heartbeat in Redis (any broker command does),
  so dramatiq does not hand the messages the writer holds during an outage to anyone else. It
  beats only while the loop shows signs of life: a wedged writer still loses its messages to
  the broker's requeue after the heartbeat timeout. It also reads the lanes' backlog.
- Stats go to the log and to Redis every ``WRITER_STATS_INTERVAL_S``.
- Ledger ids older than ``WRITER_LEDGER_RETENTION_DAYS`` are deleted in small transactions,
  never while the queues hold a backlog or the database time budget is spent.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

from jobplatform.logging import get_logger
from jobplatform.progress import writer_stats_key
from writer import ledger, lock
from writer.engine.session import DB_OUTAGES, REDIS_ERRORS

if TYPE_CHECKING:
    from writer.engine.writer import Writer

log = get_logger("writer")


class Chores:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.alive = time.monotonic()
        self._next_stats = time.monotonic() + writer.settings.stats_interval_s
        self._last_emit: tuple[float, int, int] = (time.monotonic(), 0, 0)
        self._next_prune = time.monotonic()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    # --- the heartbeat thread --------------------------------------------------------------

    def start(self) -> None:
        self._closed.clear()
        self._thread = threading.Thread(target=self._beat, name="writer-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _beat(self) -> None:
        writer = self.writer
        broker = writer.broker
        stall_s = max(3 * writer.heartbeat_s, broker.heartbeat_timeout / 1000 * 0.75)
        while not self._closed.wait(writer.heartbeat_s):
            if time.monotonic() - self.alive > stall_s:
                continue
            try:
                fast = int(broker.do_qsize(writer.queues.writes_fast))
                bulk = int(broker.do_qsize(writer.queues.writes_bulk))
            except REDIS_ERRORS:
                continue
            writer.stats.gauge(backlog_fast=fast, backlog_bulk=bulk)

    # --- on the loop -----------------------------------------------------------------------

    def tick(self) -> None:
        """The loop is alive; probe the lock and emit stats when due, keep the lanes'
        connections alive."""
        now = time.monotonic()
        self.alive = now
        self.writer.leader.confirm()  # the lock probe, when due, while the loop waits
        for lane in self.writer.leader.lanes:
            lane.keepalive()
        if now >= self._next_stats:
            self._next_stats = now + self.writer.settings.stats_interval_s
            self.emit_stats()

    def emit_stats(self, *, publish: bool = False) -> None:
        """Log the stats; publish them to Redis when active (or when ``publish``)."""
        writer = self.writer
        stats = writer.get_stats()
        then, batches, intents = self._last_emit
        now = time.monotonic()
        elapsed = max(now - then, 1e-6)
        stats["batches_per_s"] = round(max(0, stats["batches"] - batches) / elapsed, 2)
        stats["intents_per_s"] = round(max(0, stats["intents"] - intents) / elapsed, 1)
        self._last_emit = (now, stats["batches"], stats["intents"])
        log.info("writer stats", **stats)
        if stats["role"] != "active" and not publish:
            return
        document: dict[str, Any] = {**stats, "name": writer.name,
                                    "broker_id": writer.broker.broker_id, "at": time.time()}
        ttl = max(60, int(writer.settings.stats_interval_s * 3))
        try:
            writer.broker.client.set(writer_stats_key(writer.broker.namespace, writer.shard_key),
                                     json.dumps(document), ex=ttl)
        except REDIS_ERRORS as exc:
            log.warning("could not publish stats", error=str(exc))

    def prune_due(self) -> bool:
        writer = self.writer
        return writer.leader.active and not writer.stopping and \
            time.monotonic() >= self._next_prune

    def prune_ledger(self) -> None:
        """Delete one small batch of expired ledger ids when it is due.

        Due every ``WRITER_LEDGER_PRUNE_INTERVAL_S``, and again right away after a prune that
        deleted a full batch; never while the queues hold a backlog (as the heartbeat last saw
        them, or before it saw them) or the database time budget is spent. Its transaction is
        charged to the budget like a batch's.
        """
        if not self.prune_due():
            return
        writer = self.writer
        stats = writer.stats
        if stats.backlog_fast != 0 or stats.backlog_bulk != 0 or writer.budget.delay() > 0:
            return
        settings = writer.settings
        start = time.monotonic()
        try:
            deleted = ledger.prune(writer.session.owned(), lock_key=settings.lock_key,
                                   retention_days=settings.ledger_retention_days,
                                   statement_timeout_ms=settings.statement_timeout_ms)
        except lock.LockLost as exc:
            writer.leader.step_down(str(exc))
            return
        except DB_OUTAGES as exc:
            log.warning("could not prune the ledger; trying again later", error=str(exc))
            deleted = 0
        finally:
            end = time.monotonic()
            writer.budget.spent(start, end)
        more = deleted >= ledger.PRUNE_ROWS
        self._next_prune = end + (0.0 if more else settings.ledger_prune_interval_s)
        if deleted:
            stats.count(ledger_pruned=deleted)
            log.info("ledger pruned", rows=deleted, more=more)
