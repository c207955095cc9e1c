"""Declarative table sinks: a kind's intents written into the application's tables, no SQL.

A :class:`TableSink` names a target table (schema-qualified), its natural key, and which field
of each intent (or of each row an intent carries) fills which column. A kind lists its sinks
(``Kind(..., sinks=(...))``) instead of writing ``apply`` and a ``.sql`` file; the writer
composes the statements with :mod:`psycopg.sql`, stages the rows by binary COPY and applies
each sink in one statement, in the order listed, inside the batch's transaction.

Modes:

``upsert``
    Insert new keys; update existing rows whose values differ. Identical rows are not touched
    at all (no row lock, no WAL).
``insert``
    Insert if absent (``ON CONFLICT DO NOTHING``): the first value of a key stays.
``monotonic``
    State that never moves backwards: a row moves to a new value only for a strictly higher
    ``rank`` (compared as a row of columns). An outranked change still fills the ``fill``
    columns the row lacks (NULL), so a late lower-ranked intent loses no field.

A :class:`Ref` column holds another table's id, found by that table's natural key in the same
statement (one index probe per row): an enrollment names its student by (tenant, phone) and
gets the student's id. A row whose reference finds nothing dead-letters its intent, naming the
key. With ``tenant`` set, a row whose key exists under another tenant does too (ownership is
checked in the same transaction). At start the writer checks every sink against the catalog
(tables, columns, types, the unique constraint of the key) and refuses to start on a mismatch.

Example (``examples/scores``)::

    scores = TableSink(
        table="academy.scores",
        key=("student_id", "lecture_id"),
        columns={"tenant_id": "tenant_id", "lecture_id": "lecture_id", "score": "score",
                 "recorded_at": "occurred_at",
                 "student_id": Ref("academy.students", {"tenant_id": "tenant_id",
                                                        "phone": "phone"})},
        mode="monotonic", rank=("recorded_at",),
    )
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from jobplatform.errors import ConfigError
from schemas import BaseIntent

__all__ = ["Ref", "SinkMode", "TableSink"]

SinkMode = Literal["upsert", "insert", "monotonic"]


@dataclass(frozen=True)
class Ref:
    """A column holding the ``column`` of the ``table`` row whose natural key (columns ->
    fields of the row) the row names."""

    table: str
    key: Mapping[str, str]
    """Referenced table's key column -> field of the row that holds its value."""
    column: str = "id"

    def __hash__(self) -> int:
        return hash((self.table, tuple(self.key.items()), self.column))


@dataclass(frozen=True)
class TableSink:
    """Where a kind's intents land in one table. See the module's documentation."""

    table: str
    """``schema.table``."""
    key: tuple[str, ...]
    """The natural-key columns; a unique constraint (or primary key) must cover exactly them."""
    columns: Mapping[str, str | Ref]
    """Column -> field of the row (or :class:`Ref`). The key's columns are among them."""
    mode: SinkMode = "upsert"
    rank: tuple[str, ...] = ()
    """``monotonic``: the rank columns, compared as a row (higher moves the row)."""
    fill: tuple[str, ...] = ()
    """``monotonic``: columns an outranked change still fills when the row's value is NULL."""
    intents: tuple[type[BaseIntent], ...] = ()
    """The intent models that feed this sink; all of the kind's when empty."""
    rows: Callable[[Any], Iterable[Mapping[str, Any]]] | None = None
    """The rows one intent gives (an intent carrying many rows); by default one row, the
    intent's fields (``model_dump``)."""
    tenant: str | None = None
    """The tenant column: a row whose key exists under another tenant is refused."""
    name: str = field(default="", compare=False)
    """For messages and statistics; the table's name when empty."""

    def __post_init__(self) -> None:
        problems = []
        parts = self.table.split(".")
        if len(parts) != 2 or not all(parts):
            problems.append(f"table {self.table!r} is not schema.table")
        if not self.key:
            problems.append("no key")
        problems += [f"key column {k!r} is not in columns" for k in self.key
                     if k not in self.columns]
        if self.mode == "monotonic" and not self.rank:
            problems.append("mode 'monotonic' needs rank columns")
        if self.mode != "monotonic" and (self.rank or self.fill):
            problems.append("rank and fill are for mode 'monotonic'")
        problems += [f"rank/fill column {c!r} is not in columns"
                     for c in (*self.rank, *self.fill) if c not in self.columns]
        problems += [f"rank column {c!r} is in the key" for c in self.rank if c in self.key]
        if self.tenant is not None and self.tenant not in self.columns:
            problems.append(f"tenant column {self.tenant!r} is not in columns")
        if self.mode not in ("upsert", "insert", "monotonic"):
            problems.append(f"mode {self.mode!r} is not upsert, insert or monotonic")
        if problems:
            raise ConfigError(f"table sink {self.label}: " + "; ".join(problems))

    def __hash__(self) -> int:
        return hash((self.table, self.key, tuple(self.columns.items()), self.mode, self.rank,
                     self.fill, self.intents, self.tenant))

    @property
    def label(self) -> str:
        return self.name or self.table

    def feeds(self, intent: BaseIntent) -> bool:
        return not self.intents or isinstance(intent, self.intents)

    def rows_of(self, intent: BaseIntent) -> Iterable[Mapping[str, Any]]:
        if self.rows is not None:
            return self.rows(intent)
        return (dict(intent),)
