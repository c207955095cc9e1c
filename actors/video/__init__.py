"""The video actor: encode an uploaded video to HLS in S3, progress in Redis, intents out.

The actor is thin: it decodes the job, reads dramatiq's retry count and hands the work to
:class:`~actors.video.pipeline.VideoEncoder`. It never opens a database connection.

Run one ffmpeg per worker process (``--processes 1 --threads 1``): an encode uses every core it
gets, so scale by adding processes on more machines, not threads.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from actors.video.ffmpeg import MAX_DURATION_S
from actors.video.pipeline import WORK_PREFIX, Outcome, VideoEncoder
from jobplatform.auth import ensure_message_auth
from jobplatform.backpressure import Backpressure
from jobplatform.broker import ENCODE_VIDEO, Queues, broker_identity, stop_notice
from jobplatform.emit import IntentEmitter
from jobplatform.errors import ConfigError, JobHandedBack, TransientJobError
from jobplatform.logging import get_logger
from jobplatform.progress import ProgressStore
from jobplatform.s3 import s3_client
from jobplatform.settings import Settings
from jobplatform.workdir import sweep
from schemas import EncodeVideo, decode_job
from schemas.errors import DecodeError, FieldError

__all__ = ["Outcome", "VideoEncoder", "build_encoder", "register"]

log = get_logger("actors.video")



def actor_time_limit_ms(settings: Settings) -> int:
    """dramatiq's time limit, above the longest encode allowed (the real limit, proportional to
    the video's duration, is enforced on ffmpeg); dramatiq's default of 10 minutes would cut
    long encodes short."""
    video = settings.video
    longest_s = video.time_limit_factor * MAX_DURATION_S + video.time_limit_min_s
    return int((longest_s + 3600) * 1000)


def build_encoder(broker: dramatiq.Broker, settings: Settings) -> VideoEncoder:
    """The encoder with its S3 client, progress store and intent emitter."""
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url)
    elif isinstance(broker, RedisBroker):
        client = broker.client
    else:
        raise ConfigError("REDIS_URL is not set and the broker is not a Redis broker")
    return VideoEncoder(
        settings,
        s3=s3_client(settings),
        progress=ProgressStore(client, settings.broker_namespace),
        emitter=IntentEmitter(broker, Queues.from_settings(settings),
                              backpressure=Backpressure.from_settings(broker, settings.writer)),
        stop=stop_notice(broker),
        identity=broker_identity(broker),
    )


def register(broker: dramatiq.Broker, settings: Settings) -> dramatiq.Actor[[dict[str, Any]], None]:
    """Declare the ``encode_video`` actor on ``broker`` (queue ``settings.queue_video``).

    A worker starting removes the job folders that dead workers left in ``VIDEO_WORK_DIR``.
    The broker refuses jobs without a valid MAC (:func:`jobplatform.auth.ensure_message_auth`).
    """
    ensure_message_auth(broker, settings)
    removed = sweep(settings.video.work_dir, WORK_PREFIX)
    if removed:
        log.info("video.abandoned_folders_removed", count=len(removed),
                 folders=[str(p) for p in removed[:20]])
    encoder = build_encoder(broker, settings)
    max_retries = settings.video.max_retries

    def retry_when(retries: int, exc: BaseException) -> bool:
        return isinstance(exc, TransientJobError) and retries < max_retries

    def encode_video(payload: dict[str, Any]) -> None:
        message = CurrentMessage.get_current_message()
        retries = int(message.options.get("retries", 0)) if message else 0
        try:
            job = decode_job(payload)
            if not isinstance(job, EncodeVideo):
                raise DecodeError(
                    "job", [FieldError("kind", f"expected video.encode, got {job.kind}")])
        except DecodeError as exc:
            # Recorded as failed when its ids can be read; else dramatiq dead-letters it.
            if encoder.reject(payload, exc, retries=retries):
                return
            raise
        try:
            encoder.run(job, retries=retries, last_try=retries >= max_retries)
        except JobHandedBack:
            if message is None:
                raise
            # Back on its queue now, not after the broker's 60 s heartbeat timeout; the
            # message in hand is then acked. A hand-back is not a retry.
            broker.enqueue(message.copy())
            log.info("video.requeued", message_id=message.message_id)

    declare = dramatiq.actor(
        actor_name=ENCODE_VIDEO,
        queue_name=settings.queue_video,
        broker=broker,
        max_retries=max_retries,
        min_backoff=settings.video.retry_min_backoff_ms,
        max_backoff=settings.video.retry_max_backoff_ms,
        retry_when=retry_when,
        time_limit=actor_time_limit_ms(settings),
    )
    return declare(encode_video)
