"""``jobplatform db``: the schema."""

from __future__ import annotations

import click

from jobplatform.cli._common import settings_from_env


@click.group()
def db() -> None:
    """The database schema."""


@db.command()
@click.option("--database-url", envvar="DATABASE_URL", show_envvar=True,
              help="PostgreSQL to migrate; default: the stack's (local or embedded).")
def upgrade(database_url: str | None) -> None:
    """Apply pending migrations (idempotent: a second run applies nothing)."""
    from writer.migrate import upgrade as run_upgrade

    if database_url is None:
        from jobplatform.embedded import POSTGRES
        from jobplatform.stack import ensure_services

        database_url = ensure_services(settings_from_env(), needs=(POSTGRES,)).database_url
    applied = run_upgrade(database_url)
    if applied:
        for migration in applied:
            click.echo(f"applied {migration.version:04d}_{migration.name}")
    else:
        click.echo("schema is up to date")
