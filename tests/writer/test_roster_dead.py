"""A roster import whose chunk goes to the dead letters fails at once, and comes back when the
chunk is re-driven (real PostgreSQL, Redis, writer and CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobplatform.progress import ProgressStore
from jobplatform.settings import Settings
from schemas.jobs import roster_job_id
from tests.writer.conftest import WriterThread, emit_all, query, scalar, wait_until
from tests.writer.intent_factory import LECTURE, chunk, chunks, roster_status, student
from writer.db import connect

ROOT = Path(__file__).resolve().parents[2]


def _import_row(url: str, import_id: uuid.UUID) -> tuple[Any, ...]:
    """``(status, dead_intents, error, chunks_applied)``, or ``(None,)`` before the row exists."""
    rows = query(url, "SELECT status, dead_intents, error, chunks_applied FROM roster_imports"
                      " WHERE id = %s", [import_id])
    return tuple(rows[0]) if rows else (None,)


def test_a_dead_lettered_chunk_fails_its_import_and_a_retry_brings_it_back(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    url = str(settings.database_url)
    progress = ProgressStore(broker.client, settings.broker_namespace)
    # Given the import's lecture already owned by another tenant
    with connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO lectures (id, tenant_id, created_at) VALUES (%s, 99, now())",
                     (LECTURE,))
    import_id = uuid.uuid4()
    job_id = roster_job_id(import_id)
    rows = [student(n) for n in range(40)]
    # When the import's status and chunks reach the writer
    emit_all(broker, settings, [roster_status(import_id, "parsing"), *chunks(import_id, rows, 20)])
    runner = start_writer()
    wait_until(lambda: scalar(url, "SELECT count(*) FROM writer_dead_letters") == 2,
               message="both chunks dead-lettered")
    # Then the import is failed with the reason, in its table and its progress record
    status, dead, error, applied = _import_row(url, import_id)
    assert (status, dead, applied) == ("failed", 2, 0)
    assert "belongs to tenant 99, not to tenant 7" in error
    record = progress.get(job_id)
    assert record["step"] == "failed"
    assert "belongs to tenant 99" in record["error"]
    # and the actor's later `writing` does not make it look alive again
    progress.update(job_id, step="writing")
    emit_all(broker, settings, [roster_status(import_id, "writing", seconds=5, chunks=2)])
    wait_until(lambda: progress.get(job_id)["step"] == "failed", message="failed again")
    assert _import_row(url, import_id)[0] == "failed"

    # When an operator fixes the data and re-drives the dead chunks
    with connect(url, autocommit=True) as conn:
        conn.execute("UPDATE lectures SET tenant_id = 7 WHERE id = %s", (LECTURE,))
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": str(settings.redis_url),
           "BROKER_NAMESPACE": settings.broker_namespace,
           "JOBPLATFORM_STATE_DIR": str(settings.jobplatform_state_dir)}  # the test's key
    out = subprocess.run([sys.executable, "-m", "jobplatform", "dead", "retry", "--all"],
                         env=env, capture_output=True, text=True, cwd=ROOT, check=True)
    assert "re-sent 2 dead intent(s)" in out.stdout
    # Then the import is written to the end and done, in the table and for status()
    wait_until(lambda: _import_row(url, import_id)[0] == "done", message="import done")
    assert _import_row(url, import_id) == ("done", 0, None, 2)
    wait_until(lambda: progress.get(job_id)["step"] == "done", message="progress done")
    assert scalar(url, "SELECT count(*) FROM enrollments") == 40
    runner.stop()


def test_a_dead_chunk_of_another_tenants_import_leaves_that_import_alone(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    url = str(settings.database_url)
    # Given tenant 7's import, written and done
    import_id = uuid.uuid4()
    emit_all(broker, settings, [roster_status(import_id, "writing", chunks=1),
                                chunk(import_id, 0, [student(1)])])
    runner = start_writer()
    wait_until(lambda: _import_row(url, import_id)[0] == "done", message="done")
    # When a chunk naming that import but another tenant (and its lecture) is dead-lettered
    emit_all(broker, settings, [chunk(import_id, 1, [student(2)], tenant=8)])
    wait_until(lambda: scalar(url, "SELECT count(*) FROM writer_dead_letters") == 1,
               message="the foreign chunk dead-lettered")
    runner.stop()
    # Then tenant 7's import is untouched
    assert _import_row(url, import_id) == ("done", 0, None, 1)
