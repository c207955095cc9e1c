"""Table sinks (:mod:`jobplatform.sinks`) applied: compiled against the catalog, staged by
binary COPY, one statement each.

A sink is compiled once per process, on first use, from the live catalog: the target's column
types become the staging table's and the COPY's, so values are checked by PostgreSQL's own
input functions. :func:`check_sink` is what the writer runs at start for every sink of every
registered kind; a problem stops it before it applies anything.

Statements run with hash and merge joins off for the transaction (as the roster's): a staging
table has no statistics, and a hash join would scan the whole target every batch. Each row
costs one index probe of the target (and one per :class:`~jobplatform.sinks.Ref`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from pydantic_core import to_jsonable_python

from jobplatform.kinds import Outcome, Transaction
from jobplatform.sinks import Ref, TableSink
from schemas import BaseIntent
from writer.catalog import TableMapError, describe_table

__all__ = ["SinkOutcome", "apply_sinks", "check_sink", "compile_sink"]

#: Base types a sink can stage (binary COPY), by ``pg_type.typname``.
STAGEABLE = frozenset({
    "int2", "int4", "int8", "numeric", "float4", "float8", "bool", "text", "varchar",
    "bpchar", "uuid", "date", "timestamptz", "timestamp", "time", "interval",
    "jsonb", "json", "bytea",
})


@dataclass(slots=True)
class SinkOutcome(Outcome):
    """What the sinks of one kind did in one batch."""

    inserted: int = 0
    updated: int = 0


@dataclass(frozen=True, slots=True)
class _StageColumn:
    name: str
    type: str
    field: str
    """The row's field it comes from."""


@dataclass(frozen=True, slots=True)
class CompiledSink:
    sink: TableSink
    stage: str
    columns: tuple[_StageColumn, ...]
    """Staged values, after the intent id: direct columns, then each Ref's key fields."""
    key_fields: tuple[str, ...]
    """Row fields that identify a row's key (a Ref's key fields stand for its column)."""
    create_stage: sql.Composed
    copy: sql.Composed
    apply: sql.Composed


_COMPILED: dict[tuple[int, TableSink], CompiledSink] = {}


def check_sink(conn: psycopg.Connection[Any], sink: TableSink) -> list[str]:
    """Every way ``sink`` does not fit the database (empty: it fits)."""
    try:
        compile_sink(conn, sink, cache=False)
    except TableMapError as exc:
        return [str(exc)]
    return []


def compile_sink(conn: psycopg.Connection[Any], sink: TableSink, *,
                 cache: bool = True) -> CompiledSink:
    key = (id(sink), sink)
    found = _COMPILED.get(key) if cache else None
    if found is None:
        found = _compile(conn, sink, stage=f"writer_sink_{len(_COMPILED)}")
        if cache:
            _COMPILED[key] = found
    return found


def _compile(conn: psycopg.Connection[Any], sink: TableSink, *, stage: str) -> CompiledSink:
    where = f"table sink {sink.label}"
    live = describe_table(conn, sink.table)
    if live is None:
        raise TableMapError(f"{where}: table {sink.table} does not exist")
    target, uniques = live
    problems = []
    stage_cols: list[_StageColumn] = []
    ref_joins: list[sql.Composable] = []
    selected: list[sql.Composable] = []
    key_fields: list[str] = []
    for column, source in sink.columns.items():
        col = target.get(column)
        if col is None:
            problems.append(f"{sink.table} has no column {column!r}")
            continue
        if isinstance(source, Ref):
            alias = f"r{len(ref_joins)}"
            ref = describe_table(conn, source.table)
            if ref is None:
                problems.append(f"column {column!r}: referenced table {source.table} does not "
                                "exist")
                continue
            ref_cols, ref_uniques = ref
            if source.column not in ref_cols:
                problems.append(f"column {column!r}: {source.table} has no column "
                                f"{source.column!r}")
            if frozenset(source.key) not in ref_uniques:
                problems.append(f"column {column!r}: no unique constraint on exactly "
                                f"({', '.join(source.key)}) of {source.table}")
            on = []
            for ref_col, ref_field in source.key.items():
                rc = ref_cols.get(ref_col)
                if rc is None:
                    problems.append(f"column {column!r}: {source.table} has no column "
                                    f"{ref_col!r}")
                    continue
                staged = f"{column}__{ref_col}"
                stage_cols.append(_StageColumn(staged, rc.type, ref_field))
                on.append(sql.SQL("{}.{} = st.{}").format(
                    sql.Identifier(alias), sql.Identifier(ref_col), sql.Identifier(staged)))
                if column in sink.key:
                    key_fields.append(ref_field)
            ref_joins.append(sql.SQL(" LEFT JOIN {} AS {} ON {}").format(
                sql.Identifier(*source.table.split(".", 1)), sql.Identifier(alias),
                sql.SQL(" AND ").join(on)))
            selected.append(sql.SQL("{}.{} AS {}").format(
                sql.Identifier(alias), sql.Identifier(source.column), sql.Identifier(column)))
        else:
            stage_cols.append(_StageColumn(column, col.type, source))
            selected.append(sql.SQL("st.{}").format(sql.Identifier(column)))
            if column in sink.key:
                key_fields.append(source)
    problems += [f"column {c.name!r} is {c.type}, which table sinks cannot stage"
                 for c in stage_cols if c.type not in STAGEABLE]
    if frozenset(sink.key) not in uniques:
        problems.append(f"no unique constraint on exactly ({', '.join(sink.key)}) of "
                        f"{sink.table}, its key")
    written = set(sink.columns)
    problems += [f"column {c.name!r} of {sink.table} is NOT NULL without a default and not "
                 "in the sink's columns: inserted rows would leave it empty"
                 for c in target.values()
                 if c.not_null and not c.has_default and c.name not in written]
    if problems:
        raise TableMapError(f"{where}: " + "; ".join(problems))
    refs = [c for c, s in sink.columns.items() if isinstance(s, Ref)]
    return CompiledSink(
        sink=sink, stage=stage, columns=tuple(stage_cols), key_fields=tuple(key_fields),
        create_stage=sql.SQL(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {} (_intent uuid NOT NULL, {})"
            " ON COMMIT DELETE ROWS").format(
            sql.Identifier(stage), sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.Identifier(c.type))
                for c in stage_cols)),
        copy=sql.SQL("COPY {} (_intent, {}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(stage), sql.SQL(", ").join(sql.Identifier(c.name)
                                                      for c in stage_cols)),
        apply=_statement(sink, stage, selected, ref_joins, refs),
    )


def _statement(sink: TableSink, stage: str, selected: list[sql.Composable],
               ref_joins: list[sql.Composable], refs: list[str]) -> sql.Composed:
    table = sql.Identifier(*sink.table.split(".", 1))
    cols = list(sink.columns)
    values = [c for c in cols if c not in sink.key]

    def ident(c: str) -> sql.Identifier:
        return sql.Identifier(c)

    def on_key(left: str, right: str) -> sql.Composable:
        return sql.SQL(" AND ").join(sql.SQL("{}.{} = {}.{}").format(
            ident(left), ident(k), ident(right), ident(k)) for k in sink.key)

    col_list = sql.SQL(", ").join(ident(c) for c in cols)
    missing = sql.SQL("SELECT s._intent FROM s WHERE {}").format(
        sql.SQL(" OR ").join(sql.SQL("s.{} IS NULL").format(ident(c)) for c in refs)
    ) if refs else sql.SQL("SELECT NULL::uuid AS _intent WHERE false")
    foreign: sql.Composable = sql.SQL(
        "SELECT NULL::uuid AS _intent, NULL::text AS owner WHERE false")
    if sink.tenant is not None and sink.tenant not in sink.key:
        foreign = sql.SQL(
            "SELECT s._intent, t.{ten}::text AS owner FROM s JOIN {table} AS t ON {on}"
            " WHERE t.{ten} IS DISTINCT FROM s.{ten}").format(
            ten=ident(sink.tenant), table=table, on=on_key("t", "s"))
    write: sql.Composable
    guard = sql.SQL("NOT EXISTS (SELECT FROM missing) AND NOT EXISTS (SELECT FROM foreign_rows)")
    if sink.mode == "upsert":
        write = sql.SQL("""
, updated AS (
    UPDATE {table} AS t SET {sets}
    FROM s WHERE {on} AND {guard} AND {old} IS DISTINCT FROM {new}
    RETURNING 1
), inserted AS (
    INSERT INTO {table} ({cols})
    SELECT {cols} FROM s
    WHERE {guard} AND NOT EXISTS (SELECT FROM {table} AS t WHERE {on})
    RETURNING 1
)""").format(
            table=table, guard=guard, on=on_key("t", "s"), cols=col_list,
            sets=sql.SQL(", ").join(sql.SQL("{} = s.{}").format(ident(c), ident(c))
                                    for c in values) if values else sql.SQL(""),
            old=_row([sql.SQL("t.{}").format(ident(c)) for c in values]),
            new=_row([sql.SQL("s.{}").format(ident(c)) for c in values]))
        if not values:
            write = sql.SQL("""
, updated AS (SELECT 1 WHERE false), inserted AS (
    INSERT INTO {table} ({cols})
    SELECT {cols} FROM s
    WHERE {guard} AND NOT EXISTS (SELECT FROM {table} AS t WHERE {on})
    RETURNING 1
)""").format(table=table, cols=col_list, guard=guard, on=on_key("t", "s"))
    elif sink.mode == "insert":
        write = sql.SQL("""
, updated AS (SELECT 1 WHERE false), inserted AS (
    INSERT INTO {table} ({cols})
    SELECT {cols} FROM s WHERE {guard}
    ON CONFLICT ({key}) DO NOTHING
    RETURNING 1
)""").format(table=table, cols=col_list, guard=guard,
             key=sql.SQL(", ").join(ident(k) for k in sink.key))
    else:
        higher = sql.SQL("coalesce({new} > {old}, {old_null})").format(
            new=_row([sql.SQL("EXCLUDED.{}").format(ident(c)) for c in sink.rank]),
            old=_row([sql.SQL("t.{}").format(ident(c)) for c in sink.rank]),
            old_null=sql.SQL("t.{} IS NULL").format(ident(sink.rank[0])))
        sets = []
        for c in values:
            if c in sink.fill:
                value = sql.SQL("CASE WHEN {h} THEN coalesce(EXCLUDED.{c}, t.{c})"
                                " ELSE coalesce(t.{c}, EXCLUDED.{c}) END")
            else:
                value = sql.SQL("CASE WHEN {h} THEN EXCLUDED.{c} ELSE t.{c} END")
            sets.append(sql.SQL("{} = ").format(ident(c)) + value.format(h=higher, c=ident(c)))
        fills = [sql.SQL("(t.{c} IS NULL AND EXCLUDED.{c} IS NOT NULL)").format(c=ident(c))
                 for c in sink.fill]
        write = sql.SQL("""
, written AS (
    INSERT INTO {table} AS t ({cols})
    SELECT {cols} FROM s WHERE {guard}
    ON CONFLICT ({key}) DO UPDATE SET {sets}
    WHERE {when}
    RETURNING (xmax = 0) AS new
), inserted AS (SELECT 1 FROM written WHERE new), updated AS (SELECT 1 FROM written WHERE NOT new)
""").format(table=table, cols=col_list, guard=guard,
            key=sql.SQL(", ").join(ident(k) for k in sink.key),
            sets=sql.SQL(", ").join(sets),
            when=sql.SQL(" OR ").join([higher, *fills]))
    return sql.SQL("""WITH s AS (
    SELECT st._intent, {selected}
    FROM {stage} AS st{joins}
), missing AS ({missing}), foreign_rows AS ({foreign}){write}
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM updated),
       (SELECT _intent FROM missing LIMIT 1),
       (SELECT array[_intent::text, owner] FROM foreign_rows LIMIT 1)""").format(
        selected=sql.SQL(", ").join(selected), stage=sql.Identifier(stage),
        joins=sql.Composed(ref_joins), missing=missing, foreign=foreign, write=write)


def _row(items: list[sql.Composable]) -> sql.Composable:
    if not items:
        return sql.SQL("NULL")
    return items[0] if len(items) == 1 else sql.SQL("({})").format(sql.SQL(", ").join(items))


# --- applying ------------------------------------------------------------------------------

def _dedup(compiled: CompiledSink, rows: list[tuple[UUID, Mapping[str, Any]]]
           ) -> list[tuple[UUID, Mapping[str, Any]]]:
    """One row per key: the last (upsert), the first (insert), or the highest rank with the
    ``fill`` fields taken from the outranked rows where the winner has none (monotonic)."""
    sink = compiled.sink
    groups: dict[tuple[Any, ...], list[tuple[UUID, Mapping[str, Any]]]] = {}
    for item in rows:
        key = tuple(item[1].get(f) for f in compiled.key_fields)
        groups.setdefault(key, []).append(item)
    fields = [_field(sink, c) for c in sink.rank]

    def rank(item: tuple[UUID, Mapping[str, Any]]) -> tuple[Any, ...]:
        return tuple((v is not None, v) for v in (item[1].get(f) for f in fields))

    out = []
    for group in groups.values():
        if len(group) == 1 or sink.mode == "insert":
            out.append(group[0])
        elif sink.mode == "upsert":
            out.append(group[-1])
        else:
            ordered = sorted(group, key=rank)  # stable: arrival order among equals
            intent_id, win = ordered[-1]
            merged = dict(win)
            for column in sink.fill:
                name = _field(sink, column)
                if merged.get(name) is None:
                    merged[name] = next((r[name] for _, r in reversed(ordered)
                                         if r.get(name) is not None), None)
            out.append((intent_id, merged))
    return out


def _field(sink: TableSink, column: str) -> str:
    source = sink.columns[column]
    return source if isinstance(source, str) else column


def _value(value: Any) -> Any:
    """A JSON column's value as plain data (models, UUIDs and datetimes included)."""
    return None if value is None else to_jsonable_python(value)


def apply_sinks(sinks: Sequence[TableSink], tx: Transaction,
                intents: Sequence[BaseIntent]) -> SinkOutcome:
    """Apply ``intents`` through each of ``sinks``, in order, in ``tx``."""
    out = SinkOutcome()
    conn = tx.connection
    prepared = False
    for sink in sinks:
        rows = [(i.intent_id, row) for i in intents if sink.feeds(i) for row in sink.rows_of(i)]
        if not rows:
            continue
        compiled = compile_sink(conn, sink)
        unique = _dedup(compiled, rows)
        out.coalesced += len(rows) - len(unique)
        if not prepared:
            tx.execute(sql.SQL("SELECT set_config('enable_hashjoin', 'off', true),"
                               " set_config('enable_mergejoin', 'off', true)"))
            prepared = True
        tx.execute(compiled.create_stage)
        types = ["uuid", *(c.type for c in compiled.columns)]
        json_cols = {i for i, c in enumerate(compiled.columns) if c.type in ("json", "jsonb")}
        cur = conn.cursor()
        with cur.copy(compiled.copy) as copy:
            copy.set_types(types)
            for intent_id, row in unique:
                values = [row.get(c.field) for c in compiled.columns]
                for i in json_cols:
                    values[i] = _value(values[i])
                copy.write_row([intent_id, *values])
        [(inserted, updated, missing, foreign)] = tx.execute(compiled.apply)
        if missing is not None:
            tx.reject(f"table sink {sink.label}: a row names a "
                      f"{_refs(sink)} that does not exist", [UUID(str(missing))])
        if foreign is not None:
            tx.reject(f"table sink {sink.label}: the row exists under {sink.tenant} "
                      f"{foreign[1]}, not the intent's", [UUID(foreign[0])])
        out.inserted += int(inserted)
        out.updated += int(updated)
        out.unchanged += len(unique) - int(inserted) - int(updated)
    return out


def _refs(sink: TableSink) -> str:
    return " or ".join(f"{r.table} ({', '.join(r.key)})" for r in sink.columns.values()
                       if isinstance(r, Ref))
