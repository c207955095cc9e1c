"""Read-only queries for reports on what the platform did (the demo's summary, checks).

One :class:`Monitor` holds one autocommit connection tagged ``jobplatform-monitor``, which
:meth:`Monitor.platform_connections` leaves out of its count.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg import sql
from psycopg.rows import dict_row

from writer.db import connect, database_name
from writer.kinds.tables import active

MONITOR_APPLICATION = "jobplatform-monitor"


class Monitor:
    def __init__(self, url: str) -> None:
        self.url = url
        self.dbname = database_name(url)
        self.conn = connect(url, autocommit=True, application_name=MONITOR_APPLICATION)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _one(self, query: str, params: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            row: dict[str, Any] | None = cur.execute(query, params).fetchone()
            return row

    def platform_connections(self) -> int:
        """Client sessions open on the platform's database, monitors left out."""
        row = self._one(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = %s"
            " AND backend_type = 'client backend' AND application_name <> %s",
            (self.dbname, MONITOR_APPLICATION),
        )
        return int(row["n"]) if row else 0

    def max_connections(self) -> int:
        row = self._one("SELECT current_setting('max_connections')::int AS n")
        return int(row["n"]) if row else 0

    def roster_import(self, import_id: UUID) -> dict[str, Any] | None:
        return self._one(
            "SELECT id, status, total, valid, invalid, duplicates, chunks_expected,"
            " chunks_applied, created, updated, unchanged, enrolled, report_key, error,"
            " started_at, finished_at FROM roster_imports WHERE id = %s",
            (import_id,),
        )

    def videos(self, ids: list[UUID]) -> list[dict[str, Any]]:
        """The videos' rows, in the table the map names (columns it lacks read as NULL)."""
        v = active().videos
        wanted = ("id", "status", "hls_key", "error", "duration_s", "started_at", "finished_at")
        query = sql.SQL("SELECT {cols} FROM {table} WHERE {id} = ANY(%s) ORDER BY 1").format(
            cols=sql.SQL(", ").join(
                sql.SQL("{} AS {}").format(
                    sql.Identifier(v.column(c)) if v.has(c) else sql.NULL, sql.Identifier(c))
                for c in wanted),
            table=sql.Identifier(v.schema, v.relname), id=sql.Identifier(v.column("id")))
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, (ids,)).fetchall()

    def tenant_counts(self, tenant_id: int, lecture_id: int) -> dict[str, int]:
        """Students of the tenant and enrollments in the lecture."""
        tables = active()
        s, e = tables.students, tables.enrollments
        query = sql.SQL("SELECT (SELECT count(*) FROM {s} WHERE {tenant} = %s) AS students,"
                        " (SELECT count(*) FROM {e} WHERE {lecture} = %s) AS enrollments"
                        ).format(s=sql.Identifier(s.schema, s.relname),
                                 tenant=sql.Identifier(s.column("tenant_id")),
                                 e=sql.Identifier(e.schema, e.relname),
                                 lecture=sql.Identifier(e.column("lecture_id")))
        with self.conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(query, (tenant_id, lecture_id)).fetchone()
        return {k: int(v) for k, v in (row or {}).items()}
