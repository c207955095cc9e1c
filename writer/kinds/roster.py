"""The roster kind's handler: imports' statuses (``roster_imports``), students and enrollments.

Coalescing (pure, before the transaction):

- Status intents of one import become one row change: the highest rank wins, a later arrival
  winning ties; fields the winner does not carry come from the intents it absorbed.
- Roster rows of every chunk become one list: one student row per ``(tenant_id, phone)`` and one
  enrollment per ``(lecture_id, tenant_id, phone)``. For a student seen twice, a row of the same
  import with the higher ``(chunk_index, source_row)`` wins, else the later arrival; the first
  enrollment wins (as ``ON CONFLICT DO NOTHING`` keeps the first across batches).

Applying: statuses; rows by binary COPY into a temporary staging table, the lectures ensured,
then one statement that looks each student up once, inserts the new, updates the changed,
leaves the identical untouched (no lock, no WAL) and enrolls them all without joining
``students`` again; per-import counters; ``done`` once every chunk of an import is applied.
After the commit, the job's progress record says ``done`` too, so ``status()`` needs no
database read.

Its declaration (intents, job type) is :data:`jobplatform.builtins.roster`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

from jobplatform.kinds import AfterCommit, Outcome, Transaction, coalesce
from jobplatform.logging import get_logger
from schemas import RosterChunk, RosterStatus, StudentRow
from schemas.jobs import roster_job_id
from writer.kinds.tables import STAGE_TABLE, active, roster_statements

log = get_logger("writer.roster")

#: ``roster_imports.status_rank`` of a row a chunk created before any status arrived.
ROSTER_PLACEHOLDER_RANK = -1
#: ``roster_imports.status_rank`` of ``done``: final, no status intent moves it.
ROSTER_DONE_RANK = 4

#: The statements of roster.sql that make a session's staging table, in order.
MAKE_STAGE = ("create_stage", "plain_stage")
_STAGE_TYPES = (
    "int8", "text", "text", "text", "text", "int2", "date", "timestamptz", "uuid", "int8",
    "uuid", "timestamptz",
)


@dataclass(frozen=True, slots=True)
class RosterStatusChange:
    """The one status change a batch makes to a roster import row."""

    import_id: UUID
    tenant_id: int
    lecture_id: int
    status: str
    status_rank: int
    source_key: str | None
    report_key: str | None
    total: int | None
    valid: int | None
    invalid: int | None
    duplicates: int | None
    empty_slots: int | None
    chunks_expected: int | None
    error: str | None
    sample_errors: str | None
    """JSON text of the sample row errors, when any intent carried some."""
    started_at: datetime | None
    updated_at: datetime
    intent_ids: tuple[UUID, ...]


class StageRow(NamedTuple):
    """One row of the staging table: an enrollment with its student's (winning) values, its
    fields in the table's column order (a row is written to the COPY as it is)."""

    tenant_id: int
    phone: str
    name: str
    parent_phone: str | None
    school: str | None
    grade: int | None
    birth_date: date | None
    student_at: datetime | None
    """The winning row's ``occurred_at``; set on exactly one row per student, else None."""
    student_import: UUID | None
    """The import the student's winning row came from; set with ``student_at``."""
    lecture_id: int
    import_id: UUID
    enrolled_at: datetime


@dataclass(slots=True)
class ImportTally:
    """What a batch holds for one roster import, before the database says what changed."""

    import_id: UUID
    tenant_id: int
    lecture_id: int
    chunks: int = 0
    rows: int = 0
    students: int = 0
    """Student rows of this import that won their key (created + updated + unchanged)."""
    duplicates: int = 0
    last_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RosterPlan:
    """Everything one transaction applies for the roster kind, in the order it applies it."""

    intents: tuple[RosterChunk | RosterStatus, ...] = ()
    statuses: tuple[RosterStatusChange, ...] = ()
    stage: tuple[StageRow, ...] = ()
    lectures: tuple[tuple[int, int, datetime], ...] = ()
    """``(lecture_id, tenant_id, created_at)`` each chunk's lecture needs."""
    lecture_conflicts: tuple[tuple[int, tuple[UUID, ...]], ...] = ()
    """Lectures claimed for two tenants inside the batch, with the chunks claiming them."""
    imports: dict[UUID, ImportTally] = field(default_factory=dict)
    student_import: dict[tuple[Any, ...], UUID] = field(default_factory=dict)
    """The import each staged student row is attributed to."""
    rows: int = 0
    """Roster rows received in chunks."""
    row_duplicates: int = 0
    """Rows dropped because a later row of the batch names the same student."""

    @property
    def coalesced(self) -> int:
        """Status intents folded into another intent's row change."""
        return sum(len(r.intent_ids) - 1 for r in self.statuses)

    @property
    def students(self) -> int:
        return len(self.student_import)


@dataclass(slots=True)
class ImportCounts:
    """What one batch did to one roster import."""

    chunks: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    enrolled: int = 0


@dataclass(slots=True)
class RosterOutcome(Outcome):
    """What the roster kind applied in one batch."""

    rows: int = 0
    """Roster rows in the applied chunks."""
    row_duplicates: int = 0
    """Roster rows superseded by a later row for the same student in the batch."""
    students_created: int = 0
    students_updated: int = 0
    enrolled: int = 0
    imports: dict[UUID, ImportCounts] = field(default_factory=dict)
    finished_imports: list[dict[str, Any]] = field(default_factory=list)
    """Imports this batch marked ``done``, with their final counts (for the job's status)."""
    failed_imports: list[tuple[UUID, str]] = field(default_factory=list)
    """Imports held ``failed`` by dead-lettered intents, with the reason."""
    resumed_imports: list[tuple[UUID, str]] = field(default_factory=list)
    """Imports whose dead intents were re-driven, with the status they took back."""

    @property
    def students_unchanged(self) -> int:
        return self.unchanged


# --- plan ----------------------------------------------------------------------------------

def plan(intents: Sequence[RosterChunk | RosterStatus]) -> RosterPlan:
    """Coalesce the batch's roster intents (arrival order, each id once); students by the
    natural key of the active table map (``(tenant_id, phone)`` unless configured)."""
    statuses: list[RosterStatus] = []
    rows = _RosterRows(active().students.key)
    for intent in intents:
        if isinstance(intent, RosterChunk):
            rows.add(intent)
        else:
            statuses.append(intent)
    return RosterPlan(
        intents=tuple(intents),
        statuses=tuple(_status_change(c.winner, c.intents) for c in coalesce(statuses)),
        stage=tuple(rows.stage_rows()),
        lectures=tuple(
            (lecture_id, tenant_id, at) for lecture_id, (tenant_id, at) in rows.lectures.items()
        ),
        lecture_conflicts=tuple(
            (lecture_id, tuple(ids)) for lecture_id, ids in rows.lecture_conflicts.items()
        ),
        imports=rows.imports,
        student_import={key: winner.import_id for key, winner in rows.students.items()},
        rows=rows.rows,
        row_duplicates=rows.duplicates,
    )


def _status_change(win: RosterStatus, group: Sequence[RosterStatus]) -> RosterStatusChange:
    by_rank = sorted(group, key=lambda i: i.rank())  # stable: arrival order within a rank

    def latest(name: str) -> Any:
        """The field from the highest-ranked, latest intent that carries it."""
        for intent in reversed(by_rank):
            value = getattr(intent, name)
            if value is not None and value != ():
                return value
        return None

    errors = latest("sample_errors")
    return RosterStatusChange(
        import_id=win.import_id,
        tenant_id=win.tenant_id,
        lecture_id=win.lecture_id,
        status=win.status,
        status_rank=win.rank()[1],
        source_key=latest("source_key"),
        report_key=latest("report_key"),
        total=latest("total"),
        valid=latest("valid"),
        invalid=latest("invalid"),
        duplicates=latest("duplicates"),
        empty_slots=latest("empty_slots"),
        chunks_expected=latest("chunks"),
        error=latest("error"),
        sample_errors=(
            json.dumps([e.model_dump(mode="json") for e in errors]) if errors else None
        ),
        started_at=min(i.occurred_at for i in group),
        updated_at=max(i.occurred_at for i in group),
        intent_ids=tuple(i.intent_id for i in group),
    )


@dataclass(slots=True)
class _Student:
    row: StudentRow
    import_id: UUID
    chunk_index: int
    at: datetime


@dataclass(slots=True)
class _Enrollment:
    import_id: UUID
    at: datetime


class _RosterRows:
    """Flattens chunks into deduplicated students and enrollments."""

    def __init__(self, key: tuple[str, ...] = ("tenant_id", "phone")) -> None:
        self.key = key
        self.students: dict[tuple[Any, ...], _Student] = {}
        self.enrollments: dict[tuple[int, tuple[Any, ...]], _Enrollment] = {}
        """By ``(lecture_id, student key)``."""
        self.lectures: dict[int, tuple[int, datetime]] = {}
        self.lecture_tenants: dict[int, dict[int, list[UUID]]] = {}
        self.imports: dict[UUID, ImportTally] = {}
        self.rows = 0
        self.duplicates = 0

    @property
    def lecture_conflicts(self) -> dict[int, list[UUID]]:
        return {
            lecture_id: [i for ids in tenants.values() for i in ids]
            for lecture_id, tenants in self.lecture_tenants.items()
            if len(tenants) > 1
        }

    def add(self, chunk: RosterChunk) -> None:
        tenant, lecture, at = chunk.tenant_id, chunk.lecture_id, chunk.occurred_at
        self.lectures.setdefault(lecture, (tenant, at))
        self.lecture_tenants.setdefault(lecture, {}).setdefault(tenant, []).append(
            chunk.intent_id
        )
        tally = self.imports.get(chunk.import_id)
        if tally is None:
            tally = self.imports[chunk.import_id] = ImportTally(chunk.import_id, tenant, lecture)
        tally.chunks += 1
        tally.rows += len(chunk.rows)
        tally.last_at = at if tally.last_at is None else max(tally.last_at, at)
        fields = self.key
        by_phone = fields == ("tenant_id", "phone")  # the default key, spelled out: faster
        students, enrollments = self.students, self.enrollments
        import_id, chunk_index = chunk.import_id, chunk.chunk_index
        self.rows += len(chunk.rows)
        for row in chunk.rows:
            key = (tenant, row.phone) if by_phone else tuple(
                tenant if f == "tenant_id" else getattr(row, f) for f in fields)
            seen = students.get(key)
            if seen is None:
                students[key] = _Student(row, import_id, chunk_index, at)
                tally.students += 1
            else:
                self.duplicates += 1
                tally.duplicates += 1
                same_import = seen.import_id == chunk.import_id
                if not same_import or (chunk.chunk_index, row.source_row) > (
                    seen.chunk_index, seen.row.source_row
                ):
                    self.imports[seen.import_id].students -= 1
                    tally.students += 1
                    self.students[key] = _Student(row, chunk.import_id, chunk.chunk_index, at)
            if (lecture, key) not in enrollments:
                enrollments[(lecture, key)] = _Enrollment(import_id, at)

    def stage_rows(self) -> list[StageRow]:
        staged: set[tuple[Any, ...]] = set()
        out = []
        students, imports = self.students, self.imports
        for (lecture, student_key), enrollment in self.enrollments.items():
            student = students[student_key]
            first = student_key not in staged
            staged.add(student_key)
            row = student.row
            # positional, in the field order of StageRow (the staging table's columns)
            out.append(StageRow(
                imports[student.import_id].tenant_id, row.phone, row.name, row.parent_phone,
                row.school, row.grade, row.birth_date, student.at if first else None,
                student.import_id if first else None, lecture, enrollment.import_id,
                enrollment.at,
            ))
        return out


# --- apply ---------------------------------------------------------------------------------

_STATUS_COLUMNS = (
    "tenant_id", "lecture_id", "status", "status_rank", "source_key", "report_key",
    "total", "valid", "invalid", "duplicates", "empty_slots", "chunks_expected", "error",
    "sample_errors", "started_at", "updated_at",
)
_FINISHED = ("import_id", "tenant_id", "total", "valid", "invalid", "duplicates",
             "empty_slots", "created", "updated", "unchanged", "enrolled")


def apply(tx: Transaction, work: RosterPlan) -> RosterOutcome:
    out = RosterOutcome(coalesced=work.coalesced, rows=work.rows,
                        row_duplicates=work.row_duplicates)
    # An import id of another tenant's import is refused before anything is written.
    claims: list[tuple[Any, int, Sequence[RosterChunk | RosterStatus | UUID]]] = [
        (s.import_id, s.tenant_id, s.intent_ids) for s in work.statuses]
    claims += [(i.import_id, i.tenant_id, (i.intent_id,)) for i in work.intents
               if isinstance(i, RosterChunk)]
    tx.check_tenants("roster_imports", "id", "tenant_id", claims)
    if work.statuses:
        changes = work.statuses
        params: dict[str, Any] = {"id": [c.import_id for c in changes]}
        params.update({n: [getattr(c, n) for c in changes] for n in _STATUS_COLUMNS})
        tx.run("upsert_roster_statuses", params)
    if work.stage:
        _rows(tx, work, out)
    if work.imports:
        _counts(tx, work, out)
    touched = {s.import_id for s in work.statuses} | set(work.imports)
    if touched:
        done = tx.run("mark_roster_done", {"ids": list(touched), "done_rank": ROSTER_DONE_RANK})
        out.finished_imports = [dict(zip(_FINISHED, row, strict=True)) for row in done]
    if work.statuses:
        # A status arriving after a dead letter must not make the job look alive again
        held = tx.run("dead_imports", {"ids": [s.import_id for s in work.statuses]})
        out.failed_imports = [(import_id, error) for import_id, _, error in held]
    return out


def dead_lettered(tx: Transaction, intents: Sequence[RosterChunk | RosterStatus],
                  reason: str) -> RosterOutcome:
    """Intents of an import went to the dead letters: the import fails, naming the reason,
    until ``jobplatform dead retry`` sends them again."""
    imports: dict[UUID, list[RosterChunk | RosterStatus]] = {}
    for intent in intents:
        imports.setdefault(intent.import_id, []).append(intent)
    groups = list(imports.values())
    what = "a roster chunk" if any(isinstance(i, RosterChunk) for i in intents) else (
        "a roster status")
    error = f"{what} could not be written: {reason}"[:2000]
    rows = tx.run("fail_dead", {
        "placeholder_rank": ROSTER_PLACEHOLDER_RANK, "error": error,
        "id": [g[0].import_id for g in groups],
        "tenant_id": [g[0].tenant_id for g in groups],
        "lecture_id": [g[0].lecture_id for g in groups],
        "dead": [len(g) for g in groups],
        "updated_at": [max(i.occurred_at for i in g) for g in groups],
    })
    return RosterOutcome(failed_imports=[(import_id, err) for import_id, _, err in rows])


def redriven(tx: Transaction, intents: Sequence[RosterChunk | RosterStatus]) -> RosterOutcome:
    """Dead intents are sent again: their import takes back the status it had."""
    sent: dict[UUID, int] = {}
    for intent in intents:
        sent[intent.import_id] = sent.get(intent.import_id, 0) + 1
    rows = tx.run("redrive", {"id": list(sent), "sent": list(sent.values())})
    return RosterOutcome(resumed_imports=[(import_id, status) for import_id, _, status in rows])


def _counts_of(out: RosterOutcome, import_id: UUID) -> ImportCounts:
    found = out.imports.get(import_id)
    if found is None:
        found = out.imports[import_id] = ImportCounts()
    return found


def _rows(tx: Transaction, work: RosterPlan, out: RosterOutcome) -> None:
    _check_lectures(tx, work)
    [(_, _, has_stage)] = tx.run("prepare_stage", {"stage": STAGE_TABLE})
    if not has_stage:
        for making in MAKE_STAGE:
            tx.run(making, stage=STAGE_TABLE)
    tx.copy("copy_stage", work.stage, types=_STAGE_TYPES, stage=STAGE_TABLE)
    statements = roster_statements(active())
    by_lecture = None if statements.exact_imports else _imports_by_lecture(work)
    for counted, created, updated, enrolled in tx.execute(statements.upsert_roster):
        counts = _counts_of(out, counted if by_lecture is None else by_lecture[counted])
        counts.created += int(created)
        counts.updated += int(updated)
        counts.enrolled += int(enrolled)
    if len(work.stage) > work.students:
        for counted, enrolled in tx.execute(statements.enroll_more):
            key = counted if by_lecture is None else by_lecture[counted]
            _counts_of(out, key).enrolled += int(enrolled)
    for import_id, tally in work.imports.items():
        counts = _counts_of(out, import_id)
        counts.chunks = tally.chunks
        counts.unchanged = tally.students - counts.created - counts.updated
        out.students_created += counts.created
        out.students_updated += counts.updated
        out.unchanged += counts.unchanged
        out.enrolled += counts.enrolled


def _imports_by_lecture(work: RosterPlan) -> dict[int, UUID]:
    """Where counts returned by lecture go when enrollments do not name their import: the
    batch's import of that lecture (the last, when two imports of one lecture share a batch)."""
    return {tally.lecture_id: import_id for import_id, tally in work.imports.items()}


def _check_lectures(tx: Transaction, work: RosterPlan) -> None:
    for lecture_id, intent_ids in work.lecture_conflicts:
        tx.reject(f"lecture {lecture_id} is claimed by chunks of different tenants", intent_ids)
    foreign = tx.execute(roster_statements(active()).ensure_lectures, {
        "id": [lec[0] for lec in work.lectures],
        "tenant_id": [lec[1] for lec in work.lectures],
        "created_at": [lec[2] for lec in work.lectures],
    })
    if foreign:
        lecture_id, wanted, owner = foreign[0]
        ids = [i.intent_id for i in work.intents
               if isinstance(i, RosterChunk) and i.lecture_id == lecture_id]
        if owner is None:
            tx.reject(f"lecture {lecture_id} does not exist (the table map says"
                      " lectures_missing = 'reject': the application creates lectures)", ids)
        tx.reject(f"lecture {lecture_id} belongs to tenant {owner}, not to tenant {wanted} "
                  "named by the roster chunk", ids)


def _counts(tx: Transaction, work: RosterPlan, out: RosterOutcome) -> None:
    tallies = list(work.imports.values())
    counts = [_counts_of(out, t.import_id) for t in tallies]
    tx.run("add_roster_counts", {
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


# --- after commit --------------------------------------------------------------------------

def after_commit(ctx: AfterCommit, out: RosterOutcome) -> None:
    """Mark finished imports ``done`` (failed ones ``failed``, re-driven ones back in their
    status) in their progress records; best effort: the database already says so."""
    for counts in out.finished_imports:
        fields = dict(counts)
        job_id = roster_job_id(fields.pop("import_id"))
        ctx.progress.update(job_id, step="done", percent=100.0, **fields)
    for import_id, error in out.failed_imports:
        ctx.progress.update(roster_job_id(import_id), step="failed", error=error)
    for import_id, status in out.resumed_imports:
        ctx.progress.update(roster_job_id(import_id), step=status, error=None)


#: The statements ``apply`` runs.
sql = Path(__file__).with_suffix(".sql")
