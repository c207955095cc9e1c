"""Applying batches to a real PostgreSQL: ledger, version guards, roster upserts, counters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest

from schemas.intents import AnyIntent, StudentRow
from tests.writer.intent_factory import (
    LECTURE,
    TENANT,
    at,
    chunk,
    chunks,
    failed,
    processing,
    queued,
    ready,
    roster_status,
    student,
)
from writer.db import connect
from writer.engine import BatchResult, apply_batch
from writer.errors import DataApplyError, DatabaseUnavailable

Conn = psycopg.Connection[Any]


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    with connect(database_url) as connection:
        yield connection


def apply(conn: Conn, intents: Sequence[AnyIntent]) -> BatchResult:
    """One batch in its own transaction, as the writer runs it."""
    with conn.transaction():
        row = conn.execute("SELECT nextval('writer_batch_seq')").fetchone()
        assert row is not None
        return apply_batch(conn, intents, batch_seq=int(row[0]))


def table(conn: Conn, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with conn.transaction():
        return conn.execute(query, params).fetchall()


def video_row(conn: Conn, video: uuid.UUID) -> tuple[Any, ...]:
    with conn.transaction():
        row = conn.execute(
            "SELECT status, attempt, source_key, hls_key, error, queued_at, started_at,"
            " finished_at, updated_at, xmin::text FROM videos WHERE id = %s", (video,)
        ).fetchone()
    assert row is not None
    return tuple(row)


def import_row(conn: Conn, import_id: uuid.UUID) -> dict[str, Any]:
    with conn.transaction(), conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        found = cur.execute("SELECT * FROM roster_imports WHERE id = %s", (import_id,)).fetchone()
    assert found is not None
    return found


def tuple_writes(conn: Conn) -> dict[str, tuple[int, int, int]]:
    """Rows inserted, updated, deleted per table, as the statistics system has them."""
    with conn.transaction():
        conn.execute("SELECT pg_stat_force_next_flush()")  # flushed once the session is idle
    with conn.transaction():
        rows = conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
        ).fetchall()
    return {name: (ins, upd, dele) for name, ins, upd, dele in rows}


def roster(n: int, start: int = 0) -> list[StudentRow]:
    return [student(i) for i in range(start, start + n)]


# --- ledger --------------------------------------------------------------------------------

def test_reapplying_the_same_intents_is_a_no_op(conn: Conn) -> None:
    # Given a batch applied once
    video, imp = uuid.uuid4(), uuid.uuid4()
    intents: list[AnyIntent] = [queued(video), processing(video), *chunks(imp, roster(30), 10)]
    first = apply(conn, intents)
    assert first.applied == [i.intent_id for i in intents]
    before = table(conn, "SELECT *, xmin::text FROM students ORDER BY id")
    # When the same intents are delivered again
    again = apply(conn, intents)
    # Then nothing is applied and no row changes
    assert (again.applied, again.duplicates, again.statements) == ([], len(intents), 1)
    assert table(conn, "SELECT *, xmin::text FROM students ORDER BY id") == before
    assert import_row(conn, imp)["chunks_applied"] == 3
    assert table(conn, "SELECT count(*) FROM writer_ledger") == [(len(intents),)]


def test_an_intent_repeated_within_a_batch_applies_once(conn: Conn) -> None:
    imp = uuid.uuid4()
    [one] = chunks(imp, roster(5), 5)
    result = apply(conn, [one, one, one])
    assert (result.applied, result.duplicates) == ([one.intent_id], 2)
    assert import_row(conn, imp)["chunks_applied"] == 1
    assert table(conn, "SELECT batch_seq FROM writer_ledger") == [(1,)]


# --- videos --------------------------------------------------------------------------------

def test_a_late_processing_after_ready_changes_nothing(conn: Conn) -> None:
    video = uuid.uuid4()
    apply(conn, [queued(video, 0), processing(video, 5), ready(video, 60)])
    before = video_row(conn, video)
    assert before[:2] == ("ready", 1)
    # When the processing intent is redelivered under a new id, and a stale queued too
    result = apply(conn, [processing(video, 5), queued(video, 0)])
    # Then the row is untouched: same values, same row version
    assert video_row(conn, video) == before
    assert (len(result.applied), result.outcome("video").changed) == (2, 0)


def test_a_duplicate_final_state_keeps_the_first(conn: Conn) -> None:
    video = uuid.uuid4()
    apply(conn, [ready(video, 60)])
    before = video_row(conn, video)
    apply(conn, [failed(video, 70)])
    assert video_row(conn, video) == before


def test_failed_then_attempt_two_processing_moves_forward(conn: Conn) -> None:
    video = uuid.uuid4()
    apply(conn, [queued(video, 0), processing(video, 5), failed(video, 20)])
    assert video_row(conn, video)[:5] == (
        "failed", 1, f"tenants/{TENANT}/uploads/{video}.mp4", None, "ffmpeg exited with status 1"
    )
    apply(conn, [processing(video, 30, attempt=2)])
    status, attempt, source, hls, error, queued_at, started, finished, updated, _ = video_row(
        conn, video
    )
    assert (status, attempt, source, hls, error) == (
        "processing", 2, f"tenants/{TENANT}/uploads/{video}.mp4", None, None)
    assert (queued_at, started, finished, updated) == (at(0), at(30), None, at(30))
    apply(conn, [ready(video, 90, attempt=2)])
    assert video_row(conn, video)[:3] == ("ready", 2, f"tenants/{TENANT}/uploads/{video}.mp4")
    assert video_row(conn, video)[6:9] == (at(30), at(90), at(90))


def test_many_intents_for_one_video_make_one_row_change(conn: Conn) -> None:
    video = uuid.uuid4()
    with conn.transaction():
        result = apply_batch(
            conn, [queued(video, 0), processing(video, 5), ready(video, 60), processing(video, 5)],
            batch_seq=1,
        )
        row = conn.execute(
            "SELECT n_tup_ins, n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'videos'"
        ).fetchone()
    assert row == (1, 0)
    assert (result.coalesced, result.outcome("video").changed) == (3, 1)
    assert video_row(conn, video)[:3] == ("ready", 1, f"tenants/{TENANT}/uploads/{video}.mp4")


def test_a_video_of_another_tenant_is_a_data_error(conn: Conn) -> None:
    video = uuid.uuid4()
    apply(conn, [queued(video)])
    stranger = processing(video).model_copy(update={"tenant_id": TENANT + 1})
    with pytest.raises(DataApplyError, match="another tenant") as caught:
        apply(conn, [stranger])
    assert caught.value.intent_ids == (stranger.intent_id,)


# --- roster --------------------------------------------------------------------------------

def test_roster_chunks_with_in_file_duplicates(conn: Conn) -> None:
    # Given 3 chunks where students 3 and 12 appear twice and the later row holds new values
    imp = uuid.uuid4()
    rows = [*roster(20), student(3, source_row=40, school="Second Row School"),
            student(12, source_row=41, grade=3)]
    batch = chunks(imp, rows, 8)
    result = apply(conn, batch)
    # Then one student each, with the later row's values, enrolled once
    outcome = result.outcome("roster")
    assert (outcome.rows, outcome.row_duplicates, outcome.students_created) == (22, 2, 20)
    assert result.outcome("roster").enrolled == 20
    assert table(conn, "SELECT school FROM students WHERE phone = '010-0000-0003'") == [
        ("Second Row School",)
    ]
    assert table(conn, "SELECT grade FROM students WHERE phone = '010-0000-0012'") == [(3,)]
    assert table(conn, "SELECT count(*), count(DISTINCT student_id) FROM enrollments"
                       " WHERE lecture_id = %s", LECTURE) == [(20, 20)]
    assert table(conn, "SELECT tenant_id, created_at FROM lectures") == [(TENANT, at(1))]


def test_an_unchanged_reimport_writes_nothing(conn: Conn) -> None:
    # Given a roster imported once
    apply(conn, chunks(uuid.uuid4(), roster(300), 100))
    rows = "SELECT *, xmin::text, xmax::text FROM {} ORDER BY id"
    before = [table(conn, rows.format(name)) for name in ("students", "enrollments")]
    writes = tuple_writes(conn)
    # When the same roster is imported again (a new import of the same file)
    again = uuid.uuid4()
    result = apply(conn, chunks(again, roster(300), 100))
    # Then no student or enrollment row is inserted, updated or even locked
    after = tuple_writes(conn)
    for name in ("students", "enrollments", "lectures"):
        assert after[name] == writes[name], name
    assert [table(conn, rows.format(name)) for name in ("students", "enrollments")] == before
    outcome = result.outcome("roster")
    assert (outcome.students_unchanged, outcome.students_created, outcome.enrolled) == (300, 0, 0)
    counts = import_row(conn, again)
    assert (counts["unchanged"], counts["created"], counts["enrolled"]) == (300, 0, 0)


def test_counts_created_updated_unchanged_enrolled_per_import(conn: Conn) -> None:
    # Given 10 students, 5 of them enrolled in another lecture
    apply(conn, chunks(uuid.uuid4(), roster(10), 10))
    # When a file of 15 rows comes: 0-4 unchanged, 5-9 renamed, 10-14 new
    imp = uuid.uuid4()
    rows = [*roster(5), *(student(i, name=f"Renamed {i}") for i in range(5, 10)),
            *roster(5, start=10)]
    result = apply(conn, chunks(imp, rows, 4, lecture=LECTURE + 1))
    counts = import_row(conn, imp)
    assert (counts["created"], counts["updated"], counts["unchanged"], counts["enrolled"]) == (
        5, 5, 5, 15
    )
    outcome = result.outcome("roster")
    assert (outcome.students_created, outcome.students_updated, outcome.students_unchanged) == (
        5, 5, 5
    )
    assert counts["chunks_applied"] == 4
    assert table(conn, "SELECT updated_at FROM students WHERE phone = '010-0000-0007'") == [
        (at(1),)
    ]


def test_two_imports_in_one_batch_are_counted_apart(conn: Conn) -> None:
    apply(conn, chunks(uuid.uuid4(), roster(4), 4))
    one, two = uuid.uuid4(), uuid.uuid4()
    batch = [
        *chunks(one, [*roster(2), student(2, name="Changed")], 3),  # 2 unchanged, 1 updated
        *chunks(two, roster(3, start=100), 3, lecture=LECTURE + 1),  # 3 created
    ]
    apply(conn, batch)
    got = {i: import_row(conn, i) for i in (one, two)}
    assert [(got[i]["created"], got[i]["updated"], got[i]["unchanged"]) for i in (one, two)] == [
        (0, 1, 2), (3, 0, 0)
    ]
    assert (got[one]["enrolled"], got[two]["enrolled"]) == (0, 3)


def test_a_student_in_two_lectures_of_one_batch_is_enrolled_in_both(conn: Conn) -> None:
    # Given student 0 present and enrolled
    apply(conn, chunks(uuid.uuid4(), roster(1), 1))
    # When one batch enrolls students 0-2 in two lectures, through two imports
    one, two = uuid.uuid4(), uuid.uuid4()
    result = apply(conn, [*chunks(one, roster(3), 3),
                          *chunks(two, roster(3), 3, lecture=LECTURE + 1)])
    # Then each student exists once and is enrolled in both lectures
    assert table(conn, "SELECT count(*) FROM students") == [(3,)]
    assert table(conn, "SELECT lecture_id, count(DISTINCT student_id) FROM enrollments"
                       " GROUP BY lecture_id ORDER BY lecture_id") == [(LECTURE, 3),
                                                                      (LECTURE + 1, 3)]
    # And the students count for the import whose rows won (the later one), the enrollments
    # for the import that brought them
    got = {i: import_row(conn, i) for i in (one, two)}
    assert [(got[i]["created"], got[i]["unchanged"], got[i]["enrolled"]) for i in (one, two)] == [
        (0, 0, 2), (2, 1, 3)
    ]
    outcome = result.outcome("roster")
    assert (outcome.students_created, outcome.students_unchanged, outcome.enrolled) == (2, 1, 5)


def test_done_when_writing_comes_after_the_chunks(conn: Conn) -> None:
    imp = uuid.uuid4()
    source = f"tenants/{TENANT}/rosters/x.xlsx"
    apply(conn, [roster_status(imp, "queued", seconds=0, source_key=source)])
    batch = chunks(imp, roster(9), 3, seconds=4)
    apply(conn, batch[:2])
    assert import_row(conn, imp)["status"] == "queued"
    apply(conn, batch[2:])
    apply(conn, [roster_status(imp, "writing", seconds=3, chunks=3, total=9, valid=9)])
    row = import_row(conn, imp)
    assert (row["status"], row["chunks_applied"], row["created"]) == ("done", 3, 9)
    assert (row["source_key"], row["total"], row["finished_at"]) == (source, 9, at(4))


def test_done_when_the_chunks_come_after_writing(conn: Conn) -> None:
    imp = uuid.uuid4()
    batch = chunks(imp, roster(9), 3, seconds=4)
    apply(conn, [roster_status(imp, "parsing", seconds=1),
                 roster_status(imp, "writing", seconds=3, chunks=3)])
    apply(conn, batch[:1])
    assert import_row(conn, imp)["status"] == "writing"
    apply(conn, batch[1:])
    row = import_row(conn, imp)
    assert (row["status"], row["started_at"], row["finished_at"]) == ("done", at(1), at(4))
    # And a late status changes nothing once done
    apply(conn, [roster_status(imp, "failed", seconds=9, error="late")])
    assert import_row(conn, imp)["status"] == "done"


def test_a_lecture_of_another_tenant_is_a_data_error(conn: Conn) -> None:
    apply(conn, [chunk(uuid.uuid4(), 0, roster(2), tenant=TENANT)])
    bad = chunk(uuid.uuid4(), 0, roster(2, start=50), tenant=TENANT + 1)
    with pytest.raises(DataApplyError, match=f"lecture {LECTURE} belongs to tenant {TENANT}") as e:
        apply(conn, [bad])
    assert e.value.intent_ids == (bad.intent_id,)
    assert table(conn, "SELECT count(*) FROM students") == [(2,)]


def test_a_row_the_database_rejects_is_a_data_error(conn: Conn) -> None:
    # A row that bypassed validation: the grade's CHECK constraint refuses it
    bad_row = StudentRow.model_construct(source_row=1, name="X", phone="010-1111-2222", grade=99,
                                         parent_phone=None, school=None, birth_date=None)
    with pytest.raises(DataApplyError, match="students_grade_check") as caught:
        apply(conn, [chunk(uuid.uuid4(), 0, [bad_row])])
    assert isinstance(caught.value.__cause__, psycopg.IntegrityError)


def test_a_lost_connection_is_database_unavailable(conn: Conn, database_url: str) -> None:
    pid = conn.info.backend_pid
    with connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(DatabaseUnavailable):
        apply_batch(conn, [queued(uuid.uuid4())], batch_seq=1)


def test_a_batch_needs_an_open_transaction(database_url: str) -> None:
    with connect(database_url, autocommit=True) as auto, pytest.raises(ValueError,
                                                                       match="transaction"):
        apply_batch(auto, [queued(uuid.uuid4())], batch_seq=1)


def test_a_5000_row_batch_applies_in_one_transaction(conn: Conn) -> None:
    imp = uuid.uuid4()
    result = apply(conn, [*chunks(imp, roster(5000), 500),
                          roster_status(imp, "writing", seconds=2, chunks=10)])
    outcome = result.outcome("roster")
    assert (outcome.students_created, outcome.enrolled) == (5000, 5000)
    assert import_row(conn, imp)["status"] == "done"


def test_the_staging_table_has_no_toast_and_takes_the_longest_rows(conn: Conn) -> None:
    # Given rows at the contract's longest, in 4-byte characters
    imp = uuid.uuid4()
    longest = [student(n, name="\U0001d49c" * 100, school="\U0001d4b7" * 100,
                       parent_phone="010-9999-9999") for n in range(50)]
    result = apply(conn, [chunk(imp, 0, longest)])
    # Then they are applied whole, through a staging table the commit empties as one file
    assert result.outcome("roster").students_created == 50
    assert table(conn, "SELECT DISTINCT length(name), octet_length(school) FROM students"
                       " WHERE name LIKE %s", "\U0001d49c%") == [(100, 400)]
    assert table(conn, "SELECT reltoastrelid::int FROM pg_class"
                       " WHERE oid = 'pg_temp.writer_stage'::regclass") == [(0,)]
