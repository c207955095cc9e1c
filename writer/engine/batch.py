"""One batch of intents applied inside the caller's transaction, kind by kind.

The caller opens the transaction, takes the writer's advisory transaction lock and
``nextval('writer_batch_seq')``, calls :func:`apply_batch` once, and commits (or rolls back on
an error). :func:`prepare` does the work that needs no database beforehand.

Order of work: the ledger (ids already applied are skipped; each applied id is recorded in the
same transaction as its effect), then each kind's plan, through its ``apply``, in the
registry's order. An intent whose kind has no handler fails the batch as bad data: it is
isolated and dead-lettered, never recorded as applied.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NoReturn
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from jobplatform.kinds import Kind, Outcome, Registry
from schemas import BaseIntent
from writer import faults
from writer.engine.handlers import resolve
from writer.errors import ApplyError, DataApplyError, DatabaseUnavailable

Conn = psycopg.Connection[Any]


# --- statements ----------------------------------------------------------------------------

def parse_statements(text: str) -> dict[str, str]:
    """The named statements of a ``.sql`` file (``-- name: x`` blocks), comment lines removed."""
    found: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        found[name.strip()] = "\n".join(lines).strip()
    return found


_STATEMENTS: dict[str, dict[str, str]] = {}


def statements(source: Path | Traversable | None) -> dict[str, str]:
    """The named statements of ``source``, read once per process."""
    if source is None:
        return {}
    key = str(source)
    found = _STATEMENTS.get(key)
    if found is None:
        found = _STATEMENTS[key] = parse_statements(source.read_text(encoding="utf-8"))
    return found


def _engine_statements() -> dict[str, str]:
    return statements(resources.files("writer.engine") / "engine.sql")


# --- the transaction a kind sees -----------------------------------------------------------

class KindTransaction:
    """:class:`jobplatform.kinds.Transaction` on the writer's open transaction."""

    __slots__ = ("_composed", "_conn", "_cur", "_kind", "_result", "_statements")

    def __init__(self, conn: Conn, cur: psycopg.Cursor[Any], kind: Kind,
                 result: BatchResult) -> None:
        self._conn = conn
        self._cur = cur
        self._kind = kind
        self._result = result
        self._statements = statements(kind.sql)
        self._composed: dict[tuple[str, tuple[tuple[str, str], ...]], sql.Composed] = {}

    @property
    def batch_seq(self) -> int:
        return self._result.batch_seq

    @property
    def connection(self) -> Conn:
        return self._conn

    def _query(self, name: str, identifiers: Mapping[str, str]) -> sql.Composed:
        key = (name, tuple(sorted(identifiers.items())))
        found = self._composed.get(key)
        if found is None:
            text = self._statements.get(name)
            if text is None:
                where = self._kind.sql or "no .sql file"
                raise KeyError(f"kind {self._kind.name!r} has no statement {name!r} ({where})")
            found = sql.SQL(text).format(
                **{k: sql.Identifier(*v.split(".")) for k, v in identifiers.items()})
            self._composed[key] = found
        return found

    def run(self, name: str, params: Mapping[str, Any] | None = None,
            **identifiers: str) -> list[tuple[Any, ...]]:
        return self.execute(self._query(name, identifiers), params)

    def execute(self, query: sql.SQL | sql.Composed, params: Mapping[str, Any] | None = None
                ) -> list[tuple[Any, ...]]:
        result = self._result
        result.statements += 1
        started = time.perf_counter()
        cur = self._cur
        cur.execute(query, params)
        found = cur.fetchall() if cur.description is not None else []
        result.timings["statements"] += time.perf_counter() - started
        return found

    def copy(self, name: str, rows: Iterable[Sequence[Any]], *, types: Sequence[str],
             **identifiers: str) -> None:
        result = self._result
        result.statements += 1
        started = time.perf_counter()
        with self._cur.copy(self._query(name, identifiers)) as copy:
            copy.set_types(list(types))
            if faults.armed():
                rows = list(rows)
                for row in rows[:len(rows) // 2]:
                    copy.write_row(row)
                faults.reached("mid_copy")
                rows = rows[len(rows) // 2:]
            for row in rows:
                copy.write_row(row)
        result.timings["copy"] += time.perf_counter() - started

    def reject(self, reason: str, intents: Iterable[BaseIntent | UUID] = ()) -> NoReturn:
        ids = [i.intent_id if isinstance(i, BaseIntent) else i for i in intents]
        raise DataApplyError(reason, ids)

    def check_tenants(self, table: str, key: str, tenant: str,
                      claims: Iterable[tuple[Any, int, Sequence[BaseIntent | UUID]]]) -> None:
        wanted: dict[Any, tuple[int, Sequence[BaseIntent | UUID]]] = {}
        for value, claimed, intents in claims:
            wanted.setdefault(value, (claimed, []))
            if wanted[value][0] != claimed:
                self.reject(f"{table} {value} is claimed for tenants {wanted[value][0]} and "
                            f"{claimed} in one batch", [*wanted[value][1], *intents])
            wanted[value] = (claimed, [*wanted[value][1], *intents])
        if not wanted:
            return
        query = sql.SQL("SELECT {key}, {tenant} FROM {table} WHERE {key} = ANY(%(keys)s)").format(
            key=sql.Identifier(key), tenant=sql.Identifier(tenant),
            table=sql.Identifier(*table.split(".")))
        for value, owner in self.execute(query, {"keys": list(wanted)}):
            claimed, intents = wanted[value]
            if owner != claimed:
                self.reject(f"{table} {value} belongs to tenant {owner}, not to tenant {claimed}"
                            " named by the intent", intents)


# --- the batch -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KindWork:
    """One kind's share of a batch: its intents (arrival order) and its plan of them."""

    kind: Kind
    intents: tuple[BaseIntent, ...]
    plan: Any


@dataclass(frozen=True, slots=True)
class Prepared:
    """The part of a batch made before its transaction: ids deduplicated, kinds planned."""

    intents: tuple[BaseIntent, ...]
    """Unique intents in arrival order."""
    duplicates: int
    """Intents dropped because their id came earlier in the same input."""
    work: tuple[KindWork, ...]
    unhandled: tuple[BaseIntent, ...] = ()
    """Intents of kinds without a handler (or unknown to the registry)."""


@dataclass(slots=True)
class BatchResult:
    """What :func:`apply_batch` applied; ``applied`` is in apply order, for the intent log."""

    batch_seq: int
    applied: list[UUID] = field(default_factory=list)
    duplicates: int = 0
    """Intents skipped: repeated in the batch or already in the ledger (redeliveries)."""
    coalesced: int = 0
    """Intents folded into another intent's change."""
    unchanged: int = 0
    """Rows already present and identical: nothing written."""
    rows: int = 0
    """Rows the applied intents carried (their weights)."""
    statements: int = 0
    """Statements sent to the server (a COPY counts as one)."""
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    """Each kind's outcome, by kind name."""
    timings: dict[str, float] = field(
        default_factory=lambda: {"ledger": 0.0, "copy": 0.0, "statements": 0.0, "kinds": 0.0})
    """Seconds spent on the ledger claim, the kinds' COPY statements, their other statements
    and their own Python between them (the stages of :data:`writer.stats.STAGES`)."""

    def outcome(self, kind: str) -> Any:
        """The outcome of kind ``kind`` (its own :class:`~jobplatform.kinds.Outcome` subclass),
        or None when the batch held none of its intents."""
        return self.outcomes.get(kind)


def unique_intents(intents: Iterable[BaseIntent]) -> tuple[list[BaseIntent], int]:
    """The intents with repeated ids dropped (first kept), and how many were dropped."""
    seen: set[UUID] = set()
    unique: list[BaseIntent] = []
    dropped = 0
    for intent in intents:
        if intent.intent_id in seen:
            dropped += 1
            continue
        seen.add(intent.intent_id)
        unique.append(intent)
    return unique, dropped


def prepare(intents: Iterable[BaseIntent], registry: Registry | None = None) -> Prepared:
    """Deduplicate ``intents`` (arrival order) and make each kind's plan; no database."""
    registry = resolve(registry)
    unique, duplicates = unique_intents(intents)
    return _plan(unique, duplicates, registry)


def _plan(unique: Sequence[BaseIntent], duplicates: int, registry: Registry) -> Prepared:
    groups: dict[str, list[BaseIntent]] = {}
    unhandled: list[BaseIntent] = []
    kind_for = registry.kind_for
    last_kind, last_group = "", None
    for intent in unique:
        if intent.kind == last_kind and last_group is not None:
            last_group.append(intent)
            continue
        kind = kind_for(intent.kind)
        if kind is None or kind.apply is None:
            unhandled.append(intent)
            last_group = None
            continue
        group = groups.get(kind.name)
        if group is None:
            group = groups[kind.name] = []
        group.append(intent)
        last_kind, last_group = intent.kind, group
    work = tuple(
        KindWork(kind, tuple(groups[kind.name]), kind.plan(groups[kind.name]))
        for kind in registry.kinds if kind.name in groups
    )
    return Prepared(tuple(unique), duplicates, work, tuple(unhandled))


def apply_batch(conn: Conn, intents: Iterable[BaseIntent] | Prepared, *, batch_seq: int,
                registry: Registry | None = None) -> BatchResult:
    """Apply ``intents`` (in arrival order) in the caller's open transaction.

    ``intents`` may be :func:`prepare` d already (coalescing needs no database): the plans are
    used as they are when the ledger claims every intent, and made again from the fresh ones
    otherwise (a redelivery).

    Raises :class:`DataApplyError` when the data is wrong for the database (roll back and split
    the batch; ``intent_ids`` names the culprits when known), :class:`DatabaseUnavailable` when
    PostgreSQL is unreachable or cancelled the work (roll back, retry later), and
    :class:`ApplyError` for any other database error.
    """
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        raise ValueError("apply_batch needs an open transaction (autocommit is on, none is open)")
    registry = resolve(registry)
    prepared = intents if isinstance(intents, Prepared) else prepare(intents, registry)
    if prepared.unhandled:
        first = prepared.unhandled[0]
        kind = registry.kind_for(first.kind)
        reason = registry.unknown(first.kind) if kind is None else (
            f"kind {kind.name!r} registers intent kind {first.kind!r} without an apply handler")
        raise DataApplyError(reason, [i.intent_id for i in prepared.unhandled])
    try:
        return _apply(conn, prepared, batch_seq, registry)
    except ApplyError:
        raise
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        raise DataApplyError(_describe(exc)) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise DatabaseUnavailable(_describe(exc)) from exc
    except psycopg.Error as exc:
        raise ApplyError(_describe(exc)) from exc


def _apply(conn: Conn, prepared: Prepared, batch_seq: int, registry: Registry) -> BatchResult:
    result = BatchResult(batch_seq=batch_seq, duplicates=prepared.duplicates)
    unique = prepared.intents
    if not unique:
        return result
    cur = conn.cursor()
    result.statements += 1
    timings = result.timings
    started = time.perf_counter()
    cur.execute(_engine_statements()["claim_intents"],
                {"ids": [i.intent_id for i in unique], "batch_seq": batch_seq})
    claimed = {row[0] for row in cur.fetchall()}
    timings["ledger"] += time.perf_counter() - started
    if len(claimed) == len(unique):
        fresh, work = unique, prepared.work
    else:
        fresh = tuple(i for i in unique if i.intent_id in claimed)
        work = _plan(fresh, 0, registry).work if fresh else ()
    result.duplicates += len(unique) - len(fresh)
    result.applied = [i.intent_id for i in fresh]
    result.rows = sum(i.weight() for i in fresh)
    for share in work:
        assert share.kind.apply is not None
        started = time.perf_counter()
        before = timings["copy"] + timings["statements"]
        outcome = share.kind.apply(KindTransaction(conn, cur, share.kind, result), share.plan)
        timings["kinds"] += (time.perf_counter() - started
                             - (timings["copy"] + timings["statements"] - before))
        if outcome is None:
            outcome = Outcome()
        result.outcomes[share.kind.name] = outcome
        result.coalesced += outcome.coalesced
        result.unchanged += outcome.unchanged
    return result


def renumber(conn: Conn, applied: Sequence[UUID]) -> int:
    """Give the open batch transaction a new, higher number: drawn now, and recorded on its
    ledger rows (``applied``). See :class:`writer.engine.apply.CommitOrder`."""
    row = conn.execute(_engine_statements()["renumber_batch"], {"ids": list(applied)}).fetchone()
    assert row is not None
    return int(row[0])


def run_kind_hook(conn: Conn, kind: Kind, hook: Callable[..., Outcome | None],
                  *args: Any) -> Outcome | None:
    """Run one of ``kind``'s hooks (``dead_lettered``, ``redriven``) in the caller's open
    transaction, with the :class:`~jobplatform.kinds.Transaction` ``apply`` gets."""
    tx = KindTransaction(conn, conn.cursor(), kind, BatchResult(batch_seq=0))
    return hook(tx, *args)


def _describe(exc: psycopg.Error) -> str:
    diag = exc.diag
    parts = [f"{type(exc).__name__}: {str(exc).strip() or diag.message_primary or ''}"]
    if diag.table_name:
        parts.append(f"table {diag.table_name}")
    if diag.constraint_name:
        parts.append(f"constraint {diag.constraint_name}")
    return "; ".join(parts)
