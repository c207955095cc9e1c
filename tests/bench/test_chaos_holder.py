"""The chaos harness finds the active writer by the writer lock's holder, and by nothing else."""

from __future__ import annotations

import psycopg

from bench import chaos
from writer.migrate import _MIGRATION_LOCK


def test_a_writer_migrating_in_an_older_session_is_not_taken_for_the_lock_holder(
        database_url: str) -> None:
    harness = chaos.Chaos(chaos.ChaosConfig(seed=1), lambda _: None)
    harness.admin_url = database_url
    with psycopg.connect(database_url, autocommit=True) as migrating, \
            psycopg.connect(database_url, autocommit=True) as holder:
        # a writer starting: the migrations' lock, in a session older than the holder's
        migrating.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        assert harness.holder_port() is None
        holder.execute("SELECT pg_advisory_lock(%s)", (chaos.LOCK_KEY,))
        row = holder.execute("SELECT inet_client_port()").fetchone()
        assert row is not None
        assert row[0] is not None, "the test needs a TCP connection"
        assert harness.holder_port() == row[0]
