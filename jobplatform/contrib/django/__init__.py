"""Django: the table map built from the application's models.

The built-in kinds then write the models' own tables (their ``db_table``, their fields'
columns), created by the application's migrations::

    # settings.py
    INSTALLED_APPS = [..., "jobplatform.contrib.django"]
    JOBPLATFORM_TABLES = {
        "students": "academy.Student",
        "lectures": "academy.Lecture",
        "enrollments": "academy.Enrollment",
        "videos": "academy.Video",
        # logical column -> model field, where the names differ
        "fields": {"students": {"tenant_id": "academy_id", "phone": "mobile",
                                "name": "full_name", "parent_phone": "parent_mobile"},
                   "lectures": {"tenant_id": "academy_id"},
                   "videos": {"tenant_id": "academy_id"}},
    }

The writer takes the map with ``WRITER_TABLES=jobplatform.contrib.django:from_settings`` (and
``DJANGO_SETTINGS_MODULE``); ``python manage.py jobplatform_tables --check`` compares it with
the database, as the writer does at start. A logical column whose field the model lacks is not
written when it is optional (:data:`jobplatform.tables.COLUMNS`), and an error naming the model
when it is required.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from jobplatform.errors import ConfigError
from jobplatform.tables import COLUMNS, DEFAULT_KEYS, Table, TableMap

__all__ = ["from_settings", "table_map"]


def table_map(*, students: Any, lectures: Any, enrollments: Any, videos: Any,
              fields: Mapping[str, Mapping[str, str]] | None = None,
              student_key: Sequence[str] = ("tenant_id", "phone"), schema: str = "public",
              lectures_missing: Literal["create", "reject"] = "reject") -> TableMap:
    """The map of four model classes. ``fields`` names, per logical table, the model field of
    each logical column whose name differs (a foreign key by its field name or attname)."""
    from django.core.exceptions import FieldDoesNotExist

    models = {"students": students, "lectures": lectures, "enrollments": enrollments,
              "videos": videos}
    names = {k: dict(v) for k, v in (fields or {}).items()}
    unknown = set(names) - set(models)
    if unknown:
        raise ConfigError(f"JOBPLATFORM_TABLES fields: unknown tables {sorted(unknown)}")
    tables = {}
    for logical, model in models.items():
        label = model._meta.label
        columns = {}
        for column, spec in COLUMNS[logical].items():
            named = names.get(logical, {})
            field_name = named.get(column, column)
            try:
                field = model._meta.get_field(field_name)
            except FieldDoesNotExist:
                if spec.required or column in named:
                    raise ConfigError(
                        f"{label} has no field {field_name!r} for {logical}.{column}: name the"
                        f" field in JOBPLATFORM_TABLES['fields'][{logical!r}][{column!r}]"
                    ) from None
                continue
            columns[column] = field.column
        key = tuple(student_key) if logical == "students" else DEFAULT_KEYS[logical]
        tables[logical] = Table(logical, f"{schema}.{model._meta.db_table}", columns, key)
    return TableMap(students=tables["students"], lectures=tables["lectures"],
                    enrollments=tables["enrollments"], videos=tables["videos"],
                    lectures_missing=lectures_missing,
                    origin="Django models " + ", ".join(m._meta.label for m in models.values()))


def from_settings() -> TableMap:
    """The map ``settings.JOBPLATFORM_TABLES`` describes (Django is set up when needed)."""
    import django
    from django.apps import apps
    from django.conf import settings

    if not apps.ready:
        django.setup()
    conf = getattr(settings, "JOBPLATFORM_TABLES", None)
    if not isinstance(conf, Mapping):
        raise ConfigError("settings.JOBPLATFORM_TABLES is not set: it names the models of "
                          "students, lectures, enrollments and videos")
    missing = [k for k in ("students", "lectures", "enrollments", "videos") if k not in conf]
    if missing:
        raise ConfigError(f"settings.JOBPLATFORM_TABLES lacks {', '.join(missing)}")
    try:
        found = {k: apps.get_model(conf[k]) for k in ("students", "lectures", "enrollments",
                                                       "videos")}
    except (LookupError, ValueError) as exc:
        raise ConfigError(f"settings.JOBPLATFORM_TABLES: {exc}") from exc
    return table_map(**found, fields=conf.get("fields"),
                     student_key=conf.get("student_key", ("tenant_id", "phone")),
                     schema=conf.get("schema", "public"),
                     lectures_missing=conf.get("lectures_missing", "reject"))


def database_url(alias: str = "default") -> str:
    """libpq conninfo of a Django database (for ``jobplatform_tables --check``)."""
    from django.conf import settings

    db = settings.DATABASES[alias]
    params = {"dbname": db.get("NAME"), "user": db.get("USER"), "password": db.get("PASSWORD"),
              "host": db.get("HOST"), "port": db.get("PORT")}
    return " ".join(f"{k}={_quoted(str(v))}" for k, v in params.items() if v)


def _quoted(value: str) -> str:
    """A libpq conninfo value, quoted."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
