"""The writer's metrics endpoint, scraped during a real run and checked against PostgreSQL
and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from jobplatform.settings import Settings
from schemas.intents import AnyIntent
from tests.scrape import get, scrape, value
from tests.writer.conftest import WriterThread, emit_all, scalar, wait_until
from tests.writer.intent_factory import chunks, queued, ready, roster_status, student
from writer.metrics import WriterMetrics


def test_scrape_matches_the_database_and_redis(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    url = settings.database_url
    assert url is not None
    fast, bulk = settings.queue_writes_fast, settings.queue_writes_bulk
    # Given a backlog on both lanes and a writer serving metrics
    videos = [uuid.uuid4() for _ in range(30)]
    import_id = uuid.uuid4()
    intents: list[AnyIntent] = [*map(queued, videos), *map(ready, videos),
                                roster_status(import_id, "parsing"),
                                *chunks(import_id, [student(n) for n in range(900)], 300)]
    emit_all(broker, settings, intents)
    metrics = WriterMetrics()
    runner = start_writer(hooks=[metrics])
    server = metrics.serve(runner.writer, port=0)
    try:
        wait_until(lambda: int(scalar(url, "SELECT count(*) FROM writer_ledger")) == len(intents),
                   message="every intent applied")
        wait_until(lambda: runner.writer.get_stats()["acks"] == len(intents),
                   message="every message acked")
        # When it is scraped, idle
        samples = scrape(server.port)
        stats = runner.writer.get_stats()

        # Then the counters are the database's and the writer's own
        ledger = int(scalar(url, "SELECT count(*) FROM writer_ledger"))
        assert value(samples, "jobplatform_writer_applied_total") == ledger == stats["applied"]
        assert value(samples, "jobplatform_writer_acks_total") == len(intents)
        assert value(samples, "jobplatform_writer_rows_total") == sum(i.weight() for i in intents)
        assert value(samples, "jobplatform_writer_dead_total") == scalar(
            url, "SELECT count(*) FROM writer_dead_letters") == 0
        # the hook saw every commit
        assert value(samples, "jobplatform_writer_commit_seconds_count") == stats["batches"] == \
            value(samples, "jobplatform_writer_batch_intents_count")
        assert value(samples, "jobplatform_writer_batch_intents_sum") == len(intents)
        assert value(samples, "jobplatform_writer_intents_applied_total") == ledger
        assert value(samples, "jobplatform_writer_coalesced_total") == stats["coalesced"] > 0
        # and the lanes are what Redis holds: empty, so the lag is 0
        for lane in (fast, bulk):
            assert value(samples, "jobplatform_writer_backlog", queue=lane, state="ready") == \
                broker.client.llen(f"{broker.namespace}:{lane}") == 0
            assert value(samples, "jobplatform_writer_backlog", queue=lane, state="unacked") == 0
            assert value(samples, "jobplatform_writer_backlog", queue=lane, state="dead") == 0
        assert value(samples, "jobplatform_writer_lag_seconds") == 0
        assert value(samples, "jobplatform_writer_active") == 1
        assert value(samples, "jobplatform_writer_role", role="active") == 1
        assert value(samples, "jobplatform_writer_db_connections") == 1
        backend = int(scalar(url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
                                  "AND granted AND database = (SELECT oid FROM pg_database "
                                  "WHERE datname = current_database())"))
        assert value(samples, "jobplatform_writer_info", name=runner.writer.name,
                     backend_pid=str(backend)) == 1
        assert value(samples, "jobplatform_writer_db_budget") == settings.writer.db_budget
        assert get(server.port, "/readyz") == (200, "active\n")
        assert get(server.port, "/healthz")[0] == 200

        # When messages wait that no writer takes (the writer is stopped)
        runner.stop()
        more = [queued(uuid.uuid4()) for _ in range(7)]
        emit_all(broker, settings, more)
        samples = scrape(server.port)
        # Then the backlog and the lag say so, and the writer is no longer ready
        assert value(samples, "jobplatform_writer_backlog", queue=fast, state="ready") == \
            broker.client.llen(f"{broker.namespace}:{fast}") == 7
        assert value(samples, "jobplatform_writer_lag_seconds") > 0
        assert value(samples, "jobplatform_writer_active") == 0
        assert get(server.port, "/readyz") == (503, "stopped\n")
    finally:
        server.close()


def test_a_standby_with_a_connection_is_ready(
    settings: Settings, start_writer: Callable[..., WriterThread]
) -> None:
    active = start_writer()
    wait_until(lambda: active.writer.active, message="the first writer active")
    standby = start_writer()
    wait_until(lambda: standby.writer.stats.role == "standby", message="a standby")
    metrics = WriterMetrics()
    server = metrics.serve(standby.writer, port=0)
    try:
        wait_until(lambda: standby.writer.backend_pid is not None, message="its connection")
        assert get(server.port, "/readyz") == (200, "standby with a live connection\n")
        samples = scrape(server.port)
        assert value(samples, "jobplatform_writer_role", role="standby") == 1
        assert value(samples, "jobplatform_writer_active") == 0
    finally:
        server.close()
