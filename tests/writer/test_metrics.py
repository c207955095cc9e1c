"""The writer's metrics endpoint, scraped during a real run and checked against PostgreSQL
and Redis."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobplatform.settings import Settings
from schemas.intents import AnyIntent
from tests.promql import Unsupported, fires
from tests.scrape import Samples, get, scrape, value
from tests.writer.conftest import WriterThread, emit_all, scalar, wait_until
from tests.writer.intent_factory import chunks, queued, ready, roster_status, student
from writer.metrics import WriterMetrics

ROOT = Path(__file__).parents[2]


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
        # the stage times are the stats' (which moved no further while idle but for polls)
        assert value(samples, "jobplatform_writer_stage_seconds_total", stage="copy") == \
            stats["time_s"]["copy"] > 0
        # and the lanes are what Redis holds: empty, so the lag is 0
        for lane in (fast, bulk):
            assert value(samples, "jobplatform_writer_backlog", queue=lane, state="ready") == \
                broker.client.llen(f"{broker.namespace}:{lane}") == 0
            assert value(samples, "jobplatform_writer_backlog", queue=lane, state="unacked") == 0
            assert value(samples, "jobplatform_writer_backlog", queue=lane, state="dead") == 0
        assert value(samples, "jobplatform_writer_lag_seconds") == 0
        assert value(samples, "jobplatform_writer_active") == 1
        assert value(samples, "jobplatform_writer_role", role="active") == 1
        # its own connection and the fast lane's (it applied the video statuses)
        assert value(samples, "jobplatform_writer_db_connections") == 2 == int(scalar(
            url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                 " AND application_name LIKE 'jobplatform-writer%%'"))
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


def _rules() -> dict[str, str]:
    document = yaml.safe_load((ROOT / "ops" / "prometheus-rules.yml").read_text())
    return {rule["alert"]: rule["expr"] for group in document["groups"]
            for rule in group["rules"]}


def test_alert_rules_evaluated_against_a_real_scrape(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    rules = _rules()
    # The rule file names each alert of the checklist
    assert set(rules) == {"JobplatformNoActiveWriter", "JobplatformWriterLagHigh",
                          "JobplatformDeadLetters", "JobplatformDbBudgetExceeded",
                          "JobplatformDbConnectionsHigh", "JobplatformCommitP99High"}
    evaluable = {"JobplatformNoActiveWriter", "JobplatformWriterLagHigh",
                 "JobplatformDbBudgetExceeded", "JobplatformCommitP99High"}
    # Given a writer that applied some status changes, scraped while active
    metrics = WriterMetrics()
    runner = start_writer(hooks=[metrics])
    server = metrics.serve(runner.writer, port=0)
    try:
        emit_all(broker, settings, [queued(uuid.uuid4()) for _ in range(20)])
        wait_until(lambda: runner.writer.get_stats()["acks"] == 20, message="acked")
        samples = scrape(server.port)
        # Then no alert fires
        assert {name for name in evaluable if fires(rules[name], samples)} == set()
        # and the p99 rule reads the same figure as the writer's own stats
        assert value(samples, "jobplatform_writer_commit_p99_seconds") == pytest.approx(
            runner.writer.get_stats()["commit_ms_p99"] / 1000)
        # When the writer stops (its process still answering the scrape)
        runner.stop()
        samples = scrape(server.port)
        # Then "no active writer" fires, and only it
        assert {name for name in evaluable if fires(rules[name], samples)} == {
            "JobplatformNoActiveWriter"}
    finally:
        server.close()


def test_the_evaluator_refuses_what_it_cannot_read() -> None:
    with pytest.raises(Unsupported):
        fires(_rules()["JobplatformDeadLetters"], {})
    assert fires("max(x - y) > 0", {("x", frozenset()): 2.0, ("y", frozenset()): 1.0})
    assert not fires("max(x - y) > 0", {("x", frozenset()): 1.0, ("y", frozenset()): 1.0})


def test_the_dashboard_plots_metrics_the_endpoints_serve(
    settings: Settings, start_writer: Callable[..., WriterThread]
) -> None:
    dashboard = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text())
    names = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"\b(jobplatform_[a-z0-9_]+)", target["expr"])}
    metrics = WriterMetrics()
    runner = start_writer(hooks=[metrics])
    server = metrics.serve(runner.writer, port=0)
    try:
        # once active, the writer serves the database's connections too
        samples = _scrape_until(server.port, lambda s: any(
            name == "jobplatform_database_max_connections" for name, _ in s), "active")
        served = {sample for sample, _ in samples}
    finally:
        server.close()
    actor = {"jobplatform_actor_jobs_total", "jobplatform_actor_failures_total",
             "jobplatform_actor_dead_letters_total", "jobplatform_actor_duration_seconds_bucket",
             "jobplatform_queue_messages"}  # served by actor workers (tests/jobplatform)
    assert names - served - actor == set()


def test_the_intent_log_state_is_scraped(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    from writer.intentlog import IntentLog

    url = settings.database_url
    assert url is not None
    log = IntentLog.from_settings(settings)
    metrics = WriterMetrics()
    runner = start_writer(hooks=[metrics], log_writer=log)
    server = metrics.serve(runner.writer, port=0)
    try:
        emit_all(broker, settings, [queued(uuid.uuid4()) for _ in range(15)])
        wait_until(lambda: runner.writer.get_stats()["acks"] == 15, message="acked")
        samples = scrape(server.port)
        ledger = int(scalar(url, "SELECT count(*) FROM writer_ledger"))
        assert value(samples, "jobplatform_writer_intent_log_intents_total") == ledger == 15
        assert value(samples, "jobplatform_writer_intent_log_segments_opened_total") == \
            log.get_stats()["segments_opened"] >= 1
    finally:
        server.close()


def _crowd(url: str, n: int, **params: Any) -> list[Any]:
    import psycopg

    return [psycopg.connect(url, autocommit=True, application_name="crowd", **params)
            for _ in range(n)]


def _scrape_until(port: int, predicate: Callable[[Samples], bool], message: str) -> Samples:
    def ready() -> Samples | None:
        samples = scrape(port)
        return samples if predicate(samples) else None

    found: Samples = wait_until(ready, message=message)
    return found


def _connections(samples: Samples, **labels: str) -> float:
    return sum(v for (name, found), v in samples.items()
               if name == "jobplatform_database_connections"
               and set(labels.items()) <= set(found))


@pytest.mark.slow
def test_database_connections_are_counted_against_max_and_alerted(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    from bench._instance import EmulatedInstance, InstanceConfig
    from writer.db import APPLICATION_NAME
    from writer.migrate import upgrade

    rule = _rules()["JobplatformDbConnectionsHigh"]
    # Given a PostgreSQL server of its own with max_connections 10 (none reserved), its active
    # writer serving metrics, and 2 idle connections of another application
    config = InstanceConfig(cpu_quota=None, max_connections=10,
                            extra=(("superuser_reserved_connections", "0"),))
    with EmulatedInstance(config) as instance:
        url = instance.create_database("app")
        upgrade(url)
        metrics = WriterMetrics(connections_interval_s=0.1)
        runner = start_writer(database_url=url, hooks=[metrics])
        server = metrics.serve(runner.writer, port=0)
        crowd = _crowd(url, 2)
        try:
            # When it is scraped
            samples = _scrape_until(server.port, lambda s: _connections(
                s, application="crowd") == 2, "the crowd counted")
            # Then the server's client connections are there by state and application: the
            # crowd idle, the writer's own connection busy counting them
            assert value(samples, "jobplatform_database_connections", state="idle",
                         application="crowd") == 2
            assert value(samples, "jobplatform_database_connections", state="active",
                         application=APPLICATION_NAME) == 1
            assert _connections(samples) == 3
            assert value(samples, "jobplatform_database_max_connections") == 10
            assert value(samples, "jobplatform_database_reserved_connections") == 0
            assert value(samples, "jobplatform_database_connections_age_seconds") < 5
            assert not fires(rule, samples)
            # and what the server itself lists, counted from one of the crowd
            [row] = crowd[0].execute("SELECT count(*) FROM pg_stat_activity"
                                     " WHERE backend_type = 'client backend'").fetchall()
            assert row[0] == 3

            # When 6 more connect: 9 of 10, over 0.8 x max_connections
            crowd += _crowd(url, 6)
            samples = _scrape_until(server.port, lambda s: _connections(
                s, application="crowd") == 8, "the larger crowd counted")
            # Then the alert fires on the writer's figures alone
            assert _connections(samples) == 9
            assert fires(rule, samples)

            # When the writer stops, it no longer reports a count (a standby or a stopped
            # writer would add to the active one's)
            runner.stop()
            samples = scrape(server.port)
            assert _connections(samples) == 0
            assert not fires(rule, samples)
        finally:
            server.close()
            for conn in crowd:
                conn.close()
            if runner.thread.is_alive():
                runner.stop()


def test_connection_labels_are_bounded() -> None:
    from writer.metrics import MAX_APPLICATIONS, ConnectionSample, _WriterCollector

    # Given a server with more applications than the label limit
    counts = {("idle", f"app{n:02d}"): 100 - n for n in range(MAX_APPLICATIONS + 5)}
    counts[("active", "app00")] = 1
    metrics = WriterMetrics()
    metrics._connections = ConnectionSample(counts, 100, 3, time.monotonic())
    collector = _WriterCollector.__new__(_WriterCollector)
    collector.metrics = metrics
    [family, *_] = list(collector._database())
    # Then the most connected keep their names, the rest add up under "other", nothing lost
    apps = {sample.labels["application"] for sample in family.samples}
    assert len(apps) == MAX_APPLICATIONS + 1
    assert "app00" in apps
    assert "other" in apps
    assert sum(sample.value for sample in family.samples) == sum(counts.values())
