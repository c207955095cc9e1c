"""Numbered SQL migrations, applied once each, under an advisory lock.

The writer's own (``writer/sql/migrations``) first, then those of each registered kind that
declares :attr:`jobplatform.kinds.Kind.migrations` (a folder of ``NNNN_name.sql`` files),
recorded by kind in ``writer_kind_migrations``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from psycopg import Connection

from jobplatform.kinds import Registry
from writer.db import connect, ensure_database

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


def full_schema() -> str:
    return (resources.files("writer") / "sql" / "schema.sql").read_text(encoding="utf-8")


def upgrade(url: str, *, create_database: bool = True,
            registry: Registry | None = None) -> list[Migration]:
    """Bring the database to the newest schema, the kinds' migrations included (those of
    ``registry``, the process's by default); returns the migrations applied (none: no-op)."""
    if create_database:
        ensure_database(url)
    with connect(url, autocommit=True) as conn:
        return upgrade_connection(conn, registry=registry)


def upgrade_connection(conn: Connection[tuple[object, ...]], *,
                       registry: Registry | None = None) -> list[Migration]:
    conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
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
        from writer.engine.handlers import resolve

        for kind in resolve(registry).kinds:
            if kind.migrations is not None:
                applied += _upgrade_kind(conn, kind.name, migrations(kind.migrations))
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))


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
