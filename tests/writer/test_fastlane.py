"""The fast lane on its own connection: status changes commit while a bulk transaction is in
flight, and the writer's guarantees (one active writer, the ledger, the log's order) hold
across its two connections."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobplatform.settings import Settings
from schemas.intents import AnyIntent
from tests.writer.conftest import WriterThread, emit_all, query, scalar, wait_until
from tests.writer.intent_factory import chunks, queued, ready, roster_status, student
from writer import lock
from writer.db import connect
from writer.engine.fastlane import FAST_APPLICATION_NAME
from writer.intentlog import IntentLog, LogReader

KEY = 0x6A6F62706C6174


def _ledger(url: str, ids: list[uuid.UUID]) -> int:
    return int(scalar(url, "SELECT count(*) FROM writer_ledger WHERE intent_id = ANY(%s)",
                      [ids]))


def test_status_changes_commit_while_a_bulk_transaction_waits_and_the_log_keeps_commit_order(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread], tmp_path: Path
) -> None:
    url = settings.database_url
    assert url is not None
    log = IntentLog(tmp_path / "log")
    runner = start_writer(log_writer=log)
    wait_until(lambda: runner.writer.active, message="the writer is active")
    # Given a bulk transaction in flight that cannot finish: another session holds a lock
    # the roster's upsert of students needs
    blocker = psycopg.connect(url)
    blocker.execute("LOCK TABLE students IN SHARE ROW EXCLUSIVE MODE")
    import_id = uuid.uuid4()
    bulk: list[AnyIntent] = list(chunks(import_id, [student(n) for n in range(300)], 300))
    emit_all(broker, settings, bulk)
    wait_until(lambda: scalar(url, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type"
                                   " = 'Lock' AND datname = current_database()"),
               message="the bulk transaction waiting on the lock")
    # When status changes arrive meanwhile
    videos = [uuid.uuid4() for _ in range(5)]
    fast: list[AnyIntent] = [*map(queued, videos), *map(ready, videos)]
    emit_all(broker, settings, fast)
    # Then they commit on the fast lane's connection while the bulk transaction still waits
    wait_until(lambda: _ledger(url, [i.intent_id for i in fast]) == len(fast),
               message="the status changes committed")
    assert _ledger(url, [i.intent_id for i in bulk]) == 0
    assert scalar(url, "SELECT count(*) FROM videos WHERE status = 'ready'") == 5
    # and the writer holds two connections: its own (waiting) and the fast lane's
    names = sorted(r[0] for r in query(
        url, "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
             " AND application_name LIKE 'jobplatform-writer%%'", ()))
    assert names == ["jobplatform-writer", FAST_APPLICATION_NAME]
    # When the lock is released, the bulk transaction commits too
    blocker.close()
    wait_until(lambda: _ledger(url, [i.intent_id for i in bulk]) == len(bulk),
               message="the chunk committed")
    runner.stop()
    # Then the log holds every intent once, in commit order: the bulk batch, which began
    # first, committed last and carries the highest number (renumbered at its commit)
    records = list(LogReader([tmp_path / "log"]).records())
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs)
    logged = [i.intent_id for r in records for i in r.intents]
    assert sorted(map(str, logged)) == sorted(str(i.intent_id) for i in [*fast, *bulk])
    assert {i.intent_id for i in records[-1].intents} == {i.intent_id for i in bulk}
    [(ledger_seq,)] = query(url, "SELECT DISTINCT batch_seq FROM writer_ledger"
                                 " WHERE intent_id = %s", [bulk[0].intent_id])
    assert ledger_seq == records[-1].seq


def test_a_fast_lane_transaction_applies_only_while_its_writer_holds_the_lock(
    database_url: str,
) -> None:
    with connect(database_url, autocommit=True) as holder, \
            connect(database_url, autocommit=True) as fast, \
            connect(database_url, autocommit=True) as other:
        # Given a writer's session holding the lock
        assert lock.try_acquire(holder, KEY)
        pid = holder.info.backend_pid
        # Then its fast lane may begin a transaction, naming that session
        with fast.transaction():
            assert lock.begin_fast(fast, KEY, pid, 1000) > 0
            lock.guard_fast(fast, KEY, pid)
        # but not in the name of another session
        with pytest.raises(lock.LockLost, match="no longer held"), fast.transaction():
            lock.begin_fast(fast, KEY, other.info.backend_pid, 1000)
        # When the writer's session ends and another takes the lock
        holder.close()
        assert lock.try_acquire(other, KEY)
        # Then the old writer's fast lane applies nothing
        with pytest.raises(lock.LockLost), fast.transaction():
            lock.begin_fast(fast, KEY, pid, 1000)


def test_a_writer_taking_over_waits_for_fast_lane_transactions_in_flight(
    database_url: str,
) -> None:
    with connect(database_url, autocommit=True) as old, \
            connect(database_url, autocommit=True) as fast, \
            connect(database_url, autocommit=True) as successor:
        assert lock.try_acquire(old, KEY)
        # Given an old writer's fast-lane transaction in flight
        fast.execute("BEGIN")
        lock.begin_fast(fast, KEY, old.info.backend_pid, 5000)
        # When a successor bars the fast lanes while it commits soon after
        finished = threading.Event()

        def commit_soon() -> None:
            finished.wait(0.3)
            fast.execute("COMMIT")

        thread = threading.Thread(target=commit_soon)
        thread.start()
        assert lock.bar_fast_lanes(successor, KEY, wait_ms=5000) == []
        thread.join()
        # Then the barrier returned only once that transaction had ended
        assert fast.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        fast_pid = fast.info.backend_pid
        # When one stays open (its writer stopped in the middle of it)
        fast.execute("BEGIN")
        lock.begin_fast(fast, KEY, old.info.backend_pid, 5000)
        # Then the successor ends that session after waiting, and goes on
        assert lock.bar_fast_lanes(successor, KEY, wait_ms=200) == [fast_pid]
        with pytest.raises(psycopg.OperationalError):
            fast.execute("SELECT 1")


def test_with_the_fast_connection_off_the_writer_holds_one_connection(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    url = settings.database_url
    assert url is not None
    import_id = uuid.uuid4()
    intents: list[AnyIntent] = [
        roster_status(import_id, "parsing"),
        *chunks(import_id, [student(n) for n in range(200)], 100),
        roster_status(import_id, "writing", chunks=2, total=200, valid=200),
        *map(queued, [uuid.uuid4() for _ in range(3)]),
    ]
    emit_all(broker, settings, intents)
    runner = start_writer(fast_connection=False)
    wait_until(lambda: _ledger(url, [i.intent_id for i in intents]) == len(intents),
               message="every intent applied")
    assert runner.writer.backend_pids == [runner.writer.backend_pid]
    assert scalar(url, "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                       " current_database() AND application_name LIKE 'jobplatform-writer%%'",
                  ()) == 1
    runner.stop()
    assert scalar(url, "SELECT status FROM roster_imports WHERE id = %s", [import_id]) == "done"


def test_when_the_writers_session_dies_its_fast_lane_stops_and_a_writer_goes_on(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    url = settings.database_url
    assert url is not None
    # Given an active writer with its standby, applying a stream of status changes
    active = start_writer()
    wait_until(lambda: active.writer.active, message="the first writer is active")
    standby = start_writer()
    wait_until(lambda: standby.writer.stats.role == "standby", message="a standby")
    sent: list[AnyIntent] = []
    stop = threading.Event()

    def send() -> None:
        while not stop.wait(0.005):
            intent = queued(uuid.uuid4())
            emit_all(broker, settings, [intent])
            sent.append(intent)

    # A daemon, stopped in any case: a failing wait must not leave it sending forever.
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(sent) > 50, message="status changes flowing")
        # When the active writer's own session is killed
        pid = active.writer.backend_pid
        assert pid is not None
        scalar(url, "SELECT pg_terminate_backend(%s)", [pid])
        # Either takes the lock next: the standby polling it, or the first writer on a new
        # session.
        wait_until(lambda: standby.writer.active or (
            active.writer.active and pid not in active.writer.backend_pids),
            message="a writer active again on a live session")
        wait_until(lambda: len(sent) > 150, message="more status changes")
    finally:
        stop.set()
        sender.join()
    # Then the killed session's fast lane applied nothing in its name, one writer is active,
    # and every status change is applied once, by one writer or the other
    wait_until(lambda: [active.writer.active, standby.writer.active].count(True) == 1,
               message="one active writer")
    wait_until(lambda: _ledger(url, [i.intent_id for i in sent]) == len(sent),
               message="every status change applied")
    assert scalar(url, "SELECT count(*) FROM videos") == len(sent)
    assert pid not in active.writer.backend_pids
