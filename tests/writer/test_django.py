"""A real Django project (``tests/django_app``) whose own migrations create its tables: the
table map built from its models, checked, written by a running writer, read by the ORM, and
replayed into a database its migrate step built."""

from __future__ import annotations

import io
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobplatform.errors import ConfigError
from jobplatform.settings import Settings
from jobplatform.tables import TableMap
from tests.writer.conftest import WriterThread, emit_all, query, scalar, wait_until
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
from writer.db import connect, database_name
from writer.kinds.tables import activate

APP = Path(__file__).resolve().parents[1] / "django_app"
FROM_SETTINGS = "jobplatform.contrib.django:from_settings"
JOBPLATFORM_TABLES = {
    "students": "academy.Student",
    "lectures": "academy.Lecture",
    "enrollments": "academy.Enrollment",
    "videos": "academy.Video",
    "fields": {
        "students": {"tenant_id": "academy_id", "phone": "mobile", "name": "full_name",
                     "parent_phone": "parent_mobile"},
        "lectures": {"tenant_id": "academy_id"},
        "videos": {"tenant_id": "academy_id"},
    },
}


def _configure(url: str) -> None:
    """Django set up once per process, its default database the test's (switched per test)."""
    import django
    from django.conf import settings

    from writer.db import database_name

    name = database_name(url)
    if not settings.configured:
        if str(APP) not in sys.path:
            sys.path.insert(0, str(APP))
        settings.configure(
            INSTALLED_APPS=["academy", "jobplatform.contrib.django"],
            DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": name,
                                   "HOST": "127.0.0.1", "USER": "postgres"}},
            USE_TZ=True, DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
            JOBPLATFORM_TABLES=JOBPLATFORM_TABLES,
        )
        django.setup()
    from django.db import connections

    connections.close_all()
    settings.DATABASES["default"]["NAME"] = name
    connections["default"].settings_dict["NAME"] = name


@pytest.fixture
def django_db(database_url: str) -> Iterator[str]:
    """The test's database, migrated by Django (the application's tables in public)."""
    from django.core.management import call_command

    _configure(database_url)
    call_command("migrate", verbosity=0)
    yield database_url
    from django.db import connections

    connections.close_all()


@pytest.fixture
def tables(django_db: str) -> Iterator[TableMap]:
    from jobplatform.contrib.django import from_settings

    found = from_settings()
    activate(found)
    yield found
    from jobplatform.tables import builtin_tables

    activate(builtin_tables())


def test_the_map_comes_from_the_models(tables: TableMap) -> None:
    assert tables.students.name == "public.academy_student"
    assert tables.students.columns["phone"] == "mobile"
    assert tables.enrollments.columns == {"lecture_id": "lecture_id",
                                          "student_id": "student_id",
                                          "enrolled_at": "enrolled_at"}
    assert "queued_at" not in tables.videos.columns  # the model has no such field
    assert not tables.create


def test_the_management_command_checks_the_map_against_the_database(tables: TableMap) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError
    from django.db import connection

    out = io.StringIO()
    call_command("jobplatform_tables", "--check", stdout=out)
    assert "the table map fits the database" in out.getvalue()
    with connection.cursor() as cur:
        cur.execute("ALTER TABLE academy_student DROP CONSTRAINT student_academy_mobile")
    with pytest.raises(CommandError, match=r"no unique constraint on exactly \(academy_id, "
                                           r"mobile\)"):
        call_command("jobplatform_tables", "--check", stdout=io.StringIO())


def test_a_required_field_the_model_lacks_is_named(django_db: str) -> None:
    from academy.models import Enrollment, Lecture, Student, Video

    from jobplatform.contrib.django import table_map

    with pytest.raises(ConfigError, match=r"academy\.Student has no field 'tenant_id'"):
        table_map(students=Student, lectures=Lecture, enrollments=Enrollment, videos=Video)


def test_a_running_writer_writes_the_models_and_the_orm_reads_them(
        tables: TableMap, settings: Settings, broker: Any,
        start_writer: Callable[..., WriterThread]) -> None:
    from academy.models import Lecture, Student, Video

    Lecture.objects.create(id=LECTURE, academy_id=TENANT, title="Algebra")
    writer = start_writer(tables=FROM_SETTINGS)
    imp, video = uuid.uuid4(), uuid.uuid4()
    emit_all(broker, settings, [
        roster_status(imp, "queued"),
        chunk(imp, 0, [student(1, parent_phone="010-9999-0001"), student(2, grade=3)]),
        roster_status(imp, "writing", seconds=2, chunks=1, total=2, valid=2),
        queued(video), processing(video), ready(video),
    ])
    wait_until(lambda: query(settings.database_url or "",
                             "SELECT status FROM roster_imports") == [("done",)],
               message="the import done")
    wait_until(lambda: Video.objects.filter(id=video, status="ready").exists(),
               message="the video ready")
    writer.stop()
    kim = Student.objects.get(academy_id=TENANT, mobile="010-0000-0001")
    assert (kim.full_name, kim.parent_mobile, kim.grade) == ("Student 1", "010-9999-0001", 2)
    assert list(Lecture.objects.get(id=LECTURE).enrollment_set.values_list(
        "student__mobile", flat=True).order_by("student__mobile")) == [
        "010-0000-0001", "010-0000-0002"]
    clip = Video.objects.get(id=video)
    assert (clip.attempt, clip.source_key) == (1, f"tenants/{TENANT}/uploads/{video}.mp4")
    assert clip.renditions[0]["name"] == "720p"
    assert clip.started_at is not None
    # The writer's own tables stayed in its schema; public holds Django's only.
    assert scalar(settings.database_url or "",
                  "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                  " AND left(tablename, 8) <> 'academy_' AND tablename <> 'django_migrations'"
                  ) == 0


def test_replay_into_a_database_the_applications_migrate_step_built(
        tables: TableMap, jobplatform_replay_into_database: Callable[..., Any],
        request: pytest.FixtureRequest) -> None:
    from django.core.management import call_command

    def migrate(url: str) -> None:
        _configure(url)
        call_command("migrate", verbosity=0)
        with connect(url, autocommit=True, schema="public") as conn:
            conn.execute("INSERT INTO academy_lecture (id, academy_id, title)"
                         " VALUES (%s, %s, 'Algebra')", (LECTURE, TENANT))

    imp = uuid.uuid4()
    db = jobplatform_replay_into_database(
        [chunk(imp, 0, [student(1), student(2)])], migrate=migrate, tables=tables)
    assert db.scalar("SELECT count(*) FROM public.academy_enrollment") == 2
    assert database_name(db.url) != database_name(request.getfixturevalue("django_db"))
    _configure(request.getfixturevalue("django_db"))
