"""Producers wait while the writer's backlog is over its bound (real Redis, no writer)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from jobplatform.backpressure import BacklogFull, Backpressure
from jobplatform.broker import Queues, build_broker
from jobplatform.emit import IntentEmitter
from jobplatform.settings import Settings, WriterSettings
from schemas import VideoProcessing


@pytest.fixture
def redis_broker(bus_settings: Settings) -> Iterator[Any]:
    assert bus_settings.redis_url is not None
    broker = build_broker(bus_settings, bus_settings.redis_url, set_global=False)
    yield broker
    broker.close()


def processing() -> VideoProcessing:
    return VideoProcessing(tenant_id=1, video_id=uuid.uuid4(), occurred_at=datetime.now(UTC))


def held(broker: Any, queue: str) -> int:
    return int(broker.client.hlen(f"{broker.namespace}:{queue}.msgs"))


def drain(broker: Any, queue: str) -> None:
    """What the writer does to the backlog, without a writer: the messages go away."""
    client: redis.Redis = broker.client
    client.delete(f"{broker.namespace}:{queue}.msgs", f"{broker.namespace}:{queue}")


def test_a_producer_waits_at_the_bound_and_goes_on_once_the_backlog_shrinks(
        redis_broker: Any, bus_settings: Settings) -> None:
    # Given a bound of 20 intents and a writer that is not consuming
    queues = Queues.from_settings(bus_settings)
    bound = Backpressure(redis_broker, max_intents=20, max_bytes=0, max_wait_s=30, check_s=0.05)
    emitter = IntentEmitter(redis_broker, queues, backpressure=bound)
    for _ in range(20):
        emitter.emit(processing())
    time.sleep(0.06)  # the reading cached before the 20th send expires
    # When one more is sent, and the backlog drains half a second later
    drainer = threading.Timer(0.5, drain, (redis_broker, queues.writes_fast))
    started = time.monotonic()
    with capture_logs() as logs:
        drainer.start()
        emitter.emit(processing())
    waited = time.monotonic() - started
    drainer.join()
    # Then the producer waited for it, said so, and sent its intent afterwards
    assert waited >= 0.45
    assert bound.waits == 1
    events = [e["event"] for e in logs]
    assert "writer backlog over its bound: the producer waits before sending" in events
    assert "writer backlog under its bound again: the producer goes on" in events
    assert held(redis_broker, queues.writes_fast) == 1


def test_the_wait_is_bounded_and_redis_holds_no_more_than_the_bound(
        redis_broker: Any, bus_settings: Settings) -> None:
    queues = Queues.from_settings(bus_settings)
    bound = Backpressure(redis_broker, max_intents=10, max_bytes=0, max_wait_s=0.3, check_s=0.05)
    emitter = IntentEmitter(redis_broker, queues, backpressure=bound)
    sent = 0
    errors: list[str] = []
    started = time.monotonic()
    for _ in range(15):
        time.sleep(0.06)  # each send sees a fresh reading
        try:
            emitter.emit(processing())
            sent += 1
        except BacklogFull as exc:
            errors.append(str(exc))
    assert sent == 10
    assert len(errors) == 5
    assert all("WRITER_BACKLOG_MAX_INTENTS=10" in e for e in errors)
    assert held(redis_broker, queues.writes_fast) == 10
    assert time.monotonic() - started >= 5 * 0.3


def test_the_bytes_bound_counts_the_bodies(redis_broker: Any, bus_settings: Settings) -> None:
    queues = Queues.from_settings(bus_settings)
    bound = Backpressure(redis_broker, max_intents=0, max_bytes=8 * 1024, max_wait_s=0.2,
                         check_s=0.0)
    emitter = IntentEmitter(redis_broker, queues, backpressure=bound)
    def fill() -> None:
        for _ in range(200):  # ~600 bytes a message: the bound is reached within ~15
            emitter.emit(processing())

    with pytest.raises(BacklogFull):
        fill()
    reading = bound.reading((queues.writes_fast, queues.writes_bulk), fresh=True)
    assert reading.bytes is not None
    assert 8 * 1024 <= reading.bytes < 32 * 1024
    assert reading.intents < 60


def test_the_reading_is_cached_for_the_check_interval(redis_broker: Any,
                                                       bus_settings: Settings) -> None:
    queues = Queues.from_settings(bus_settings)
    bound = Backpressure(redis_broker, max_intents=1000, max_bytes=0, max_wait_s=1, check_s=60)
    emitter = IntentEmitter(redis_broker, queues, backpressure=bound)
    emitter.emit(processing())
    lanes = queues.lanes_for(1)
    first = bound.reading(lanes)
    for _ in range(5):
        emitter.emit(processing())
    assert bound.reading(lanes) is first
    assert bound.reading(lanes, fresh=True).intents == 6


def test_settings_turn_it_off_with_both_bounds_at_zero(redis_broker: Any) -> None:
    off = WriterSettings(backlog_max_intents=0, backlog_max_bytes=0)
    assert Backpressure.from_settings(redis_broker, off) is None
    on = Backpressure.from_settings(redis_broker, WriterSettings())
    assert on is not None
    assert on.max_intents == 200_000
