"""Numbered SQL migrations, applied once each, under an advisory lock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from psycopg import Connection

from writer.db import connect, ensure_database

_MIGRATION_LOCK = 0x6A6F626D6967  # any writer, CLI or test migrating at once waits on this
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    folder = resources.files("writer") / "sql" / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


def full_schema() -> str:
    return (resources.files("writer") / "sql" / "schema.sql").read_text(encoding="utf-8")


def upgrade(url: str, *, create_database: bool = True) -> list[Migration]:
    """Bring the database to the newest schema; returns the migrations applied (none: no-op)."""
    if create_database:
        ensure_database(url)
    with connect(url, autocommit=True) as conn:
        return upgrade_connection(conn)


def upgrade_connection(conn: Connection[tuple[object, ...]]) -> list[Migration]:
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
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))


def current_version(url: str) -> int | None:
    with connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return None
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return None if version is None or version[0] is None else int(str(version[0]))
