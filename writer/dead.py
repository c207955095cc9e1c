"""Dead letters: intents the writer could not apply, kept with the reason.

Functions on a connection; they run in the caller's transaction (or in autocommit).
``jobplatform dead`` lists, shows, re-drives and drops them.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import class_row

from jobplatform.kinds import Kind, Outcome, Registry
from schemas import BaseIntent, DecodeError

Conn = psycopg.Connection[Any]

_COLUMNS = "id, intent_id, kind, tenant_id, queue, body, reason, failed_at, retried_at"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    intent_id: UUID | None
    kind: str | None
    tenant_id: int | None
    queue: str
    body: str
    """The message body as received, so it can be re-driven unchanged."""
    reason: str
    failed_at: datetime
    retried_at: datetime | None


def record(conn: Conn, queue: str, body_text: str, reason: str, intent_id: UUID | None = None,
           kind: str | None = None, tenant_id: int | None = None,
           message_id: str | None = None) -> int:
    """Store one dead intent; returns its id.

    ``message_id`` is the broker's id of the message it came from: a message already recorded
    (the writer died between recording it and acking it, and the broker redelivered it) keeps
    its one letter, whose id is returned.
    """
    row = conn.execute(
        "INSERT INTO writer_dead_letters (intent_id, kind, tenant_id, queue, body, reason,"
        " message_id) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (message_id) DO NOTHING RETURNING id",
        (intent_id, kind, tenant_id, queue, body_text, reason, message_id),
    ).fetchone()
    if row is None:
        row = conn.execute("SELECT id FROM writer_dead_letters WHERE message_id = %s",
                           (message_id,)).fetchone()
    assert row is not None
    return int(row[0])


def recorded(conn: Conn, message_ids: Iterable[str | None]) -> set[str]:
    """Which of ``message_ids`` have a dead letter already."""
    wanted = [m for m in message_ids if m is not None]
    if not wanted:
        return set()
    rows = conn.execute("SELECT message_id FROM writer_dead_letters WHERE message_id = ANY(%s)",
                        (wanted,)).fetchall()
    return {str(row[0]) for row in rows}


def list(conn: Conn, limit: int = 50, offset: int = 0,
         kind: str | None = None) -> builtins.list[DeadLetter]:
    """Dead letters, newest first, optionally of one intent kind."""
    with conn.cursor(row_factory=class_row(DeadLetter)) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM writer_dead_letters"  # noqa: S608 - a constant
            " WHERE %(kind)s::text IS NULL OR kind = %(kind)s::text"
            " ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s",
            {"kind": kind, "limit": limit, "offset": offset},
        ).fetchall()


def get(conn: Conn, id: int) -> DeadLetter | None:
    """One dead letter, or None."""
    with conn.cursor(row_factory=class_row(DeadLetter)) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM writer_dead_letters WHERE id = %s",  # noqa: S608
            (id,),
        ).fetchone()


def drop(conn: Conn, id: int) -> bool:
    """Delete one dead letter; False when there was none."""
    return conn.execute("DELETE FROM writer_dead_letters WHERE id = %s", (id,)).rowcount == 1


def mark_retried(conn: Conn, id: int) -> bool:
    """Note that the dead letter was sent again (it is kept); False when there was none."""
    cur = conn.execute(
        "UPDATE writer_dead_letters SET retried_at = clock_timestamp() WHERE id = %s", (id,)
    )
    return cur.rowcount == 1


def redrive(conn: Conn, letters: builtins.list[DeadLetter],
            registry: Registry) -> builtins.list[tuple[Kind, Outcome]]:
    """In the caller's transaction: mark ``letters`` retried and run each decoded intent's
    ``Kind.redriven`` hook (the roster's import takes back its status). Returns the kinds'
    outcomes, for their after-commit work. Send the bodies only once this has committed."""
    from writer.engine.batch import run_kind_hook
    from writer.engine.handlers import resolve

    registry = resolve(registry)
    groups: dict[str, tuple[Kind, builtins.list[BaseIntent]]] = {}
    for letter in letters:
        mark_retried(conn, letter.id)
        try:
            intent = registry.decode_intent(letter.body)
        except DecodeError:
            continue
        kind = registry.kind_for(intent.kind)
        if kind is not None and kind.redriven is not None:
            groups.setdefault(kind.name, (kind, []))[1].append(intent)
    outcomes = []
    for kind, intents in groups.values():
        assert kind.redriven is not None
        outcome = run_kind_hook(conn, kind, kind.redriven, intents)
        if outcome is not None:
            outcomes.append((kind, outcome))
    return outcomes
