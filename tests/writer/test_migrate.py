from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from writer.db import connect, drop_database, ensure_database, with_database
from writer.migrate import current_version, full_schema, migrations, upgrade

_CATALOG = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default,
               is_identity, identity_generation
        FROM information_schema.columns WHERE table_schema = 'jobplatform'
          AND table_name <> 'schema_migrations'
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'jobplatform'::regnamespace
          AND conrelid <> 'jobplatform.schema_migrations'::regclass
        ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'jobplatform' AND tablename <> 'schema_migrations' ORDER BY 1, 2""",
    "sequences": """
        SELECT sequence_name, data_type, start_value, increment FROM information_schema.sequences
        WHERE sequence_schema = 'jobplatform' ORDER BY 1""",
}


def _catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with connect(url, autocommit=True) as conn:
        return {name: conn.execute(query).fetchall() for name, query in _CATALOG.items()}


@pytest.fixture
def scratch_database(database_url: str) -> Iterator[str]:
    url = with_database(database_url, database_url.rsplit("/", 1)[-1] + "_full")
    ensure_database(url)
    yield url
    drop_database(url)


def test_migrations_build_the_full_schema(database_url: str, scratch_database: str) -> None:
    # Given one database built by the numbered migrations (the fixture) and one from schema.sql,
    with connect(scratch_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA jobplatform")
        conn.execute("SET search_path TO jobplatform")
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY)")
        conn.execute(full_schema().encode())
    # then their catalogs are the same.
    assert _catalog(database_url) == _catalog(scratch_database)


def test_upgrade_is_idempotent(database_url: str) -> None:
    assert current_version(database_url) == migrations()[-1].version
    assert upgrade(database_url) == []


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in migrations()]
    assert versions == list(range(1, len(versions) + 1))
