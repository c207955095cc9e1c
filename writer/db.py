"""Connections and databases: the boundary where the driver is met."""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

APPLICATION_NAME = "jobplatform-writer"


def connect(url: str, *, autocommit: bool = False, application_name: str = APPLICATION_NAME,
            connect_timeout: int = 5) -> psycopg.Connection[tuple[object, ...]]:
    """One connection, tagged with ``application_name`` so the platform's sessions are countable."""
    return psycopg.connect(
        url,
        autocommit=autocommit,
        application_name=application_name,
        connect_timeout=connect_timeout,
    )


def database_name(url: str) -> str:
    return str(conninfo_to_dict(url).get("dbname") or "")


def with_database(url: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    return make_conninfo(url, dbname=dbname)


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
