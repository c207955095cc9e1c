"""Fixtures for the video actor: tiny generated clips, settings for fast encodes, S3, intents."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest

from actors.video import VideoEncoder, build_encoder
from actors.video.ffmpeg import ffmpeg_exe
from jobplatform.auth import keyring_of
from jobplatform.s3 import ensure_bucket, s3_client
from jobplatform.settings import Settings, VideoSettings
from schemas import EncodeVideo, decode_intent
from schemas.intents import AnyIntent
from schemas.jobs import Rendition

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: A short ladder so a 640x360 clip gets two renditions and skips one.
SMALL_LADDER = (
    Rendition(name="720p", height=720, video_kbps=1500),
    Rendition(name="360p", height=360, video_kbps=600, audio_kbps=96),
    Rendition(name="240p", height=240, video_kbps=300, audio_kbps=64),
)


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    return ffmpeg_exe(VideoSettings())


def make_clip(
    ffmpeg: str, path: Path, *, size: str = "640x360", seconds: float = 3,
    audio: bool = True, video: bool = True, extra: tuple[str, ...] = (),
) -> Path:
    """A test-pattern clip (with a tone when ``audio``), encoded as fast as x264 goes."""
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y"]
    if video:
        cmd += ["-f", "lavfi", "-i", f"testsrc=size={size}:rate=25:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    if video:
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        cmd += ["-c:a", "aac"]
    subprocess.run([*cmd, *extra, str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def clips(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Clips shared by the session: ``av`` (640x360 with audio), ``mute`` (320x240, no audio),
    ``audio`` (an .m4a with no video)."""
    folder = tmp_path_factory.mktemp("clips")
    return {
        "av": make_clip(ffmpeg, folder / "av.mp4"),
        "mute": make_clip(ffmpeg, folder / "mute.mkv", size="320x240", seconds=2, audio=False),
        "audio": make_clip(ffmpeg, folder / "audio.m4a", video=False),
    }


@pytest.fixture
def video_settings(settings: Settings) -> Settings:
    """The test's settings with 1 s segments, the fastest preset and quick retries."""
    video = settings.video.model_copy(update={
        "segment_seconds": 1, "preset": "ultrafast", "progress_interval_s": 0.1,
        "max_retries": 1, "retry_min_backoff_ms": 10, "retry_max_backoff_ms": 50,
    })
    return settings.model_copy(update={"video": video})


@pytest.fixture
def s3(video_settings: Settings) -> S3Client:
    client = s3_client(video_settings)
    ensure_bucket(client, video_settings.s3.bucket)
    return client


@pytest.fixture
def encoder(broker: dramatiq.Broker, video_settings: Settings, s3: S3Client) -> VideoEncoder:
    return build_encoder(broker, video_settings)


def video_job(tenant_id: int = 7, **changes: Any) -> EncodeVideo:
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "video_id": uuid.uuid4(),
        "source_key": f"tenants/{tenant_id}/uploads/{uuid.uuid4()}/lecture.mp4",
        "ladder": SMALL_LADDER,
    }
    return EncodeVideo(**(fields | changes))


def put_source(s3: S3Client, settings: Settings, job: EncodeVideo, data: bytes | Path) -> None:
    body = data.read_bytes() if isinstance(data, Path) else data
    s3.put_object(Bucket=settings.s3.bucket, Key=job.source_key, Body=body)


def objects(s3: S3Client, bucket: str, prefix: str) -> dict[str, str]:
    """Keys under ``prefix`` and their content types."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            head = s3.head_object(Bucket=bucket, Key=item["Key"])
            found[item["Key"]] = head["ContentType"]
    return found


def read_intents(
    broker: dramatiq.Broker,
    queue: str,
    *,
    until: Callable[[list[AnyIntent]], bool] | None = None,
    timeout_s: float = 60.0,
) -> list[AnyIntent]:
    """Intents waiting on ``queue``, consumed and decoded; with ``until``, keep waiting (on the
    broker, up to ``timeout_s``) until it holds."""
    consumer = broker.consume(queue, prefetch=100, timeout=100)
    found: list[AnyIntent] = []
    deadline = time.monotonic() + timeout_s
    try:
        for proxy in consumer:
            if proxy is None:
                if until is None or until(found):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for intents; got {found}")
                continue
            # every intent an actor sends is signed with the broker's key
            assert keyring_of(broker).verify(proxy) is None, proxy.options
            found.append(decode_intent(proxy.args[0]))
            consumer.ack(proxy)
    finally:
        consumer.close()
    return found
