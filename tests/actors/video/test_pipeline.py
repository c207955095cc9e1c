"""The whole job against real S3 (moto's server), Redis and ffmpeg."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
import redis
from structlog.testing import capture_logs

from actors.video import VideoEncoder, build_encoder
from actors.video.storage import output_prefix
from jobplatform.broker import Queues, build_broker
from jobplatform.emit import IntentEmitter
from jobplatform.errors import TransientJobError
from jobplatform.progress import ProgressStore
from jobplatform.settings import Settings
from schemas.intents import AnyIntent, VideoFailed, VideoProcessing, VideoReady
from schemas.jobs import Rendition
from tests.actors.conftest import make_clip, objects, put_source, read_intents, video_job

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

M3U8 = "application/vnd.apple.mpegurl"


class RecordingStore(ProgressStore):
    """The real Redis store, also keeping every update it writes, to see the sequence."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        super().__init__(client, namespace)
        self.updates: list[dict[str, Any]] = []

    def update(self, job_id: str, **fields: Any) -> None:
        super().update(job_id, **fields)
        self.updates.append(fields)


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.fixture
def store(video_settings: Settings) -> RecordingStore:
    assert video_settings.redis_url
    return RecordingStore(redis.Redis.from_url(video_settings.redis_url),
                          video_settings.broker_namespace)


@pytest.fixture
def encoder(
    broker: dramatiq.Broker, video_settings: Settings, s3: S3Client, store: RecordingStore,
    work_dir: Path,
) -> VideoEncoder:
    video = video_settings.video.model_copy(update={"work_dir": work_dir})
    settings = video_settings.model_copy(update={"video": video})
    return VideoEncoder(settings, s3, store, IntentEmitter(broker, Queues.from_settings(settings)))


def intents(broker: dramatiq.Broker, settings: Settings) -> list[AnyIntent]:
    return read_intents(broker, settings.queue_writes_fast)


def text(s3: S3Client, bucket: str, key: str) -> str:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def uris(playlist: str) -> list[str]:
    return [ln for ln in playlist.splitlines() if ln and not ln.startswith("#")]


def test_encode_uploads_hls_and_emits_processing_then_ready(
    encoder: VideoEncoder, broker: dramatiq.Broker, video_settings: Settings, s3: S3Client,
    clips: dict[str, Path], store: RecordingStore, work_dir: Path,
) -> None:
    # Given a 3 s 640x360 upload and a ladder of 720p, 360p and 240p
    job = video_job()
    put_source(s3, video_settings, job, clips["av"])
    bucket = video_settings.s3.bucket

    # When the job runs
    outcome = encoder.run(job)

    # Then two intents: processing (the start) and ready, attempt 1
    processing, ready = intents(broker, video_settings)
    assert isinstance(processing, VideoProcessing)
    assert isinstance(ready, VideoReady)
    assert outcome.intent == ready
    assert list(outcome.steps_s) == ["download", "probe", "encode", "upload"]
    assert (processing.video_id, ready.video_id) == (job.video_id, job.video_id)
    assert (processing.attempt, ready.attempt) == (1, 1)
    assert processing.occurred_at <= ready.occurred_at
    prefix = output_prefix(job.tenant_id, job.video_id)
    assert ready.hls_key == f"{prefix}master.m3u8"
    assert ready.duration_s == pytest.approx(3.0, abs=0.1)
    # 720p is taller than the source and skipped
    assert [(r.name, r.width, r.height) for r in ready.renditions] == [
        ("360p", 640, 360), ("240p", 426, 240)]

    # And the master lists each rendition's playlist, and every segment listed is in S3
    stored = objects(s3, bucket, prefix)
    master = text(s3, bucket, ready.hls_key)
    assert master.startswith("#EXTM3U")
    assert stored[ready.hls_key] == M3U8
    assert uris(master) == ["360p/index.m3u8", "240p/index.m3u8"]
    segments = set()
    for rendition in ready.renditions:
        assert rendition.playlist_key == f"{prefix}{rendition.name}/index.m3u8"
        assert rendition.bandwidth > 0
        assert stored[rendition.playlist_key] == M3U8
        playlist = text(s3, bucket, rendition.playlist_key)
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist
        assert "#EXT-X-ENDLIST" in playlist
        listed = uris(playlist)
        assert len(listed) >= 3  # 1 s segments of a 3 s clip
        for name in listed:
            key = f"{prefix}{rendition.name}/{name}"
            assert stored[key] == "video/mp2t"
            segments.add(key)
    # nothing else was uploaded
    assert set(stored) == {ready.hls_key, *(r.playlist_key for r in ready.renditions), *segments}

    # And progress went download -> probe -> encode -> upload -> done, never backwards
    steps = [u["step"] for u in store.updates]
    assert [s for i, s in enumerate(steps) if i == 0 or steps[i - 1] != s] == [
        "download", "probe", "encode", "upload", "done"]
    percents = [u["percent"] for u in store.updates]
    assert percents == sorted(percents)
    assert percents[-1] == 100.0
    assert any(u["step"] == "encode" and u.get("speed") for u in store.updates)
    record = store.get(job.job_id)
    assert (record["step"], record["percent"], record["hls_key"]) == ("done", 100.0, ready.hls_key)
    # And no temporary file is left
    assert list(work_dir.iterdir()) == []


def test_rerun_overwrites_and_removes_what_the_new_run_did_not_write(
    encoder: VideoEncoder, broker: dramatiq.Broker, video_settings: Settings, s3: S3Client,
    clips: dict[str, Path],
) -> None:
    job = video_job()
    put_source(s3, video_settings, job, clips["av"])
    bucket = video_settings.s3.bucket
    prefix = output_prefix(job.tenant_id, job.video_id)
    encoder.run(job)
    first = objects(s3, bucket, prefix)
    s3.put_object(Bucket=bucket, Key=f"{prefix}360p/seg_09999.ts", Body=b"stale")

    # The same video again, with 240p dropped from the ladder
    again = job.model_copy(update={"ladder": (Rendition(name="360p", height=360, video_kbps=600),)})
    encoder.run(again)

    second = objects(s3, bucket, prefix)
    assert set(second) == {k for k in first if "/240p/" not in k}
    master = text(s3, bucket, f"{prefix}master.m3u8")
    assert uris(master) == ["360p/index.m3u8"]
    kinds = [i.kind for i in intents(broker, video_settings)]
    assert kinds == ["video.processing", "video.ready"] * 2


def garbled_mkv(ffmpeg: str, clip: Path, folder: Path) -> bytes:
    """A Matroska file whose header is intact and whose media data is random."""
    mkv = folder / "garbled.mkv"
    subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(clip), "-c", "copy", str(mkv)],
                   check=True)
    data = bytearray(mkv.read_bytes())
    cluster = data.index(bytes.fromhex("1F43B675"))
    data[cluster + 8:] = os.urandom(len(data) - cluster - 8)
    return bytes(data)


Source = Callable[[str, dict[str, Path], Path], bytes | None]
FAILURES: dict[str, tuple[Source, str]] = {
    "zero-length": (lambda ff, clips, tmp: b"", "the source file is empty"),
    "not-a-video": (lambda ff, clips, tmp: b"name,phone\nkim,010-1234-5678\n" * 40,
                    "not a video"),
    "corrupt": (lambda ff, clips, tmp: clips["av"].read_bytes()[:3000], "corrupt"),
    "audio-only": (lambda ff, clips, tmp: clips["audio"].read_bytes(), "audio but no video"),
    "ffmpeg-crash": (lambda ff, clips, tmp: garbled_mkv(ff, clips["av"], tmp),
                     r"ffmpeg failed \(exit code \d+\): \S+"),
    "missing": (lambda ff, clips, tmp: None, "not found"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_bad_sources_fail_with_a_readable_reason(
    encoder: VideoEncoder, broker: dramatiq.Broker, video_settings: Settings, s3: S3Client,
    clips: dict[str, Path], ffmpeg: str, tmp_path: Path, store: RecordingStore,
    work_dir: Path, case: str,
) -> None:
    build, reason = FAILURES[case]
    job = video_job()
    data = build(ffmpeg, clips, tmp_path)
    if data is not None:
        put_source(s3, video_settings, job, data)

    outcome = encoder.run(job)

    processing, failed = intents(broker, video_settings)
    assert isinstance(processing, VideoProcessing)
    assert isinstance(failed, VideoFailed)
    assert outcome.intent == failed
    assert failed.attempt == 1
    assert re.search(reason, failed.reason), failed.reason
    assert "Traceback" not in failed.reason
    assert str(work_dir) not in failed.reason
    assert objects(s3, video_settings.s3.bucket, output_prefix(job.tenant_id, job.video_id)) == {}
    record = store.get(job.job_id)
    assert (record["step"], record["error"]) == ("failed", failed.reason)
    assert list(work_dir.iterdir()) == []


def test_source_over_the_size_limit_is_refused_before_download(
    broker: dramatiq.Broker, video_settings: Settings, s3: S3Client, clips: dict[str, Path],
) -> None:
    video = video_settings.video.model_copy(update={"max_source_bytes": 10_000})
    encoder = build_encoder(broker, video_settings.model_copy(update={"video": video}))
    job = video_job()
    put_source(s3, video_settings, job, clips["av"])

    encoder.run(job)

    _, failed = intents(broker, video_settings)
    assert isinstance(failed, VideoFailed)
    assert "larger than the limit of 0.0 MiB" in failed.reason


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("tenants/8/uploads/x.mp4", "outside tenant 7's folder"),
        ("tenants/70/uploads/x.mp4", "outside tenant 7's folder"),
        ("tenants/7/videos/{video}/hls/master.m3u8", "inside the video's own output folder"),
    ],
)
def test_source_key_outside_the_tenant_is_refused(
    encoder: VideoEncoder, broker: dramatiq.Broker, video_settings: Settings, key: str,
    reason: str,
) -> None:
    video_id = uuid.uuid4()
    job = video_job(video_id=video_id, source_key=key.format(video=video_id))
    encoder.run(job)
    _, failed = intents(broker, video_settings)
    assert isinstance(failed, VideoFailed)
    assert reason in failed.reason


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_s3_unavailable_is_retried_then_reported(
    broker: dramatiq.Broker, video_settings: Settings,
) -> None:
    s3_down = video_settings.s3.model_copy(
        update={"endpoint_url": f"http://127.0.0.1:{closed_port()}"})
    encoder = build_encoder(broker, video_settings.model_copy(update={"s3": s3_down}))
    job = video_job()

    # A try that is not the last raises for dramatiq to retry, after the processing intent
    with pytest.raises(TransientJobError, match="S3 unavailable"):
        encoder.run(job, retries=0, last_try=False)
    # The last try reports the failure, at the next attempt number
    outcome = encoder.run(job, retries=1, last_try=True)

    first, second, failed = intents(broker, video_settings)
    assert [(i.kind, i.attempt) for i in (first, second, failed)] == [  # type: ignore[union-attr]
        ("video.processing", 1), ("video.processing", 2), ("video.failed", 2)]
    assert isinstance(failed, VideoFailed)
    assert outcome.intent == failed
    assert failed.reason.startswith("S3 unavailable while reading the source")
    assert "gave up after 2 attempts" in failed.reason


def test_redis_unavailable_is_left_to_dramatiq_to_retry(video_settings: Settings) -> None:
    # Without Redis no intent can be sent, so there is nothing to report: the job raises.
    redis_down = f"redis://127.0.0.1:{closed_port()}/0"
    settings = video_settings.model_copy(update={"redis_url": redis_down})
    broker = build_broker(settings, redis_down, set_global=False)
    try:
        with pytest.raises(TransientJobError, match="Redis unavailable"):
            build_encoder(broker, settings).run(video_job(), last_try=False)
    finally:
        broker.close()


# --- hostile uploads -------------------------------------------------------------------------

def hostile_upload(kind: str, secret: Path) -> bytes:
    if kind == "hls":
        return (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
                f"#EXTINF:2.0,\nfile://{secret}\n#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n").encode()
    return f"ffconcat version 1.0\nfile '{secret}'\nfile 'file:{secret}'\n".encode()


@pytest.mark.parametrize("kind", ["hls", "concat"])
def test_playlist_upload_cannot_read_local_files(
    encoder: VideoEncoder, broker: dramatiq.Broker, video_settings: Settings, s3: S3Client,
    ffmpeg: str, tmp_path: Path, store: RecordingStore, kind: str,
) -> None:
    # Given a secret video on the worker's disk, carrying a marker in its metadata
    marker = f"SECRET-{uuid.uuid4().hex}"
    secret = make_clip(ffmpeg, tmp_path / "secret.ts", size="160x120", seconds=1,
                       extra=("-metadata", f"service_name={marker}", "-f", "mpegts"))
    secret_head = secret.read_bytes()[:4096]
    # And an upload that is a playlist pointing at it
    job = video_job()
    put_source(s3, video_settings, job, hostile_upload(kind, secret))

    with capture_logs() as logs:
        encoder.run(job)

    # Then the job fails as "not a video", nothing is encoded or uploaded
    found = intents(broker, video_settings)
    assert [i.kind for i in found] == ["video.processing", "video.failed"]
    failed = found[1]
    assert isinstance(failed, VideoFailed)
    assert "not a video" in failed.reason
    bucket = video_settings.s3.bucket
    assert objects(s3, bucket, output_prefix(job.tenant_id, job.video_id)) == {}
    # And the secret's bytes appear in no S3 object, intent, progress record or log line
    everything = [s3.get_object(Bucket=bucket, Key=k)["Body"].read()
                  for k in objects(s3, bucket, "")]
    everything += [i.model_dump_json().encode() for i in found]
    everything += [json.dumps(store.updates).encode(), json.dumps(logs, default=str).encode()]
    for blob in everything:
        assert marker.encode() not in blob
        assert secret_head[188:376] not in blob



def test_progress_never_moves_backwards_within_a_step(store: RecordingStore) -> None:
    from actors.video.ffmpeg import EncodeProgress
    from actors.video.pipeline import _Reporter

    reporter = _Reporter(store.reporter("video:test", 0.0), attempt=1)
    reporter.step("encode")
    for percent in (40.0, 88.0, 6.0, 91.0):
        reporter.encode(EncodeProgress(percent, 0.0, None, False))
    encode = [u["step_percent"] for u in store.updates if u["step"] == "encode"]
    assert encode == [0.0, 40.0, 88.0, 88.0, 91.0]
    # A new step starts from its own beginning
    reporter.step("upload")
    reporter.share("upload", 0.5)
    assert [u["step_percent"] for u in store.updates[-2:]] == [0.0, 50.0]
    assert store.get("video:test")["percent"] == 97.5


@pytest.mark.parametrize(("frames", "audio"), [(1, True), (1, False), (12, True), (13, False)])
def test_short_clips_encode_with_the_ladder_intact(
    encoder: VideoEncoder, broker: dramatiq.Broker, video_settings: Settings, s3: S3Client,
    ffmpeg: str, tmp_path: Path, frames: int, audio: bool,
) -> None:
    # Given a clip of a few frames at 25 fps: ffmpeg's master playlist lists no variant
    clip = make_clip(ffmpeg, tmp_path / "short.mp4", seconds=frames / 25, audio=audio,
                     extra=("-frames:v", str(frames)))
    job = video_job()
    put_source(s3, video_settings, job, clip)

    encoder.run(job)

    # Then it is ready, with the renditions the ladder gives a 640x360 source
    _, ready = intents(broker, video_settings)
    assert isinstance(ready, VideoReady), ready
    assert [(r.name, r.width, r.height) for r in ready.renditions] == [
        ("360p", 640, 360), ("240p", 426, 240)]
    assert ready.duration_s == pytest.approx(frames / 25, abs=0.05)
    # And the master lists each rendition, whose playlist is valid HLS
    bucket = video_settings.s3.bucket
    master = text(s3, bucket, ready.hls_key)
    assert uris(master) == ["360p/index.m3u8", "240p/index.m3u8"]
    assert "RESOLUTION=640x360" in master
    for rendition in ready.renditions:
        playlist = text(s3, bucket, rendition.playlist_key)
        target = re.search(r"#EXT-X-TARGETDURATION:(\d+)", playlist)
        assert target is not None
        assert int(target.group(1)) >= 1
        assert len(uris(playlist)) == 1


def test_stored_duration_is_what_was_encoded_not_the_containers_claim(
    encoder: VideoEncoder, broker: dramatiq.Broker, video_settings: Settings, s3: S3Client,
    ffmpeg: str, tmp_path: Path, store: RecordingStore,
) -> None:
    from tests.actors.video.test_ffmpeg import lying_mkv

    # Given a 1 s file whose container claims 80,000 s
    job = video_job()
    put_source(s3, video_settings, job, lying_mkv(ffmpeg, tmp_path))

    with capture_logs() as logs:
        encoder.run(job)

    # Then the stored duration is the encoded one
    _, ready = intents(broker, video_settings)
    assert isinstance(ready, VideoReady)
    assert ready.duration_s == pytest.approx(1.0, abs=0.1)
    assert store.get(job.job_id)["duration_s"] == ready.duration_s
    [probed] = [e for e in logs if e["event"] == "video.probed"]
    assert probed["claimed_s"] == pytest.approx(80_000.0)
    # And the time limit went by the real duration (10 x 1 s + 120 s), not 800,120 s
    [encoding] = [e for e in logs if e["event"] == "video.encoding"]
    assert encoding["duration_s"] == pytest.approx(1.0, abs=0.1)
    assert encoding["time_limit_s"] == pytest.approx(130, abs=2)
