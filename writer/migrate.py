"""Numbered SQL migrations, applied once each, under an advisory lock.

Everything the writer creates lives in its own schema (``WRITER_DB_SCHEMA``, ``jobplatform`` by
default): the migrating session's search path is that schema alone. In order:

1. the writer's own tables (``writer/sql/migrations``), recorded in ``schema_migrations``;
2. the built-in domain tables (``writer/sql/tables``), only when the table map is the built-in
   one (no ``WRITER_TABLES``), recorded as owner ``tables`` in ``writer_kind_migrations``.
   They are never created over tables that exist already: the upgrade stops, naming them;
3. the migrations of each registered kind that declares :attr:`jobplatform.kinds.Kind.migrations`
   (a folder of ``NNNN_name.sql`` files), recorded by kind in ``writer_kind_migrations``.

A database made before the writer had a schema of its own (its tables in ``public``) has them
moved into the writer's schema, once, by :func:`adopt_public`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import psycopg
from psycopg import Connection, sql

from jobplatform.errors import ConfigError
from jobplatform.kinds import Registry
from jobplatform.tables import COLUMNS, TableMap
from writer.db import connect, ensure_database, writer_schema

_MIGRATION_LOCK = 0x6A6F626D6967  # any writer, CLI or test migrating at once waits on this
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(source: Path | Traversable | None = None) -> list[Migration]:
    """The numbered migrations of ``source`` (the writer's own by default), in order.

    ``source`` is a folder of ``NNNN_name.sql`` files, or one ``.sql`` file whose
    ``-- migration: NNNN_name`` blocks are the migrations (a kind's statements file may hold
    them before its ``-- name:`` blocks).
    """
    if source is None:
        source = resources.files("writer") / "sql" / "migrations"
    found = []
    if source.is_file():
        text = source.read_text(encoding="utf-8")
        for block in re.split(r"^-- migration: ", text, flags=re.MULTILINE)[1:]:
            head, _, body = block.partition("\n")
            match = _NAME.match(head.strip() + ".sql")
            if not match:
                raise RuntimeError(f"{source}: a migration is named NNNN_name, not {head!r}")
            body = re.split(r"^-- name: ", body, flags=re.MULTILINE)[0]
            found.append(Migration(int(match[1]), match[2], body.strip()))
    else:
        for entry in source.iterdir():
            match = _NAME.match(entry.name)
            if match:
                found.append(Migration(int(match[1]), match[2],
                                       entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


#: Owner of the built-in domain tables' migrations in ``writer_kind_migrations``.
TABLES_OWNER = "tables"
#: What a database from before the writer's schema holds in ``public``, in the order it moves.
_LEGACY_TABLES = ("schema_migrations", "writer_kind_migrations", "writer_ledger",
                  "writer_dead_letters", "roster_imports", "lectures", "students", "enrollments",
                  "videos")


def full_schema() -> str:
    return (resources.files("writer") / "sql" / "schema.sql").read_text(encoding="utf-8")


def table_migrations() -> list[Migration]:
    """The built-in domain tables' migrations."""
    return migrations(resources.files("writer") / "sql" / "tables")


def upgrade(url: str, *, create_database: bool = True, registry: Registry | None = None,
            tables: TableMap | None = None, schema: str | None = None) -> list[Migration]:
    """Bring the database to the newest schema, the kinds' migrations included (those of
    ``registry``, the process's by default), and the built-in tables when ``tables`` (the
    configured map by default) is the built-in one; returns the migrations applied."""
    if create_database:
        ensure_database(url)
    schema = schema or writer_schema()
    with connect(url, autocommit=True, schema=schema) as conn:
        return upgrade_connection(conn, registry=registry, tables=tables, schema=schema)


def upgrade_when_up(url: str, *, stopping: Callable[[], bool],
                    wait: Callable[[float], None]) -> bool:
    """:func:`upgrade`, waiting through a database outage: a writer started while PostgreSQL
    is down (or still starting) retries with backoff (0.5 to 10 s, jittered), logging each
    failure, instead of exiting. False when ``stopping()`` became true first."""
    from jobplatform.logging import get_logger
    from writer.pacing import Backoff

    backoff = Backoff(0.5, 10.0)
    while not stopping():
        try:
            upgrade(url)
        except psycopg.OperationalError as exc:
            get_logger("writer").warning(
                "database unavailable at start; waiting as a standby and retrying",
                error=str(exc).strip(), attempt=backoff.attempts)
            wait(backoff.next())
            continue
        return True
    return False


def configured_tables(schema: str | None = None) -> TableMap:
    """The table map of ``WRITER_TABLES`` (the built-in tables in ``schema`` when unset)."""
    from jobplatform.settings import WriterSettings
    from jobplatform.tables import load_tables

    settings = WriterSettings()
    return load_tables(settings.tables, schema=schema or settings.db_schema)


def upgrade_connection(conn: Connection[tuple[object, ...]], *,
                       registry: Registry | None = None, tables: TableMap | None = None,
                       schema: str | None = None) -> list[Migration]:
    schema = schema or writer_schema()
    tables = tables if tables is not None else configured_tables(schema)
    conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        adopted = set(COLUMNS) <= set(adopt_public(conn, schema))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        applied = []
        for migration in migrations():
            if migration.version in done:
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            applied.append(migration)
        if adopted:
            # The built-in tables came along: they are the writer's, created long ago.
            conn.execute(
                "INSERT INTO writer_kind_migrations (kind, version, name) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (TABLES_OWNER, table_migrations()[0].version, table_migrations()[0].name))
        if tables.create:
            applied += _upgrade_tables(conn, tables)
        from writer.engine.handlers import resolve

        for kind in resolve(registry).kinds:
            if kind.migrations is not None:
                applied += _upgrade_kind(conn, kind.name, migrations(kind.migrations))
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))


def _upgrade_tables(conn: Connection[tuple[object, ...]], tables: TableMap) -> list[Migration]:
    done = conn.execute("SELECT 1 FROM writer_kind_migrations WHERE kind = %s LIMIT 1",
                        (TABLES_OWNER,)).fetchone()
    if done is None:
        present = [t.name for t in tables.tables
                   if conn.execute("SELECT to_regclass(%s)", (t.name,)).fetchone() != (None,)]
        if present:
            raise ConfigError(
                f"the built-in tables would be created over existing ones: {', '.join(present)}."
                " Map the application's tables with WRITER_TABLES, or give the writer another"
                " schema with WRITER_DB_SCHEMA")
    return _upgrade_kind(conn, TABLES_OWNER, table_migrations())


def adopt_public(conn: Connection[tuple[object, ...]], schema: str) -> list[str]:
    """Move the writer's tables of a database made before it had a schema of its own (all in
    ``public``, with ``public.writer_ledger``) into ``schema``; the names moved."""
    if schema == "public":
        return []
    legacy = conn.execute("SELECT to_regclass('public.writer_ledger') IS NOT NULL,"
                          " to_regclass(%s) IS NOT NULL",
                          (f"{schema}.writer_ledger",)).fetchone()
    if legacy is None or not legacy[0] or legacy[1]:
        return []
    moved = []
    with conn.transaction():
        for name in _LEGACY_TABLES:
            if conn.execute("SELECT to_regclass(%s)", (f"public.{name}",)).fetchone() == (None,):
                continue
            conn.execute(sql.SQL("ALTER TABLE public.{} SET SCHEMA {}").format(
                sql.Identifier(name), sql.Identifier(schema)))
            moved.append(name)
        conn.execute(sql.SQL("ALTER SEQUENCE public.writer_batch_seq SET SCHEMA {}").format(
            sql.Identifier(schema)))
    return moved


def _upgrade_kind(conn: Connection[tuple[object, ...]], kind: str,
                  found: list[Migration]) -> list[Migration]:
    done = {row[0] for row in conn.execute(
        "SELECT version FROM writer_kind_migrations WHERE kind = %s", (kind,))}
    applied = []
    for migration in found:
        if migration.version in done:
            continue
        with conn.transaction():
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO writer_kind_migrations (kind, version, name) VALUES (%s, %s, %s)",
                (kind, migration.version, migration.name),
            )
        applied.append(migration)
    return applied


def current_version(url: str) -> int | None:
    with connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return None
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return None if version is None or version[0] is None else int(str(version[0]))
