"""Replaying the write-intent log: the same tables, by natural keys and values; twice, no change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.writer.log_live import LOCK_KEY, a_busy_day, run_live, snapshot
from tests.writer.log_samples import at, encode_record_for, roster_import, student, video_lifecycle
from writer.db import connect
from writer.intentlog import LogFilter, LogReader, LogRecord, replay_log
from writer.intentlog.replay import ReplaySummary, WriterActive, last_occurrences, planned
from writer.lock import try_acquire
from writer.pytest_plugin import scratch_database


@pytest.fixture
def replica_url(database_url: str) -> Iterator[str]:
    with scratch_database(database_url, prefix="jp_replica") as url:
        yield url


@pytest.fixture
def day_log(database_url: str, tmp_path: Path) -> Path:
    """A day of batches applied by the writer's steps, logged as they committed."""
    run_live(database_url, tmp_path / "log", a_busy_day()[0])
    return tmp_path / "log"


def test_replay_into_an_empty_database_yields_the_same_tables(
    database_url: str, replica_url: str, day_log: Path
) -> None:
    # Given a day of batches applied by the writer's steps, logged as they committed
    live = snapshot(database_url)
    assert len(live["students"]) == 350 + 60
    assert {row[2] for row in live["videos"]} == {"ready", "failed"}

    # When the log is replayed into an empty, migrated database
    with LogReader([day_log]) as reader:
        summary = replay_log(replica_url, reader, lock_key=LOCK_KEY)

    # Then every table holds the same natural keys and values
    assert snapshot(replica_url) == live
    assert summary.intents_applied == len(live["ledger"])
    assert summary.intents_already_applied == 0
    assert summary.notes == []


def test_replaying_twice_changes_nothing(
    database_url: str, replica_url: str, day_log: Path
) -> None:
    with LogReader([day_log]) as reader:
        first = replay_log(replica_url, reader)
        after_first = snapshot(replica_url)
        second = replay_log(replica_url, reader)
        # Replaying into the database the log came from changes nothing either
        live_before = snapshot(database_url)
        replay_log(database_url, reader)

    assert snapshot(replica_url) == after_first
    assert snapshot(database_url) == live_before
    assert first.intents_applied > 0
    assert second.intents_applied == 0
    assert second.intents_already_applied == first.intents_applied


def test_a_batch_logged_but_never_committed_is_applied_where_it_was_redelivered(
    database_url: str, replica_url: str, tmp_path: Path
) -> None:
    # Given a batch that crashed between the log append and COMMIT; its intents come back
    # later (redelivered), after another import renamed the same student
    batches, crashed = a_busy_day()
    rename_back = roster_import(7, 9007, [student(5, name="다른이름")], 150)
    batches.insert(3, rename_back)
    batches.append(list(crashed))
    run_live(database_url, tmp_path / "log", batches, crashed_after=2, crashed=crashed)
    live = snapshot(database_url)
    assert [r[2] for r in live["students"] if r[1] == student(5).phone and r[0] == 7] == [
        "바뀐이름"]

    # When replayed
    with LogReader([tmp_path / "log"]) as reader:
        assert sum(1 for r in reader.records() for i in r.intents if i in crashed) == 2 * len(
            crashed)
        summary = replay_log(replica_url, reader)

    # Then the earlier, uncommitted occurrence is skipped and the tables match
    assert summary.intents_superseded == len(crashed)
    assert snapshot(replica_url) == live


def test_a_torn_final_record_stops_replay_at_the_last_whole_one_and_says_so(
    database_url: str, replica_url: str, day_log: Path
) -> None:
    live = snapshot(database_url)
    # A writer that died while appending its next batch (never committed)
    torn = encode_record_for(10_000, "dead:9")
    (day_log / "00000000000000010000-dead-9.jsonl").write_bytes(torn[:-40])

    with LogReader([day_log]) as reader:
        summary = replay_log(replica_url, reader)

    assert snapshot(replica_url) == live
    (note,) = summary.notes
    assert "00000000000000010000-dead-9.jsonl: truncated at line 1" in note


def test_until_and_tenant_filters(replica_url: str, day_log: Path) -> None:
    with LogReader([day_log]) as reader:
        seqs = [r.seq for r in reader.records()]
        replay_log(replica_url, reader, log_filter=LogFilter(until=seqs[1], tenant=8))

    with connect(replica_url, autocommit=True) as conn:
        tenants = conn.execute("SELECT DISTINCT tenant_id FROM students").fetchall()
        videos = conn.execute("SELECT count(*) FROM videos").fetchone()
        imports = conn.execute("SELECT status, chunks_applied FROM roster_imports").fetchall()
    assert tenants == [(8,)]
    assert videos == (0,)
    assert imports == [("parsing", 1)]  # only the first chunk of tenant 8 lies within seq 2


def test_replay_refuses_while_a_writer_holds_the_lock(database_url: str, day_log: Path) -> None:
    with connect(database_url, autocommit=True) as holder, LogReader([day_log]) as reader:
        assert try_acquire(holder, LOCK_KEY)
        with pytest.raises(WriterActive, match="stop it before replaying"):
            replay_log(database_url, reader, lock_key=LOCK_KEY)


def test_planning_keeps_the_last_occurrence_of_each_intent() -> None:
    a, b, c = video_lifecycle(1, 0)
    log = [
        LogRecord(1, "w", at(0), (a, b)),
        LogRecord(2, "w", at(1), (c,)),
        LogRecord(3, "w", at(2), (b,)),
    ]
    latest = last_occurrences(log)
    assert latest == {b.intent_id: log[2].uid}
    summary = ReplaySummary()
    kept = [(r.seq, list(r.intents)) for r in planned(log, latest, LogFilter(), summary)]
    assert kept == [(1, [a]), (2, [c]), (3, [b])]
    assert summary.intents_superseded == 1
    flt = LogFilter(kinds=frozenset({"video.ready"}))
    assert [r.seq for r in planned(log, latest, flt, ReplaySummary())] == [2]

