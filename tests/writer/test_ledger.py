from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from jobplatform.errors import ConfigError
from jobplatform.settings import Settings, load_settings
from tests.writer.conftest import WriterThread, emit_all, query, scalar, wait_until
from tests.writer.intent_factory import queued, ready
from writer import ledger, lock
from writer.db import connect

KEY = 0x5EED


def _insert_ledger(url: str, rows: int, age: str) -> None:
    query(url, "INSERT INTO writer_ledger (intent_id, batch_seq, applied_at)"
               " SELECT gen_random_uuid(), 0, now() - %s::interval"
               " FROM generate_series(1, %s) RETURNING 1", [age, rows])


def _aged(url: str, older_than: str) -> int:
    return int(scalar(url, "SELECT count(*) FROM writer_ledger"
                           " WHERE applied_at < now() - %s::interval", [older_than]))


def test_prune_deletes_at_most_limit_rows_past_the_retention(database_url: str) -> None:
    # Given 25 ids past a 30-day retention and 10 inside it
    _insert_ledger(database_url, 25, "31 days")
    _insert_ledger(database_url, 10, "29 days")

    with connect(database_url, autocommit=True) as conn:
        # When pruning 10 at a time until nothing is deleted
        counts = []
        while True:
            deleted = ledger.prune(conn, lock_key=KEY, retention_days=30,
                                   statement_timeout_ms=5000, limit=10)
            counts.append(deleted)
            if deleted == 0:
                break

    # Then each transaction deleted at most the limit, and only expired ids went
    assert counts == [10, 10, 5, 0]
    assert _aged(database_url, "30 days") == 0
    assert scalar(database_url, "SELECT count(*) FROM writer_ledger") == 10


def test_prune_refuses_while_another_session_holds_the_lock(database_url: str) -> None:
    _insert_ledger(database_url, 3, "40 days")
    with connect(database_url, autocommit=True) as holder, \
            connect(database_url, autocommit=True) as conn:
        assert lock.try_acquire(holder, KEY)
        with pytest.raises(lock.LockLost):
            ledger.prune(conn, lock_key=KEY, retention_days=30, statement_timeout_ms=5000)
    assert scalar(database_url, "SELECT count(*) FROM writer_ledger") == 3


def test_running_writer_prunes_expired_ids_and_keeps_recent_ones(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    # Given more expired ids than one prune transaction deletes, and ids inside the retention
    url = settings.database_url
    assert url is not None
    expired = ledger.PRUNE_ROWS + 1500
    _insert_ledger(url, expired, "8 days")
    _insert_ledger(url, 40, "6 days")

    # When a writer with a 7-day retention and a tiny prune interval applies new intents
    video = uuid.uuid4()
    emit_all(broker, settings, [queued(video), ready(video)])
    runner = start_writer(ledger_retention_days=7, ledger_prune_interval_s=0.05)
    wait_until(lambda: runner.writer.get_stats()["ledger_pruned"] == expired,
               message="every expired id pruned")
    wait_until(lambda: runner.writer.get_stats()["acks"] == 2, message="both intents acked")
    runner.stop()

    # Then only the expired ids are gone; recent ones and the new intents' ids stay
    assert _aged(url, "7 days") == 0
    assert _aged(url, "5 days") == 40
    assert scalar(url, "SELECT count(*) FROM writer_ledger") == 42
    assert scalar(url, "SELECT status FROM videos WHERE id = %s", [video]) == "ready"


@pytest.mark.parametrize(("variable", "value"), [
    ("WRITER_LEDGER_RETENTION_DAYS", "0"),
    ("WRITER_LEDGER_RETENTION_DAYS", "a month"),
    ("WRITER_LEDGER_PRUNE_INTERVAL_S", "0"),
])
def test_bad_retention_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_retention_settings_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().writer.ledger_retention_days == 30
    monkeypatch.setenv("WRITER_LEDGER_RETENTION_DAYS", "1")
    monkeypatch.setenv("WRITER_LEDGER_PRUNE_INTERVAL_S", "2.5")
    writer = load_settings().writer
    assert (writer.ledger_retention_days, writer.ledger_prune_interval_s) == (1, 2.5)
