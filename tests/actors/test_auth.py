"""Actors run only signed jobs: a forged one is dead-lettered with its reason, and nothing else
happens (no encode, no intent, no progress record)."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker

from actors import ai, video
from jobplatform.auth import DEAD_REASON_OPTION, MAC_OPTION, REFUSED, Keyring, keyring_of
from jobplatform.broker import ENCODE_VIDEO, IMPORT_ROSTER, make_message
from jobplatform.logging import configure_logging
from jobplatform.progress import ProgressStore
from jobplatform.settings import Settings
from schemas import ImportRoster
from tests.actors.conftest import read_intents, video_job


@pytest.fixture
def worker(broker: dramatiq.Broker, video_settings: Settings) -> Iterator[Worker]:
    worker = Worker(broker, queues={video_settings.queue_video, video_settings.queue_ai},
                    worker_threads=1, worker_timeout=100)
    yield worker
    worker.stop()


def _dead(broker: RedisBroker, queue: str) -> list[dict[str, object]]:
    bodies = broker.client.hvals(f"{broker.namespace}:{queue}.XQ.msgs")
    return [json.loads(body) for body in bodies]


def test_forged_jobs_are_dead_lettered_with_the_reason_and_do_nothing(
    broker: RedisBroker, video_settings: Settings, worker: Worker,
) -> None:
    log = io.StringIO()
    configure_logging(video_settings.model_copy(update={"log_format": "json"}), stream=log)
    video.register(broker, video_settings)
    ai.register(broker, video_settings)
    # Given a hostile process that reaches Redis only: encodes and imports for another tenant,
    # unsigned, signed with its own key, or with a signature copied from another job
    job = video_job(tenant_id=8)
    honest = keyring_of(broker).sign(
        make_message(video_settings.queue_video, ENCODE_VIDEO, video_job().model_dump(mode="json")))
    roster = ImportRoster(tenant_id=8, import_id=uuid.uuid4(), lecture_id=1,
                          source_key="tenants/8/uploads/u/r.xlsx")
    forged = [
        make_message(video_settings.queue_video, ENCODE_VIDEO, job.model_dump(mode="json"),
                     job_id=job.job_id),
        Keyring({"mine": "m" * 40}).sign(make_message(
            video_settings.queue_video, ENCODE_VIDEO, job.model_dump(mode="json"))),
        make_message(video_settings.queue_video, ENCODE_VIDEO, job.model_dump(mode="json"),
                     **{MAC_OPTION: honest.options[MAC_OPTION]}),
        make_message(video_settings.queue_ai, IMPORT_ROSTER, roster.model_dump(mode="json"),
                     job_id=roster.job_id),
        # readable ids but an invalid body: an unsigned one must not even be recorded as failed
        make_message(video_settings.queue_video, ENCODE_VIDEO,
                     job.model_dump(mode="json") | {"source_key": "/etc/passwd"}),
    ]
    for message in forged:
        broker.enqueue(message)

    worker.start()
    broker.join(video_settings.queue_video)
    broker.join(video_settings.queue_ai)
    worker.join()

    # Then each lies in its queue's dead-letter set with the reason
    dead = _dead(broker, video_settings.queue_video) + _dead(broker, video_settings.queue_ai)
    reasons = sorted(str(d["options"][DEAD_REASON_OPTION]) for d in dead)  # type: ignore[index]
    assert len(reasons) == 5
    assert all(r.startswith(REFUSED) for r in reasons)
    assert sum("carries no MAC" in r for r in reasons) == 3
    assert sum("key 'mine'" in r for r in reasons) == 1
    assert sum("does not match its body" in r for r in reasons) == 1
    # And no intent was sent, no progress recorded
    assert read_intents(broker, video_settings.queue_writes_fast) == []
    assert read_intents(broker, video_settings.queue_writes_bulk) == []
    store = ProgressStore(broker.client, video_settings.broker_namespace)
    assert store.get(job.job_id) == {}
    assert store.get(roster.job_id) == {}
    # And the log names each refusal, without the body
    lines = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
    refused = [line for line in lines if line["event"] == "message refused"]
    assert len(refused) == 5
    assert job.source_key not in log.getvalue()
