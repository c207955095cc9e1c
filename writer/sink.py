"""The sink: one batch of intents applied inside the caller's transaction.

The caller opens the transaction, takes the writer's advisory transaction lock and
``nextval('writer_batch_seq')``, calls :func:`apply_batch` once, and commits (or rolls back on
an error). The statements live in ``sql/sink.sql``.

Order of work: the ledger (ids already applied are skipped), then the coalesced plan
(:mod:`writer.coalesce`): videos, roster import statuses, roster rows (binary COPY into a
temporary staging table, lectures ensured, then one statement that looks each student up once,
inserts the new, updates the changed, leaves the identical untouched and enrolls them all
without joining ``students`` again), per-import counters, and ``done`` marking.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from schemas.intents import AnyIntent
from writer.coalesce import (
    ROSTER_DONE_RANK,
    ROSTER_PLACEHOLDER_RANK,
    Plan,
    plan,
    unique_intents,
)
from writer.errors import ApplyError, DataApplyError, DatabaseUnavailable

Conn = psycopg.Connection[Any]

#: The session's staging table (temporary, emptied at each commit).
STAGE_TABLE = "writer_stage"

_STAGE_TYPES = (
    "int8", "text", "text", "text", "text", "int2", "date", "timestamptz", "uuid", "int8",
    "uuid", "timestamptz",
)


@cache
def queries() -> dict[str, str]:
    """The named statements of ``sql/sink.sql``, full-line comments removed."""
    text = (resources.files("writer") / "sql" / "sink.sql").read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        found[name.strip()] = "\n".join(lines).strip()
    return found


def _query(name: str, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(queries()[name]).format(stage=sql.Identifier(STAGE_TABLE), **parts)


@dataclass(slots=True)
class ImportCounts:
    """What one batch did to one roster import."""

    chunks: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    enrolled: int = 0


@dataclass(slots=True)
class BatchResult:
    """What :func:`apply_batch` applied; ``applied`` is in apply order, for the intent log."""

    batch_seq: int
    applied: list[UUID] = field(default_factory=list)
    duplicates: int = 0
    """Intents skipped: repeated in the batch or already in the ledger (redeliveries)."""
    coalesced: int = 0
    """Status intents folded into another intent's row change."""
    rows: int = 0
    """Roster rows in the applied chunks."""
    row_duplicates: int = 0
    """Roster rows superseded by a later row for the same student in the batch."""
    students_created: int = 0
    students_updated: int = 0
    students_unchanged: int = 0
    enrolled: int = 0
    videos_changed: int = 0
    statements: int = 0
    """Statements sent to the server (a COPY counts as one)."""
    imports: dict[UUID, ImportCounts] = field(default_factory=dict)
    finished_imports: list[dict[str, Any]] = field(default_factory=list)
    """Imports this batch marked ``done``, with their final counts (for the job's status)."""


def apply_batch(conn: Conn, intents: Iterable[AnyIntent] | Plan, *,
                batch_seq: int) -> BatchResult:
    """Apply ``intents`` (in arrival order) in the caller's open transaction.

    ``intents`` may be their :func:`writer.coalesce.plan`, made before the transaction began
    (coalescing needs no database): it is used as is when the ledger claims every intent, and
    made again from the fresh ones otherwise (a redelivery).

    Raises :class:`DataApplyError` when the data is wrong for the database (roll back and split
    the batch; ``intent_ids`` names the culprits when known), :class:`DatabaseUnavailable` when
    PostgreSQL is unreachable or cancelled the work (roll back, retry later), and
    :class:`ApplyError` for any other database error.
    """
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        raise ValueError("apply_batch needs an open transaction (autocommit is on, none is open)")
    try:
        return _Batch(conn, batch_seq).apply(intents)
    except ApplyError:
        raise
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        raise DataApplyError(_describe(exc)) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise DatabaseUnavailable(_describe(exc)) from exc
    except psycopg.Error as exc:
        raise ApplyError(_describe(exc)) from exc


def _describe(exc: psycopg.Error) -> str:
    diag = exc.diag
    parts = [f"{type(exc).__name__}: {str(exc).strip() or diag.message_primary or ''}"]
    if diag.table_name:
        parts.append(f"table {diag.table_name}")
    if diag.constraint_name:
        parts.append(f"constraint {diag.constraint_name}")
    return "; ".join(parts)


class _Batch:
    def __init__(self, conn: Conn, batch_seq: int) -> None:
        self.conn = conn
        self.cur = conn.cursor()
        self.result = BatchResult(batch_seq=batch_seq)

    def run(self, query: sql.Composed, params: dict[str, Any] | None = None) -> list[Any]:
        self.result.statements += 1
        self.cur.execute(query, params)
        return self.cur.fetchall() if self.cur.description is not None else []

    def apply(self, intents: Iterable[AnyIntent] | Plan) -> BatchResult:
        prepared: Plan | None = None
        if isinstance(intents, Plan):
            prepared = intents
            unique, repeated = list(intents.intents), intents.duplicates
        else:
            unique, repeated = unique_intents(intents)
        result = self.result
        result.duplicates = repeated
        if not unique:
            return result
        claimed = {
            row[0] for row in self.run(_query("claim_intents"), {
                "ids": [i.intent_id for i in unique], "batch_seq": result.batch_seq,
            })
        }
        fresh = [i for i in unique if i.intent_id in claimed]
        result.duplicates += len(unique) - len(fresh)
        result.applied = [i.intent_id for i in fresh]
        work = prepared if prepared is not None and len(fresh) == len(unique) else plan(fresh)
        result.coalesced = work.coalesced
        result.rows = work.rows
        result.row_duplicates = work.row_duplicates
        if work.videos:
            self.videos(work)
        if work.roster_statuses:
            self.roster_statuses(work)
        if work.stage:
            self.roster_rows(work)
        if work.imports:
            self.roster_counts(work)
        touched = {s.import_id for s in work.roster_statuses} | set(work.imports)
        if touched:
            done = self.run(_query("mark_roster_done"), {
                "ids": list(touched), "done_rank": ROSTER_DONE_RANK,
            })
            names = ("import_id", "tenant_id", "total", "valid", "invalid", "duplicates",
                     "created", "updated", "unchanged", "enrolled")
            result.finished_imports = [dict(zip(names, row, strict=True)) for row in done]
        return result

    def videos(self, work: Plan) -> None:
        changes = work.videos
        names = (
            "tenant_id", "status", "attempt", "status_rank", "source_key", "hls_key", "duration_s",
            "renditions", "error", "queued_at", "started_at", "finished_at", "updated_at",
        )
        params: dict[str, Any] = {"id": [c.video_id for c in changes]}
        params.update({n: [getattr(c, n) for c in changes] for n in names})
        [(changed, foreign)] = self.run(_query("upsert_videos"), params)
        if foreign:
            bad = set(foreign)
            ids = [i for c in changes if c.video_id in bad for i in c.intent_ids]
            raise DataApplyError(
                f"video {', '.join(map(str, sorted(bad)))} belongs to another tenant", ids
            )
        self.result.videos_changed = int(changed)

    def roster_statuses(self, work: Plan) -> None:
        changes = work.roster_statuses
        names = (
            "tenant_id", "lecture_id", "status", "status_rank", "source_key", "report_key",
            "total", "valid", "invalid", "duplicates", "chunks_expected", "error",
            "sample_errors", "started_at", "updated_at",
        )
        params: dict[str, Any] = {"id": [c.import_id for c in changes]}
        params.update({n: [getattr(c, n) for c in changes] for n in names})
        self.run(_query("upsert_roster_statuses"), params)

    def roster_rows(self, work: Plan) -> None:
        self.check_lectures(work)
        [(_, _, has_stage)] = self.run(_query("prepare_stage"), {"stage": STAGE_TABLE})
        if not has_stage:
            self.run(_query("create_stage"))
        self.result.statements += 1
        with self.cur.copy(_query("copy_stage")) as copy:
            copy.set_types(list(_STAGE_TYPES))
            for r in work.stage:
                copy.write_row((
                    r.tenant_id, r.phone, r.name, r.parent_phone, r.school, r.grade,
                    r.birth_date, r.student_at, r.student_import, r.lecture_id, r.import_id,
                    r.enrolled_at,
                ))
        for import_id, created, updated, enrolled in self.run(_query("upsert_roster")):
            counts = self.counts(import_id)
            counts.created, counts.updated = int(created), int(updated)
            counts.enrolled += int(enrolled)
        if len(work.stage) > work.students:
            for import_id, enrolled in self.run(_query("enroll_more")):
                self.counts(import_id).enrolled += int(enrolled)
        result = self.result
        for import_id, tally in work.imports.items():
            counts = self.counts(import_id)
            counts.chunks = tally.chunks
            counts.unchanged = tally.students - counts.created - counts.updated
            result.students_created += counts.created
            result.students_updated += counts.updated
            result.students_unchanged += counts.unchanged
            result.enrolled += counts.enrolled

    def check_lectures(self, work: Plan) -> None:
        for lecture_id, intent_ids in work.lecture_conflicts:
            raise DataApplyError(
                f"lecture {lecture_id} is claimed by chunks of different tenants", intent_ids
            )
        foreign = self.run(_query("ensure_lectures"), {
            "id": [lec[0] for lec in work.lectures],
            "tenant_id": [lec[1] for lec in work.lectures],
            "created_at": [lec[2] for lec in work.lectures],
        })
        if foreign:
            lecture_id, wanted, owner = foreign[0]
            ids = [
                i.intent_id for i in work.intents
                if getattr(i, "lecture_id", None) == lecture_id and i.kind == "roster.chunk"
            ]
            raise DataApplyError(
                f"lecture {lecture_id} belongs to tenant {owner}, not to tenant {wanted} "
                "named by the roster chunk", ids
            )

    def counts(self, import_id: UUID) -> ImportCounts:
        found = self.result.imports.get(import_id)
        if found is None:
            found = self.result.imports[import_id] = ImportCounts()
        return found

    def roster_counts(self, work: Plan) -> None:
        tallies = list(work.imports.values())
        counts = [self.counts(t.import_id) for t in tallies]
        self.run(_query("add_roster_counts"), {
            "placeholder_rank": ROSTER_PLACEHOLDER_RANK,
            "id": [t.import_id for t in tallies],
            "tenant_id": [t.tenant_id for t in tallies],
            "lecture_id": [t.lecture_id for t in tallies],
            "chunks": [t.chunks for t in tallies],
            "created": [c.created for c in counts],
            "updated": [c.updated for c in counts],
            "unchanged": [c.unchanged for c in counts],
            "enrolled": [c.enrolled for c in counts],
            "updated_at": [t.last_at for t in tallies],
        })
