"""Connections and databases: the boundary where the driver is met."""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

APPLICATION_NAME = "jobplatform-writer"


def writer_schema() -> str:
    """The schema of the writer's own tables (``WRITER_DB_SCHEMA``)."""
    from jobplatform.settings import WriterSettings

    return WriterSettings().db_schema


def session_options(schema: str | None = None) -> str:
    """libpq ``options`` that put the writer's schema (and only it) on the search path: the
    writer's statements name its own tables unqualified and the application's qualified."""
    return f"-c search_path={schema or writer_schema()}"


def connect(url: str, *, autocommit: bool = False, application_name: str = APPLICATION_NAME,
            connect_timeout: int = 5,
            schema: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
    """One connection, tagged with ``application_name`` so the platform's sessions are
    countable, its search path the writer's schema (``schema``, ``WRITER_DB_SCHEMA`` by default)."""
    return psycopg.connect(
        url,
        autocommit=autocommit,
        application_name=application_name,
        connect_timeout=connect_timeout,
        options=session_options(schema),
    )


def database_name(url: str) -> str:
    return str(conninfo_to_dict(url).get("dbname") or "")


def with_database(url: str, dbname: str, **params: str) -> str:
    """The same server and credentials, another database (and ``params``)."""
    return make_conninfo(url, dbname=dbname, **params)


def ensure_database(url: str) -> bool:
    """Create the database ``url`` names if it does not exist; True when it was created."""
    name = database_name(url)
    if not name:
        return False
    try:
        with connect(url, autocommit=True):
            return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    with connect(with_database(url, "postgres"), autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False
    return True


def drop_database(url: str) -> None:
    name = database_name(url)
    with connect(with_database(url, "postgres"), autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))
