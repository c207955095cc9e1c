"""A kind written entirely with table sinks: exams and scores in the application's own tables.

No ``apply``, no statements: each :class:`~jobplatform.sinks.TableSink` names a table of the
application (``gradebook.*``, created by the application's own migration, ``schema.sql``),
its natural key and the column of each field. Register it with
``JOBPLATFORM_KINDS=gradebook`` (the module on ``sys.path``).

- ``exams``: upsert by (tenant, lecture, code); a title that did not change writes nothing.
- ``scores``: monotonic by ``revision``: a late revision 1 never overwrites revision 2, but
  fills the comment revision 2 lacked. The student and the exam are found by their natural
  keys, in the same statement.
- ``sittings``: insert if absent: the first time a student sat an exam stays.
"""

from __future__ import annotations

from collections.abc import Hashable
from decimal import Decimal
from typing import Literal

from jobplatform.kinds import Kind
from jobplatform.sinks import Ref, TableSink
from schemas import BaseIntent


class ExamPublished(BaseIntent):
    kind: Literal["gradebook.exam"] = "gradebook.exam"
    lecture_id: int
    code: str
    title: str
    max_score: Decimal

    def entity_key(self) -> tuple[Hashable, ...]:
        return ("exam", self.tenant_id, self.lecture_id, self.code)


class ScoreRecorded(BaseIntent):
    kind: Literal["gradebook.score"] = "gradebook.score"
    lecture_id: int
    code: str
    phone: str
    score: Decimal
    revision: int = 1
    comment: str | None = None

    def entity_key(self) -> tuple[Hashable, ...]:
        return ("score", self.tenant_id, self.lecture_id, self.code, self.phone)

    def rank(self) -> tuple[int, ...]:
        return (self.revision,)


STUDENT = Ref("gradebook.students", {"tenant_id": "tenant_id", "phone": "phone"})
EXAM = Ref("gradebook.exams", {"tenant_id": "tenant_id", "lecture_id": "lecture_id",
                               "code": "code"})

kind = Kind(
    name="gradebook",
    intents=(ExamPublished, ScoreRecorded),
    sinks=(
        TableSink(
            name="exams", table="gradebook.exams", key=("tenant_id", "lecture_id", "code"),
            columns={"tenant_id": "tenant_id", "lecture_id": "lecture_id", "code": "code",
                     "title": "title", "max_score": "max_score"},
            intents=(ExamPublished,),
        ),
        TableSink(
            name="scores", table="gradebook.scores", key=("exam_id", "student_id"),
            columns={"exam_id": EXAM, "student_id": STUDENT, "tenant_id": "tenant_id",
                     "score": "score", "revision": "revision", "comment": "comment",
                     "recorded_at": "occurred_at"},
            mode="monotonic", rank=("revision",), fill=("comment",),
            intents=(ScoreRecorded,), tenant="tenant_id",
        ),
        TableSink(
            name="sittings", table="gradebook.sittings", key=("exam_id", "student_id"),
            columns={"exam_id": EXAM, "student_id": STUDENT, "first_seen_at": "occurred_at"},
            mode="insert", intents=(ScoreRecorded,),
        ),
    ),
)
