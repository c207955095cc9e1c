"""``jobplatform roster check FILE``: parse and validate a roster locally, import nothing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from jobplatform.cli._common import echo_json, settings_from_env

#: Exit code for a file rejected as a whole (0 means importable, even with invalid rows).
REJECTED = 2


@click.group()
def roster() -> None:
    """Roster spreadsheets (the AI actor's imports)."""


@roster.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def check(file: Path, as_json: bool) -> None:
    """Parse and validate FILE as the import would, without a broker, database or S3.

    Prints the counts and every rejected row. Exit code 0: the file can be imported (even with
    invalid rows); 2: it is rejected as a whole. Limits come from the ROSTER_* variables.
    """
    from actors.roster import Limits, RosterRejected, open_roster

    limits = Limits.from_settings(settings_from_env().roster)
    try:
        with open_roster(file, limits) as opened:
            counts = opened.validate(lambda rows: None)
            where: dict[str, Any] = {
                "sheet": opened.sheet_name,
                "header_row": opened.header_row,
                "columns": {f: opened.header.names[i] for f, i in opened.header.columns.items()},
                "ignored_columns": list(opened.header.unknown),
            }
    except RosterRejected as exc:
        if as_json:
            echo_json({"error": str(exc)})
        else:
            click.echo(f"{file}: rejected: {exc}", err=True)
        # SystemExit, not click's Exit: run_cli drops the code click returns for Exit.
        sys.exit(REJECTED)
    result: dict[str, Any] = {
        "total": counts.total,
        "valid": counts.valid,
        "invalid": counts.invalid,
        "duplicates": counts.duplicates,
        "empty_slots": counts.empty_slots,
        "errors": [p.as_dict() for p in counts.problems],
    }
    if as_json:
        echo_json({**result, **where})
        return
    click.echo(f"{file}: sheet {where['sheet']!r}, header on row {where['header_row']}")
    mapped = ", ".join(f"{name} -> {field}" for field, name in where["columns"].items())
    click.echo(f"columns: {mapped}")
    if where["ignored_columns"]:
        click.echo("ignored columns: " + ", ".join(where["ignored_columns"]))
    click.echo(
        f"total {counts.total}, valid {counts.valid}, invalid {counts.invalid},"
        f" duplicates {counts.duplicates}, empty slots {counts.empty_slots}"
    )
    for problem in counts.problems:
        click.echo(f"row {problem.row}, {problem.column}: {problem.reason}")
