from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest

from jobplatform.broker import build_broker
from jobplatform.publish import Publisher
from jobplatform.s3 import ensure_bucket, s3_client
from jobplatform.settings import Settings


def drain(broker: dramatiq.Broker, queue: str) -> list[dramatiq.Message[Any]]:
    """Every message waiting on ``queue``, consumed and acked."""
    consumer = broker.consume(queue, prefetch=100, timeout=50)
    messages: list[dramatiq.Message[Any]] = []
    try:
        while (proxy := next(consumer)) is not None:
            messages.append(proxy._message)
            consumer.ack(proxy)
    finally:
        consumer.close()
    return messages


@pytest.fixture
def bus(bus_settings: Settings) -> Iterator[dramatiq.Broker]:
    assert bus_settings.redis_url is not None
    broker = build_broker(bus_settings, bus_settings.redis_url, set_global=False)
    yield broker
    if bus_settings.broker_kind == "redis":  # RabbitMQ: bus_settings deletes its queues
        broker.flush_all()
    broker.close()


@pytest.fixture
def publisher(bus_settings: Settings, bus: dramatiq.Broker) -> Publisher:
    client = s3_client(bus_settings)
    ensure_bucket(client, bus_settings.s3.bucket)
    return Publisher(bus_settings, broker=bus, s3=client)
