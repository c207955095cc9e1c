"""The benchmarks' writer process and their producers share the keys that sign intents."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import psycopg

from bench._platform import WriterProcess, shared_keys_env
from bench._workload import TENANT_ID
from jobplatform.broker import Queues, build_broker
from jobplatform.emit import IntentEmitter
from jobplatform.settings import Settings
from schemas.intents import VideoProcessing


def test_the_bench_writer_applies_what_the_bench_producers_sign(
    settings: Settings, redis_url: str
) -> None:
    # Given a bench writer process with a state folder of its own, given this process's keys
    assert settings.database_url is not None
    writer = WriterProcess(settings.database_url, redis_url, settings.broker_namespace,
                           shared_keys_env(settings))
    broker = build_broker(settings, redis_url, set_global=False)
    try:
        writer.start(settings.database_url)
        # When a producer of the benchmark emits a signed intent
        intent = VideoProcessing(tenant_id=TENANT_ID, video_id=uuid.uuid4(),
                                 occurred_at=datetime.now(UTC))
        IntentEmitter(broker, Queues.from_settings(settings)).emit(intent)
        # Then the writer applies it instead of refusing it as unauthenticated
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            applied = dead = None
            while time.monotonic() < deadline and applied is None and dead is None:
                applied = conn.execute("SELECT 1 FROM jobplatform.writer_ledger"
                                       " WHERE intent_id = %s", (intent.intent_id,)).fetchone()
                dead = conn.execute("SELECT reason FROM jobplatform.writer_dead_letters"
                                    " WHERE intent_id = %s", (intent.intent_id,)).fetchone()
                time.sleep(0.1)
        assert dead is None, dead
        assert applied is not None, writer.log()[-2000:]
    finally:
        broker.close()
        writer.close()
