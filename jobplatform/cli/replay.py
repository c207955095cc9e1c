"""``jobplatform replay``: apply a write-intent log to a database, through the writer's sink."""

from __future__ import annotations

import click

from jobplatform.cli._common import echo_json, settings_from_env


@click.command()
@click.argument("log", nargs=-1, required=True)
@click.option("--database-url", envvar="DATABASE_URL", show_envvar=True, required=True,
              help="PostgreSQL to replay into; migrated first (created when missing).")
@click.option("--until", "until", type=click.IntRange(min=0), metavar="SEQ",
              help="Stop after batch number SEQ.")
@click.option("--tenant", type=click.IntRange(min=1), metavar="ID",
              help="Replay only this tenant's intents.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def replay(log: tuple[str, ...], database_url: str, until: int | None, tenant: int | None,
           as_json: bool) -> None:
    """Replay LOG (segment files, folders, s3://bucket/prefix; several merge by batch number).

    Idempotent: intents already in the database's ledger are skipped, so replaying twice
    changes nothing. A torn last record (a writer killed while appending) ends its segment;
    replay goes on to the last whole record and says so.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from writer.catalog import ensure_fits
    from writer.db import connect
    from writer.intentlog import LogFilter, LogReader, replay_log
    from writer.migrate import configured_tables, upgrade

    settings = settings_from_env()
    console = Console(stderr=True)
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
               TextColumn("seq {task.fields[seq]}"), TimeElapsedColumn())
    # The log is opened first: a wrong path is reported before the database is touched.
    with LogReader(list(log), settings=settings) as reader, Progress(
        *columns, console=console, disable=as_json
    ) as progress:
        reader.segments()
        upgrade(database_url)
        # The application's tables (WRITER_TABLES) must be there: its migrations ran first.
        tables = configured_tables()
        with connect(database_url, autocommit=True, application_name="jobplatform-replay") as conn:
            ensure_fits(conn, tables)
        task = progress.add_task("replay", total=None, seq="-")
        summary = replay_log(
            database_url,
            reader,
            log_filter=LogFilter(until=until, tenant=tenant),
            lock_key=settings.writer.lock_key,
            statement_timeout_ms=settings.writer.statement_timeout_ms,
            on_plan=lambda total: progress.update(task, total=total),
            on_batch=lambda record, applied: progress.update(task, advance=1, seq=record.seq),
        )
    if as_json:
        echo_json(summary.as_dict())
        return
    click.echo(
        f"replayed {summary.batches_applied} batches up to seq {summary.last_seq}: "
        f"{summary.intents_applied} intents applied, {summary.intents_already_applied} already "
        f"in the database, {summary.intents_superseded} superseded (batches that never "
        "committed and were redelivered later)"
    )
    for note in summary.notes:
        click.echo(f"warning: {note}", err=True)
