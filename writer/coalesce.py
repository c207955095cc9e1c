"""Coalescing: a batch of intents, in arrival order, becomes a plan of row changes.

Pure: no database. The sink (:mod:`writer.sink`) executes the plan.

- Intents repeated by ``intent_id`` count once.
- Status intents of one video (or one roster import) become one row change: the highest by
  :func:`schemas.intents.intent_rank` wins, a later arrival winning ties; fields the winner does
  not carry (a video's ``source_key`` from ``queued``, its ``started_at`` from ``processing``)
  are taken from the intents it absorbed. Every absorbed id still goes to the ledger.
- Roster rows of every chunk become one list: one student row per ``(tenant_id, phone)`` and one
  enrollment per ``(lecture_id, tenant_id, phone)``. For a student seen twice, a row of the same
  import with the higher ``(chunk_index, source_row)`` wins, else the later arrival; the first
  enrollment wins (as ``ON CONFLICT DO NOTHING`` keeps the first across batches).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar
from uuid import UUID

from schemas.intents import (
    AnyIntent,
    RosterChunk,
    RosterStatus,
    StudentRow,
    VideoFailed,
    VideoProcessing,
    VideoQueued,
    VideoReady,
    intent_rank,
)

VideoIntent = VideoQueued | VideoProcessing | VideoReady | VideoFailed
_I = TypeVar("_I", VideoIntent, RosterStatus)

#: ``roster_imports.status_rank`` of a row a chunk created before any status arrived.
ROSTER_PLACEHOLDER_RANK = -1
#: ``roster_imports.status_rank`` of ``done``: final, no status intent moves it.
ROSTER_DONE_RANK = 4


@dataclass(frozen=True, slots=True)
class VideoChange:
    """The one change a batch makes to a video row."""

    video_id: UUID
    tenant_id: int
    status: str
    attempt: int
    status_rank: int
    source_key: str | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    hls_key: str | None
    duration_s: float | None
    renditions: str | None
    """JSON text of the renditions (``ready`` only)."""
    error: str | None
    updated_at: datetime
    intent_ids: tuple[UUID, ...]


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
    chunks_expected: int | None
    error: str | None
    sample_errors: str | None
    """JSON text of the sample row errors, when any intent carried some."""
    started_at: datetime | None
    updated_at: datetime
    intent_ids: tuple[UUID, ...]


@dataclass(frozen=True, slots=True)
class StageRow:
    """One row of the staging table: an enrollment with its student's (winning) values."""

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
class Plan:
    """Everything one transaction applies, in the order the sink applies it."""

    intents: tuple[AnyIntent, ...]
    """Unique intents in arrival order."""
    duplicates: int
    """Intents dropped because their id came earlier in the same input."""
    videos: tuple[VideoChange, ...] = ()
    roster_statuses: tuple[RosterStatusChange, ...] = ()
    stage: tuple[StageRow, ...] = ()
    lectures: tuple[tuple[int, int, datetime], ...] = ()
    """``(lecture_id, tenant_id, created_at)`` each chunk's lecture needs."""
    lecture_conflicts: tuple[tuple[int, tuple[UUID, ...]], ...] = ()
    """Lectures claimed for two tenants inside the batch, with the chunks claiming them."""
    imports: dict[UUID, ImportTally] = field(default_factory=dict)
    student_import: dict[tuple[int, str], UUID] = field(default_factory=dict)
    """The import each staged student row is attributed to."""
    rows: int = 0
    """Roster rows received in chunks."""
    row_duplicates: int = 0
    """Rows dropped because a later row of the batch names the same student."""

    @property
    def coalesced(self) -> int:
        """Status intents folded into another intent's row change."""
        return sum(len(v.intent_ids) - 1 for v in self.videos) + sum(
            len(r.intent_ids) - 1 for r in self.roster_statuses
        )

    @property
    def students(self) -> int:
        return len(self.student_import)


def unique_intents(intents: Iterable[AnyIntent]) -> tuple[list[AnyIntent], int]:
    """The intents with repeated ids dropped (first kept), and how many were dropped."""
    seen: set[UUID] = set()
    unique: list[AnyIntent] = []
    dropped = 0
    for intent in intents:
        if intent.intent_id in seen:
            dropped += 1
            continue
        seen.add(intent.intent_id)
        unique.append(intent)
    return unique, dropped


def plan(intents: Iterable[AnyIntent]) -> Plan:
    """Coalesce ``intents`` (in arrival order) into one plan of row changes."""
    unique, duplicates = unique_intents(intents)
    videos: dict[UUID, list[VideoIntent]] = {}
    statuses: dict[UUID, list[RosterStatus]] = {}
    chunks: list[RosterChunk] = []
    for intent in unique:
        if isinstance(intent, RosterChunk):
            chunks.append(intent)
        elif isinstance(intent, RosterStatus):
            statuses.setdefault(intent.import_id, []).append(intent)
        else:
            videos.setdefault(intent.video_id, []).append(intent)
    roster = _RosterRows()
    for chunk in chunks:
        roster.add(chunk)
    return Plan(
        intents=tuple(unique),
        duplicates=duplicates,
        videos=tuple(_video_change(group) for group in videos.values()),
        roster_statuses=tuple(_status_change(group) for group in statuses.values()),
        stage=tuple(roster.stage_rows()),
        lectures=tuple(
            (lecture_id, tenant_id, at) for lecture_id, (tenant_id, at) in roster.lectures.items()
        ),
        lecture_conflicts=tuple(
            (lecture_id, tuple(ids)) for lecture_id, ids in roster.lecture_conflicts.items()
        ),
        imports=roster.imports,
        student_import={key: winner.import_id for key, winner in roster.students.items()},
        rows=roster.rows,
        row_duplicates=roster.duplicates,
    )


def _winner(group: list[_I]) -> _I:
    """The highest-ranked intent of a group; a later arrival wins ties."""
    best = group[0]
    for intent in group[1:]:
        if intent_rank(intent) >= intent_rank(best):
            best = intent
    return best


def _video_change(group: list[VideoIntent]) -> VideoChange:
    win = _winner(group)
    queued = [i for i in group if isinstance(i, VideoQueued)]
    starts = [i for i in group if isinstance(i, VideoProcessing) and i.attempt == win.attempt]
    # The highest attempt's, the latest arrival among equals.
    last_queued = max(reversed(queued), key=lambda i: i.attempt) if queued else None
    start = starts[-1].occurred_at if starts and not isinstance(win, VideoQueued) else None
    renditions = None
    if isinstance(win, VideoReady):
        renditions = json.dumps([r.model_dump(mode="json") for r in win.renditions])
    final = isinstance(win, VideoReady | VideoFailed)
    return VideoChange(
        video_id=win.video_id,
        tenant_id=win.tenant_id,
        status=win.kind.removeprefix("video."),
        attempt=win.attempt,
        status_rank=intent_rank(win)[1],
        source_key=last_queued.source_key if last_queued else None,
        queued_at=last_queued.occurred_at if last_queued else None,
        started_at=start,
        finished_at=win.occurred_at if final else None,
        hls_key=win.hls_key if isinstance(win, VideoReady) else None,
        duration_s=win.duration_s if isinstance(win, VideoReady) else None,
        renditions=renditions,
        error=win.reason if isinstance(win, VideoFailed) else None,
        updated_at=win.occurred_at,
        intent_ids=tuple(i.intent_id for i in group),
    )


def _status_change(group: list[RosterStatus]) -> RosterStatusChange:
    win = _winner(group)
    by_rank = sorted(group, key=intent_rank)  # stable: arrival order within a rank

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
        status_rank=intent_rank(win)[1],
        source_key=latest("source_key"),
        report_key=latest("report_key"),
        total=latest("total"),
        valid=latest("valid"),
        invalid=latest("invalid"),
        duplicates=latest("duplicates"),
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

    def __init__(self) -> None:
        self.students: dict[tuple[int, str], _Student] = {}
        self.enrollments: dict[tuple[int, int, str], _Enrollment] = {}
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
        for row in chunk.rows:
            self.rows += 1
            key = (tenant, row.phone)
            seen = self.students.get(key)
            if seen is None:
                self.students[key] = _Student(row, chunk.import_id, chunk.chunk_index, at)
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
            self.enrollments.setdefault(
                (lecture, tenant, row.phone), _Enrollment(chunk.import_id, at)
            )

    def stage_rows(self) -> list[StageRow]:
        staged: set[tuple[int, str]] = set()
        out = []
        for (lecture, tenant, phone), enrollment in self.enrollments.items():
            student = self.students[(tenant, phone)]
            first = (tenant, phone) not in staged
            staged.add((tenant, phone))
            row = student.row
            out.append(StageRow(
                tenant_id=tenant,
                phone=phone,
                name=row.name,
                parent_phone=row.parent_phone,
                school=row.school,
                grade=row.grade,
                birth_date=row.birth_date,
                student_at=student.at if first else None,
                student_import=student.import_id if first else None,
                lecture_id=lecture,
                import_id=enrollment.import_id,
                enrolled_at=enrollment.at,
            ))
        return out
