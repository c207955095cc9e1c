"""The benchmark's Redis feed: producers, an in-process writer, its commit clock."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import psycopg

from bench._feed import Commit, CommitLog, FedWriter, Producers, StatusSender
from jobplatform.settings import Settings
from schemas.intents import AnyIntent, RosterChunk, StudentRow


def _commit(*ids: uuid.UUID) -> Commit:
    return Commit(intent_ids=ids, start=0.0, end=0.01, at=datetime.now(UTC), statements=4)


def test_commit_log_waits_for_every_intent_and_keeps_the_first_commit() -> None:
    log = CommitLog()
    a, b = uuid.uuid4(), uuid.uuid4()
    first = _commit(a)
    log.record(first)
    # Nothing commits b: the wait gives up and names it.
    assert log.wait([a, b], timeout_s=0.05, poll_s=0.01) == {b}

    later = _commit(a, b)
    thread = threading.Thread(target=log.record, args=(later,))
    thread.start()
    assert log.wait([a, b], timeout_s=10) == set()
    thread.join()
    # A redelivered intent settled again keeps the commit that first settled it.
    assert log.of(a) is first
    assert log.of(b) is later
    unknown = uuid.uuid4()
    assert log.missing([a, b, unknown]) == {unknown}


def _chunks(count: int) -> list[AnyIntent]:
    import_id = uuid.uuid4()
    return [
        RosterChunk(tenant_id=1, import_id=import_id, lecture_id=7, chunk_index=n,
                    occurred_at=datetime.now(UTC),
                    rows=tuple(StudentRow(source_row=n * 10 + r + 1, name=f"S {n}-{r}",
                                          phone=f"010-{n:04d}-{r:04d}") for r in range(10)))
        for n in range(count)
    ]


def test_producers_feed_one_writer_that_clocks_every_commit(settings: Settings,
                                                             database_url: str) -> None:
    # Given a writer on a fresh namespace and four producers
    chunks = _chunks(12)
    with FedWriter(settings, database_url, intent_log=False) as fed, \
            Producers(fed.settings, 4) as producers:
        pid = fed.start()
        # When they enqueue roster chunks while video statuses arrive on the fast lane
        with StatusSender(fed.settings, 50.0, tenant_id=1) as sender:
            producers.emit(chunks)
            fed.wait([c.intent_id for c in chunks], timeout_s=60)
        assert sender.error is None
        fed.wait([i.intent_id for i in sender.sent], timeout_s=60)
        # Then every intent was committed on the one connection the writer opened
        assert fed.writer.backend_pid == pid
        clocked = {i for c in fed.clock.commits for i in c.intent_ids}
        assert {i.intent_id for i in [*chunks, *sender.sent]} <= clocked
        assert all(c.end >= c.start and c.statements > 3 for c in fed.clock.commits)
        with psycopg.connect(database_url) as conn:
            ledger = {row[0] for row in conn.execute("SELECT intent_id FROM writer_ledger")}
            students = conn.execute("SELECT count(*) FROM students").fetchone()
        assert {c.intent_id for c in chunks} <= ledger
        assert students == (120,)
