"""A day of writer batches applied the way the writer orders its steps, with the intent log.

Shared by the log's replay tests and the CLI's: the batches, the writer's steps on a real
database, and a snapshot of every table by natural keys and values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobplatform.settings import WriterSettings
from schemas.intents import AnyIntent
from tests.writer.log_samples import roster_import, student, video_lifecycle
from writer.db import connect
from writer.engine import apply_batch
from writer.intentlog import IntentLog
from writer.lock import begin_batch, try_acquire

LOCK_KEY = WriterSettings().lock_key

#: Every table the writer fills, as natural keys and values (surrogate ids left out).
SNAPSHOT = {
    "lectures": "SELECT id, tenant_id, created_at FROM lectures ORDER BY id",
    "students": (
        "SELECT tenant_id, phone, name, parent_phone, school, grade, birth_date, created_at,"
        " updated_at FROM students ORDER BY tenant_id, phone"
    ),
    "enrollments": (
        "SELECT e.lecture_id, s.tenant_id, s.phone, e.import_id, e.enrolled_at"
        " FROM enrollments e JOIN students s ON s.id = e.student_id"
        " ORDER BY e.lecture_id, s.tenant_id, s.phone"
    ),
    "videos": (
        "SELECT id, tenant_id, status, attempt, status_rank, source_key, hls_key, duration_s,"
        " renditions, error, queued_at, started_at, finished_at, updated_at FROM videos ORDER BY id"
    ),
    "roster_imports": "SELECT * FROM roster_imports ORDER BY id",
    "ledger": "SELECT intent_id FROM writer_ledger ORDER BY intent_id",
}


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with connect(url, autocommit=True) as conn:
        return {name: conn.execute(query.encode()).fetchall() for name, query in SNAPSHOT.items()}


class LiveWriter:
    """The writer's order of steps for one batch, on a real database and log."""

    def __init__(self, url: str, log: IntentLog) -> None:
        self.conn = connect(url, autocommit=True)
        assert try_acquire(self.conn, LOCK_KEY)
        self.log = log

    def batch(self, intents: Sequence[AnyIntent], *, crash_before_commit: bool = False) -> None:
        """BEGIN; batch number; apply -> log append (fsync) -> COMMIT (or a crash before it)."""
        with self.conn.transaction(force_rollback=crash_before_commit):
            seq = begin_batch(self.conn, LOCK_KEY, 30_000)
            result = apply_batch(self.conn, intents, batch_seq=seq)
            applied = set(result.applied)
            self.log.append(seq, [i for i in dict.fromkeys(intents) if i.intent_id in applied])

    def close(self) -> None:
        self.conn.close()
        self.log.close()


def a_busy_day(tenant: int = 7) -> tuple[list[list[AnyIntent]], list[AnyIntent]]:
    """Batches of a day with imports, videos, redeliveries and out-of-order statuses.

    Returns the committed batches and the intents of a batch that crashed before commit.
    """
    lecture = 9000 + tenant
    first = roster_import(tenant, lecture, [student(n) for n in range(0, 300)], 0)
    # A second import of the same lecture: 100 students again, 50 with new names, 50 new ones
    second = roster_import(
        tenant, lecture,
        [student(n, name=f"이름{n}" if n % 2 else None) for n in range(200, 300)]
        + [student(n) for n in range(300, 350)],
        100,
    )
    other = roster_import(tenant + 1, lecture + 1, [student(n) for n in range(0, 60)], 5)
    ready = video_lifecycle(tenant, 10)
    failed = video_lifecycle(tenant, 20, fail=True)
    late = video_lifecycle(tenant + 1, 30)
    batches = [
        first[:3] + ready[:1],
        first[3:6] + ready[2:] + other[:2],     # ready before processing arrives
        first[6:] + ready[1:2] + failed,        # the late processing changes nothing
        other[2:] + second[:2] + first[3:5],    # two chunks redelivered: ledger skips them
        second[2:] + late[::-1],                # a video's statuses in reverse order
    ]
    # Crashed before commit: the last chunk of `second` again plus a rename of student 5
    crashed = [
        *second[-2:-1],
        *roster_import(tenant, lecture, [student(5, name="바뀐이름")], 200)[:2],
    ]
    return batches, crashed


def run_live(url: str, folder: Path, batches: list[list[AnyIntent]], *,
             crashed_after: int | None = None, crashed: Sequence[AnyIntent] = ()) -> None:
    writer = LiveWriter(url, IntentLog(folder, writer_id="live:1",
                                       segment_bytes=64 * 1024))
    try:
        for index, batch in enumerate(batches):
            writer.batch(batch)
            if index == crashed_after:
                writer.batch(crashed, crash_before_commit=True)
    finally:
        writer.close()


