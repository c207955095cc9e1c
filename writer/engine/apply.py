"""The apply stage: prepare, one transaction (ledger, kinds, intent log), commit, bisect.

One batch::

    malformed messages -> writer_dead_letters (own short transaction)
    prepare (no database): ids deduplicated, each kind's plan, the log record encoded
    BEGIN; pg_try_advisory_xact_lock; SET LOCAL statement_timeout; nextval('writer_batch_seq')
    ledger claim -> each kind's apply -> intent log append (durable) -> COMMIT
    after commit: each kind's after-commit work, the hooks

A batch failing on data is split in halves until the failing intent is alone; that intent goes
to the dead letters and the rest commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from uuid import UUID

import psycopg

from jobplatform.kinds import AfterCommit, Kind, Outcome
from jobplatform.logging import get_logger
from jobplatform.progress import ProgressStore
from schemas import BaseIntent
from writer import dead, faults, gchold, lock
from writer.batcher import Batch, BatchSizer
from writer.engine.batch import (
    BatchResult,
    Prepared,
    apply_batch,
    prepare,
    renumber,
    run_kind_hook,
)
from writer.engine.hooks import Commit, DeadLetterEntry
from writer.engine.session import REDIS_ERRORS, Abandoned, IntentLogUnavailable
from writer.errors import DataApplyError
from writer.lanes import Item, Lane

if TYPE_CHECKING:
    from writer.engine.writer import Writer

log = get_logger("writer")

Conn = psycopg.Connection[tuple[object, ...]]
T = TypeVar("T")


class IntentLogWriter(Protocol):
    """Where applied intents are recorded, outside PostgreSQL.

    :meth:`append` is called after a batch was applied and before it commits; it must be
    durable when it returns (a raise rolls the batch back; the writer retries it later).
    """

    def append(self, batch_seq: int, intents: Sequence[BaseIntent]) -> None: ...

    def close(self) -> None: ...


class BatchSession(Protocol):
    """The connection an :class:`Applier` applies on, with its way of proving it may."""

    def with_db(self, work: Callable[[Conn], T]) -> T: ...

    def begin(self, conn: Conn) -> int:
        """First statement of a batch transaction: its guard and its (first) batch number."""
        ...

    def guard(self, conn: Conn) -> None:
        """The guard alone, in an open transaction (dead letters)."""
        ...


class CommitOrder:
    """Batch numbers in the order of the intent log, and of commits that touched one row.

    A transaction takes a number when it begins. The writer's own connection and the fast
    lane's may have a transaction in flight at once, so after applying, each appends to the
    intent log under :attr:`lock`, taking a new number first (:func:`~writer.engine.batch.
    renumber`) when its own is not above the last one logged. So the log's numbers only grow,
    and of two transactions that changed the same row, the second to commit has the higher
    number: its statements waited for the first one's row lock, held until that one's COMMIT,
    which follows its log append.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last = 0
        """The number of the last batch logged."""


class Applier:
    """Applies batches on ``session`` (the writer's own connection unless given); ``lanes``
    are the lanes whose undecodable messages it settles (all of the writer's unless given);
    ``sizer``: the batch sizer its commits teach (the collector's unless given: then its cap
    is also the stats' ``batch_rows_cap``); ``lock_lost``: what to do when the lock is gone
    (stand the writer down)."""

    def __init__(self, writer: Writer, session: BatchSession | None = None, *,
                 lanes: Callable[[], Sequence[Lane]] | None = None,
                 sizer: BatchSizer | None = None,
                 lock_lost: Callable[[str], None] | None = None) -> None:
        self.writer = writer
        self._session = session
        self._lanes = lanes
        self._sizer = sizer
        self._lock_lost = lock_lost

    @property
    def session(self) -> BatchSession:
        return self._session if self._session is not None else self.writer.session

    def lanes(self) -> Sequence[Lane]:
        return self._lanes() if self._lanes is not None else self.writer.leader.lanes

    # --- pacing ----------------------------------------------------------------------------

    def pace(self, batch: Batch) -> None:
        """Wait out the database time budget, unless the batch is a few fast intents.

        Only bulk work is paced: status changes (fast intents only, at most
        ``WRITER_BATCH_MIN_ROWS`` rows) are applied at once, their time charged to the budget
        like any other, so the bulk work after them waits that much longer.
        """
        writer = self.writer
        if batch.bulk.intents == 0 and batch.total.rows <= writer.collector.sizer.min_rows:
            return
        delay = writer.budget.delay()
        if delay > 0:
            started = time.perf_counter()
            writer.wait(delay)
            writer.stats.spend({"pace": time.perf_counter() - started})

    # --- one batch -------------------------------------------------------------------------

    def process(self, batch: Batch) -> bool:
        """Apply ``batch``; True when every message is settled (applied or dead-lettered) and
        may be acknowledged."""
        writer = self.writer
        try:
            self.dead_letter_malformed(batch)
            valid = batch.valid
            self.apply(valid)
        except Abandoned:
            log.info("stopping during an outage: the held batch goes back to the queue",
                     messages=len(batch))
            return False
        except lock.LockLost as exc:
            if self._lock_lost is not None:
                self._lock_lost(str(exc))
            else:
                writer.leader.step_down(str(exc))
            return False
        now_ms = time.time() * 1000
        lag = max(0.0, now_ms - batch.oldest_ms())
        stats = writer.stats
        stats.count(intents=len(valid))
        stats.gauge(lag_ms=lag, lag_max_ms=max(stats.lag_max_ms, lag))
        return True

    def dead_letter_malformed(self, batch: Batch) -> None:
        writer = self.writer
        found: list[tuple[Lane, str, bytes]] = []
        for lane in self.lanes():
            if lane.undecodable:
                try:
                    found += [(lane, rid, raw) for rid, raw in lane.quarantine()]
                except REDIS_ERRORS as exc:
                    writer.collector.redis_failed(exc)
        rejected = batch.rejected
        if not rejected and not found:
            return
        entries = [_entry(item, str(item.reason)) for item in rejected]
        entries += [DeadLetterEntry(queue=lane.queue, body=raw.decode("utf-8", "replace"),
                                    reason="undecodable message: not a dramatiq message "
                                           "envelope", message_id=rid)
                    for lane, rid, raw in found]
        for entry in entries:
            log.warning("malformed intent dead-lettered", queue=entry.queue, reason=entry.reason)
        self.record_dead(entries)
        writer.stats.count(rejected=len(entries))
        for lane, rid, _ in found:
            writer.acker.retry_redis(partial(lane.ack_ids, [rid]))

    def record_dead(self, entries: list[DeadLetterEntry]) -> None:
        """Store ``entries`` as dead letters, and let each decoded intent's kind react in the
        same transaction (``Kind.dead_lettered``: the roster fails the import)."""
        writer = self.writer

        fresh = entries

        def work(conn: Conn) -> list[tuple[Kind, Outcome]]:
            nonlocal fresh
            outcomes: list[tuple[Kind, Outcome]] = []
            with conn.transaction():
                self.session.guard(conn)
                # A message recorded before the writer died, unacked: its letter stands.
                known = dead.recorded(conn, (e.message_id for e in entries))
                fresh = [e for e in entries if e.message_id not in known]
                for e in fresh:
                    dead.record(conn, queue=e.queue, body_text=e.body, reason=e.reason,
                                intent_id=e.intent_id, kind=e.kind, tenant_id=e.tenant_id,
                                message_id=e.message_id)
                for kind, reason, intents in self._dead_by_kind(fresh):
                    assert kind.dead_lettered is not None
                    outcome = run_kind_hook(conn, kind, kind.dead_lettered, intents, reason)
                    if outcome is not None:
                        outcomes.append((kind, outcome))
            return outcomes
        outcomes = self.session.with_db(work)
        faults.reached("after_dead_letter")
        writer.stats.count(dead=len(fresh))
        for kind, outcome in outcomes:
            self.kind_after_commit(kind, outcome)
        if fresh:
            writer.call_hooks("on_dead_letter", fresh)

    def _dead_by_kind(
        self, entries: list[DeadLetterEntry]
    ) -> list[tuple[Kind, str, list[BaseIntent]]]:
        groups: dict[tuple[str, str], tuple[Kind, list[BaseIntent]]] = {}
        for e in entries:
            if e.intent is None:
                continue
            kind = self.writer.registry.kind_for(e.intent.kind)
            if kind is None or kind.dead_lettered is None:
                continue
            groups.setdefault((kind.name, e.reason), (kind, []))[1].append(e.intent)
        return [(kind, reason, intents) for (_, reason), (kind, intents) in groups.items()]

    def apply(self, items: list[Item]) -> None:
        """Commit ``items``; on a data error split them until the culprit is alone."""
        if not items:
            return
        try:
            work = self.prepare(items)
            commit = self.session.with_db(lambda conn: self.commit(conn, items, work))
        except (Abandoned, lock.LockLost):
            raise
        except Exception as exc:
            self.isolate(items, exc)
            return
        self.after_commit(commit)

    def isolate(self, items: list[Item], exc: Exception) -> None:
        reason = exc.reason if isinstance(exc, DataApplyError) else (
            f"{type(exc).__name__}: {exc}")
        if len(items) == 1:
            item = items[0]
            log.warning("poison intent dead-lettered", reason=reason, **{
                k: str(v) for k, v in item.describe().items()})
            self.record_dead([_entry(item, reason)])
            return
        culprits: set[UUID] = set(exc.intent_ids) if isinstance(exc, DataApplyError) else set()
        named = [i for i in items if i.intent is not None and i.intent.intent_id in culprits]
        if named and len(named) < len(items):
            rest = [i for i in items if i not in named]
            for item in named:
                self.isolate([item], exc)
            self.apply(rest)
            return
        self.writer.stats.count(bisections=1)
        middle = len(items) // 2
        self.apply(items[:middle])
        self.apply(items[middle:])

    def prepare(self, items: list[Item]) -> Prepared:
        """The client's work that needs no transaction, done before it begins: each kind's
        plan and the intent log's record."""
        writer = self.writer
        started = time.perf_counter()
        with gchold.gc_held():
            work = prepare((item.intent for item in items if item.intent is not None),
                           writer.registry)
            planned = time.perf_counter()
            log_prepare = getattr(writer.log_writer, "prepare", None)
            encoded = planned
            if log_prepare is not None:
                log_prepare(work.intents)
                encoded = time.perf_counter()
        writer.stats.spend({"plan": planned - started, "log_encode": encoded - planned})
        return work

    def commit(self, conn: Conn, items: list[Item], work: Prepared) -> Commit:
        """One batch transaction; ``work`` is the prepared form of ``items``.

        The cyclic garbage collector is held off meanwhile (:func:`~writer.gchold.gc_held`): a
        full collection (tens of milliseconds with many live objects) then runs between
        transactions, not inside one.
        """
        writer = self.writer
        order = writer.commit_order
        writer.call_hooks("before_commit", items)
        by_id = {intent.intent_id: intent for intent in work.intents}
        gchold.hold()
        started = time.perf_counter()
        start = time.monotonic()
        ordered = False
        try:
            with conn.transaction():
                batch_seq = self.session.begin(conn)
                begun = time.perf_counter()
                result = apply_batch(conn, work, batch_seq=batch_seq, registry=writer.registry)
                applied = [by_id[i] for i in result.applied]
                # The batch's number and its log record, one transaction at a time
                # (CommitOrder); then COMMIT.
                logged = time.perf_counter()
                order.lock.acquire()
                ordered = True
                if applied and batch_seq <= order.last:
                    batch_seq = result.batch_seq = renumber(conn, result.applied)
                if writer.log_writer is not None and applied:
                    if time.monotonic() - start > writer.settings.fence_timeout_ms / 2000:
                        # Stopped long enough to be fenced: log nothing the COMMIT would lose.
                        self.session.guard(conn)
                    try:
                        writer.log_writer.append(batch_seq, applied)
                    except Exception as exc:
                        raise IntentLogUnavailable(f"intent log append failed: {exc}") from exc
                    faults.reached("after_append")
                order.last = max(order.last, batch_seq)
                order.lock.release()
                ordered = False
                result.timings["log"] = time.perf_counter() - logged
                logged = time.perf_counter()
            result.timings["begin"] = begun - started
            result.timings["commit"] = time.perf_counter() - logged
            faults.reached("after_commit")
        finally:
            if ordered:
                order.lock.release()
            end = time.monotonic()
            ended = time.perf_counter()
            gchold.release()
            writer.budget.spent(start, end)
        ms = (end - start) * 1000
        stats = writer.stats
        sizer = self._sizer if self._sizer is not None else writer.collector.sizer
        cap = sizer.observe(sum(item.rows for item in items if item.intent is not None), ms)
        with stats.lock:
            stats.commit_ms.add(ms)
            if self._sizer is None:
                stats.batch_rows_cap = cap
                stats.ms_per_row = sizer.ms_per_row or 0.0
        return Commit(batch_seq, items, applied, result, started, ended)

    def after_commit(self, commit: Commit) -> None:
        writer = self.writer
        result = commit.result
        writer.stats.count(batches=1, applied=len(result.applied), rows=result.rows,
                           coalesced=result.coalesced, skipped_duplicate=result.duplicates,
                           skipped_unchanged=result.unchanged)
        writer.stats.spend(result.timings)
        self.kinds_after_commit(result)
        writer.call_hooks("after_commit", commit)

    def kinds_after_commit(self, result: BatchResult) -> None:
        """Each kind's after-commit work (best effort: the database already holds the truth)."""
        for name, outcome in result.outcomes.items():
            self.kind_after_commit(self.writer.registry.kind(name), outcome)

    def kind_after_commit(self, kind: Kind, outcome: Outcome) -> None:
        if kind.after_commit is None:
            return
        writer = self.writer
        context = AfterCommit(ProgressStore(writer.broker.client, writer.broker.namespace))
        try:
            kind.after_commit(context, outcome)
        except REDIS_ERRORS as exc:
            log.warning("after-commit work failed", kind=kind.name, error=str(exc))
        except Exception:
            log.exception("after-commit work failed", kind=kind.name)


def _entry(item: Item, reason: str) -> DeadLetterEntry:
    described: dict[str, Any] = item.describe()
    return DeadLetterEntry(queue=item.queue, reason=reason, body=item.body,
                           intent_id=described["intent_id"], kind=described["kind"],
                           tenant_id=described["tenant_id"], intent=item.intent,
                           message_id=item.message.message_id)
