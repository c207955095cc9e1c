"""The writer against real PostgreSQL and each broker: batching, ledger, poison, malformed input."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from dramatiq.brokers.redis import RedisBroker

from bench._servers import TcpProxy
from jobplatform.auth import keyring_of
from jobplatform.broker import WRITE_INTENT, make_message
from jobplatform.progress import ProgressStore
from jobplatform.settings import Settings
from schemas.intents import AnyIntent, VideoFailed, encode_intent
from schemas.jobs import roster_job_id
from tests.writer.conftest import (
    WriterProcess,
    WriterThread,
    emit_all,
    held_messages,
    proxied_url,
    query,
    scalar,
    wait_until,
)
from tests.writer.intent_factory import at, chunks, queued, ready, roster_status, student
from writer import lock
from writer.db import connect
from writer.pacing import DbBudget
from writer.stats import STAGES

pytestmark = pytest.mark.brokers


def _ledger(settings: Settings) -> int:
    assert settings.database_url is not None
    return int(scalar(settings.database_url, "SELECT count(*) FROM writer_ledger"))


def _dead(settings: Settings) -> list[tuple[Any, ...]]:
    assert settings.database_url is not None
    return query(settings.database_url,
                 "SELECT kind, reason, body, queue, intent_id FROM writer_dead_letters ORDER BY id")


def _drained(broker: Any, settings: Settings) -> bool:
    return all(broker.do_qsize(q) == 0
               for q in (settings.queue_writes_fast, settings.queue_writes_bulk))


def test_applies_status_and_roster_intents_then_acks(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    # Given video status changes on the fast lane and a roster of 1,200 rows on the bulk lane
    videos = [uuid.uuid4() for _ in range(20)]
    import_id = uuid.uuid4()
    rows = [student(n) for n in range(1200)]
    intents: list[AnyIntent] = [*map(queued, videos), *map(ready, videos)]
    intents += [roster_status(import_id, "parsing"), *chunks(import_id, rows, 300),
                roster_status(import_id, "writing", chunks=4, total=1200, valid=1200)]
    emit_all(broker, settings, intents)

    # When a writer runs until both lanes are empty
    runner = start_writer()
    wait_until(lambda: _ledger(settings) == len(intents), message="every intent applied")
    # (an empty queue means every message was fetched; the acks follow the commit)
    wait_until(lambda: _drained(broker, settings)
               and runner.writer.get_stats()["acks"] == len(intents),
               message="every message acked")
    stats = runner.writer.get_stats()
    runner.stop()

    # Then the rows are there, nothing is held, and the stats add up
    url = settings.database_url
    assert url is not None
    assert scalar(url, "SELECT count(*) FROM videos WHERE status = 'ready'") == 20
    assert scalar(url, "SELECT count(*) FROM students") == 1200
    assert scalar(url, "SELECT status FROM roster_imports WHERE id = %s", [import_id]) == "done"
    # and the import's progress record says so too, for a status read without the database
    record = ProgressStore(broker.client, settings.broker_namespace).get(roster_job_id(import_id))
    assert record["step"] == "done"
    assert (record["created"], record["enrolled"], record["valid"]) == (1200, 1200, 1200)
    assert stats["role"] == "active"
    assert stats["applied"] == len(intents)
    assert stats["intents"] == len(intents)
    assert stats["rows"] == sum(i.weight() for i in intents)  # a status change weighs 1
    assert stats["acks"] == len(intents)
    assert stats["batches"] >= 1
    assert stats["commit_ms_count"] == stats["batches"]
    assert 0 < stats["commit_ms_p50"] <= stats["commit_ms_max"]
    assert _dead(settings) == []
    # and the loop's time is split by stage: every stage that ran has its share (this writer
    # keeps no intent log to encode for), the transaction's parts add up to no more than the
    # transactions
    spent = stats["time_s"]
    assert set(spent) == set(STAGES)
    assert all(spent[s] > 0 for s in ("fetch", "decode", "plan", "begin", "ledger", "copy",
                                      "statements", "commit", "ack"))
    assert spent["log_encode"] == 0
    in_transactions = sum(spent[s] for s in ("begin", "ledger", "copy", "statements", "kinds",
                                             "log", "commit"))
    assert in_transactions <= stats["commit_ms_mean"] * stats["batches"] / 1000 + 0.01


def test_redelivered_and_duplicated_intents_are_no_ops(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    # Given an intent applied once
    video = uuid.uuid4()
    first = ready(video)
    emit_all(broker, settings, [queued(video), first])
    runner = start_writer()
    wait_until(lambda: _ledger(settings) == 2, message="first delivery applied")
    url = settings.database_url
    assert url is not None
    before = query(url, "SELECT status, updated_at, hls_key FROM videos WHERE id = %s", [video])

    # When the same intent arrives again, twice, plus a late "processing" of the same attempt
    late = queued(video, seconds=5)
    emit_all(broker, settings, [first, first, late])
    wait_until(lambda: _ledger(settings) == 3, message="the late intent in the ledger")
    wait_until(lambda: _drained(broker, settings), message="every message acked")
    stats = runner.writer.get_stats()
    runner.stop()

    # Then nothing changed: the redeliveries were skipped and the late change did not win
    after = query(url, "SELECT status, updated_at, hls_key FROM videos WHERE id = %s", [video])
    assert after == before
    assert stats["skipped_duplicate"] >= 2
    assert stats["applied"] == 3


def test_poison_intent_in_a_batch_of_1000_is_dead_lettered_alone(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    # Given 999 good intents and one whose text PostgreSQL cannot store, queued before start
    videos = [uuid.uuid4() for _ in range(999)]
    poison_video = uuid.uuid4()
    poison = VideoFailed(tenant_id=7, occurred_at=at(3), video_id=poison_video,
                         reason="ffmpeg said \x00 and stopped")
    intents: list[Any] = [queued(v) for v in videos[:500]]
    intents += [poison] + [queued(v) for v in videos[500:]]
    emit_all(broker, settings, intents)

    # When the writer takes them all in one batch
    runner = start_writer(batch_max_intents=2000)
    wait_until(lambda: _ledger(settings) == 999, message="the 999 good intents applied")
    wait_until(lambda: len(_dead(settings)) == 1, message="the poison intent dead-lettered")
    wait_until(lambda: _drained(broker, settings), message="every message acked")
    stats = runner.writer.get_stats()
    runner.stop()

    # Then exactly one dead letter, with the reason and the body, and 999 rows
    [(kind, reason, body, queue, intent_id)] = _dead(settings)
    assert kind == "video.failed"
    assert intent_id == poison.intent_id
    assert "NUL" in reason or "0x00" in reason
    assert json.loads(body)["video_id"] == str(poison_video)
    assert queue == settings.queue_writes_fast
    url = settings.database_url
    assert url is not None
    assert scalar(url, "SELECT count(*) FROM videos") == 999
    assert stats["dead"] == 1
    assert stats["bisections"] >= 1
    assert stats["applied"] == 999


def test_malformed_messages_are_dead_lettered_with_reasons_and_the_writer_goes_on(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    fast = settings.queue_writes_fast
    good = queued(uuid.uuid4())
    body = encode_intent(good)
    unknown = {**body, "kind": "video.exploded", "intent_id": str(uuid.uuid4())}
    version = {**body, "schema_version": 9, "intent_id": str(uuid.uuid4())}
    no_tenant = {k: v for k, v in body.items() if k != "tenant_id"}
    no_tenant["intent_id"] = str(uuid.uuid4())
    oversize = {**body, "source_key": "x" * 1000, "intent_id": str(uuid.uuid4())}
    messages = [
        make_message(fast, WRITE_INTENT, {}).copy(args=("{not json",)),
        make_message(fast, WRITE_INTENT, unknown),
        make_message(fast, WRITE_INTENT, version),
        make_message(fast, WRITE_INTENT, no_tenant),
        make_message(fast, WRITE_INTENT, oversize),
        make_message(fast, "encode_video", body),
    ]
    for message in messages:  # signed: each is refused for what it carries
        broker.enqueue(keyring_of(broker).sign(message))
    # A message that is not even a dramatiq envelope, written with the broker's own command
    on_redis = isinstance(broker, RedisBroker)
    if on_redis:
        broker.do_enqueue(fast, str(uuid.uuid4()), b"\xff\xfe garbage")
    else:
        broker.channel.basic_publish(exchange="", routing_key=fast, body=b"\xff\xfe garbage")
    emit_all(broker, settings, [good])

    runner = start_writer(max_intent_bytes=900)
    # (on RabbitMQ, dramatiq's consumer itself moves an envelope it cannot decode to the
    # queue's dead-letter queue: the writer never sees it)
    dead = 7 if on_redis else 6
    wait_until(lambda: len(_dead(settings)) == dead, message=f"{dead} dead letters")
    wait_until(lambda: _ledger(settings) == 1, message="the good intent applied")
    wait_until(lambda: _drained(broker, settings), message="every message acked")
    stats = runner.writer.get_stats()
    runner.stop()

    reasons = [row[1] for row in _dead(settings)]
    expected = ["not JSON", "video.exploded", "unsupported version 9", "tenant_id",
                "exceeds WRITER_MAX_INTENT_BYTES (900)", "wrong actor 'encode_video'",
                "undecodable message"]
    if not on_redis:
        expected.remove("undecodable message")
        assert broker.get_queue_message_counts(fast)[2] == 1  # in the dead-letter queue
    for fragment in expected:
        assert sum(fragment in r for r in reasons) == 1, (fragment, reasons)
    assert stats["rejected"] == dead
    assert stats["dead"] == dead
    assert held_messages(broker, fast) == 0



def test_fast_intents_are_not_stuck_behind_a_bulk_backlog(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    # Given a backlog of 40,000 roster rows on the bulk lane, queued before one video change
    import_id = uuid.uuid4()
    backlog = chunks(import_id, [student(n) for n in range(40_000)], 500)
    emit_all(broker, settings, backlog)
    video = uuid.uuid4()
    fast = queued(video)
    emit_all(broker, settings, [fast])

    # When the writer starts on that backlog
    runner = start_writer()
    wait_until(lambda: _ledger(settings) == len(backlog) + 1, timeout=60,
               message="the backlog applied")
    runner.stop()

    # Then the video change was in the first batch, ahead of most of the roster
    url = settings.database_url
    assert url is not None
    first = scalar(url, "SELECT min(batch_seq) FROM writer_ledger")
    fast_seq = scalar(url, "SELECT batch_seq FROM writer_ledger WHERE intent_id = %s",
                      [fast.intent_id])
    assert fast_seq == first
    later = scalar(url, "SELECT count(*) FROM writer_ledger WHERE batch_seq > %s", [fast_seq])
    assert later >= len(backlog) // 2


def test_two_writers_never_apply_at_once_and_the_standby_takes_over(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    # Given two writers started together
    first, second = start_writer(), start_writer()
    wait_until(lambda: {first.writer.get_stats()["role"], second.writer.get_stats()["role"]}
               == {"active", "standby"}, message="one active writer and one standby")
    active, standby = (first, second) if first.writer.active else (second, first)
    url = settings.database_url
    assert url is not None
    with connect(url, autocommit=True, application_name="jobplatform-test") as conn:
        assert lock.holder_pid(conn, settings.writer.lock_key) == active.writer.backend_pid
    assert standby.writer.backend_pid is not None

    # When intents stream in
    videos = [uuid.uuid4() for _ in range(1500)]
    emit_all(broker, settings, map(queued, videos))
    wait_until(lambda: _ledger(settings) == 1500, message="first wave applied")

    # Then only the active one applied anything and the standby consumed nothing
    assert standby.writer.get_stats()["intents"] == 0
    assert standby.writer.get_stats()["role"] == "standby"
    assert active.writer.get_stats()["applied"] == 1500

    # When the active one stops, the standby takes over and applies the next wave
    active.stop()
    wait_until(lambda: standby.writer.active, timeout=10, message="the standby taking over")
    emit_all(broker, settings, [ready(v) for v in videos[:500]])
    wait_until(lambda: _ledger(settings) == 2000, message="second wave applied")
    wait_until(lambda: _drained(broker, settings), message="every message acked")
    assert standby.writer.get_stats()["applied"] == 500
    assert scalar(url, "SELECT count(*) FROM videos WHERE status = 'ready'") == 500


def _heartbeat(broker: Any, broker_id: str) -> float:
    score = broker.client.zscore(f"{broker.namespace}:__heartbeats__", broker_id)
    return float(score or 0)


def test_database_cut_mid_stream_loses_nothing_and_applies_nothing_twice(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread],
    pg_proxy: TcpProxy,
) -> None:
    # Given a writer reaching PostgreSQL through a proxy, applying a stream of intents
    assert settings.database_url is not None
    runner = start_writer(database_url=proxied_url(settings.database_url, pg_proxy))
    import_id = uuid.uuid4()
    first = chunks(import_id, [student(n) for n in range(10_000)], 500)
    emit_all(broker, settings, first)
    wait_until(lambda: _ledger(settings) >= 1, message="the stream under way")

    # When the database connection is cut while more intents arrive
    pg_proxy.cut()
    videos = [uuid.uuid4() for _ in range(300)]
    emit_all(broker, settings, [*map(queued, videos), *map(ready, videos)])
    wait_until(lambda: runner.writer.get_stats()["db_retries"] >= 2,
               message="the writer holding its batch and retrying")
    beat = _heartbeat(broker, runner.writer.broker.broker_id)
    wait_until(lambda: _heartbeat(broker, runner.writer.broker.broker_id) > beat,
               message="the broker heartbeat going on during the outage")
    held = sum(held_messages(broker, q)
               for q in (settings.queue_writes_fast, settings.queue_writes_bulk))
    assert held > 0, "the batch in hand is held, neither acked nor requeued"

    # And the database comes back
    pg_proxy.restore()
    total = len(first) + 2 * len(videos)
    wait_until(lambda: _ledger(settings) == total, timeout=60, message="everything applied")
    wait_until(lambda: _drained(broker, settings), message="every message acked")
    # The stats count a batch once its commit is acknowledged, just after the ledger shows it;
    # a commit whose answer the cut lost is retried and counted as a duplicate instead.
    def counted() -> int:
        stats = runner.writer.get_stats()
        return int(stats["applied"] + stats["skipped_duplicate"])

    wait_until(lambda: counted() >= total, message="the stats caught up")
    stats = runner.writer.get_stats()
    runner.stop()

    # Then every intent is applied exactly once, in effect
    url = settings.database_url
    assert scalar(url, "SELECT count(*) FROM students") == 10_000
    assert scalar(url, "SELECT count(*) FROM videos WHERE status = 'ready'") == 300
    assert scalar(url, "SELECT chunks_applied FROM roster_imports WHERE id = %s",
                  [import_id]) == len(first)
    assert _dead(settings) == []
    assert stats["applied"] + stats["skipped_duplicate"] == total


def _role_logged(process: WriterProcess, role: str) -> bool:
    return any(json.loads(line).get("role") == role and
               json.loads(line).get("event") == "writer role"
               for line in process.output().splitlines() if line.startswith("{"))


@pytest.mark.slow
def test_standby_takes_over_after_kill_9_of_the_active_writer(
    settings: Settings, broker: Any, writer_process: Callable[..., WriterProcess],
) -> None:
    # Given an active writer process and a standby process
    active = writer_process("a")
    wait_until(lambda: _role_logged(active, "active"), message="writer a active")
    standby = writer_process("b")
    wait_until(lambda: _role_logged(standby, "standby"), message="writer b standing by")

    # When the active writer is killed in the middle of a stream
    import_id = uuid.uuid4()
    roster = chunks(import_id, [student(n) for n in range(30_000)], 500)
    videos = [uuid.uuid4() for _ in range(500)]
    emit_all(broker, settings, [*roster, *map(queued, videos)])
    wait_until(lambda: _ledger(settings) >= 1, message="writer a applying")
    active.proc.kill()
    killed = time.monotonic()
    active.proc.wait(10)

    # Then the standby holds the lock within 5 s and finishes the stream
    wait_until(lambda: _role_logged(standby, "active"), timeout=5, interval=0.02,
               message="writer b taking over")
    takeover_s = time.monotonic() - killed
    total = len(roster) + len(videos)
    wait_until(lambda: _ledger(settings) == total, timeout=60, message="every intent applied")
    wait_until(lambda: _drained(broker, settings), message="every message acked")
    url = settings.database_url
    assert url is not None
    assert scalar(url, "SELECT count(*) FROM students") == 30_000
    assert scalar(url, "SELECT chunks_applied FROM roster_imports WHERE id = %s",
                  [import_id]) == len(roster)
    assert _dead(settings) == []
    assert standby.terminate() == 0
    print(f"takeover after kill -9: {takeover_s:.2f} s")


@pytest.mark.slow
def test_one_sigterm_stops_gracefully_and_loses_nothing(
    settings: Settings, broker: Any, writer_process: Callable[..., WriterProcess],
    start_writer: Callable[..., WriterThread],
) -> None:
    # Given a writer process in the middle of a large stream (paced, so it is still busy)
    process = writer_process("a", WRITER_DB_BUDGET="0.2")
    wait_until(lambda: _role_logged(process, "active"), message="writer active")
    import_id = uuid.uuid4()
    roster = chunks(import_id, [student(n) for n in range(50_000)], 500)
    emit_all(broker, settings, roster)
    wait_until(lambda: _ledger(settings) >= 4, message="the stream under way")

    # When it gets one SIGTERM
    assert process.terminate(signal.SIGTERM) == 0

    # Then nothing is held by anyone, the lock is free, and a new writer finishes the rest
    for queue in (settings.queue_writes_fast, settings.queue_writes_bulk):
        assert held_messages(broker, queue) == 0
    url = settings.database_url
    assert url is not None
    with connect(url, autocommit=True, application_name="jobplatform-test") as conn:
        assert lock.holder_pid(conn, settings.writer.lock_key) is None
    assert _ledger(settings) < len(roster), "stopped before the end of the stream"
    runner = start_writer()
    wait_until(lambda: _ledger(settings) == len(roster), timeout=60, message="the rest applied")
    runner.stop()
    assert scalar(url, "SELECT count(*) FROM students") == 50_000
    assert '"writer stopped"' in process.output()


def test_a_batch_that_keeps_timing_out_is_split_and_dead_lettered(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    # Given the videos table locked by someone else for longer than the statement timeout
    url = settings.database_url
    assert url is not None
    blocker = connect(url, application_name="jobplatform-test")
    blocker.execute("LOCK TABLE videos IN ACCESS EXCLUSIVE MODE")
    try:
        # When two video intents arrive
        intents = [queued(uuid.uuid4()), queued(uuid.uuid4())]
        emit_all(broker, settings, intents)
        runner = start_writer(statement_timeout_ms=100)

        # Then the writer does not retry forever: each intent ends alone in the dead letters
        wait_until(lambda: len(_dead(settings)) == 2, message="both intents dead-lettered")
        wait_until(lambda: _drained(broker, settings), message="both messages acked")
    finally:
        blocker.rollback()
        blocker.close()
    stats = runner.writer.get_stats()
    runner.stop()
    reasons = [row[1] for row in _dead(settings)]
    assert all("statement timeout" in r for r in reasons), reasons
    assert {row[4] for row in _dead(settings)} == {i.intent_id for i in intents}
    assert stats["bisections"] == 1


def test_batches_grow_while_they_fit_the_target_and_shrink_when_they_do_not(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    url = settings.database_url
    assert url is not None

    # Given a writer sized for transactions of a minute: every batch fits
    runner = start_writer(target_txn_ms=60_000, batch_min_rows=100, batch_max_rows=2000)
    first, second = uuid.uuid4(), uuid.uuid4()
    waves = {first: chunks(first, [student(n) for n in range(2400)], 200),
             second: chunks(second, [student(n) for n in range(5000, 7400)], 200)}
    # When 12 chunks of 200 rows come, its cap grows from the floor to the row limit
    emit_all(broker, settings, waves[first])
    wait_until(lambda: _ledger(settings) == 12, message="the first roster applied")
    assert runner.writer.get_stats()["batch_rows_cap"] == 2000
    # And when no transaction can meet the target any more (1 ms), it falls to the floor
    runner.writer.collector.sizer.target_ms = 1
    emit_all(broker, settings, waves[second])
    wait_until(lambda: _ledger(settings) == 24, message="the second roster applied")
    stats = runner.writer.get_stats()
    runner.stop()

    # Then after its first batch every batch of the second roster held one chunk
    sizes = [n for (n,) in query(
        url, "SELECT count(*) FROM writer_ledger WHERE intent_id = ANY(%s)"
        " GROUP BY batch_seq ORDER BY batch_seq", [[c.intent_id for c in waves[second]]])]
    assert sizes[1:] == [1] * (len(sizes) - 1)
    assert stats["batch_rows_cap"] == 100
    assert stats["ms_per_row"] > 0


def test_status_changes_do_not_wait_for_the_budget_pause_behind_bulk_work(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    # Given a writer held to 1% of the database's time, with no burst allowance, whose batches
    # have room for a roster chunk beside a status change
    runner = start_writer(db_budget=0.01, batch_max_rows=1000, target_txn_ms=60_000)
    wait_until(lambda: runner.writer.active, message="the writer active")
    runner.writer.budget = DbBudget(0.01, burst_s=0.0)
    # And a roster backlog: after its first batch the budget holds bulk work back for seconds
    roster = chunks(uuid.uuid4(), [student(n) for n in range(5000)], 500)
    emit_all(broker, settings, roster)
    wait_until(lambda: _ledger(settings) >= 1, message="the first roster batch applied")

    # When a video status change arrives during that pause
    status = queued(uuid.uuid4())
    emit_all(broker, settings, [status])
    wait_until(lambda: query(settings.database_url or "", "SELECT batch_seq FROM writer_ledger"
                             " WHERE intent_id = %s", [status.intent_id]),
               message="the status change applied")
    stats = runner.writer.get_stats()
    runner.stop()

    # Then it was applied in a batch of its own, while the roster still waited
    url = settings.database_url
    assert url is not None
    [(seq,)] = query(url, "SELECT batch_seq FROM writer_ledger WHERE intent_id = %s",
                     [status.intent_id])
    assert scalar(url, "SELECT count(*) FROM writer_ledger WHERE batch_seq = %s", [seq]) == 1
    assert _ledger(settings) < len(roster) + 1
    # And its time still counts in the measured share
    assert stats["batches"] >= 2
    assert stats["db_share"] > 0
