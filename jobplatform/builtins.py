"""The built-in kinds, as producers see them: video and roster.

These declarations are what API services and actors load (the intents, their lanes, the job
types and their first status). What applies them lives in the writer (``writer.kinds.video``,
``writer.kinds.roster``), named by :attr:`~jobplatform.kinds.Kind.handler`, so a producer never
imports the writer's code. They are registered through this package's ``jobplatform.kinds``
entry points, as any plug-in is.
"""

from __future__ import annotations

from datetime import datetime

from jobplatform.broker import ENCODE_VIDEO, IMPORT_ROSTER
from jobplatform.kinds import JobType, Kind
from schemas import (
    EncodeVideo,
    ImportRoster,
    RosterChunk,
    RosterStatus,
    VideoFailed,
    VideoProcessing,
    VideoQueued,
    VideoReady,
)

__all__ = ["roster", "video"]


def video_queued(job: EncodeVideo, at: datetime) -> VideoQueued:
    """The status the publish client sends when it publishes an encode."""
    return VideoQueued(tenant_id=job.tenant_id, occurred_at=at, video_id=job.video_id,
                       attempt=job.attempt, source_key=job.source_key)


def roster_queued(job: ImportRoster, at: datetime) -> RosterStatus:
    """The status the publish client sends when it publishes an import."""
    return RosterStatus(tenant_id=job.tenant_id, occurred_at=at, import_id=job.import_id,
                        lecture_id=job.lecture_id, status="queued", source_key=job.source_key)


video = Kind(
    name="video",
    intents=(VideoQueued, VideoProcessing, VideoReady, VideoFailed),
    jobs=(JobType(EncodeVideo, actor=ENCODE_VIDEO, queue=lambda s: s.queue_video,
                  queued=video_queued),),
    handler="writer.kinds.video",
    order=10,
)

roster = Kind(
    name="roster",
    intents=(RosterChunk, RosterStatus),
    jobs=(JobType(ImportRoster, actor=IMPORT_ROSTER, queue=lambda s: s.queue_ai,
                  queued=roster_queued),),
    handler="writer.kinds.roster",
    order=20,
)
