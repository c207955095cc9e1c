"""The built-in kinds on the application's own tables (``WRITER_TABLES``), the writer's own
schema, and the catalog check that refuses a map that does not fit; real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from jobplatform.broker import Queues, build_broker
from jobplatform.errors import ConfigError
from jobplatform.settings import Settings
from jobplatform.tables import DEFAULT_SCHEMA, TableMap, builtin_tables, from_dict, load_tables
from schemas import BaseIntent
from tests.writer.conftest import query, scalar
from tests.writer.intent_factory import (
    LECTURE,
    TENANT,
    chunk,
    processing,
    queued,
    ready,
    roster_status,
    student,
)
from writer.catalog import TableMapError, check_tables
from writer.db import connect, drop_database, ensure_database, with_database
from writer.engine import Writer, apply_batch
from writer.errors import DataApplyError
from writer.kinds.tables import activate
from writer.migrate import upgrade

FIXTURES = Path(__file__).parent / "fixtures"

#: An academy's own tables, named its own way, as its migrations made them.
ACADEMY_SCHEMA = """
CREATE SCHEMA academy;
CREATE TABLE academy.lecture (
    lecture_no bigint PRIMARY KEY, academy_id integer NOT NULL, title text NOT NULL DEFAULT '');
CREATE TABLE academy.pupil (
    pupil_id bigserial PRIMARY KEY, academy_id integer NOT NULL, mobile varchar(20) NOT NULL,
    full_name varchar(50) NOT NULL, grade smallint, joined timestamptz NOT NULL,
    active boolean NOT NULL DEFAULT true, UNIQUE (academy_id, mobile));
CREATE TABLE academy.seat (
    id bigserial PRIMARY KEY, lecture_no bigint NOT NULL REFERENCES academy.lecture,
    pupil_id bigint NOT NULL REFERENCES academy.pupil, UNIQUE (lecture_no, pupil_id));
CREATE TABLE academy.clip (
    clip_id uuid PRIMARY KEY, academy_id integer NOT NULL, state varchar(20) NOT NULL,
    try integer NOT NULL, playlist text, source text, started timestamptz);
INSERT INTO academy.lecture (lecture_no, academy_id, title) VALUES (501, 7, 'Algebra');
"""

ACADEMY_MAP: dict[str, Any] = {
    "lectures_missing": "reject",
    "students": {"table": "academy.pupil", "key": ["tenant_id", "phone"], "columns": {
        "id": "pupil_id", "tenant_id": "academy_id", "phone": "mobile", "name": "full_name",
        "grade": "grade", "created_at": "joined"}},
    "lectures": {"table": "academy.lecture", "columns": {
        "id": "lecture_no", "tenant_id": "academy_id"}},
    "enrollments": {"table": "academy.seat", "columns": {
        "lecture_id": "lecture_no", "student_id": "pupil_id"}},
    "videos": {"table": "academy.clip", "columns": {
        "id": "clip_id", "tenant_id": "academy_id", "status": "state", "attempt": "try",
        "hls_key": "playlist", "source_key": "source", "started_at": "started"}},
}


@pytest.fixture
def academy_map() -> Iterator[TableMap]:
    found = from_dict(ACADEMY_MAP, origin="test")
    activate(found)
    yield found
    activate(builtin_tables())


@pytest.fixture
def academy_db(database_url: str) -> str:
    with connect(database_url, autocommit=True) as conn:
        conn.execute(ACADEMY_SCHEMA.encode())
    return database_url


def apply(url: str, intents: Sequence[BaseIntent]) -> Any:
    with connect(url) as conn, conn.transaction():
        return apply_batch(conn, intents, batch_seq=1)


# --- the map itself ------------------------------------------------------------------------

def test_a_map_names_what_is_wrong_with_it() -> None:
    bad = {**ACADEMY_MAP, "students": {"table": "academy.pupil", "columns": {"id": "pupil_id"}}}
    with pytest.raises(ConfigError) as caught:
        from_dict(bad)
    assert "students: required column 'phone' is not mapped" in str(caught.value)
    with pytest.raises(ConfigError, match="must hold 'tenant_id' and 'phone'"):
        from_dict({"students": {**ACADEMY_MAP["students"], "key": ["phone"]}})
    with pytest.raises(ConfigError, match="unknown entries"):
        from_dict({"pupils": {}})
    with pytest.raises(ConfigError, match=r"is not schema\.table"):
        from_dict({"videos": {**ACADEMY_MAP["videos"], "table": "clip"}})


def test_a_toml_file_or_a_module_attribute_gives_the_map(tmp_path: Path) -> None:
    path = tmp_path / "tables.toml"
    path.write_text('lectures_missing = "reject"\n[videos]\ntable = "academy.clip"\n'
                    'columns = { id = "clip_id", tenant_id = "academy_id", status = "state",'
                    ' attempt = "try" }\n')
    found = load_tables(str(path))
    assert found.videos.name == "academy.clip"
    assert not found.create
    assert found.students == builtin_tables().students
    assert load_tables(None).create
    with pytest.raises(ConfigError, match="no such file"):
        load_tables(str(tmp_path / "missing.toml"))
    assert load_tables("jobplatform.tables:builtin_tables") == builtin_tables()


# --- the application's tables --------------------------------------------------------------

def test_an_import_and_a_videos_states_land_in_the_applications_tables(
        academy_db: str, academy_map: TableMap) -> None:
    with connect(academy_db, autocommit=True) as conn:
        assert check_tables(conn, academy_map) == []
    imp = uuid.uuid4()
    video = uuid.uuid4()
    apply(academy_db, [roster_status(imp, "queued"), queued(video)])
    apply(academy_db, [chunk(imp, 0, [student(1), student(2, grade=3)]),
                       roster_status(imp, "writing", seconds=2, chunks=1, total=2, valid=2),
                       processing(video)])
    assert query(academy_db, "SELECT academy_id, mobile, full_name, grade FROM academy.pupil"
                             " ORDER BY 2") == [(7, "010-0000-0001", "Student 1", 2),
                                                (7, "010-0000-0002", "Student 2", 3)]
    assert scalar(academy_db, "SELECT count(*) FROM academy.seat WHERE lecture_no = 501") == 2
    assert query(academy_db, "SELECT status, created, enrolled FROM roster_imports") == [
        ("done", 2, 2)]
    # The same rows again change nothing; a changed grade updates that pupil only.
    apply(academy_db, [chunk(uuid.uuid4(), 0, [student(1), student(2, grade=4)])])
    assert query(academy_db, "SELECT grade FROM academy.pupil ORDER BY mobile") == [(2,), (4,)]
    apply(academy_db, [ready(video)])
    assert query(academy_db, "SELECT state, try, source, playlist IS NOT NULL, started"
                             " IS NOT NULL FROM academy.clip") == [
        ("ready", 1, f"tenants/{TENANT}/uploads/{video}.mp4", True, True)]
    # Nothing of the domain went into the writer's built-in tables.
    assert scalar(academy_db, "SELECT count(*) FROM jobplatform.students") == 0
    assert scalar(academy_db, "SELECT count(*) FROM jobplatform.videos") == 0


def test_a_late_lower_ranked_status_still_fills_what_the_row_lacks(
        academy_db: str, academy_map: TableMap) -> None:
    video = uuid.uuid4()
    # A takeover put `queued` and `processing` behind `ready`.
    apply(academy_db, [ready(video)])
    apply(academy_db, [queued(video)])
    apply(academy_db, [processing(video)])
    assert query(academy_db, "SELECT state, source IS NOT NULL, started IS NOT NULL"
                             " FROM academy.clip") == [("ready", True, True)]


def test_a_chunk_for_a_lecture_the_application_lacks_is_refused_by_name(
        academy_db: str, academy_map: TableMap) -> None:
    bad = chunk(uuid.uuid4(), 0, [student(1)], lecture=999)
    with pytest.raises(DataApplyError, match="lecture 999 does not exist") as caught:
        apply(academy_db, [bad])
    assert list(caught.value.intent_ids) == [bad.intent_id]
    assert scalar(academy_db, "SELECT count(*) FROM academy.pupil") == 0


@pytest.mark.parametrize(("ddl", "expected"), [
    ("ALTER TABLE academy.pupil DROP CONSTRAINT pupil_academy_id_mobile_key",
     "students (academy.pupil): no unique constraint on exactly (academy_id, mobile)"),
    ("ALTER TABLE academy.clip ALTER COLUMN try TYPE text",
     "videos (academy.clip): column 'try' is text, but 'attempt' needs integer"),
    ("ALTER TABLE academy.clip DROP COLUMN playlist",
     "videos (academy.clip): no column 'playlist' (mapped from 'hls_key')"),
    ("ALTER TABLE academy.pupil ADD COLUMN code text NOT NULL",
     "students (academy.pupil): column 'code' is NOT NULL without a default and not mapped"),
    ("DROP TABLE academy.seat", "enrollments (academy.seat): the table does not exist"),
])
def test_the_writer_refuses_to_start_on_a_map_that_does_not_fit(
        academy_db: str, academy_map: TableMap, settings: Settings, ddl: str,
        expected: str) -> None:
    with connect(academy_db, autocommit=True) as conn:
        conn.execute(ddl)
    assert settings.redis_url is not None
    broker = build_broker(settings, settings.redis_url, set_global=False)
    writer = Writer(settings.writer, database_url=academy_db, broker=broker,
                    queues=Queues.from_settings(settings), tables=academy_map)
    try:
        with pytest.raises(TableMapError) as caught:
            writer.open()
    finally:
        writer.close()
        broker.close()
    assert expected in str(caught.value)


# --- the writer's own schema ---------------------------------------------------------------

@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    url = with_database(database_url, database_url.split("dbname=")[1].split()[0] + "_fresh")
    drop_database(url)
    ensure_database(url)
    yield url
    drop_database(url)


def _public_tables(url: str) -> list[str]:
    return [r[0] for r in query(url, "SELECT tablename FROM pg_tables WHERE schemaname ="
                                     " 'public' ORDER BY 1")]


def test_a_database_with_its_own_students_table_keeps_public_to_itself(
        fresh_database: str) -> None:
    with connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.students (id serial PRIMARY KEY, nickname text)")
        conn.execute("INSERT INTO public.students (nickname) VALUES ('theirs')")
    upgrade(fresh_database, tables=builtin_tables())
    apply(fresh_database, [chunk(uuid.uuid4(), 0, [student(1)])])
    assert _public_tables(fresh_database) == ["students"]
    assert query(fresh_database, "SELECT nickname FROM public.students") == [("theirs",)]
    assert DEFAULT_SCHEMA == "jobplatform"
    assert scalar(fresh_database, "SELECT count(*) FROM jobplatform.students") == 1


def test_the_built_in_tables_are_never_created_over_existing_ones(
        fresh_database: str) -> None:
    with connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA jobplatform; CREATE TABLE jobplatform.videos (id int)")
    with pytest.raises(ConfigError, match=r"over existing ones: jobplatform\.videos"):
        upgrade(fresh_database, tables=builtin_tables())
    # With the application's tables mapped, nothing of the domain is created at all.
    upgrade(fresh_database, tables=from_dict(ACADEMY_MAP))
    assert scalar(fresh_database, "SELECT to_regclass('jobplatform.students')") is None


def test_a_database_from_before_the_writers_schema_is_moved_into_it(
        fresh_database: str) -> None:
    with connect(fresh_database, autocommit=True, schema="public") as conn:
        conn.execute((FIXTURES / "legacy_public_schema.sql").read_text().encode())
    upgrade(fresh_database, tables=builtin_tables())
    assert _public_tables(fresh_database) == []
    assert query(fresh_database, "SELECT name FROM jobplatform.students") == [("Kim",)]
    assert scalar(fresh_database, "SELECT count(*) FROM jobplatform.writer_ledger") == 1
    # Numbers keep counting from where they were, and nothing is applied twice.
    assert upgrade(fresh_database, tables=builtin_tables()) == []
    apply(fresh_database, [chunk(uuid.uuid4(), 0, [student(1, name="Kim", phone="010-1234-5678"),
                                                   student(2)])])
    assert scalar(fresh_database, "SELECT count(*) FROM jobplatform.students") == 2
    assert scalar(fresh_database, "SELECT count(*) FROM jobplatform.enrollments"
                                  " WHERE lecture_id = %s", (LECTURE,)) == 2
