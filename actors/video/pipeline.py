"""One encode job, start to end: download, probe, encode, upload, and the two intents.

Every job emits ``VideoProcessing`` (``occurred_at`` = start) and then exactly one of
``VideoReady`` or ``VideoFailed``, with ``attempt`` = the job's attempt + dramatiq's retry count,
so a retry's intents rank above the earlier attempt's (the writer orders by ``(attempt, rank)``).

Failures: :class:`JobError` (the file, the key, ffmpeg) is reported as failed at once.
:class:`TransientJobError` (S3, Redis) is raised for dramatiq to retry with backoff, except on
the last attempt, where it is reported as failed. Anything else is reported as an internal error
and re-raised, so the message lands in the dead-letter queue with its traceback.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import dramatiq
import redis

from actors.invalid import read_ids
from actors.video.ffmpeg import (
    MAX_DURATION_S,
    EncodeProgress,
    encode_duration,
    ffmpeg_exe,
    measure_duration,
    probe,
    run_encode,
)
from actors.video.hls import (
    MASTER_PLAYLIST,
    encode_command,
    read_output,
    repair_output,
    select_ladder,
)
from actors.video.storage import (
    check_source_key,
    download,
    output_prefix,
    remove_stale,
    upload_tree,
)
from jobplatform.broker import StopNotice
from jobplatform.emit import IntentEmitter
from jobplatform.errors import JobError, JobHandedBack, TransientJobError
from jobplatform.logging import get_logger
from jobplatform.progress import ProgressReporter, ProgressStore
from jobplatform.settings import Settings
from jobplatform.workdir import job_folder
from schemas import DecodeError, EncodeVideo
from schemas.intents import AnyIntent, VideoFailed, VideoProcessing, VideoReady, VideoRendition
from schemas.jobs import video_job_id

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = get_logger("actors.video")

#: Prefix of each job's temporary folder (see :mod:`jobplatform.workdir`).
WORK_PREFIX = "jp-video-"
#: Share of the overall percentage each step ends at.
_STEP_END = {"download": 5.0, "probe": 6.0, "encode": 95.0, "upload": 100.0}
_STEP_START = {"download": 0.0, "probe": 5.0, "encode": 6.0, "upload": 95.0}


@dataclass(frozen=True, slots=True)
class Outcome:
    """The terminal intent a job emitted, and the error behind a failure."""

    intent: VideoReady | VideoFailed
    error: BaseException | None = None
    steps_s: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each step the job went through (download, probe, encode, upload)."""


class VideoEncoder:
    """Runs encode jobs; shared by every message a worker process handles."""

    def __init__(
        self,
        settings: Settings,
        s3: S3Client,
        progress: ProgressStore,
        emitter: IntentEmitter,
        *,
        stop: StopNotice | None = None,
        identity: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop
        """Set when the worker stops gracefully: the job has ``VIDEO_STOP_GRACE_S`` to end."""
        self.identity = dict(identity or {})
        """The worker's name and broker id, recorded with each job's progress."""
        self.video = settings.video
        self.s3 = s3
        self.bucket = settings.s3.bucket
        self.progress = progress
        self.emitter = emitter
        self.ffmpeg = ffmpeg_exe(settings.video)

    def run(self, job: EncodeVideo, *, retries: int = 0, last_try: bool = True) -> Outcome:
        """Do the job and emit its intents; raise :class:`TransientJobError` to be retried."""
        attempt = min(1000, job.attempt + retries)
        started = datetime.now(UTC)
        self._emit(VideoProcessing(
            tenant_id=job.tenant_id, video_id=job.video_id, attempt=attempt, occurred_at=started,
        ))
        reporter = _Reporter(self.progress.reporter(job.job_id, self.video.progress_interval_s),
                             attempt, self.identity)
        common: dict[str, Any] = {
            "tenant_id": job.tenant_id, "video_id": job.video_id, "attempt": attempt,
        }
        try:
            ready = self._encode(job, reporter, common)
        except TransientJobError as exc:
            if not last_try:
                log.warning("video.transient", error=str(exc), attempt=attempt)
                reporter.step("retrying", error=str(exc), final=True)
                raise
            return self._fail(common, reporter, f"{exc} (gave up after {attempt} attempts)", exc)
        except JobHandedBack:
            note = (f"handed back unfinished by a stopping worker during {reporter.current}; "
                    "it waits for the next worker")
            log.info("video.handed_back", step=reporter.current)
            reporter.step("queued", final=True, percent=0.0, step_percent=0.0, speed=None,
                          note=note)
            raise
        except JobError as exc:
            return self._fail(common, reporter, str(exc), exc)
        except Exception as exc:
            self._fail(common, reporter, f"internal error ({type(exc).__name__})", exc)
            raise
        self._emit(ready)
        reporter.step("done", percent=100.0, step_percent=100.0, error=None,
                      hls_key=ready.hls_key, duration_s=ready.duration_s)
        log.info("video.ready", duration_s=ready.duration_s, renditions=len(ready.renditions),
                 steps_s=reporter.seconds,
                 elapsed_s=round((datetime.now(UTC) - started).total_seconds(), 2))
        return Outcome(ready, steps_s=reporter.seconds)

    def reject(self, payload: Any, error: DecodeError, *, retries: int = 0) -> bool:
        """Record an undecodable job as failed, as far as its ids can be read: its progress
        record (with a ``video_id``) and a ``video.failed`` intent (with the tenant too).
        False when nothing could be recorded: the caller lets dramatiq dead-letter it."""
        ids = read_ids(payload, "video_id")
        if ids.entity_id is None:
            return False
        reason = f"rejected: {error}"[:2000]
        log.warning("video.invalid_job", reason=reason, video_id=str(ids.entity_id))
        if ids.tenant_id is not None:
            self._emit(VideoFailed(
                tenant_id=ids.tenant_id, video_id=ids.entity_id, reason=reason,
                attempt=min(1000, ids.attempt + retries), occurred_at=datetime.now(UTC),
            ))
        try:
            self.progress.update(video_job_id(ids.entity_id), step="failed", error=reason,
                                 **({"tenant_id": ids.tenant_id} if ids.tenant_id else {}))
        except redis.RedisError as exc:
            raise TransientJobError("Redis unavailable while recording an invalid job") from exc
        return True

    def _fail(
        self, common: dict[str, Any], reporter: _Reporter, reason: str, error: BaseException
    ) -> Outcome:
        failed = VideoFailed(occurred_at=datetime.now(UTC), reason=reason[:2000], **common)
        log.warning("video.failed", reason=failed.reason, error_type=type(error).__name__)
        self._emit(failed)
        reporter.step("failed", error=failed.reason, final=True)
        return Outcome(failed, error, reporter.seconds)

    def _emit(self, intent: AnyIntent) -> None:
        try:
            self.emitter.emit(intent)
        except (redis.RedisError, dramatiq.errors.BrokerConnectionError) as exc:
            raise TransientJobError(f"Redis unavailable while emitting {intent.kind}") from exc

    def _encode(
        self, job: EncodeVideo, reporter: _Reporter, common: dict[str, Any]
    ) -> VideoReady:
        key = check_source_key(job.source_key, job.tenant_id, job.video_id)
        prefix = output_prefix(job.tenant_id, job.video_id)
        def on_bytes(done: int, size: int) -> None:
            reporter.share("download", done / size)
            self._check_stop()

        def on_file(done: int, total: int) -> None:
            reporter.share("upload", done / total)
            self._check_stop()

        with job_folder(self.video.work_dir, WORK_PREFIX) as work:
            source = work / "source"
            reporter.step("download", note=None)
            download(self.s3, self.bucket, key, source, self.video.max_source_bytes,
                     on_bytes=on_bytes)

            reporter.step("probe")
            found = probe(self.ffmpeg, source, self.video.ffprobe_path)
            variants = select_ladder(job.ladder, *found.display_size)
            log.info("video.probed", demuxer=found.demuxer, claimed_s=found.duration_s,
                     size=f"{found.width}x{found.height}", audio=found.audio_index is not None,
                     variants=[v.name for v in variants])

            reporter.step("encode")
            out = work / "hls"
            cmd = encode_command(
                self.ffmpeg, source, out, found, variants,
                segment_seconds=self.video.segment_seconds, preset=self.video.preset,
                threads=self.video.threads,
                stats_period_s=min(1.0, self.video.progress_interval_s),
            )
            # The container's duration may be a lie (a 1 s file claiming 80,000 s): the time
            # limit and the progress go by the packets' span, bounded by the file's size.
            size = source.stat().st_size
            duration = encode_duration(found, measure_duration(self.ffmpeg, source, found), size)
            limit = self.video.time_limit_factor * duration + self.video.time_limit_min_s
            log.info("video.encoding", duration_s=round(duration, 3), time_limit_s=round(limit))
            run_encode(cmd, duration, limit, work / "ffmpeg.log", reporter.encode,
                       should_stop=self._stop_due)
            source.unlink()
            if repair_output(out, variants):
                log.info("video.playlists_repaired", duration_s=duration)
            outputs = read_output(out, variants)
            encoded = max(o.duration_s for o in outputs)
            if not 0 < encoded < MAX_DURATION_S:
                raise JobError(f"the encoded video lasts {encoded:.3f} s, out of range")

            reporter.step("upload")
            written = upload_tree(self.s3, self.bucket, out, prefix, on_file=on_file)
            stale = remove_stale(self.s3, self.bucket, prefix, written)
            if stale:
                log.info("video.stale_removed", count=len(stale))
        return VideoReady(
            occurred_at=datetime.now(UTC),
            hls_key=prefix + MASTER_PLAYLIST,
            duration_s=round(encoded, 3),
            renditions=tuple(
                VideoRendition(
                    name=o.variant.name, width=o.variant.width, height=o.variant.height,
                    bandwidth=o.bandwidth, playlist_key=prefix + o.playlist,
                )
                for o in outputs
            ),
            **common,
        )


    def _stop_due(self) -> bool:
        """True once the worker has been stopping for longer than ``VIDEO_STOP_GRACE_S``."""
        since = self.stop.since if self.stop is not None else None
        return since is not None and time.monotonic() - since >= self.video.stop_grace_s

    def _check_stop(self) -> None:
        if self._stop_due():
            raise JobHandedBack("the worker is stopping")


class _Reporter:
    """Progress of one job in Redis: step, overall percent, the step's percent, speed.

    Progress is best effort: a failed Redis write is logged and the job goes on (intents, not
    progress records, carry the outcome).
    """

    def __init__(
        self, reporter: ProgressReporter, attempt: int, identity: Mapping[str, str] | None = None
    ) -> None:
        self.reporter = reporter
        self.attempt = attempt
        self.identity = dict(identity or {})
        self.current = "queued"
        self.seconds: dict[str, float] = {}
        """Wall seconds of each finished step."""
        self._since = time.monotonic()
        self._step_percent = 0.0
        self._warned = False

    def step(self, name: str, *, final: bool = True, **fields: Any) -> None:
        now = time.monotonic()
        if self.current in _STEP_START:
            self.seconds[self.current] = round(now - self._since, 3)
        self.current, self._since = name, now
        self._step_percent = 0.0
        start = _STEP_START.get(name)
        if start is not None:
            fields.setdefault("percent", start)
            fields.setdefault("step_percent", 0.0)
        self._write(final=final, step=name, **self.identity, **fields)

    def share(self, name: str, fraction: float) -> None:
        start, end = _STEP_START[name], _STEP_END[name]
        step_percent = self._forward(100 * min(1.0, max(0.0, fraction)))
        self._write(final=step_percent >= 100.0, step=name, step_percent=step_percent,
                    percent=round(start + (end - start) * step_percent / 100, 1))

    def encode(self, report: EncodeProgress) -> None:
        start, end = _STEP_START["encode"], _STEP_END["encode"]
        step_percent = self._forward(report.percent)
        self._write(
            final=report.done, step="encode", step_percent=step_percent, speed=report.speed,
            percent=round(start + (end - start) * step_percent / 100, 1),
        )

    def _forward(self, step_percent: float) -> float:
        """The step's percent, never below what this step already reported."""
        self._step_percent = max(self._step_percent, round(step_percent, 1))
        return self._step_percent

    def _write(self, *, final: bool, **fields: Any) -> None:
        try:
            self.reporter.report(final=final, attempt=self.attempt, **fields)
        except redis.RedisError as exc:
            if not self._warned:
                log.warning("video.progress_unavailable", error=str(exc))
                self._warned = True
