"""The actor on a real dramatiq worker: message in, HLS in S3, intents out, retries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from rich.console import Console

from actors.video import register
from jobplatform.auth import keyring_of
from jobplatform.broker import ENCODE_VIDEO, make_message
from jobplatform.publish import Publisher
from jobplatform.settings import Settings
from schemas.intents import AnyIntent, VideoFailed, VideoReady
from tests.actors.conftest import put_source, read_intents, video_job
from tests.actors.video.test_pipeline import closed_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def worker(broker: dramatiq.Broker, video_settings: Settings) -> Iterator[Worker]:
    # Only the video queue: the intents stay on writes.fast for the test to read.
    worker = Worker(broker, queues={video_settings.queue_video}, worker_threads=1,
                    worker_timeout=100)
    yield worker
    worker.stop()


def signed(broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> dramatiq.Message[Any]:
    """``message`` signed as the publish client signs (the actors refuse it otherwise)."""
    return keyring_of(broker).sign(message)


def dead_letters(broker: RedisBroker, queue: str) -> int:
    count: int = broker.client.hlen(f"{broker.namespace}:{queue}.XQ.msgs")
    return count


def terminal(found: list[AnyIntent]) -> bool:
    return any(isinstance(i, VideoReady | VideoFailed) for i in found)


def test_published_job_is_encoded_by_the_worker(
    broker: dramatiq.Broker, video_settings: Settings, s3: S3Client, clips: dict[str, Path],
    worker: Worker,
) -> None:
    actor = register(broker, video_settings)
    assert (actor.actor_name, actor.queue_name) == (ENCODE_VIDEO, video_settings.queue_video)
    job = video_job(attempt=3)
    put_source(s3, video_settings, job, clips["av"])
    publisher = Publisher(video_settings, broker=broker, s3=s3)

    publisher.publish(job)
    worker.start()
    found = read_intents(broker, video_settings.queue_writes_fast, until=terminal)

    # The publish client's queued intent, then the actor's two, at the job's attempt
    assert [(i.kind, getattr(i, "attempt", None)) for i in found] == [
        ("video.queued", 3), ("video.processing", 3), ("video.ready", 3)]
    status = publisher.status(job)
    assert (status.state, status.percent) == ("done", 100.0)


def test_transient_failure_is_retried_and_the_last_attempt_reports_it(
    broker: RedisBroker, video_settings: Settings, worker: Worker,
) -> None:
    # S3 is down; video_settings allow one retry with a short backoff
    s3_down = video_settings.s3.model_copy(
        update={"endpoint_url": f"http://127.0.0.1:{closed_port()}"})
    register(broker, video_settings.model_copy(update={"s3": s3_down}))
    job = video_job()

    broker.enqueue(signed(broker, make_message(video_settings.queue_video, ENCODE_VIDEO,
                                               job.model_dump(mode="json"), job_id=job.job_id)))
    worker.start()
    found = read_intents(broker, video_settings.queue_writes_fast, until=terminal)

    assert [(i.kind, getattr(i, "attempt", None)) for i in found] == [
        ("video.processing", 1), ("video.processing", 2), ("video.failed", 2)]
    assert isinstance(found[-1], VideoFailed)
    assert "S3 unavailable" in found[-1].reason
    # The message was not dead-lettered: the failure is reported, not raised
    assert dead_letters(broker, video_settings.queue_video) == 0


def test_a_message_that_is_not_a_video_job_is_dead_lettered(
    broker: RedisBroker, video_settings: Settings, worker: Worker,
) -> None:
    register(broker, video_settings)
    broker.enqueue(signed(broker, make_message(video_settings.queue_video, ENCODE_VIDEO,
                                               {"kind": "nope"})))
    worker.start()
    broker.join(video_settings.queue_video)
    worker.join()
    assert dead_letters(broker, video_settings.queue_video) == 1
    assert read_intents(broker, video_settings.queue_writes_fast) == []


def test_an_invalid_job_with_readable_ids_is_recorded_as_failed(
    broker: RedisBroker, video_settings: Settings, worker: Worker,
) -> None:
    # Given a job whose ids are fine but whose source key is not allowed
    register(broker, video_settings)
    job = video_job()
    payload = job.model_dump(mode="json") | {"source_key": "/etc/passwd"}
    broker.enqueue(signed(broker, make_message(video_settings.queue_video, ENCODE_VIDEO,
                                               payload, job_id=job.job_id)))
    worker.start()
    # Then the writer is told it failed, with the decode error as the reason
    [failed] = read_intents(broker, video_settings.queue_writes_fast, until=terminal)
    assert isinstance(failed, VideoFailed)
    assert (failed.video_id, failed.tenant_id) == (job.video_id, job.tenant_id)
    assert "source_key" in failed.reason
    # And its status says so, and nothing is left in the dead-letter queue
    status = Publisher(video_settings, broker=broker).status(job)
    assert status.state == "failed"
    assert status.error is not None
    assert "source_key" in status.error
    assert dead_letters(broker, video_settings.queue_video) == 0


def test_an_invalid_job_without_ids_shows_in_watch(
    broker: RedisBroker, video_settings: Settings, worker: Worker,
) -> None:
    from jobplatform.watch import render, take_snapshot

    register(broker, video_settings)
    broker.enqueue(signed(broker, make_message(video_settings.queue_video, ENCODE_VIDEO,
                                               {"video_id": "x"})))
    worker.start()
    broker.join(video_settings.queue_video)
    worker.join()
    snapshot = take_snapshot(broker.client, video_settings)
    assert snapshot.dead == {video_settings.queue_video: 1, video_settings.queue_ai: 0,
                             video_settings.queue_writes_fast: 0,
                             video_settings.queue_writes_bulk: 0}
    console = Console(width=160, record=True)
    console.print(render(snapshot))
    assert "dead letters (dramatiq's <queue>.XQ" in console.export_text()
