"""The ack stage: a batch's messages acknowledged after its commit, one round trip per lane.

Acks are retried through Redis outages. Giving up (only when stopping) loses nothing: a
message committed and not acked is redelivered later and skipped by the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from jobplatform.logging import get_logger
from writer.engine.session import REDIS_ERRORS
from writer.lanes import Item
from writer.pacing import Backoff

if TYPE_CHECKING:
    from writer.engine.writer import Writer

log = get_logger("writer")


class Acker:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def ack(self, items: list[Item]) -> None:
        writer = self.writer
        writer.call_hooks("before_ack", items)
        started = time.perf_counter()
        for lane in writer.leader.lanes:
            mine = [item for item in items if item.queue == lane.queue]
            if mine:
                self.retry_redis(partial(lane.ack, mine))
                writer.stats.count(acks=len(mine))
        writer.stats.spend({"ack": time.perf_counter() - started})
        writer.call_hooks("after_ack", items)

    def retry_redis(self, call: Callable[[], object]) -> None:
        """Retry a Redis call until it succeeds, or give up when stopping."""
        writer = self.writer
        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                call()
                return
            except REDIS_ERRORS as exc:
                writer.stats.count(redis_retries=1)
                if backoff.attempts == 0:
                    log.warning("redis unavailable; retrying", error=str(exc))
                if writer.stopping:
                    log.warning("stopping with unacked committed messages; they are skipped "
                                "on redelivery", error=str(exc))
                    return
                writer.wait(backoff.next())
