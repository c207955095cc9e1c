"""Operator resets of a wedged entity: state that no honest intent can overtake any more (a
forged ``video.failed`` with a huge attempt, a forged final roster status), put back so the
next honest intent applies. Each checks the tenant and changes one row, in the table the map
names."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from writer.kinds.roster import ROSTER_PLACEHOLDER_RANK
from writer.kinds.tables import active

__all__ = ["reset_import", "reset_video"]


def reset_video(conn: psycopg.Connection[Any], video_id: UUID, tenant_id: int,
                attempt: int) -> bool:
    """The video's state goes back to "attempt ``attempt``, nothing seen yet": intents of that
    attempt (and the next) apply again. False when no such video of that tenant exists."""
    v = active().videos
    sets = [sql.SQL("{} = %(attempt)s").format(sql.Identifier(v.column("attempt")))]
    if v.has("status_rank"):
        sets.append(sql.SQL("{} = -1").format(sql.Identifier(v.column("status_rank"))))
    else:
        # The rank comes from the status: a row one attempt back takes attempt N's intents.
        sets = [sql.SQL("{} = %(attempt)s - 1").format(sql.Identifier(v.column("attempt")))]
    query = sql.SQL("UPDATE {table} SET {sets} WHERE {id} = %(id)s AND {tenant} = %(tenant)s"
                    ).format(table=sql.Identifier(v.schema, v.relname),
                             sets=sql.SQL(", ").join(sets), id=sql.Identifier(v.column("id")),
                             tenant=sql.Identifier(v.column("tenant_id")))
    with conn.transaction():
        return conn.execute(query, {"attempt": attempt, "id": video_id,
                                    "tenant": tenant_id}).rowcount == 1


def reset_import(conn: psycopg.Connection[Any], import_id: UUID, tenant_id: int) -> bool:
    """The roster import's status goes back below ``queued`` (its counts kept): the next
    honest status applies. False when no such import of that tenant exists."""
    with conn.transaction():
        return conn.execute(
            "UPDATE roster_imports SET status = 'queued', status_rank = %s, error = NULL"
            " WHERE id = %s AND tenant_id = %s AND status <> 'done'",
            (ROSTER_PLACEHOLDER_RANK, import_id, tenant_id)).rowcount == 1
