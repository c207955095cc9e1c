"""Small builders of write intents for the writer's tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.intents import (
    RosterChunk,
    RosterStatus,
    StudentRow,
    VideoFailed,
    VideoProcessing,
    VideoQueued,
    VideoReady,
    VideoRendition,
)

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
TENANT = 7
LECTURE = 501


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def student(n: int, *, source_row: int | None = None, **values: Any) -> StudentRow:
    """Student ``n`` of a roster; the same ``n`` is the same phone number."""
    fields: dict[str, Any] = {
        "source_row": source_row or n + 1,
        "name": f"Student {n}",
        "phone": f"010-{n // 10000 % 10000:04d}-{n % 10000:04d}",
        "school": "Hanbit High",
        "grade": 2,
    }
    fields.update(values)
    return StudentRow(**fields)


def chunk(import_id: uuid.UUID, index: int, rows: list[StudentRow], *, seconds: float = 1,
          tenant: int = TENANT, lecture: int = LECTURE) -> RosterChunk:
    return RosterChunk(
        tenant_id=tenant, occurred_at=at(seconds), import_id=import_id, lecture_id=lecture,
        chunk_index=index, rows=tuple(rows),
    )


def chunks(import_id: uuid.UUID, rows: list[StudentRow], size: int, *, seconds: float = 1,
           lecture: int = LECTURE) -> list[RosterChunk]:
    return [
        chunk(import_id, n, rows[start:start + size], seconds=seconds, lecture=lecture)
        for n, start in enumerate(range(0, len(rows), size))
    ]


def roster_status(import_id: uuid.UUID, status: str, *, seconds: float = 0,
                  lecture: int = LECTURE, **values: Any) -> RosterStatus:
    return RosterStatus(
        tenant_id=TENANT, occurred_at=at(seconds), import_id=import_id, lecture_id=lecture,
        status=status, **values,
    )


def queued(video: uuid.UUID, seconds: float = 0, attempt: int = 1) -> VideoQueued:
    return VideoQueued(tenant_id=TENANT, occurred_at=at(seconds), video_id=video,
                       attempt=attempt, source_key=f"tenants/{TENANT}/uploads/{video}.mp4")


def processing(video: uuid.UUID, seconds: float = 1, attempt: int = 1) -> VideoProcessing:
    return VideoProcessing(tenant_id=TENANT, occurred_at=at(seconds), video_id=video,
                           attempt=attempt)


def ready(video: uuid.UUID, seconds: float = 2, attempt: int = 1) -> VideoReady:
    rendition = VideoRendition(name="720p", width=1280, height=720, bandwidth=2_800_000,
                               playlist_key=f"tenants/{TENANT}/videos/{video}/hls/720p.m3u8")
    return VideoReady(tenant_id=TENANT, occurred_at=at(seconds), video_id=video, attempt=attempt,
                      hls_key=f"tenants/{TENANT}/videos/{video}/hls/master.m3u8", duration_s=12.5,
                      renditions=(rendition,))


def failed(video: uuid.UUID, seconds: float = 2, attempt: int = 1) -> VideoFailed:
    return VideoFailed(tenant_id=TENANT, occurred_at=at(seconds), video_id=video,
                       attempt=attempt, reason="ffmpeg exited with status 1")
