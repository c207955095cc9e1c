"""The writer against real PostgreSQL and Redis: batching, ledger, poison, malformed input."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from jobplatform.broker import WRITE_INTENT, make_message
from jobplatform.settings import Settings
from schemas.intents import AnyIntent, VideoFailed, encode_intent
from tests.writer.conftest import (
    WriterThread,
    emit_all,
    held_messages,
    query,
    scalar,
    wait_until,
)
from tests.writer.intent_factory import at, chunks, queued, ready, roster_status, student


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
    wait_until(lambda: _drained(broker, settings), message="every message acked")
    stats = runner.writer.get_stats()
    runner.stop()

    # Then the rows are there, nothing is held, and the stats add up
    url = settings.database_url
    assert url is not None
    assert scalar(url, "SELECT count(*) FROM videos WHERE status = 'ready'") == 20
    assert scalar(url, "SELECT count(*) FROM students") == 1200
    assert scalar(url, "SELECT status FROM roster_imports WHERE id = %s", [import_id]) == "done"
    assert stats["role"] == "active"
    assert stats["applied"] == len(intents)
    assert stats["intents"] == len(intents)
    assert stats["rows"] == 1200
    assert stats["acks"] == len(intents)
    assert stats["batches"] >= 1
    assert stats["commit_ms_count"] == stats["batches"]
    assert 0 < stats["commit_ms_p50"] <= stats["commit_ms_max"]
    assert _dead(settings) == []


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
    for message in messages:
        broker.enqueue(message)
    # A message that is not even a dramatiq envelope, written with the broker's own command
    broker.do_enqueue(fast, str(uuid.uuid4()), b"\xff\xfe garbage")
    emit_all(broker, settings, [good])

    runner = start_writer(max_intent_bytes=900)
    wait_until(lambda: len(_dead(settings)) == 7, message="seven dead letters")
    wait_until(lambda: _ledger(settings) == 1, message="the good intent applied")
    wait_until(lambda: _drained(broker, settings), message="every message acked")
    stats = runner.writer.get_stats()
    runner.stop()

    reasons = [row[1] for row in _dead(settings)]
    expected = ["not JSON", "video.exploded", "unsupported version 9", "tenant_id",
                "exceeds WRITER_MAX_INTENT_BYTES (900)", "wrong actor 'encode_video'",
                "undecodable message"]
    for fragment in expected:
        assert sum(fragment in r for r in reasons) == 1, (fragment, reasons)
    assert stats["rejected"] == 7
    assert stats["dead"] == 7
    assert held_messages(broker, fast) == 0

