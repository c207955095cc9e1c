from __future__ import annotations

from typing import Any

import dramatiq
import pytest

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
def publisher(settings: Settings, broker: dramatiq.Broker) -> Publisher:
    client = s3_client(settings)
    ensure_bucket(client, settings.s3.bucket)
    return Publisher(settings, broker=broker, s3=client)
