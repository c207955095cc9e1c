"""``jobplatform tables``: the tables the built-in kinds write, and whether they fit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from jobplatform.cli._common import echo_json, settings_from_env

if TYPE_CHECKING:
    from jobplatform.tables import TableMap


@click.group()
def tables() -> None:
    """The tables the built-in kinds write (WRITER_TABLES; the built-in ones by default)."""


@tables.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def show(as_json: bool) -> None:
    """Print the table map: each table, its natural key and the columns written."""
    from jobplatform.tables import load_tables

    settings = settings_from_env()
    found = load_tables(settings.writer.tables, schema=settings.writer.db_schema)
    listed = [{"table": t.logical, "name": t.name, "key": list(t.key),
               "columns": dict(t.columns)} for t in found.tables]
    if as_json:
        echo_json({"origin": found.origin, "create": found.create,
                   "lectures_missing": found.lectures_missing, "tables": listed})
        return
    click.echo(f"table map: {found.origin}"
               f"{' (created by the writer)' if found.create else ''}")
    for table in found.tables:
        click.echo(f"{table.logical:<12} {table.name}  key {list(table.key)}")
        for logical, real in table.columns.items():
            click.echo(f"    {logical:<14} -> {real}")


@tables.command()
@click.option("--database-url", envvar="DATABASE_URL", show_envvar=True,
              help="PostgreSQL to check; default: the stack's (local or embedded).")
def check(database_url: str | None) -> None:
    """Compare the table map with the database; exits 2 naming every problem (a missing table
    or column, a wrong type, a natural key without a unique constraint)."""
    from jobplatform.tables import load_tables

    settings = settings_from_env()
    if database_url is None:
        from jobplatform.embedded import POSTGRES
        from jobplatform.stack import ensure_services

        database_url = ensure_services(settings, needs=(POSTGRES,)).database_url
    found = load_tables(settings.writer.tables, schema=settings.writer.db_schema)
    problems = check_map(database_url, found)
    if not problems:
        click.echo(f"the table map ({found.origin}) fits the database")
        return
    for problem in problems:
        click.echo(f"- {problem}", err=True)
    raise click.exceptions.Exit(2)


def check_map(database_url: str, tables: TableMap) -> list[str]:
    """Every way ``tables`` does not fit the database (``manage.py jobplatform_tables`` too)."""
    from writer.catalog import check_tables
    from writer.db import connect

    with connect(database_url, autocommit=True, application_name="jobplatform-cli") as conn:
        return check_tables(conn, tables)
