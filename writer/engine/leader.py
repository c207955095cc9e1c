"""The leadership stage: one active writer, standbys waiting, takeover.

The active writer holds the PostgreSQL session advisory lock (:mod:`writer.lock`). A standby
polls for it; when it gets it, it requeues what earlier writers left unacked (at once, instead
of after the broker's 60 s heartbeat timeout) and opens its lanes. A writer that finds the lock
taken when a batch begins steps down and puts back every message it holds.
"""

from __future__ import annotations

import contextlib
import gc
import random
import threading
from typing import TYPE_CHECKING

from jobplatform.logging import get_logger
from writer import lock
from writer.brokers import open_lane, requeue_held
from writer.engine.session import DB_OUTAGES, REDIS_ERRORS
from writer.lanes import Lane

if TYPE_CHECKING:
    from writer.engine.writer import Writer

log = get_logger("writer")


def consumers_key(namespace: str, shard: int | None = None) -> str:
    """Broker ids of every process that consumed the writer's queues (of ``shard``, when
    sharded) and may hold messages."""
    base = f"{namespace}:writer:consumers"
    return base if shard is None else f"{base}:{shard}"


class Leadership:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.fast: Lane | None = None
        self.bulk: Lane | None = None
        self._lost: str | None = None
        self._loop_thread: int | None = None

    def lose(self, reason: str) -> None:
        """Another thread (the fast lane's) found the lock gone: the loop stands down."""
        self._lost = reason

    @property
    def lost_pending(self) -> bool:
        return self._lost is not None

    def take_lost(self) -> str | None:
        """Why the writer must stand down, if another thread said so (once)."""
        reason, self._lost = self._lost, None
        return reason if self.active else None

    @property
    def active(self) -> bool:
        return self.fast is not None

    @property
    def lanes(self) -> tuple[Lane, ...]:
        return tuple(lane for lane in (self.fast, self.bulk) if lane is not None)

    def ensure_active(self) -> bool:
        """True when this writer is active (taking over if the lock is free); else wait a
        standby's poll interval and return False."""
        if self.active:
            return True
        writer = self.writer
        try:
            if writer.session.try_lock():
                self._become_active()
                return True
            fenced = writer.session.fence()
            if fenced is not None:
                log.warning("the lock holder hung (waiting on its client for "
                            "WRITER_FENCE_TIMEOUT_MS): its session terminated", pid=fenced,
                            fence_timeout_ms=writer.settings.fence_timeout_ms)
                if writer.session.try_lock():
                    self._become_active()
                    return True
        except DB_OUTAGES as exc:
            writer.session.drop()
            log.warning("database unavailable while waiting for the lock", error=str(exc))
        except REDIS_ERRORS as exc:
            log.warning("redis unavailable while taking over", error=str(exc))
        writer.set_role("standby")
        writer.wait(random.uniform(writer.standby_poll_s, 2 * writer.standby_poll_s))
        return False

    def confirm(self) -> bool:
        """Before a fetch: whether this writer may consume. On the loop's thread, the lock is
        probed when its last proof is older than ``WRITER_LOCK_PROBE_INTERVAL_MS``
        (:meth:`~writer.engine.session.Session.probe`); a writer that lost it, or its session,
        stands down from the loop (:meth:`lose`). The probes also keep the lock holder's
        session from looking hung to a standby (:func:`writer.lock.fence_hung_holder`)."""
        if self._lost is not None or not self.active:
            return False
        if threading.get_ident() != self._loop_thread:
            return True
        lost = self.writer.session.probe()
        if lost is not None:
            self.lose(lost)
            return False
        return True

    def _become_active(self) -> None:
        """Take over: requeue what earlier writers left unacked, then start consuming."""
        writer = self.writer
        self._loop_thread = threading.get_ident()
        if writer.fastlane.enabled:
            # No fast-lane transaction of an earlier holder is in flight past this point.
            conn = writer.session.locked_conn
            assert conn is not None
            fenced = lock.bar_fast_lanes(conn, writer.settings.lock_key, wait_ms=1000)
            if fenced:
                log.warning("fast-lane sessions of an earlier writer terminated", pids=fenced)
        broker = writer.broker
        client = broker.client
        key = consumers_key(broker.namespace, writer.shard_key)
        me = broker.broker_id
        recovered = 0
        for raw in client.smembers(key):
            other = raw.decode() if isinstance(raw, bytes) else str(raw)
            if other == me:
                continue
            for queue in writer.queues.writes:
                recovered += requeue_held(broker, queue, other)
            client.srem(key, other)
        client.sadd(key, me)
        settings = writer.settings
        # What lives now (modules, schemas, settings, whatever the process held before) stays:
        # full collections then scan only what the writer allocated since, not all of it.
        gc.freeze()
        fast_poll_ms = (settings.fast_poll_timeout_ms if writer.fastlane.enabled
                        else settings.poll_timeout_ms)
        self.fast, self.bulk = (
            open_lane(broker, queue, registry=writer.registry, keyring=writer.keyring,
                      max_intent_bytes=settings.max_intent_bytes,
                      poll_timeout_ms=poll_ms,
                      idle_poll_timeout_ms=settings.idle_poll_timeout_ms,
                      prefetch=settings.batch_max_intents)
            for queue, poll_ms in zip(writer.queues.writes,
                                      (fast_poll_ms, settings.poll_timeout_ms), strict=True))
        self._lost = None
        if writer.fastlane.enabled:
            writer.fastlane.hand(self.fast)
        writer.set_role("active")
        log.info("writer active", name=writer.name, recovered=recovered)
        writer.chores.emit_stats()  # the published stats name the new active writer at once

    def step_down(self, reason: str) -> None:
        log.warning("writer lost the lock; standing by", reason=reason)
        writer = self.writer
        writer.stats.count(lost_lock=1)
        writer.set_role("standby")  # no longer calls itself active, from this moment
        # A fast-lane batch still in hand cannot commit any more (its transaction proves the
        # lock is this writer's session's): wait for it no longer than a fence would.
        self.release_lanes(timeout_s=writer.settings.fence_timeout_ms / 1000)
        writer.session.locked_conn = None

    def release_lanes(self, timeout_s: float = 30.0) -> bool:
        """Requeue everything the lanes hold; False when Redis could not be reached. The fast
        lane's thread settles its batch in hand first (waited for up to ``timeout_s``)."""
        if not self.writer.fastlane.pause(timeout_s=timeout_s):
            log.warning("the fast lane still applies a batch; its messages go back too")
        ok = True
        for lane in self.lanes:
            try:
                lane.release()
            except REDIS_ERRORS as exc:
                ok = False
                log.warning("could not requeue held messages", queue=lane.queue, error=str(exc))
            lane.close()
        self.fast = self.bulk = None
        return ok

    def resign(self) -> bool:
        """On shutdown: put held messages back, leave the consumers set, release the lock.
        Returns whether this writer was active."""
        writer = self.writer
        was_active = self.active
        released = self.release_lanes()
        if was_active and released:
            with contextlib.suppress(*REDIS_ERRORS):
                writer.broker.client.srem(consumers_key(writer.broker.namespace,
                                                        writer.shard_key),
                                          writer.broker.broker_id)
        writer.session.unlock()
        return was_active
