from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest

from jobplatform.broker import build_broker
from jobplatform.publish import Publisher
from jobplatform.s3 import ensure_bucket, s3_client
from jobplatform.settings import Settings, load_settings


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
def bus_settings(
    tmp_path: Path, redis_url: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings with Redis and S3 only: the publish client needs no database."""
    for key in ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("S3_BUCKET", f"jp-test-{uuid.uuid4().hex[:10]}")
    return load_settings(
        redis_url=redis_url,
        broker_namespace=f"jptest-{uuid.uuid4().hex[:8]}",
        jobplatform_state_dir=tmp_path / "state",
    )


@pytest.fixture
def bus(bus_settings: Settings) -> Iterator[dramatiq.Broker]:
    assert bus_settings.redis_url is not None
    broker = build_broker(bus_settings, bus_settings.redis_url, set_global=False)
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def publisher(bus_settings: Settings, bus: dramatiq.Broker) -> Publisher:
    client = s3_client(bus_settings)
    ensure_bucket(client, bus_settings.s3.bucket)
    return Publisher(bus_settings, broker=bus, s3=client)
