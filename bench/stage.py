"""``jobplatform bench stage``: what the roster rows cost the server before the upsert reads them.

The roster kind stages a batch's rows by binary COPY into a temporary table, and its upsert
reads them from there. The alternative is to send each column as an array parameter and read
``unnest(...)`` in the statement, with no staging table. This measures both on a PostgreSQL of
its own (uncapped): batches of the same rows (the staging table's columns, as the writer encodes
them), each in a transaction of its own that stages them and reads them once, the backend's CPU
per row over many batches, the methods interleaved round by round.

- ``copy``: the writer's path: binary COPY into the staging table (``create_stage``,
  ``plain_stage``, ``copy_stage`` of ``writer/kinds/roster.sql``), then a scan of it.
- ``unnest-binary``: the columns as binary arrays, read by ``unnest``.
- ``unnest-text``: the same in text format (psycopg's default for parameters).
"""

from __future__ import annotations

import json
import random
import statistics
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import click
import psycopg
from psycopg import sql

from bench._common import markdown_table, proc_cpu_seconds
from bench._instance import EmulatedInstance, InstanceConfig
from writer.engine.batch import parse_statements
from writer.kinds import roster
from writer.kinds.tables import STAGE_TABLE

METHODS = ("copy", "unnest-binary", "unnest-text")
_COLUMNS = ("tenant_id", "phone", "name", "parent_phone", "school", "grade", "birth_date",
            "student_at", "student_import", "lecture_id", "import_id", "enrolled_at")
_SCAN = "SELECT count(*), sum(length(phone)), max(enrolled_at) FROM {source}"

Row = tuple[Any, ...]


def make_batch(rng: random.Random, rows: int) -> list[Row]:
    """One batch of new students of one import, in the staging table's column order."""
    now = datetime.now(UTC)
    import_id = uuid.uuid4()
    return [(7, f"010{rng.randrange(10**8):08d}", "홍길동", "01099998888", "서울중학교",
             rng.randint(1, 6), date(2010, 1, 2), now, import_id, 42, import_id, now)
            for _ in range(rows)]


class Stager:
    """The three ways of handing a batch to the server, on one connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        named = parse_statements(roster.sql.read_text())
        stage = sql.Identifier(STAGE_TABLE)
        for making in roster.MAKE_STAGE:
            conn.execute(sql.SQL(named[making]).format(stage=stage))
        self.copy_sql = sql.SQL(named["copy_stage"]).format(stage=stage)
        self.scan_stage = sql.SQL(_SCAN).format(source=stage)
        types = roster._STAGE_TYPES
        source = sql.SQL("unnest({}) AS st ({})").format(
            sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.Identifier(t)) for t in types),
            sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMNS))
        self.scan_arrays = sql.SQL(_SCAN).format(source=source)

    def method(self, name: str) -> Callable[[list[Row]], Row | None]:
        return {"copy": self.copy, "unnest-binary": self.unnest_binary,
                "unnest-text": self.unnest_text}[name]

    def copy(self, rows: list[Row]) -> Row | None:
        """Each method returns what its scan read: (count, sum of phone lengths, last time)."""
        with self.conn.transaction():
            with self.conn.cursor().copy(self.copy_sql) as copy:
                copy.set_types(list(roster._STAGE_TYPES))
                for row in rows:
                    copy.write_row(row)
            return self.conn.execute(self.scan_stage).fetchone()

    def unnest_binary(self, rows: list[Row]) -> Row | None:
        with self.conn.transaction():
            return self.conn.execute(self.scan_arrays, [list(c) for c in zip(*rows, strict=True)],
                                     binary=True).fetchone()

    def unnest_text(self, rows: list[Row]) -> Row | None:
        with self.conn.transaction():
            return self.conn.execute(self.scan_arrays,
                                     [list(c) for c in zip(*rows, strict=True)]).fetchone()


def run(rows: int, batches: int, repeat: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    per_row: dict[str, list[float]] = {m: [] for m in METHODS}
    with EmulatedInstance(InstanceConfig(cpu_quota=None)) as instance, \
            psycopg.connect(instance.create_database("bench_stage"), autocommit=True) as conn:
        stager = Stager(conn)
        backend = conn.info.backend_pid
        for method in METHODS:  # warm the plans and caches
            stager.method(method)(make_batch(rng, rows))
        for _ in range(repeat):
            for method in METHODS:
                work = [make_batch(rng, rows) for _ in range(batches)]
                apply = stager.method(method)
                before = proc_cpu_seconds(backend)
                for batch in work:
                    apply(batch)
                per_row[method].append((proc_cpu_seconds(backend) - before)
                                       / (rows * batches) * 1e6)
    medians = {m: statistics.median(v) for m, v in per_row.items()}
    return {
        "rows_per_batch": rows, "batches": batches, "repeat": repeat,
        "server_us_per_row": {m: {"median": round(medians[m], 3),
                                  "runs": [round(x, 3) for x in per_row[m]]}
                              for m in METHODS},
        "over_copy": {m: round(medians[m] / medians["copy"], 3) for m in METHODS},
    }


@click.command(name="stage")
@click.option("--rows", type=click.IntRange(min=1), default=550, show_default=True,
              help="Rows per batch (the writer's batches held about 550 in bench import).")
@click.option("--batches", type=click.IntRange(min=1), default=300, show_default=True,
              help="Batches per method and round.")
@click.option("--repeat", type=click.IntRange(1, 20), default=5, show_default=True,
              help="Rounds, the methods interleaved in each.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(rows: int, batches: int, repeat: int, as_json: bool) -> None:
    """Server CPU per row of staging a roster batch by COPY against array parameters."""
    result = run(rows, batches, repeat)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = [[m, f"{result['server_us_per_row'][m]['median']:.2f}",
              f"{result['over_copy'][m]:.2f}"] for m in METHODS]
    click.echo(markdown_table(["method", "server CPU us per row (median)", "over copy"], table))
