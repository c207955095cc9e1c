"""The collect stage: natural batching, fast lane first, the bulk lane's share, batch sizing.

Take what is there now, up to the limits: the fast lane first, then the bulk lane (capped at
``WRITER_BULK_SHARE`` of the batch while fast intents wait). An idle writer waits up to the
poll timeout on the fast lane; a batch is closed when both lanes come back empty, a limit is
reached or it is ``WRITER_BATCH_MAX_AGE_MS`` old. Rows are capped so that a transaction takes
about ``WRITER_TARGET_TXN_MS`` (:class:`writer.batcher.BatchSizer`, learned from the commits).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from jobplatform.logging import get_logger
from writer.batcher import Batch, BatchSizer, Limits
from writer.engine.session import REDIS_ERRORS
from writer.lanes import Item
from writer.pacing import Backoff

if TYPE_CHECKING:
    from writer.engine.writer import Writer

log = get_logger("writer")


class Collector:
    def __init__(self, writer: Writer) -> None:
        settings = writer.settings
        self.writer = writer
        self.base_limits = Limits.from_settings(settings)
        self.sizer = BatchSizer(settings.target_txn_ms, settings.batch_min_rows,
                                settings.batch_max_rows)
        self.limits = self.base_limits
        self.bulk_limits = self.limits.scaled(settings.bulk_share)
        self.redis_dirty = False
        self._bulk_rows_avg = float(max(1, self.limits.rows))

    def collect(self, *, bulk_after: float = 0.0) -> Batch:
        """One batch. The bulk lane is left alone until ``bulk_after`` (monotonic): while the
        database time budget is spent, fast intents still come through. An idle writer returns
        an empty batch when the ledger's pruning is due."""
        writer = self.writer
        if writer.fastlane.enabled:
            return self._collect_bulk(bulk_after)
        fast, bulk = writer.leader.fast, writer.leader.bulk
        assert fast is not None
        assert bulk is not None
        self._size_limits()
        limits = self.limits
        max_age_ms = writer.settings.batch_max_age_ms
        batch = Batch()
        bulk_blocked = False
        try:
            while True:
                if not writer.leader.confirm():  # the lock probe, before each fetch
                    return batch
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
                        not progress or batch.age_ms() >= max_age_ms)):
                    return batch
                if not progress:
                    if writer.stopping or fast.undecodable or bulk.undecodable:
                        return batch
                    writer.chores.tick()
                    waited = fast.spent["idle"]
                    held = time.monotonic() < bulk_after  # the bulk lane waits for the budget
                    idle = fast.take(limits.intents, wait=True)
                    if held:
                        paced = fast.spent["idle"] - waited
                        fast.spent["idle"] = waited
                        writer.stats.spend({"pace": paced})
                    batch.add_all(idle, limits)
                    if not idle and (writer.stopping or self.redis_dirty
                                     or writer.chores.prune_due()):
                        return batch
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            return batch
        finally:
            for lane in (fast, bulk):
                writer.stats.spend(lane.pop_spent())

    def _collect_bulk(self, bulk_after: float) -> Batch:
        """One batch of the bulk lane alone (the fast lane has a connection of its own:
        :mod:`writer.engine.fastlane`). Until ``bulk_after`` the writer waits for the budget."""
        writer = self.writer
        bulk = writer.leader.bulk
        assert bulk is not None
        self._size_limits()
        limits = self.limits
        max_age_ms = writer.settings.batch_max_age_ms
        batch = Batch()
        try:
            held = bulk_after - time.monotonic()
            if held > 0:
                started = time.perf_counter()
                writer.wait(held)
                writer.stats.spend({"pace": time.perf_counter() - started})
                if writer.stopping:
                    return batch
            while True:
                if not writer.leader.confirm():  # the lock probe, before each fetch
                    return batch
                want = self._bulk_want(batch, limits)
                if want <= 0:
                    return batch
                taken = bulk.take(want, wait=not batch.items)
                left = batch.add_all(taken, limits, bulk_limits=limits)
                self._learn_bulk(taken)
                if left:
                    bulk.put_back(left)
                    return batch
                if batch.full(limits) or (batch.items and (
                        not taken or batch.age_ms() >= max_age_ms)):
                    return batch
                if not taken and (writer.stopping or bulk.undecodable or self.redis_dirty
                                  or writer.chores.prune_due()
                                  or writer.leader.lost_pending):
                    return batch
                if not taken:
                    writer.chores.tick()
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            return batch
        finally:
            writer.stats.spend(bulk.pop_spent())

    def _size_limits(self) -> None:
        """The row limit of the next batch: the sizer's cap (``WRITER_TARGET_TXN_MS``)."""
        rows = self.sizer.rows
        if rows != self.limits.rows:
            self.limits = self.base_limits.with_rows(rows)
            self.bulk_limits = self.limits.scaled(self.writer.settings.bulk_share)

    def _bulk_want(self, batch: Batch, bulk_limits: Limits) -> int:
        room = min(self.limits.intents - len(batch), bulk_limits.intents - batch.bulk.intents)
        rows_room = min(self.limits.rows - batch.total.rows, bulk_limits.rows - batch.bulk.rows)
        if room <= 0 or (rows_room <= 0 and batch.items):
            return 0
        return max(1, min(room, int(rows_room / self._bulk_rows_avg)))

    def _learn_bulk(self, items: list[Item]) -> None:
        for item in items:
            self._bulk_rows_avg = 0.8 * self._bulk_rows_avg + 0.2 * max(1, item.rows)

    def redis_failed(self, exc: BaseException) -> None:
        self.writer.stats.count(redis_retries=1)
        log.warning("redis unavailable", error=str(exc))
        self.redis_dirty = True
        self.writer.wait(Backoff(0.2, 2.0).next())

    def recover_redis(self) -> None:
        """After a Redis error, requeue whatever a half-done fetch may have left held."""
        try:
            for lane in self.writer.leader.lanes:
                lane.release()
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            return
        self.redis_dirty = False
