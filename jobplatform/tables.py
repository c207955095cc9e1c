"""Where the built-in kinds write: the application's own tables, by configuration.

The video and roster kinds write four domain tables: ``students``, ``lectures``,
``enrollments`` and ``videos``. A :class:`TableMap` names, for each, the real table
(schema-qualified), the real column of every logical column the kind writes, and the natural
key. The writer checks the map against the live catalog at start and refuses to start on a
missing table or column, a column of the wrong type, or a natural key without a unique
constraint (``writer.catalog``); ``jobplatform tables check`` runs the same check.

Without configuration the map is :func:`builtin_tables`: the platform's own tables, created by
the writer's migrations in its own schema (``WRITER_DB_SCHEMA``, ``jobplatform`` by default), never
in ``public``. With ``WRITER_TABLES`` set the map comes from there, and the writer creates no
domain table: they belong to the application and its migrations (Django's, say;
:mod:`jobplatform.contrib.django` builds the map from the models).

``WRITER_TABLES`` is a TOML file (``tables.toml``) or ``module:attribute`` naming a
:class:`TableMap` (or a function returning one). The file::

    lectures_missing = "reject"        # or "create"

    [students]
    table = "public.academy_student"
    key = ["tenant_id", "phone"]
    columns = { id = "id", tenant_id = "academy_id", phone = "phone", name = "full_name",
                grade = "grade", created_at = "created_at", updated_at = "updated_at" }

A table left out keeps its built-in definition. Inside a table, ``columns`` lists every
column written: the required ones (:data:`COLUMNS`) must be there, the optional ones that are
left out are not written.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jobplatform.errors import ConfigError

__all__ = [
    "COLUMNS",
    "DEFAULT_SCHEMA",
    "Column",
    "Table",
    "TableMap",
    "builtin_tables",
    "load_tables",
]

#: The writer's schema when ``WRITER_DB_SCHEMA`` is unset.
DEFAULT_SCHEMA = "jobplatform"

TypeFamily = Literal["integer", "text", "uuid", "timestamptz", "date", "float", "json"]


@dataclass(frozen=True, slots=True)
class Column:
    """A logical column a built-in kind writes: the types it accepts and whether it is needed."""

    family: TypeFamily
    required: bool = False


#: The logical tables and columns of the built-in kinds. ``students.id`` is the id enrollments
#: refer to (an identity or serial column: new students take it from its sequence).
COLUMNS: Mapping[str, Mapping[str, Column]] = {
    "students": {
        "id": Column("integer", True),
        "tenant_id": Column("integer", True),
        "phone": Column("text", True),
        "name": Column("text", True),
        "parent_phone": Column("text"),
        "school": Column("text"),
        "grade": Column("integer"),
        "birth_date": Column("date"),
        "created_at": Column("timestamptz"),
        "updated_at": Column("timestamptz"),
    },
    "lectures": {
        "id": Column("integer", True),
        "tenant_id": Column("integer", True),
        "created_at": Column("timestamptz"),
    },
    "enrollments": {
        "lecture_id": Column("integer", True),
        "student_id": Column("integer", True),
        "import_id": Column("uuid"),
        "enrolled_at": Column("timestamptz"),
    },
    "videos": {
        "id": Column("uuid", True),
        "tenant_id": Column("integer", True),
        "status": Column("text", True),
        "attempt": Column("integer", True),
        "status_rank": Column("integer"),
        "source_key": Column("text"),
        "hls_key": Column("text"),
        "duration_s": Column("float"),
        "renditions": Column("json"),
        "error": Column("text"),
        "queued_at": Column("timestamptz"),
        "started_at": Column("timestamptz"),
        "finished_at": Column("timestamptz"),
        "updated_at": Column("timestamptz"),
    },
}

#: The natural keys of the built-in tables; ``students``' may be configured (``tenant_id``,
#: ``phone`` and any other of its columns but ``id``), the others are what the kinds look
#: rows up by.
DEFAULT_KEYS: Mapping[str, tuple[str, ...]] = {
    "students": ("tenant_id", "phone"),
    "lectures": ("id",),
    "enrollments": ("lecture_id", "student_id"),
    "videos": ("id",),
}

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


@dataclass(frozen=True, slots=True)
class Table:
    """One logical table's real name, columns and natural key."""

    logical: str
    """``students``, ``lectures``, ``enrollments`` or ``videos``."""
    name: str
    """The real table, ``schema.table``."""
    columns: Mapping[str, str]
    """Logical column -> real column, for every column written."""
    key: tuple[str, ...]
    """Logical columns of the natural key; a unique constraint must cover exactly them."""

    def __hash__(self) -> int:
        return hash((self.logical, self.name, tuple(self.columns.items()), self.key))

    @property
    def schema(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def relname(self) -> str:
        return self.name.split(".", 1)[1]

    def has(self, logical: str) -> bool:
        return logical in self.columns

    def column(self, logical: str) -> str:
        """The real column of ``logical``."""
        return self.columns[logical]


@dataclass(frozen=True, slots=True)
class TableMap:
    """Where the built-in kinds write. See the module's documentation."""

    students: Table
    lectures: Table
    enrollments: Table
    videos: Table
    create: bool = False
    """The writer's migrations create these tables (the built-in schema); never for a map of
    the application's tables."""
    lectures_missing: Literal["create", "reject"] = "create"
    """A roster chunk naming a lecture that does not exist: create it (with its tenant), or
    dead-letter the chunk, naming the lecture."""
    origin: str = field(default="built-in", compare=False)
    """Where the map came from, for messages."""

    @property
    def tables(self) -> tuple[Table, ...]:
        return (self.students, self.lectures, self.enrollments, self.videos)

    def __post_init__(self) -> None:
        problems = [p for table in self.tables for p in _problems(table)]
        if self.lectures_missing == "create":
            problems += [f"lectures: lectures_missing = 'create' needs column {c!r} mapped"
                         for c in ("created_at",) if not self.lectures.has(c)]
        if problems:
            raise ConfigError(f"table map ({self.origin}): " + "; ".join(problems))


def _problems(table: Table) -> list[str]:
    where = table.logical
    known = COLUMNS.get(where)
    if known is None:
        return [f"{where}: not a table the built-in kinds write ({', '.join(COLUMNS)})"]
    out = []
    parts = table.name.split(".")
    if len(parts) != 2 or not all(_IDENT.match(p) for p in parts):
        out.append(f"{where}: table {table.name!r} is not schema.table")
    for logical, real in table.columns.items():
        if logical not in known:
            out.append(f"{where}: {logical!r} is not one of its columns ({', '.join(known)})")
        elif not _IDENT.match(real):
            out.append(f"{where}.{logical}: {real!r} is not a column name")
    out += [f"{where}: required column {c!r} is not mapped"
            for c, spec in known.items() if spec.required and c not in table.columns]
    if where == "students":
        if "id" in table.key or not {"tenant_id", "phone"} <= set(table.key):
            out.append(f"students: key {list(table.key)} must hold 'tenant_id' and 'phone'"
                       " (a tenant's students are its own), and not 'id'")
        out += [f"students: key column {c!r} is not mapped" for c in table.key
                if c not in table.columns]
    elif table.key != DEFAULT_KEYS[where]:
        out.append(f"{where}: its key is {list(DEFAULT_KEYS[where])}, not {list(table.key)}")
    reals = list(table.columns.values())
    if len(set(reals)) != len(reals):
        out.append(f"{where}: two logical columns map to one column")
    return out


def builtin_tables(schema: str = DEFAULT_SCHEMA) -> TableMap:
    """The platform's own tables in ``schema``, created by the writer's migrations."""
    def table(name: str) -> Table:
        return Table(name, f"{schema}.{name}", {c: c for c in COLUMNS[name]}, DEFAULT_KEYS[name])

    return TableMap(
        students=table("students"), lectures=table("lectures"),
        enrollments=table("enrollments"), videos=table("videos"),
        create=True,
        lectures_missing="create",
    )


def load_tables(source: str | None, *, schema: str = DEFAULT_SCHEMA) -> TableMap:
    """The map ``WRITER_TABLES`` names (``source``): a TOML file or ``module:attribute``;
    the built-in tables in ``schema`` when unset."""
    if not source:
        return builtin_tables(schema)
    if source.endswith(".toml") or "/" in source or ":" not in source:
        return _from_toml(Path(source), schema)
    module_name, _, attr = source.partition(":")
    try:
        found: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"WRITER_TABLES={source!r}: cannot load it: {exc}") from exc
    if callable(found) and not isinstance(found, TableMap):
        found = found()
    if not isinstance(found, TableMap):
        raise ConfigError(f"WRITER_TABLES={source!r} is a {type(found).__name__}, "
                          "not a jobplatform.tables.TableMap")
    return found


def _from_toml(path: Path, schema: str) -> TableMap:
    origin = f"WRITER_TABLES={path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{origin}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
    return from_dict(data, origin=origin, schema=schema)


def from_dict(data: Mapping[str, Any], *, origin: str = "a mapping",
              schema: str = DEFAULT_SCHEMA) -> TableMap:
    """A map from the TOML file's structure (tables left out keep their built-in form)."""
    base = builtin_tables(schema)
    unknown = set(data) - {*COLUMNS, "lectures_missing"}
    if unknown:
        raise ConfigError(f"{origin}: unknown entries {sorted(unknown)} (expected "
                          f"{', '.join(COLUMNS)}, lectures_missing)")
    tables: dict[str, Table] = {}
    for name in COLUMNS:
        entry = data.get(name)
        if entry is None:
            tables[name] = getattr(base, name)
            continue
        if not isinstance(entry, Mapping) or not isinstance(entry.get("table"), str):
            raise ConfigError(f"{origin}: [{name}] needs table = \"schema.table\"")
        columns = entry.get("columns", {c: c for c in COLUMNS[name]})
        key = entry.get("key", DEFAULT_KEYS[name])
        if not isinstance(columns, Mapping) or not all(
                isinstance(v, str) for v in columns.values()):
            raise ConfigError(f"{origin}: [{name}] columns must map names to column names")
        if not isinstance(key, list | tuple) or not all(isinstance(k, str) for k in key):
            raise ConfigError(f"{origin}: [{name}] key must be a list of column names")
        tables[name] = Table(name, entry["table"], dict(columns), tuple(key))
    # Only a map that keeps every built-in table may create them.
    create = all(tables[n] == getattr(base, n) for n in COLUMNS)
    return TableMap(students=tables["students"], lectures=tables["lectures"],
                    enrollments=tables["enrollments"], videos=tables["videos"], create=create,
                    lectures_missing=data.get("lectures_missing", "reject"), origin=origin)
