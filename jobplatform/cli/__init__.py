"""The ``jobplatform`` command: the composition root.

Each subcommand lives in its own module and imports what it composes (the writer, actors,
benchmarks) where it runs, so ``jobplatform --help`` stays fast and the packages stay apart.
Every option is also read from the environment variable its help names.
"""

from __future__ import annotations

import sys

import click

from jobplatform.cli import (
    bench,
    db,
    dead,
    demo,
    doctor,
    keys,
    kinds,
    log,
    replay,
    roster,
    run,
    stack,
    tables,
    watch,
    writer,
)
from jobplatform.cli._common import run_cli

COMMANDS: list[click.Command] = [
    db.db,
    bench.bench,
    run.run,
    demo.demo,
    watch.watch,
    stack.stack,
    writer.writer,
    dead.dead,
    replay.replay,
    log.log,
    kinds.kinds,
    keys.keys,
    roster.roster,
    doctor.doctor,
    tables.tables,
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="jobplatform")
def cli() -> None:
    """Job platform on Dramatiq whose workers never touch PostgreSQL."""


for command in COMMANDS:
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli(cli, argv))
