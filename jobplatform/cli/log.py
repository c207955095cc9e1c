"""``jobplatform log``: read the write-intent log as a person would."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import click

from jobplatform.cli._common import echo_json, settings_from_env
from schemas import BaseIntent, encode_intent

if TYPE_CHECKING:
    from writer.intentlog import LogFilter, LogReader, LogRecord


@click.group()
def log() -> None:
    """The write-intent log (segments in WRITER_LOG_DIR, or shipped to S3)."""


def _filters(func: Any) -> Any:
    options = [
        click.argument("sources", nargs=-1, required=True, metavar="LOG..."),
        click.option("--kind", "kinds", multiple=True,
                     help="An intent kind (video.ready) or family (video, roster); repeatable."),
        click.option("--tenant", type=click.IntRange(min=1), help="Only this tenant."),
        click.option("--entity", metavar="ID",
                     help="A video id, an import id, or a student's (or parent's) phone."),
        click.option("--since", type=click.IntRange(min=0), metavar="SEQ"),
        click.option("--until", type=click.IntRange(min=0), metavar="SEQ"),
        click.option("--json", "as_json", is_flag=True, help="JSON output."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _open(sources: tuple[str, ...], kinds: tuple[str, ...], tenant: int | None,
          entity: str | None, since: int | None, until: int | None) -> tuple[LogReader, LogFilter]:
    from writer.intentlog import LogFilter, LogReader

    reader = LogReader(list(sources), settings=settings_from_env())
    flt = LogFilter(until=until, since=since, tenant=tenant, kinds=frozenset(kinds), entity=entity)
    return reader, flt


@log.command()
@_filters
def show(sources: tuple[str, ...], kinds: tuple[str, ...], tenant: int | None,
         entity: str | None, since: int | None, until: int | None, as_json: bool) -> None:
    """Print the batches of LOG in order, one line per intent (--json: one record a line)."""
    import json

    reader, flt = _open(sources, kinds, tenant, entity, since, until)
    with reader:
        for record in reader.records(flt):
            if as_json:
                click.echo(json.dumps({
                    "seq": record.seq, "writer": record.writer, "at": record.at.isoformat(),
                    "source": f"{record.source}:{record.line}",
                    "intents": [encode_intent(i) for i in record.intents],
                }, ensure_ascii=False))
                continue
            click.echo(f"#{record.seq}  {record.at.isoformat()}  {record.writer}  "
                       f"{len(record.intents)} intents  ({record.source}:{record.line})")
            for intent in record.intents:
                click.echo(f"    {describe(intent)}")
        for note in reader.notes:
            click.echo(f"warning: {note}", err=True)


@log.command()
@_filters
def stats(sources: tuple[str, ...], kinds: tuple[str, ...], tenant: int | None,
          entity: str | None, since: int | None, until: int | None, as_json: bool) -> None:
    """Count batches, intents by kind, tenants, rows and writers in LOG."""
    reader, flt = _open(sources, kinds, tenant, entity, since, until)
    with reader:
        summary = summarize(reader.records(flt))
        summary["segments"] = len(reader.segments())
        summary["notes"] = list(reader.notes)
    if as_json:
        echo_json(summary)
        return
    for key, value in summary.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for name, count in value.items():
                click.echo(f"    {name}: {count}")
        elif key != "notes":
            click.echo(f"{key}: {value}")
    for note in summary["notes"]:
        click.echo(f"warning: {note}", err=True)


def summarize(records: Iterable[LogRecord]) -> dict[str, Any]:
    kinds: Counter[str] = Counter()
    tenants: Counter[int] = Counter()
    writers: Counter[str] = Counter()
    seen: set[UUID] = set()
    batches = rows = repeated = 0
    first: int | None = None
    last: int | None = None
    start: datetime | None = None
    end: datetime | None = None
    for record in records:
        batches += 1
        first = record.seq if first is None else first
        last = record.seq
        start = record.at if start is None else start
        end = record.at
        writers[record.writer] += 1
        for intent in record.intents:
            kinds[intent.kind] += 1
            tenants[intent.tenant_id] += 1
            if intent.lane == "bulk":
                rows += intent.weight()
            if intent.intent_id in seen:
                repeated += 1
            seen.add(intent.intent_id)
    return {
        "batches": batches,
        "intents": sum(kinds.values()),
        "bulk_rows": rows,
        "repeated_intents": repeated,
        "first_seq": first,
        "last_seq": last,
        "first_at": start.isoformat() if start else None,
        "last_at": end.isoformat() if end else None,
        "kinds": dict(sorted(kinds.items())),
        "tenants": {str(t): n for t, n in sorted(tenants.items())},
        "writers": dict(sorted(writers.items())),
    }


def describe(intent: BaseIntent) -> str:
    """One line a person can read (the intent's own :meth:`~schemas.BaseIntent.describe`)."""
    return intent.describe()
