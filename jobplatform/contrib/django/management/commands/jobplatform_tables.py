"""``manage.py jobplatform_tables [--check]``: the table map of settings.JOBPLATFORM_TABLES."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobplatform.contrib.django import database_url, from_settings


class Command(BaseCommand):
    help = ("Print the table map the writer builds from settings.JOBPLATFORM_TABLES; with "
            "--check, compare it with the database as the writer does at start.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--check", action="store_true",
                            help="compare with the database; fail naming every problem")
        parser.add_argument("--database", default="default", help="the DATABASES alias")

    def handle(self, *args: Any, **options: Any) -> None:
        tables = from_settings()
        for table in tables.tables:
            self.stdout.write(f"{table.logical:<12} {table.name}  key {list(table.key)}")
            for logical, real in table.columns.items():
                self.stdout.write(f"    {logical:<14} -> {real}")
        if not options["check"]:
            return
        from jobplatform.cli.tables import check_map

        problems = check_map(database_url(options["database"]), tables)
        if problems:
            raise CommandError("the table map does not fit the database:\n- "
                               + "\n- ".join(problems))
        self.stdout.write(self.style.SUCCESS("the table map fits the database"))
