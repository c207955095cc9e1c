"""The write-intent log across a crash of PostgreSQL, on a private server."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobplatform.settings import Settings
from tests.writer.conftest import WriterProcess, WriterThread, emit_all, query, wait_until
from tests.writer.intent_factory import queued
from tests.writer.private_pg import private_postgres
from writer.intentlog import IntentLog, LogReader, replay_log
from writer.migrate import upgrade

VIDEOS = "SELECT id, status, source_key, queued_at FROM videos ORDER BY id"


def test_a_batch_number_reused_after_a_postgresql_crash_is_replayed_like_the_database(
    settings: Settings, broker: Any, tmp_path: Path, database_url: str,
    writer_process: Callable[..., WriterProcess], start_writer: Callable[..., WriterThread],
) -> None:
    # The sequence's WAL stays in memory until a commit flushes it (not on a timer).
    with private_postgres("fsync=off", "wal_writer_delay=10000ms") as pg:
        upgrade(pg.url)
        log_dir = tmp_path / "intent-log"
        intents = [queued(uuid.uuid4()) for _ in range(40)]
        emit_all(broker, settings, intents[:15])

        # Given a writer of batches of 5 whose 3rd batch is logged, then PostgreSQL crashes
        # (and the writer's host with it) before that batch's COMMIT
        crash = [*pg.as_user, str(pg.bin_dir / "pg_ctl"), "stop", "-D", str(pg.data),
                 "-m", "immediate", "-w"]
        faulty = writer_process(
            "faulty", ("-m", "tests.writer.faulty_writer"), DATABASE_URL=pg.url,
            WRITER_LOG_DIR=str(log_dir), WRITER_BATCH_MAX_INTENTS="5", FAULT_AT="append",
            FAULT_BATCH="3", FAULT_CHECKPOINT_URL=pg.url, FAULT_COMMAND=json.dumps(crash))
        assert faulty.proc.wait(60) == -signal.SIGKILL, faulty.output()[-3000:]
        pg.stop()
        with LogReader([log_dir]) as reader:
            uncommitted = list(reader.records())[-1]
        assert len(uncommitted.intents) == 5

        # When PostgreSQL recovers, it hands that batch's number out again
        pg.start()
        last, called = query(pg.url, "SELECT last_value, is_called FROM writer_batch_seq")[0]
        assert last + int(called) == uncommitted.seq
        # and a writer takes over with more queued meanwhile, in bigger batches
        emit_all(broker, settings, intents[15:])
        runner = start_writer(database_url=pg.url, log_writer=IntentLog(log_dir),
                              batch_max_intents=50)
        wait_until(lambda: query(pg.url, "SELECT count(*) FROM writer_ledger") == [(40,)],
                   message="every intent applied")
        runner.stop()
        live = query(pg.url, VIDEOS)

    # Then replay equals the live database
    with LogReader([log_dir]) as reader:
        summary = replay_log(database_url, reader)
        seqs = [record.seq for record in reader.records()]
    assert len(live) == 40
    assert query(database_url, VIDEOS) == live
    assert summary.intents_applied == 40
    # and the log holds both batches of that number, the committed one last
    assert seqs.count(uncommitted.seq) == 2


def test_records_sharing_a_number_are_kept_in_append_order_old_ones_without_id_too(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime, timedelta

    from writer.intentlog import encode_record
    from writer.intentlog.reader import LogFilter
    from writer.intentlog.replay import ReplaySummary, last_occurrences, planned

    a, b, c = (queued(uuid.uuid4()) for _ in range(3))
    t0 = datetime(2024, 3, 1, 9, tzinfo=UTC)
    # Given a batch 7 logged but never committed (a, b), in the segment of the writer that
    # crashed, and the committed batch 7 after PostgreSQL's recovery (b, c), written before
    # records had an id (the older format)
    (tmp_path / "00000000000000000006-w1.jsonl").write_bytes(
        encode_record(6, "w1", t0, [c]) + encode_record(7, "w1", t0 + timedelta(seconds=1),
                                                        [a, b]))
    (tmp_path / "00000000000000000007-w2.jsonl").write_bytes(
        encode_record(7, "w2", t0 + timedelta(seconds=9), [b, c]))
    # and a copy of the first segment in a second folder
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "00000000000000000006-w1.jsonl").write_bytes(
        (tmp_path / "00000000000000000006-w1.jsonl").read_bytes())

    # When the log is read
    with LogReader([tmp_path, copy]) as reader:
        records = list(reader.records())
    # Then each record comes once, both of number 7, the one appended last last
    assert [(r.seq, r.writer) for r in records] == [(6, "w1"), (7, "w1"), (7, "w2")]
    # and replay applies b and c where the committed batch has them
    plan = list(planned(records, last_occurrences(records), LogFilter(), ReplaySummary()))
    assert [[i.intent_id for i in r.intents] for r in plan] == [[a.intent_id],
                                                                [b.intent_id, c.intent_id]]
