"""A kind of the application's own: attendance marks, written as a user of the platform would.

Register it with ``JOBPLATFORM_KINDS=attendance`` (the module on ``sys.path``), or from a
package with ``[project.entry-points."jobplatform.kinds"] attendance = "attendance"``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Literal

from jobplatform.kinds import Change, JobType, Kind, Outcome, Transaction
from schemas import BaseIntent, BaseJob

Mark = Literal["present", "late", "absent", "excused"]
State = Literal["recorded", "reviewed", "final"]
STATES: tuple[State, ...] = ("recorded", "reviewed", "final")


class AttendanceMarked(BaseIntent):
    """A student's attendance of one lecture on one day; its state only moves forward."""

    kind: Literal["attendance.marked"] = "attendance.marked"
    lecture_id: int
    phone: str
    day: date
    mark: Mark
    state: State = "recorded"
    note: str | None = None

    def entity_key(self) -> tuple[Hashable, ...]:
        return ("attendance", self.tenant_id, self.lecture_id, self.phone, self.day)

    def rank(self) -> tuple[int, ...]:
        return (STATES.index(self.state),)


class RecordAttendance(BaseJob):
    """Published by the API when a teacher marks a student; an actor reviews it later."""

    kind: Literal["attendance.record"] = "attendance.record"
    lecture_id: int
    phone: str
    day: date
    mark: Mark

    @property
    def job_id(self) -> str:
        return f"attendance:{self.tenant_id}:{self.lecture_id}:{self.phone}:{self.day}"


def recorded(job: RecordAttendance, at: datetime) -> AttendanceMarked:
    return AttendanceMarked(tenant_id=job.tenant_id, occurred_at=at, lecture_id=job.lecture_id,
                            phone=job.phone, day=job.day, mark=job.mark)


def apply(tx: Transaction, changes: Sequence[Change[AttendanceMarked]]) -> Outcome:
    marks = [c.winner for c in changes]
    tx.run("upsert_marks", {
        "tenant_id": [m.tenant_id for m in marks],
        "lecture_id": [m.lecture_id for m in marks],
        "phone": [m.phone for m in marks],
        "day": [m.day for m in marks],
        "mark": [m.mark for m in marks],
        "state": [m.state for m in marks],
        "state_rank": [m.rank()[0] for m in marks],
        "note": [c.latest("note") for c in changes],
        "updated_at": [m.occurred_at for m in marks],
    })
    return Outcome(coalesced=sum(len(c.intents) - 1 for c in changes))


kind = Kind(
    name="attendance",
    intents=(AttendanceMarked,),
    apply=apply,
    sql=Path(__file__).with_suffix(".sql"),
    migrations=Path(__file__).with_suffix(".sql"),
    jobs=(JobType(RecordAttendance, actor="record_attendance", queue="attendance",
                  queued=recorded),),
)
