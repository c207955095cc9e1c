"""bench writer's floors: plain COPY in one transaction (E) and in the writer's sizes (Eb)."""

from __future__ import annotations

import psycopg
import pytest

from bench import writer as bench_writer
from writer.db import with_database


@pytest.mark.parametrize(("per_txn", "transactions"), [(None, 1), (70, 4), (1000, 1)])
def test_the_floor_copies_every_student_once_and_enrolls_each_in_the_lecture(
    database_url: str, per_txn: int | None, transactions: int
) -> None:
    # Given a 260-row roster (some phones repeated) and the lecture the floor enrolls into
    data = bench_writer.generate(260)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO lectures (id, tenant_id, created_at) VALUES (%s, %s, %s)",
                     (bench_writer.LECTURE_ID, bench_writer.TENANT_ID, bench_writer.T0))
    admin = with_database(database_url, "postgres")

    # When the floor runs in one transaction or in transactions of per_txn students
    measured = bench_writer.measure_method(
        admin, database_url, len(data.rows),
        bench_writer.method_e(database_url, data, per_txn=per_txn))

    # Then it took that many transactions, and each distinct student was written once and
    # enrolled once, by its own id
    assert measured.transactions == transactions
    with psycopg.connect(database_url) as conn:
        phones = conn.execute("SELECT array_agg(phone ORDER BY phone) FROM students").fetchone()
        assert phones is not None
        assert phones[0] == sorted({row.phone for row in data.rows})
        mismatched = conn.execute(
            "SELECT count(*) FROM students s FULL JOIN enrollments e ON e.student_id = s.id"
            " WHERE s.id IS NULL OR e.id IS NULL OR e.lecture_id <> %s",
            (bench_writer.LECTURE_ID,)).fetchone()
        assert mismatched == (0,)
