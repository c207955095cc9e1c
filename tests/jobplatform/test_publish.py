from __future__ import annotations

import io
import socket
import subprocess
import uuid
from typing import Any

import dramatiq
import pytest
import redis

from jobplatform.broker import ENCODE_VIDEO, IMPORT_ROSTER
from jobplatform.content import XLSX
from jobplatform.errors import PublishError
from jobplatform.publish import (
    IDEMPOTENCY_TTL_S,
    InvalidJob,
    Publisher,
    job_state,
    safe_filename,
    upload_key,
)
from jobplatform.settings import Settings
from schemas import EncodeVideo, ImportRoster, RosterStatus, VideoQueued, decode_intent, decode_job
from schemas.jobs import check_key
from tests.jobplatform.conftest import drain

pytestmark = pytest.mark.brokers

#: The start of an MP4 file: an ``ftyp`` box of brand ``isom``.
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"


def video_job(tenant_id: int = 7, **changes: Any) -> EncodeVideo:
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "video_id": uuid.uuid4(),
        "source_key": f"tenants/{tenant_id}/uploads/{uuid.uuid4()}/lecture.mp4",
    }
    return EncodeVideo(**(fields | changes))


def roster_job(tenant_id: int = 7) -> ImportRoster:
    return ImportRoster(
        tenant_id=tenant_id,
        import_id=uuid.uuid4(),
        lecture_id=42,
        source_key=f"tenants/{tenant_id}/uploads/{uuid.uuid4()}/roster.xlsx",
        filename="roster.xlsx",
    )


def sent(broker: dramatiq.Broker, settings: Settings, queue: str) -> tuple[Any, Any]:
    """The one job message on ``queue`` and the one intent on writes.fast, decoded."""
    [message] = drain(broker, queue)
    [intent_message] = drain(broker, settings.queue_writes_fast)
    return message, decode_intent(intent_message.args[0])


def test_publish_video_enqueues_job_and_queued_intent(
    publisher: Publisher, bus: dramatiq.Broker, bus_settings: Settings
) -> None:
    job = video_job()

    receipt = publisher.publish(job)

    message, intent = sent(bus, bus_settings, bus_settings.queue_video)
    assert message.actor_name == ENCODE_VIDEO
    assert message.message_id == receipt.message_id
    assert message.options["job_id"] == job.job_id == receipt.job_id
    assert decode_job(message.args[0]) == job
    assert isinstance(intent, VideoQueued)
    assert (intent.video_id, intent.source_key, intent.tenant_id) == (
        job.video_id, job.source_key, job.tenant_id)
    assert drain(bus, bus_settings.queue_ai) == []
    assert publisher.status(job).state == "queued"


def test_publish_roster_goes_to_the_ai_queue_with_queued_status(
    publisher: Publisher, bus: dramatiq.Broker, bus_settings: Settings
) -> None:
    job = roster_job()

    receipt = publisher.publish(job)

    message, intent = sent(bus, bus_settings, bus_settings.queue_ai)
    assert (message.actor_name, receipt.queue, receipt.actor) == (
        IMPORT_ROSTER, bus_settings.queue_ai, IMPORT_ROSTER)
    assert decode_job(message.args[0]) == job
    assert isinstance(intent, RosterStatus)
    assert (intent.status, intent.import_id, intent.lecture_id) == ("queued", job.import_id, 42)


def test_retried_request_returns_first_receipt_and_enqueues_once(
    publisher: Publisher, bus: dramatiq.Broker, bus_settings: Settings
) -> None:
    # Given a request published with an idempotency key
    first = publisher.publish(video_job(), idempotency_key="req-1")
    # When the client retries it (the API built a new job object, with a new video id)
    again = publisher.publish(video_job(), idempotency_key="req-1")

    # Then the retry gets the first receipt and nothing more is enqueued
    assert again.duplicate
    assert not first.duplicate
    assert (again.job_id, again.message_id) == (first.job_id, first.message_id)
    assert len(drain(bus, bus_settings.queue_video)) == 1
    assert len(drain(bus, bus_settings.queue_writes_fast)) == 1
    key = f"{bus_settings.broker_namespace}:idem:7:req-1"
    assert 0 < publisher.redis.ttl(key) <= IDEMPOTENCY_TTL_S


def test_idempotency_keys_are_scoped_by_tenant_and_kind(
    publisher: Publisher, bus: dramatiq.Broker, bus_settings: Settings
) -> None:
    publisher.publish(video_job(tenant_id=7), idempotency_key="same")

    other = publisher.publish(video_job(tenant_id=8), idempotency_key="same")
    with pytest.raises(InvalidJob, match=r"idempotency_key: 'same' was used for a video\.encode"):
        publisher.publish(roster_job(tenant_id=7), idempotency_key="same")

    assert not other.duplicate
    assert len(drain(bus, bus_settings.queue_video)) == 2
    assert drain(bus, bus_settings.queue_ai) == []


@pytest.mark.parametrize(
    ("make", "idempotency_key", "message"),
    [
        (lambda: video_job(source_key="tenants/8/uploads/x/a.mp4"), None,
         "source_key: 'tenants/8/uploads/x/a.mp4' is not under the tenant's prefix 'tenants/7/'"),
        (lambda: video_job(source_key="tenants/70/a.mp4"), None, "source_key"),
        (lambda: video_job(source_key="uploads/a.mp4"), None, "source_key"),
        (video_job, "has space", "idempotency_key: must be 1 to 255 characters"),
        (video_job, "", "idempotency_key"),
        (video_job, "k" * 256, "idempotency_key"),
        (lambda: {"kind": "video.encode"}, None,
         "job: dict is not a registered job type (registered: EncodeVideo, ImportRoster)"),
    ],
)
def test_invalid_jobs_are_refused_before_anything_is_sent(
    publisher: Publisher, bus: dramatiq.Broker, bus_settings: Settings,
    make: Any, idempotency_key: str | None, message: str,
) -> None:
    with pytest.raises(InvalidJob, match=message.replace("(", r"\(").replace(")", r"\)")):
        publisher.publish(make(), idempotency_key=idempotency_key)

    for queue in (bus_settings.queue_video, bus_settings.queue_writes_fast):
        assert drain(bus, queue) == []
    assert publisher.redis.keys(f"{bus_settings.broker_namespace}:idem:*") == []


@pytest.mark.brokers("redis")
def test_failed_publish_frees_its_idempotency_key(
    publisher: Publisher, bus: dramatiq.Broker, bus_settings: Settings
) -> None:
    # Given a Redis that refuses the job message (its queue's hash is a string: WRONGTYPE)
    job = video_job()
    publisher.redis.set(f"{bus_settings.broker_namespace}:{bus_settings.queue_video}.msgs", "x")

    with pytest.raises(PublishError, match=f"could not publish {job.job_id}"):
        publisher.publish(job, idempotency_key="retry-me")

    assert publisher.redis.get(f"{bus_settings.broker_namespace}:idem:7:retry-me") is None
    assert publisher.status(job).state == "unknown"


@pytest.mark.brokers("rabbitmq")
def test_failed_publish_on_rabbitmq_frees_its_idempotency_key(bus_settings: Settings) -> None:
    # Given a RabbitMQ that cannot be reached (nothing listens on its port)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = bus_settings.model_copy(
        update={"broker_url": f"amqp://guest:guest@127.0.0.1:{port}/%2F"})
    job = video_job()
    with Publisher(settings) as publisher:
        with pytest.raises(PublishError, match=f"could not publish {job.job_id}"):
            publisher.publish(job, idempotency_key="retry-me")

        # Then the key is free for the retry, and the job was never recorded as queued
        assert publisher.redis.get(f"{settings.broker_namespace}:idem:7:retry-me") is None
        assert publisher.status(job).state == "unknown"


def test_upload_stores_source_under_tenant_prefix(publisher: Publisher, tmp_path: Any) -> None:
    path = tmp_path / "강의 1 (final).mp4"
    path.write_bytes(MP4_HEAD + b"\x00video bytes")

    from_path = publisher.upload(path, 7, "video", path.name)
    from_stream = publisher.upload(io.BytesIO(b"sheet"), 7, "roster", "../../etc/명단.xlsx")

    prefix, upload_id, name = from_path.rsplit("/", 2)
    assert prefix == "tenants/7/uploads"
    assert str(uuid.UUID(upload_id)) == upload_id
    assert name == "강의_1_final_.mp4"
    assert from_stream.startswith("tenants/7/uploads/")
    assert from_stream.endswith("/명단.xlsx")
    bucket = publisher.settings.s3.bucket
    obj = publisher.s3.get_object(Bucket=bucket, Key=from_path)
    assert obj["Body"].read() == MP4_HEAD + b"\x00video bytes"
    assert obj["ContentType"] == "video/mp4"
    assert obj["Metadata"] == {"kind": "video"}
    assert publisher.s3.get_object(Bucket=bucket, Key=from_stream)["Body"].read() == b"sheet"
    # The key is ready to publish.
    publisher.validate(video_job(source_key=from_path))


def test_upload_refuses_bad_tenant_and_kind(publisher: Publisher) -> None:
    with pytest.raises(InvalidJob, match="tenant_id: must be a positive integer"):
        publisher.upload(io.BytesIO(b""), 0, "video", "a.mp4")
    with pytest.raises(InvalidJob, match="kind: must be 'video' or 'roster'"):
        publisher.upload(io.BytesIO(b""), 1, "audio", "a.mp3")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("lecture.mp4", "lecture.mp4"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\kim\\명단 2024.xlsx", "명단_2024.xlsx"),
        ("...", "upload"),
        (".hidden", "upload.hidden"),
        (".mp4", "upload.mp4"),
        ("lecture..MP4", "lecture.MP4"),
        ("a\x00b;rm -rf.xlsx", "a_b_rm_-rf.xlsx"),
        ("x" * 300 + ".xlsx", "x" * 115 + ".xlsx"),
    ],
)
def test_safe_filename(given: str, expected: str) -> None:
    assert safe_filename(given) == expected
    assert check_key(upload_key(3, given)).endswith("/" + expected)


@pytest.mark.parametrize(
    ("record", "state"),
    [
        ({}, "unknown"),
        ({"step": "queued"}, "queued"),
        ({"step": "encode", "percent": 40.0}, "running"),
        ({"percent": 3.0}, "running"),
        ({"step": "writing", "rows": 500, "total": 500, "chunks": 1}, "writing"),
        ({"step": "done"}, "done"),
        ({"step": "failed", "error": "not a video"}, "failed"),
    ],
)
def test_job_state_machine(record: dict[str, Any], state: str) -> None:
    assert job_state(record) == state


def test_status_reads_live_progress_then_outcome(publisher: Publisher) -> None:
    job = video_job()
    assert publisher.status(job).state == "unknown"
    publisher.publish(job)

    # While the actor runs, its progress record is the live state.
    publisher.progress.update(job.job_id, step="encode", percent=41.5, speed=2.5)
    running = publisher.status(job.job_id)
    assert (running.state, running.step, running.percent) == ("running", "encode", 41.5)
    assert running.progress["speed"] == 2.5
    assert not running.finished

    # Its final record carries the outcome.
    publisher.progress.update(job.job_id, step="failed", error="not a video file")
    failed = publisher.status(job)
    assert (failed.state, failed.error, failed.finished) == ("failed", "not a video file", True)
    assert failed.updated_at is not None


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("idempotency_key", [None, "request-1"])
def test_publish_raises_publish_error_when_redis_is_down(
    bus_settings: Settings, idempotency_key: str | None
) -> None:
    # Given a publisher whose Redis does not answer
    down = bus_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"})
    # Then publishing raises the documented error, with or without an idempotency key
    with Publisher(down) as publisher, pytest.raises(
            PublishError, match="could not publish") as caught:
        publisher.publish(video_job(), idempotency_key=idempotency_key)
    assert isinstance(caught.value.__cause__, redis.ConnectionError)


def test_upload_keeps_the_extension_and_takes_the_type_from_the_content(
    publisher: Publisher, tmp_path: Any
) -> None:
    import imageio_ffmpeg
    import openpyxl

    clip = tmp_path / "clip.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi",
                    "-i", "testsrc=size=64x64:rate=5:duration=1", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clip)], check=True)
    book = openpyxl.Workbook()
    book.active.append(["이름", "전화번호"])
    sheet = tmp_path / "roster.xlsx"
    book.save(sheet)
    bucket = publisher.settings.s3.bucket

    def stored(key: str) -> str:
        return str(publisher.s3.head_object(Bucket=bucket, Key=key)["ContentType"])

    # A file named only ".mp4" keeps its extension
    named_ext = publisher.upload(clip, 7, "video", ".mp4")
    assert named_ext.endswith("/upload.mp4")
    assert stored(named_ext) == "video/mp4"
    # A real MP4 named like a playlist is stored as what it is, from a path or a stream
    as_playlist = publisher.upload(clip, 7, "video", "lecture.m3u8")
    assert as_playlist.endswith("/lecture.m3u8")
    assert stored(as_playlist) == "video/mp4"
    with clip.open("rb") as stream:
        streamed = publisher.upload(stream, 7, "video", "lecture.m3u8")
    assert stored(streamed) == "video/mp4"
    assert publisher.s3.get_object(Bucket=bucket, Key=streamed)["Body"].read() == (
        clip.read_bytes())
    # A spreadsheet named .csv is a spreadsheet; a non-seekable stream is read whole
    with sheet.open("rb") as raw:
        unseekable = io.BufferedReader(NoSeek(raw))  # type: ignore[arg-type]
        roster = publisher.upload(unseekable, 7, "roster", "명단.csv")
    assert stored(roster) == XLSX
    assert publisher.s3.get_object(Bucket=bucket, Key=roster)["Body"].read() == (
        sheet.read_bytes())
    # And a playlist is not given a playlist's type by its name
    text = publisher.upload(io.BytesIO(b"#EXTM3U\n"), 7, "video", "x.m3u8")
    assert stored(text) == "application/octet-stream"


class NoSeek(io.RawIOBase):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def test_a_running_job_whose_worker_went_silent_is_interrupted() -> None:
    from jobplatform.publish import status_from_record

    record = {"step": "encode", "percent": 22.0, "worker": "host-a pid 41",
              "broker_id": "b-1"}
    alive = status_from_record("video:x", record, worker_silent_s=1.0, heartbeat_timeout_s=10)
    dead = status_from_record("video:x", record, worker_silent_s=12.4, heartbeat_timeout_s=10)
    gone = status_from_record("video:x", record, worker_silent_s=float("inf"))
    assert (alive.state, alive.error) == ("running", None)
    assert dead.state == gone.state == "interrupted"
    assert dead.error is not None
    assert "host-a pid 41" in dead.error
    assert "12 s ago" in dead.error
    # A finished job's record is never interrupted
    done = status_from_record("video:x", record | {"step": "done"}, worker_silent_s=99.0)
    assert done.state == "done"
