"""The table map against the live catalog: what the writer checks before it writes anything.

:func:`check_tables` returns one line per problem, each naming the table and column: a missing
table or column, a column whose type cannot hold what the kind writes, a natural key that no
unique constraint covers, a students id without an identity or sequence, and a NOT NULL column
without a default that the writer would leave empty on insert. The writer refuses to start on
any (:class:`TableMapError`); ``jobplatform tables check`` prints them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from jobplatform.errors import ConfigError
from jobplatform.tables import COLUMNS, Table, TableMap

__all__ = ["TableMapError", "check_tables", "describe_table"]

#: PostgreSQL base types each family accepts.
FAMILIES: Mapping[str, frozenset[str]] = {
    "integer": frozenset({"int2", "int4", "int8"}),
    "text": frozenset({"text", "varchar", "bpchar", "citext"}),
    "uuid": frozenset({"uuid"}),
    "timestamptz": frozenset({"timestamptz"}),
    "date": frozenset({"date"}),
    "float": frozenset({"float4", "float8", "numeric"}),
    "json": frozenset({"jsonb", "json"}),
}


class TableMapError(ConfigError):
    """The table map does not fit the database; the message lists every problem."""


@dataclass(frozen=True, slots=True)
class LiveColumn:
    name: str
    type: str
    """The base type's name (a domain's underlying type)."""
    not_null: bool
    has_default: bool
    """A default, an identity or a generated expression fills it when the insert does not."""


_COLUMNS_SQL = """
SELECT a.attname,
       coalesce(bt.typname, t.typname),
       a.attnotnull,
       a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
FROM pg_attribute AS a
JOIN pg_type AS t ON t.oid = a.atttypid
LEFT JOIN pg_type AS bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_UNIQUE_SQL = """
SELECT array_agg(a.attname ORDER BY a.attname)
FROM pg_index AS i
JOIN LATERAL unnest(i.indkey) AS k (attnum) ON true
JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL
      AND i.indexprs IS NULL AND i.indimmediate
GROUP BY i.indexrelid
"""


def describe_table(conn: psycopg.Connection[Any], name: str
                   ) -> tuple[dict[str, LiveColumn], list[frozenset[str]]] | None:
    """The columns and unique keys (non-partial, non-deferrable) of ``name``; None when the
    table does not exist."""
    found = conn.execute("SELECT to_regclass(%s)", (_regclass_text(name),)).fetchone()
    if found is None or found[0] is None:
        return None
    reg = _regclass_text(name)
    columns = {row[0]: LiveColumn(row[0], row[1], row[2], row[3])
               for row in conn.execute(_COLUMNS_SQL, (reg,))}
    uniques = [frozenset(row[0]) for row in conn.execute(_UNIQUE_SQL, (reg,))]
    return columns, uniques


def _regclass_text(name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split(".", 1))


def check_tables(conn: psycopg.Connection[Any], tables: TableMap) -> list[str]:
    """Every way ``tables`` does not fit the database ``conn`` is connected to."""
    problems: list[str] = []
    inserted = {"students", "enrollments", "videos"}
    if tables.lectures_missing == "create":
        inserted.add("lectures")
    for table in tables.tables:
        problems += _check(conn, table, inserts=table.logical in inserted)
    return problems


def _check(conn: psycopg.Connection[Any], table: Table, *, inserts: bool) -> list[str]:
    where = f"{table.logical} ({table.name})"
    live = describe_table(conn, table.name)
    if live is None:
        return [f"{where}: the table does not exist"]
    columns, uniques = live
    out = []
    specs = COLUMNS[table.logical]
    for logical, real in table.columns.items():
        col = columns.get(real)
        if col is None:
            out.append(f"{where}: no column {real!r} (mapped from {logical!r})")
            continue
        family = specs[logical].family
        if col.type not in FAMILIES[family]:
            out.append(f"{where}: column {real!r} is {col.type}, but {logical!r} needs "
                       f"{family} ({', '.join(sorted(FAMILIES[family]))})")
    key = frozenset(table.column(k) for k in table.key if k in table.columns)
    if key and key not in uniques:
        cols = ", ".join(table.column(k) for k in table.key)
        out.append(f"{where}: no unique constraint on exactly ({cols}), the natural key "
                   f"{list(table.key)}; add one (Django: UniqueConstraint(fields=[...]))")
    if table.logical == "students" and "id" in table.columns and table.column("id") in columns:
        seq = conn.execute("SELECT pg_get_serial_sequence(%s, %s)",
                           (_regclass_text(table.name), table.column("id"))).fetchone()
        if seq is None or seq[0] is None:
            out.append(f"{where}: column {table.column('id')!r} has no identity or sequence; "
                       "new students take their id from it")
    if inserts:
        written = set(table.columns.values())
        out += [f"{where}: column {c.name!r} is NOT NULL without a default and not mapped: "
                "rows the writer inserts would leave it empty (map it, give it a default, or "
                "make it nullable)"
                for c in columns.values() if c.not_null and not c.has_default
                and c.name not in written]
    return out


def ensure_fits(conn: psycopg.Connection[Any], tables: TableMap,
                extra: Sequence[str] = ()) -> None:
    """Raise :class:`TableMapError` listing every problem of :func:`check_tables`."""
    problems = [*check_tables(conn, tables), *extra]
    if problems:
        raise TableMapError(f"the table map ({tables.origin}) does not fit the database: "
                            + "; ".join(problems))
