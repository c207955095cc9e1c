"""The built-in kinds' statements on the configured tables (:mod:`jobplatform.tables`).

The statements that touch domain tables (students, lectures, enrollments, videos) are composed
here with :mod:`psycopg.sql` from the active :class:`~jobplatform.tables.TableMap`, once per
map: real table and column names as identifiers, optional columns left out when the map does
not write them. With the built-in map they are the statements the kinds have always run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from psycopg import sql

from jobplatform.tables import Table, TableMap

__all__ = ["RosterStatements", "VideoStatements", "activate", "active", "roster_statements",
           "video_statements"]

_ACTIVE: list[TableMap] = []


def activate(tables: TableMap) -> None:
    """Make ``tables`` the map the built-in kinds write (the writer does at start)."""
    _ACTIVE[:] = [tables]


def active() -> TableMap:
    """The active map; the configured one (``WRITER_TABLES``) until :func:`activate` is called."""
    if not _ACTIVE:
        from writer.migrate import configured_tables

        _ACTIVE.append(configured_tables())
    return _ACTIVE[0]


def _t(table: Table) -> sql.Identifier:
    return sql.Identifier(table.schema, table.relname)


def _c(table: Table, logical: str, alias: str | None = None) -> sql.Composable:
    col = sql.Identifier(table.column(logical))
    return sql.SQL("{}.{}").format(sql.Identifier(alias), col) if alias else col


def _quoted(*names: str) -> str:
    """``"schema"."table"`` as text, for functions that take a name (regclass input)."""
    return ".".join('"' + n.replace('"', '""') + '"' for n in names)


def _list(items: Sequence[sql.Composable]) -> sql.Composed:
    return sql.SQL(", ").join(items)


def _row(items: Sequence[sql.Composable]) -> sql.Composable:
    """``(a, b)`` for comparison; a lone value stays bare (a one-element row is the value)."""
    return items[0] if len(items) == 1 else sql.SQL("({})").format(_list(items))


# --- roster --------------------------------------------------------------------------------

#: The session's staging table of roster rows (temporary, emptied at each commit).
STAGE_TABLE = "writer_stage"
#: Student fields a roster row carries, in the staging table's order.
STUDENT_FIELDS = ("tenant_id", "phone", "name", "parent_phone", "school", "grade", "birth_date")


@dataclass(frozen=True, slots=True)
class RosterStatements:
    ensure_lectures: sql.Composed
    """Lectures the chunks need, created (or, with ``lectures_missing = "reject"``, the
    missing ones returned); with those of another tenant."""
    upsert_roster: sql.Composed
    enroll_more: sql.Composed
    exact_imports: bool
    """Enrollments name their import (``enrollments.import_id`` is written), so the per-import
    counts come from the rows themselves; else they are attributed by lecture."""
    student_key: tuple[str, ...]


@lru_cache(maxsize=8)
def roster_statements(tables: TableMap) -> RosterStatements:
    s, e, lec = tables.students, tables.enrollments, tables.lectures
    stage = sql.Identifier(STAGE_TABLE)
    key = list(s.key)
    values = [f for f in STUDENT_FIELDS if s.has(f) and f not in key]
    on_key = sql.SQL(" AND ").join(
        sql.SQL("{} = st.{}").format(_c(s, k, "s"), sql.Identifier(k)) for k in key)
    same = sql.SQL("s.{id} IS NOT NULL").format(id=sql.Identifier(s.column("id")))
    if values:
        same = sql.SQL("{} AND {} IS NOT DISTINCT FROM {}").format(
            same, _row([_c(s, v, "s") for v in values]),
            _row([sql.SQL("st.{}").format(sql.Identifier(v)) for v in values]))
    insert_cols: list[sql.Composable] = [_c(s, "id")] + [_c(s, f) for f in key + values]
    insert_vals: list[sql.Composable] = [sql.Identifier(f)
                                         for f in ("student_id", *key, *values)]
    for stamp in ("created_at", "updated_at"):
        if s.has(stamp):
            insert_cols.append(_c(s, stamp))
            insert_vals.append(sql.Identifier("student_at"))
    sets = [sql.SQL("{} = f.{}").format(_c(s, v), sql.Identifier(v)) for v in values]
    if s.has("updated_at"):
        sets.append(sql.SQL("{} = f.student_at").format(_c(s, "updated_at")))
    changed: sql.Composable = sql.SQL("")
    changed_count: sql.Composable = sql.SQL("")
    if values:
        changed = sql.SQL("""
, changed AS (
    UPDATE {students} AS s SET {sets}
    FROM found AS f
    WHERE f.old_id IS NOT NULL AND NOT f.same AND s.{id} = f.old_id
      AND {old} IS DISTINCT FROM {new}
    RETURNING f.{counted}
)""").format(students=_t(s), sets=_list(sets), id=sql.Identifier(s.column("id")),
             counted=sql.Identifier("student_import" if e.has("import_id") else "lecture_id"),
             old=_row([_c(s, v, "s") for v in values]),
             new=_row([sql.SQL("f.{}").format(sql.Identifier(v)) for v in values]))
        changed_count = sql.SQL("\n    UNION ALL SELECT {}, 0, 1, 0 FROM changed").format(
            sql.Identifier("student_import" if e.has("import_id") else "lecture_id"))
    enroll_cols: list[sql.Composable] = [_c(e, "lecture_id"), _c(e, "student_id")]
    enroll_vals: list[sql.Composable] = [sql.Identifier("lecture_id"),
                                         sql.Identifier("student_id")]
    for name in ("import_id", "enrolled_at"):
        if e.has(name):
            enroll_cols.append(_c(e, name))
            enroll_vals.append(sql.Identifier(name))
    exact = e.has("import_id")
    # What an inserted enrollment returns to be counted: its import, or its lecture.
    counted = _c(e, "import_id") if exact else _c(e, "lecture_id")
    upsert = sql.SQL("""WITH found AS (
    SELECT st.*, s.{id} AS old_id,
           coalesce(s.{id}, nextval((SELECT pg_get_serial_sequence({students_name},
                                                                   {id_name})::regclass)))
               AS student_id,
           {same} AS same
    FROM {stage} AS st
    LEFT JOIN {students} AS s ON {on_key}
    WHERE st.student_at IS NOT NULL
), created AS (
    INSERT INTO {students} ({insert_cols})
    OVERRIDING SYSTEM VALUE
    SELECT {insert_vals} FROM found WHERE old_id IS NULL
){changed}, enrolled AS (
    INSERT INTO {enrollments} ({enroll_cols})
    SELECT {enroll_vals} FROM found WHERE old_id IS NULL
    RETURNING {counted}
), reenrolled AS (
    INSERT INTO {enrollments} ({enroll_cols})
    SELECT {enroll_vals} FROM found WHERE old_id IS NOT NULL
    ON CONFLICT ({e_key}) DO NOTHING
    RETURNING {counted}
)
SELECT counted, sum(created), sum(updated), sum(enrolled)
FROM (
    SELECT {found_counted}, 1, 0, 0 FROM found WHERE old_id IS NULL{changed_count}
    UNION ALL SELECT {counted}, 0, 0, 1 FROM enrolled
    UNION ALL SELECT {counted}, 0, 0, 1 FROM reenrolled
) AS n (counted, created, updated, enrolled)
GROUP BY counted""").format(
        id=sql.Identifier(s.column("id")), students=_t(s), students_name=sql.Literal(
            _quoted(s.schema, s.relname)), id_name=sql.Literal(s.column("id")), same=same,
        stage=stage, on_key=on_key, insert_cols=_list(insert_cols),
        insert_vals=_list(insert_vals), changed=changed, enrollments=_t(e),
        enroll_cols=_list(enroll_cols), enroll_vals=_list(enroll_vals), counted=counted,
        e_key=_list([_c(e, "lecture_id"), _c(e, "student_id")]),
        found_counted=sql.Identifier("student_import" if exact else "lecture_id"),
        changed_count=changed_count)
    more = sql.SQL("""WITH added AS (
    INSERT INTO {enrollments} ({enroll_cols})
    SELECT {more_vals}
    FROM {stage} AS st
    JOIN {students} AS s ON {on_key}
    WHERE st.student_at IS NULL
    ON CONFLICT ({e_key}) DO NOTHING
    RETURNING {counted}
)
SELECT {counted}, count(*) FROM added GROUP BY 1""").format(
        enrollments=_t(e), enroll_cols=_list(enroll_cols),
        more_vals=_list([sql.SQL("st.lecture_id"), _c(s, "id", "s")] + [
            sql.SQL("st.{}").format(sql.Identifier(n)) for n in ("import_id", "enrolled_at")
            if e.has(n)]),
        stage=stage, students=_t(s), on_key=on_key,
        e_key=_list([_c(e, "lecture_id"), _c(e, "student_id")]), counted=counted)
    return RosterStatements(
        ensure_lectures=_ensure_lectures(lec, create=tables.lectures_missing == "create"),
        upsert_roster=sql.Composed([upsert]), enroll_more=sql.Composed([more]),
        exact_imports=exact, student_key=tuple(key))


def _ensure_lectures(lec: Table, *, create: bool) -> sql.Composed:
    """Returns ``(id, wanted tenant, owner tenant or NULL)`` for each lecture that belongs to
    another tenant, or (``create`` false) does not exist."""
    added: sql.Composable = sql.SQL("")
    if create:
        added = sql.SQL(""", added AS (
    INSERT INTO {lectures} ({id}, {tenant}, {created})
    SELECT id, tenant_id, created_at FROM wanted
    ON CONFLICT ({id}) DO NOTHING
)""").format(lectures=_t(lec), id=_c(lec, "id"), tenant=_c(lec, "tenant_id"),
             created=_c(lec, "created_at"))
    # The outer query sees the rows from before this statement: a lecture created here is
    # absent from it, so "missing" is reported only when nothing creates them.
    missing = sql.SQL("l.{id} IS NULL").format(id=sql.Identifier(lec.column("id")))
    return sql.SQL("""WITH wanted AS (
    SELECT * FROM unnest(%(id)s::bigint[], %(tenant_id)s::bigint[], %(created_at)s::timestamptz[])
        AS w (id, tenant_id, created_at)
){added}
SELECT w.id, w.tenant_id, l.{tenant}
FROM wanted AS w LEFT JOIN {lectures} AS l ON l.{id} = w.id
WHERE l.{tenant} <> w.tenant_id{or_missing}""").format(
        added=added, lectures=_t(lec), id=sql.Identifier(lec.column("id")),
        tenant=sql.Identifier(lec.column("tenant_id")),
        or_missing=sql.SQL("") if create else sql.SQL(" OR {}").format(missing))


# --- video ---------------------------------------------------------------------------------

#: Video columns in the order of ``upsert_videos``' parameters, with their array types.
VIDEO_PARAMS = (
    ("id", "uuid"), ("tenant_id", "bigint"), ("status", "text"), ("attempt", "integer"),
    ("status_rank", "smallint"), ("source_key", "text"), ("hls_key", "text"),
    ("duration_s", "double precision"), ("renditions", "jsonb"), ("error", "text"),
    ("queued_at", "timestamptz"), ("started_at", "timestamptz"),
    ("finished_at", "timestamptz"), ("updated_at", "timestamptz"),
)

_STATUS_RANK = "CASE {} WHEN 'queued' THEN 0 WHEN 'processing' THEN 1 ELSE 2 END"


@dataclass(frozen=True, slots=True)
class VideoStatements:
    upsert_videos: sql.Composed
    columns: tuple[str, ...]
    """The logical columns the statement takes as parameters."""


@lru_cache(maxsize=8)
def video_statements(tables: TableMap) -> VideoStatements:
    """A row moves forward only for a strictly higher ``(attempt, status_rank)``; an outranked
    change of the same attempt still fills the fields the row lacks (``source_key``,
    ``queued_at``, ``started_at``: a late ``queued`` or ``processing`` after ``ready``).
    Attempts are bounded: a change whose run of attempts starts more than one past the row's
    attempt (or past 1, for a new video) is refused. Returns how many rows changed, the videos
    that exist under another tenant, and the first that jumps ahead (with either, nothing is
    written)."""
    v = tables.videos
    cols = [name for name, _ in VIDEO_PARAMS if v.has(name)]
    types = dict(VIDEO_PARAMS)

    vrank = sql.SQL("({}, {})").format(
        _c(v, "attempt", "v"),
        _c(v, "status_rank", "v") if v.has("status_rank")
        else sql.SQL(_STATUS_RANK).format(_c(v, "status", "v")))
    higher = sql.SQL("(EXCLUDED.{attempt}, {xrank}) > {vrank}").format(
        attempt=sql.Identifier(v.column("attempt")),
        xrank=(sql.SQL("EXCLUDED.{}").format(_c(v, "status_rank")) if v.has("status_rank")
               else sql.SQL(_STATUS_RANK).format(sql.SQL("EXCLUDED.{}").format(
                   _c(v, "status")))),
        vrank=vrank)
    same_attempt = sql.SQL("EXCLUDED.{a} = v.{a}").format(a=sql.Identifier(v.column("attempt")))

    def x(name: str) -> sql.Composable:
        return sql.SQL("EXCLUDED.{}").format(_c(v, name))

    def old(name: str) -> sql.Composable:
        return _c(v, name, "v")

    sets: list[sql.Composable] = []
    fills: list[sql.Composable] = []
    for name in cols:
        if name in ("id", "tenant_id"):
            continue
        if name in ("source_key", "queued_at", "started_at"):
            if name == "started_at":
                forward = sql.SQL(
                    "CASE WHEN {x} IS NOT NULL THEN {x} WHEN EXCLUDED.{a} = v.{a}"
                    " AND EXCLUDED.{st} <> 'queued' THEN {old} END").format(
                    x=x(name), old=old(name), a=sql.Identifier(v.column("attempt")),
                    st=sql.Identifier(v.column("status")))
            else:
                forward = sql.SQL("coalesce({}, {})").format(x(name), old(name))
            fill_when = same_attempt if name != "source_key" else sql.SQL("true")
            value = sql.SQL("CASE WHEN {higher} THEN {forward}"
                            " WHEN {old} IS NULL AND {fill_when} THEN {x} ELSE {old} END").format(
                higher=higher, forward=forward, old=old(name), fill_when=fill_when, x=x(name))
            fills.append(sql.SQL("({old} IS NULL AND {x} IS NOT NULL AND {fill_when})").format(
                old=old(name), x=x(name), fill_when=fill_when))
        else:
            value = sql.SQL("CASE WHEN {higher} THEN {x} ELSE {old} END").format(
                higher=higher, x=x(name), old=old(name))
        sets.append(sql.SQL("{} = {}").format(_c(v, name), value))
    where = higher if not fills else sql.SQL("{} OR {}").format(
        higher, sql.SQL(" OR ").join(fills))
    statement = sql.SQL("""WITH new AS (
    SELECT * FROM unnest({arrays}, %(attempt_floor)s::integer[]) AS n ({names}, attempt_floor)
), seen AS (
    SELECT n.id, n.tenant_id, n.attempt, n.attempt_floor, v.{tenant} AS owner,
           v.{attempt} AS last_attempt
    FROM new AS n LEFT JOIN {videos} AS v ON v.{id} = n.id
), foreign_tenant AS (
    SELECT id FROM seen WHERE owner <> tenant_id
), jumped AS (
    SELECT id, attempt, last_attempt FROM seen
    WHERE attempt_floor > coalesce(last_attempt, 0) + 1 LIMIT 1
), changed AS (
    INSERT INTO {videos} AS v ({real})
    SELECT {names} FROM new
    WHERE NOT EXISTS (SELECT FROM foreign_tenant) AND NOT EXISTS (SELECT FROM jumped)
    ON CONFLICT ({id}) DO UPDATE SET {sets}
    WHERE {where}
    RETURNING v.{id}
)
SELECT (SELECT count(*) FROM changed), ARRAY(SELECT id FROM foreign_tenant),
       (SELECT ARRAY[id::text, attempt::text, last_attempt::text] FROM jumped)""").format(
        arrays=_list([sql.SQL("{}::{}[]").format(sql.Placeholder(n), sql.SQL(types[n]))
                      for n in cols]),
        attempt=sql.Identifier(v.column("attempt")),
        names=_list([sql.Identifier(n) for n in cols]), videos=_t(v),
        id=sql.Identifier(v.column("id")), tenant=sql.Identifier(v.column("tenant_id")),
        real=_list([_c(v, n) for n in cols]), sets=_list(sets), where=where)
    return VideoStatements(upsert_videos=sql.Composed([statement]), columns=tuple(cols))
