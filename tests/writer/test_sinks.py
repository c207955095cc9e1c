"""Table sinks (``examples/gradebook``): the application's tables written with no SQL, against
real PostgreSQL, through the writer's batch and its refusal at start."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from jobplatform.errors import ConfigError
from jobplatform.kinds import Registry, load_registry
from jobplatform.sinks import Ref, TableSink
from schemas import BaseIntent
from tests.writer.conftest import query, scalar
from writer.catalog import TableMapError
from writer.db import connect
from writer.engine import apply_batch
from writer.errors import DataApplyError
from writer.sinks import check_sink

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gradebook"
T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)


@pytest.fixture
def gradebook(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import gradebook as module

    return module


@pytest.fixture
def registry(gradebook: ModuleType) -> Registry:
    return load_registry(("gradebook",))


@pytest.fixture
def app_db(database_url: str) -> str:
    """The application's migration step, then two students of tenant 7 and one of tenant 8."""
    with connect(database_url, autocommit=True) as conn:
        conn.execute((EXAMPLE / "schema.sql").read_text().encode())
        conn.execute("INSERT INTO gradebook.students (tenant_id, phone, name) VALUES"
                     " (7, '010-1111-1111', 'Kim'), (7, '010-2222-2222', 'Lee'),"
                     " (8, '010-1111-1111', 'Park')")
    return database_url


def apply(url: str, registry: Registry, intents: Sequence[BaseIntent]) -> Any:
    with connect(url) as conn, conn.transaction():
        return apply_batch(conn, intents, batch_seq=1, registry=registry)


def exam(gb: ModuleType, code: str = "mid", title: str = "Midterm", *, tenant: int = 7,
         seconds: int = 0) -> BaseIntent:
    intent: BaseIntent = gb.ExamPublished(
        tenant_id=tenant, occurred_at=T0 + timedelta(seconds=seconds), lecture_id=42,
        code=code, title=title, max_score=Decimal("100"))
    return intent


def score(gb: ModuleType, phone: str, value: str, *, revision: int = 1,
          comment: str | None = None, tenant: int = 7, seconds: int = 10,
          code: str = "mid") -> BaseIntent:
    intent: BaseIntent = gb.ScoreRecorded(
        tenant_id=tenant, occurred_at=T0 + timedelta(seconds=seconds), lecture_id=42,
        code=code, phone=phone, score=Decimal(value), revision=revision, comment=comment)
    return intent


SCORES = """SELECT s.phone, sc.score::text, sc.revision, sc.comment
            FROM gradebook.scores sc JOIN gradebook.students s ON s.id = sc.student_id
            ORDER BY 1"""


def test_one_batch_writes_every_sink_with_references_found_by_natural_key(
        app_db: str, registry: Registry, gradebook: ModuleType) -> None:
    result = apply(app_db, registry, [
        exam(gradebook),
        score(gradebook, "010-1111-1111", "91.5", comment="good"),
        score(gradebook, "010-2222-2222", "78"),
    ])
    assert query(app_db, "SELECT code, title FROM gradebook.exams") == [("mid", "Midterm")]
    assert query(app_db, SCORES) == [("010-1111-1111", "91.50", 1, "good"),
                                     ("010-2222-2222", "78.00", 1, None)]
    assert scalar(app_db, "SELECT count(*) FROM gradebook.sittings") == 2
    assert len(result.applied) == 3


def test_upsert_leaves_identical_rows_untouched(app_db: str, registry: Registry,
                                                gradebook: ModuleType) -> None:
    apply(app_db, registry, [exam(gradebook)])
    before = scalar(app_db, "SELECT xmin::text FROM gradebook.exams")
    apply(app_db, registry, [exam(gradebook, seconds=5)])  # the same values again
    assert scalar(app_db, "SELECT xmin::text FROM gradebook.exams") == before
    apply(app_db, registry, [exam(gradebook, title="Midterm (revised)", seconds=6)])
    assert scalar(app_db, "SELECT title FROM gradebook.exams") == "Midterm (revised)"
    assert scalar(app_db, "SELECT xmin::text FROM gradebook.exams") != before


def test_monotonic_never_moves_back_and_a_late_change_fills_what_is_missing(
        app_db: str, registry: Registry, gradebook: ModuleType) -> None:
    apply(app_db, registry, [exam(gradebook),
                             score(gradebook, "010-1111-1111", "80", revision=2)])
    # A late revision 1 (arrived after revision 2): its score is older, its comment is news.
    apply(app_db, registry, [score(gradebook, "010-1111-1111", "60", revision=1,
                                   comment="retake offered", seconds=1)])
    assert query(app_db, SCORES) == [("010-1111-1111", "80.00", 2, "retake offered")]
    # Within one batch the highest revision wins, whatever the arrival order.
    apply(app_db, registry, [score(gradebook, "010-1111-1111", "95", revision=4),
                             score(gradebook, "010-1111-1111", "85", revision=3)])
    assert query(app_db, SCORES)[0][1:3] == ("95.00", 4)


def test_insert_keeps_the_first_value(app_db: str, registry: Registry,
                                      gradebook: ModuleType) -> None:
    apply(app_db, registry, [exam(gradebook), score(gradebook, "010-1111-1111", "50",
                                                    seconds=10)])
    apply(app_db, registry, [score(gradebook, "010-1111-1111", "70", revision=2,
                                   seconds=99)])
    assert scalar(app_db, "SELECT first_seen_at FROM gradebook.sittings") == (
        T0 + timedelta(seconds=10))


def test_a_reference_that_finds_nothing_refuses_its_intent_and_writes_nothing(
        app_db: str, registry: Registry, gradebook: ModuleType) -> None:
    apply(app_db, registry, [exam(gradebook)])
    stranger = score(gradebook, "010-9999-9999", "10")
    with pytest.raises(DataApplyError) as caught:
        apply(app_db, registry, [score(gradebook, "010-1111-1111", "90"), stranger])
    assert list(caught.value.intent_ids) == [stranger.intent_id]
    assert "gradebook.students (tenant_id, phone)" in str(caught.value)
    assert scalar(app_db, "SELECT count(*) FROM gradebook.scores") == 0


def test_another_tenants_student_is_not_found_for_this_tenant(
        app_db: str, registry: Registry, gradebook: ModuleType) -> None:
    # Tenant 8 has an exam of the same code, tenant 7 does not: the score of tenant 7 cannot
    # reach tenant 8's exam, nor tenant 8's student of the same phone.
    apply(app_db, registry, [exam(gradebook, tenant=8)])
    with pytest.raises(DataApplyError):
        apply(app_db, registry, [score(gradebook, "010-1111-1111", "90", tenant=7)])
    assert scalar(app_db, "SELECT count(*) FROM gradebook.scores") == 0


def test_an_existing_row_of_another_tenant_is_refused(database_url: str) -> None:
    with connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app; CREATE TABLE app.notes (id uuid PRIMARY KEY,"
                     " tenant_id bigint NOT NULL, body text NOT NULL)")
    sink = TableSink(table="app.notes", key=("id",), tenant="tenant_id",
                     columns={"id": "note_id", "tenant_id": "tenant_id", "body": "body"},
                     rows=lambda intent: intent.rows)
    note = uuid.uuid4()

    class Intent:
        def __init__(self, tenant: int) -> None:
            self.intent_id = uuid.uuid4()
            self.rows = [{"note_id": note, "tenant_id": tenant, "body": f"by {tenant}"}]

    from jobplatform.kinds import Transaction
    from writer.engine.batch import BatchResult, KindTransaction
    from writer.sinks import apply_sinks

    def run(tenant: int) -> None:
        with connect(database_url) as conn, conn.transaction(), conn.cursor() as cur:
            kind = load_registry(()).kinds[0]
            tx: Transaction = KindTransaction(conn, cur, kind, BatchResult(batch_seq=1))
            apply_sinks([sink], tx, [Intent(tenant)])  # type: ignore[list-item]

    run(7)
    with pytest.raises(DataApplyError, match="exists under tenant_id 7"):
        run(8)
    assert query(database_url, "SELECT tenant_id, body FROM app.notes") == [(7, "by 7")]


def test_sinks_that_do_not_fit_the_catalog_are_named(app_db: str) -> None:
    with connect(app_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE gradebook.loose (code text, n integer NOT NULL,"
                     " must text NOT NULL)")
        no_unique = TableSink(table="gradebook.loose", key=("code",),
                              columns={"code": "code", "n": "n"})
        wrong = TableSink(table="gradebook.exams", key=("tenant_id", "lecture_id", "code"),
                          columns={"tenant_id": "tenant_id", "lecture_id": "lecture_id",
                                   "code": "code", "title": "title", "max_score": "max_score",
                                   "nope": "nope"})
        bad_ref = TableSink(table="gradebook.sittings", key=("exam_id", "student_id"),
                            columns={"exam_id": Ref("gradebook.exams", {"code": "code"}),
                                     "student_id": Ref("gradebook.students",
                                                       {"tenant_id": "tenant_id",
                                                        "phone": "phone"}),
                                     "first_seen_at": "occurred_at"})
        [loose] = check_sink(conn, no_unique)
        assert "no unique constraint on exactly (code)" in loose
        assert "'must' of gradebook.loose is NOT NULL without a default" in loose
        assert "has no column 'nope'" in check_sink(conn, wrong)[0]
        assert "no unique constraint on exactly (code) of gradebook.exams" in (
            check_sink(conn, bad_ref)[0])


def test_a_sink_declaration_is_checked_when_made() -> None:
    with pytest.raises(ConfigError, match="needs rank columns"):
        TableSink(table="a.b", key=("id",), columns={"id": "id"}, mode="monotonic")
    with pytest.raises(ConfigError, match=r"not schema\.table"):
        TableSink(table="b", key=("id",), columns={"id": "id"})
    with pytest.raises(ConfigError, match="key column 'x' is not in columns"):
        TableSink(table="a.b", key=("x",), columns={"id": "id"})


def test_the_writer_refuses_to_start_when_a_sink_does_not_fit(
        database_url: str, registry: Registry, start_writer: Any) -> None:
    # The application's migration has not run: gradebook's tables do not exist.
    runner = start_writer(database_url=database_url, registry=registry)
    runner.thread.join(30)
    assert isinstance(runner.error, TableMapError)
    assert "table gradebook.exams does not exist" in str(runner.error)
    runner.error = None


def test_bad_values_are_refused_by_the_database_not_half_applied(
        app_db: str, registry: Registry, gradebook: ModuleType) -> None:
    long_code = exam(gradebook, code="x" * 41)  # varchar(40)
    with pytest.raises((DataApplyError, psycopg.Error)):
        apply(app_db, registry, [exam(gradebook, code="ok"), long_code])
    assert scalar(app_db, "SELECT count(*) FROM gradebook.exams") == 0
