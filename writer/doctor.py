"""The database's checks of ``jobplatform doctor`` (see :mod:`jobplatform.doctor`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict

from jobplatform.doctor import Finding
from writer.db import APPLICATION_NAME, connect

__all__ = ["check_database", "database_clock"]

#: Connections above this share of ``max_connections`` (less the reserved ones) are an alarm.
CONNECTIONS_ALARM = 0.8


def _host_port(url: str) -> tuple[str, int]:
    if "://" in url:
        parts = urlsplit(url)
        return parts.hostname or "", parts.port or 5432
    params = conninfo_to_dict(url)
    return str(params.get("host", "")), int(params.get("port", 5432) or 5432)


def database_clock(url: str) -> float:
    """PostgreSQL's clock, seconds since the epoch."""
    with connect(url, autocommit=True, application_name=f"{APPLICATION_NAME}-doctor") as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(str(row[0]))


def check_database(url: str, *, writers: int = 2, others: int = 0,
                   fast_connection: bool = True) -> list[Finding]:
    """The formation's connections against ``max_connections``, and a pooler between the
    writer and PostgreSQL that would break its session advisory lock.

    ``writers``: writer processes (the active one and its standbys, one connection each, and
    the active one's fast lane another with ``fast_connection``); ``others``: connections of
    everything else the deployment runs (API servers, cron, ...).
    """
    out: list[Finding] = []
    with connect(url, autocommit=False, application_name=f"{APPLICATION_NAME}-doctor") as conn:
        pids = set()
        for _ in range(3):  # a transaction-pooling proxy hands out another backend each time
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            pids.add(int(str(row[0])))
            conn.commit()
        row = conn.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),"
            " (SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s)",
            (f"{APPLICATION_NAME}%",)).fetchone()
        conn.commit()
    assert row is not None
    max_connections, reserved, in_use, platform = (int(str(v)) for v in row)
    usable = max_connections - reserved
    fast = 1 if fast_connection else 0  # the active writer's fast lane
    need = writers + fast + others + 1  # and one for the CLI (db upgrade, dead, replay, doctor)
    lane = ", 1 fast lane" if fast else ""
    detail = (f"max_connections {max_connections} ({reserved} reserved): {in_use} in use now "
              f"({platform} of the platform); the formation needs {need} "
              f"({writers} writers{lane}, {others} others, 1 CLI)")
    limit = CONNECTIONS_ALARM * usable
    if need > limit or in_use > limit:
        out.append(Finding("connections", "fail", detail,
                           "Only the writer connects: stop the other connections (workers "
                           "connecting directly, idle API pools), lower pool sizes, or raise "
                           f"max_connections; keep use under {CONNECTIONS_ALARM:.0%} of "
                           f"{usable}."))
    else:
        out.append(Finding("connections", "ok", detail))

    host, port = _host_port(url)
    if len(pids) > 1:
        out.append(Finding(
            "pooler", "fail",
            f"one connection reached {len(pids)} backends in 3 transactions: a "
            "transaction-pooling proxy (PgBouncer pool_mode=transaction)",
            "Point DATABASE_URL of the writer at PostgreSQL itself, or at a session-mode "
            "pool: its session advisory lock must stay on one backend."))
    elif ".proxy-" in host and host.endswith(".rds.amazonaws.com"):
        out.append(Finding(
            "pooler", "warn", f"{host} is an RDS Proxy endpoint: the writer's session "
            "advisory lock pins its connection to one backend",
            "Connect the writer to the instance endpoint; the proxy buys nothing for one "
            "connection and pinned sessions count against its pool."))
    elif port == 6432:
        out.append(Finding(
            "pooler", "warn", "port 6432 is PgBouncer's: session pooling kept one backend "
            "here, but check pool_mode", "pool_mode = session for the writer's database."))
    else:
        out.append(Finding("pooler", "ok", "one backend per session (no transaction pooling)"))
    return out
