"""Replaying the write-intent log into a database, through the live writer's own kinds.

Each batch of the log is applied in a transaction of its own with
:func:`writer.engine.apply_batch` (the same kinds, coalescing and upserts as the live
writer), under a fresh ``writer_batch_seq`` number. The ledger makes it idempotent: replaying
twice changes nothing, and replaying into the database the log came from changes nothing
either.

Unconfirmed batches. The writer appends a batch to the log before its ``COMMIT``, so a crash in
between leaves a batch in the log that the database never committed. Its intents were not
acked: the broker redelivers them and the writer applies and logs them again, in a later batch.
The ledger guarantees an intent is *applied* once, so the log only ever repeats an intent when
its earlier batch did not commit. Replay therefore applies each intent at its **last**
occurrence in the whole log (all sources merged) and skips earlier ones; an intent that occurs
once is applied where it is. The last batch of a log may be such an uncommitted batch whose
redelivery is not logged yet: replay applies it, which is the state the database reaches once
the writer applies the redelivered intents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from jobplatform.errors import JobPlatformError
from jobplatform.kinds import Registry
from schemas import BaseIntent
from writer.intentlog.reader import LogFilter, LogReader
from writer.intentlog.segment import LogRecord

if TYPE_CHECKING:
    from psycopg import Connection


@dataclass(slots=True)
class ReplaySummary:
    """What a replay read and did."""

    batches_read: int = 0
    batches_applied: int = 0
    intents_read: int = 0
    intents_applied: int = 0
    intents_already_applied: int = 0
    """Skipped by the ledger: already in the database."""
    intents_superseded: int = 0
    """Occurrences in batches that never committed (the intent is applied where it reappears)."""
    last_seq: int | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches_read": self.batches_read,
            "batches_applied": self.batches_applied,
            "intents_read": self.intents_read,
            "intents_applied": self.intents_applied,
            "intents_already_applied": self.intents_already_applied,
            "intents_superseded": self.intents_superseded,
            "last_seq": self.last_seq,
            "notes": list(self.notes),
        }


class WriterActive(JobPlatformError):
    """A writer holds the database's writer lock; replaying beside it is refused."""


def last_occurrences(records: Iterable[LogRecord]) -> dict[UUID, str]:
    """For each intent that occurs in more than one batch, the :attr:`~LogRecord.uid` of its
    last batch (a number alone may be shared by two records, see :mod:`.reader`)."""
    last: dict[UUID, str] = {}
    repeated: set[UUID] = set()
    for record in records:
        for intent in record.intents:
            if intent.intent_id in last:
                repeated.add(intent.intent_id)
            last[intent.intent_id] = record.uid
    return {intent_id: last[intent_id] for intent_id in repeated}


def planned(
    records: Iterable[LogRecord],
    latest: dict[UUID, str],
    log_filter: LogFilter,
    summary: ReplaySummary,
) -> Iterator[LogRecord]:
    """The records to replay: superseded occurrences removed (counted), then the filter."""
    for record in records:
        kept = [i for i in record.intents if latest.get(i.intent_id, record.uid) == record.uid]
        summary.intents_superseded += len(record.intents) - len(kept)
        if not log_filter.keep_seq(record.seq):
            continue
        if log_filter.narrows_intents:
            kept = log_filter.apply(kept)
        if kept:
            yield dataclasses.replace(record, intents=tuple(kept))


BatchCallback = Callable[[LogRecord, int], None]


def replay_records(
    conn: Connection[Any],
    records: Iterable[LogRecord],
    *,
    summary: ReplaySummary | None = None,
    on_batch: BatchCallback | None = None,
    lock_key: int | None = None,
    statement_timeout_ms: int = 30_000,
    registry: Registry | None = None,
) -> ReplaySummary:
    """Apply ``records`` (already planned and filtered), one transaction per batch.

    ``conn`` must be in autocommit mode (each batch opens its own transaction). With
    ``lock_key``, each transaction starts as the live writer's does
    (:func:`writer.lock.begin_batch`: the writer lock, the statement timeout, the batch number).
    ``on_batch`` is called after each commit with the record and the number of intents it
    applied.
    """
    from writer.engine import apply_batch
    from writer.lock import begin_batch

    summary = summary or ReplaySummary()
    for record in records:
        summary.batches_read += 1
        summary.last_seq = record.seq
        applied = 0
        if record.intents:
            with conn.transaction():
                if lock_key is None:
                    row = conn.execute("SELECT nextval('writer_batch_seq')").fetchone()
                    batch_seq = int(str(row[0])) if row else 0
                else:
                    batch_seq = begin_batch(conn, lock_key, statement_timeout_ms)
                result = apply_batch(conn, list(record.intents), batch_seq=batch_seq,
                                     registry=registry)
            applied = len(result.applied)
            summary.batches_applied += 1
        summary.intents_read += len(record.intents)
        summary.intents_applied += applied
        summary.intents_already_applied += len(record.intents) - applied
        if on_batch is not None:
            on_batch(record, applied)
    return summary


def replay_log(
    database_url: str,
    reader: LogReader,
    *,
    log_filter: LogFilter | None = None,
    lock_key: int | None = None,
    statement_timeout_ms: int = 30_000,
    on_plan: Callable[[int], None] | None = None,
    on_batch: BatchCallback | None = None,
) -> ReplaySummary:
    """Replay the log ``reader`` holds into the (migrated) database at ``database_url``.

    ``lock_key``: the writer's advisory lock; when given, replay holds it for its whole run and
    refuses to start while a writer holds it. ``on_plan`` receives the number of batches to
    replay once the log has been read through.
    """
    from writer.db import connect
    from writer.lock import try_acquire

    latest = last_occurrences(reader.records())
    flt = log_filter or LogFilter()
    until = LogFilter(until=flt.until)
    if on_plan is not None:
        on_plan(sum(1 for _ in planned(reader.records(until), latest, flt, ReplaySummary())))
    summary = ReplaySummary()
    with connect(database_url, autocommit=True, application_name="jobplatform-replay") as conn:
        if lock_key is not None and not try_acquire(conn, lock_key):
            raise WriterActive(
                "a writer is running on this database (it holds the writer lock); stop it "
                "before replaying"
            )
        records = planned(reader.records(until), latest, flt, summary)
        replay_records(conn, records, summary=summary, on_batch=on_batch, lock_key=lock_key,
                       statement_timeout_ms=statement_timeout_ms, registry=reader.registry)
    summary.notes = list(reader.notes)
    return summary


def batches_of(
    intents: Sequence[BaseIntent], *, max_intents: int = 2000, max_rows: int = 2000
) -> list[list[BaseIntent]]:
    """Split intents, in order, into batches within the writer's limits (for captured intents)."""
    batches: list[list[BaseIntent]] = []
    current: list[BaseIntent] = []
    rows = 0
    for intent in intents:
        size = intent.weight()
        if current and (len(current) >= max_intents or rows + size > max_rows):
            batches.append(current)
            current, rows = [], 0
        current.append(intent)
        rows += size
    if current:
        batches.append(current)
    return batches
