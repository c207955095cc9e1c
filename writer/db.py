"""Connections and databases: the boundary where the driver is met."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

if TYPE_CHECKING:
    from psycopg.abc import RV, PQGen

    from jobplatform.settings import WriterSettings

__all__ = [
    "APPLICATION_NAME",
    "ClientTimeout",
    "DeadlineConnection",
    "configure_writer_session",
    "connect",
    "database_name",
    "deadline",
    "drop_database",
    "ensure_database",
    "session_options",
    "with_database",
    "writer_connect_kwargs",
]

APPLICATION_NAME = "jobplatform-writer"


class ClientTimeout(psycopg.OperationalError):
    """PostgreSQL did not answer within the client-side deadline; the connection is closed."""


class DeadlineConnection(psycopg.Connection[tuple[object, ...]]):
    """A connection that waits at most :attr:`deadline_s` for the server in any one
    operation (a statement, a block of COPY data, a commit).

    psycopg otherwise waits for ever on a path that stopped forwarding without closing: the
    kernel's keepalives and ``tcp_user_timeout`` see nothing wrong while a proxy, a NAT or a
    paused peer still acknowledges the packets. Past the deadline the connection is closed
    (its state is unknown) and :class:`ClientTimeout` raised, an ``OperationalError``: the
    writer's outage handling takes it from there.
    """

    deadline_s: float | None = None

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        limit = timeout if timeout is not None else self.deadline_s
        try:
            return super().wait(gen, interval, limit)
        except psycopg.errors._WaitTimeout as exc:
            self.pgconn.finish()
            raise ClientTimeout(f"no answer from PostgreSQL within {limit:.1f} s "
                                "(client-side deadline); connection closed") from exc


@contextlib.contextmanager
def deadline(conn: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
    """A shorter client-side deadline on ``conn`` (a :class:`DeadlineConnection`) meanwhile."""
    if not isinstance(conn, DeadlineConnection):
        yield
        return
    saved = conn.deadline_s
    conn.deadline_s = seconds if saved is None else min(saved, seconds)
    try:
        yield
    finally:
        conn.deadline_s = saved


#: libpq's TCP settings on the writer's connections: a server that vanishes without closing
#: the socket is noticed in seconds (keepalives: 5 s idle, 3 probes 2 s apart; unacknowledged
#: data: 15 s).
CLIENT_TCP: dict[str, int] = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                              "keepalives_count": 3, "tcp_user_timeout": 15_000}


def writer_connect_kwargs(settings: WriterSettings, application_name: str) -> dict[str, Any]:
    """Connection parameters of the writer's sessions (its own, the fast lane's)."""
    return {"autocommit": True, "application_name": application_name, "connect_timeout": 5,
            "options": session_options(settings.db_schema), **CLIENT_TCP}


def configure_writer_session(conn: psycopg.Connection[Any], settings: WriterSettings) -> None:
    """Bound a writer session on both ends (one round trip, on a new connection).

    Client side: :attr:`DeadlineConnection.deadline_s` (``WRITER_CLIENT_TIMEOUT_MS``).
    Server side, settings any role may set for its own session: ``statement_timeout``
    (``WRITER_STATEMENT_TIMEOUT_MS``), ``idle_in_transaction_session_timeout``
    (``WRITER_FENCE_TIMEOUT_MS``: a writer hung in a transaction loses it, and its row locks),
    ``tcp_keepalives_*`` and ``tcp_user_timeout`` (the server notices a vanished writer host
    in seconds, instead of the kernel's two hours), and on PostgreSQL 14 and later
    ``client_connection_check_interval`` (a query of a client that went away stops early).
    """
    if isinstance(conn, DeadlineConnection):
        conn.deadline_s = settings.client_timeout_s
    values = {
        "statement_timeout": f"{settings.statement_timeout_ms}ms",
        "idle_in_transaction_session_timeout": f"{settings.fence_timeout_ms}ms",
        "tcp_keepalives_idle": "5",
        "tcp_keepalives_interval": "2",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "15000",
    }
    if conn.info.server_version >= 140000:
        values["client_connection_check_interval"] = "2000"
    statement = sql.SQL("SELECT {}").format(sql.SQL(", ").join(
        sql.SQL("set_config({}, {}, false)").format(sql.Literal(name), sql.Literal(value))
        for name, value in values.items()))
    conn.execute(statement)


def writer_schema() -> str:
    """The schema of the writer's own tables (``WRITER_DB_SCHEMA``)."""
    from jobplatform.settings import WriterSettings

    return WriterSettings().db_schema


def session_options(schema: str | None = None) -> str:
    """libpq ``options`` that put the writer's schema (and only it) on the search path: the
    writer's statements name its own tables unqualified and the application's qualified."""
    return f"-c search_path={schema or writer_schema()}"


def connect(url: str, *, autocommit: bool = False, application_name: str = APPLICATION_NAME,
            connect_timeout: int = 5,
            schema: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
    """One connection, tagged with ``application_name`` so the platform's sessions are
    countable, its search path the writer's schema (``schema``, ``WRITER_DB_SCHEMA`` by default)."""
    return psycopg.connect(
        url,
        autocommit=autocommit,
        application_name=application_name,
        connect_timeout=connect_timeout,
        options=session_options(schema),
    )


def database_name(url: str) -> str:
    return str(conninfo_to_dict(url).get("dbname") or "")


def with_database(url: str, dbname: str, **params: str) -> str:
    """The same server and credentials, another database (and ``params``)."""
    return make_conninfo(url, dbname=dbname, **params)


def ensure_database(url: str) -> bool:
    """Create the database ``url`` names if it does not exist; True when it was created."""
    name = database_name(url)
    if not name:
        return False
    try:
        with connect(url, autocommit=True):
            return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    with connect(with_database(url, "postgres"), autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False
    return True


def drop_database(url: str) -> None:
    name = database_name(url)
    with connect(with_database(url, "postgres"), autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))
