"""Intents for the write-intent log's tests: a small academy's day, deterministic."""

from __future__ import annotations

import uuid
from datetime import date, timedelta

from schemas import (
    RosterChunk,
    RosterStatus,
    StudentRow,
    VideoFailed,
    VideoProcessing,
    VideoQueued,
    VideoReady,
    VideoRendition,
)
from schemas.intents import AnyIntent
from tests.writer.intent_factory import at

__all__ = ["at", "encode_record_for", "phone", "roster_import", "student", "video_lifecycle"]


def phone(n: int) -> str:
    return f"010-{1000 + n // 10000:04d}-{n % 10000:04d}"


def student(n: int, *, name: str | None = None, grade: int | None = None) -> StudentRow:
    return StudentRow(
        source_row=n + 2,
        name=name or f"학생{n}",
        phone=phone(n),
        parent_phone=phone(n + 5000) if n % 3 == 0 else None,
        school="한빛고" if n % 2 else None,
        grade=grade if grade is not None else (n % 12) + 1,
        birth_date=date(2008, 1, 1) + timedelta(days=n) if n % 4 == 0 else None,
    )


def video_lifecycle(tenant: int, t: float, *, fail: bool = False) -> list[AnyIntent]:
    """queued, processing, then ready (or failed) for one new video."""
    video_id = uuid.uuid4()
    common = {"tenant_id": tenant, "video_id": video_id}
    end: AnyIntent
    if fail:
        end = VideoFailed(**common, occurred_at=at(t + 2), reason="ffmpeg exited with 1")
    else:
        end = VideoReady(
            **common,
            occurred_at=at(t + 2),
            hls_key=f"tenants/{tenant}/videos/{video_id}/hls/master.m3u8",
            duration_s=10.0,
            renditions=(
                VideoRendition(name="720p", width=1280, height=720, bandwidth=2_800_000,
                               playlist_key=f"tenants/{tenant}/videos/{video_id}/hls/720p.m3u8"),
            ),
        )
    return [
        VideoQueued(**common, occurred_at=at(t),
                    source_key=f"tenants/{tenant}/uploads/{video_id}.mp4"),
        VideoProcessing(**common, occurred_at=at(t + 1)),
        end,
    ]


def roster_import(
    tenant: int, lecture: int, students: list[StudentRow], t: float, *, chunk_rows: int = 50
) -> list[AnyIntent]:
    """parsing, the chunks, then writing (the writer marks the import done)."""
    import_id = uuid.uuid4()
    common = {"tenant_id": tenant, "import_id": import_id, "lecture_id": lecture}
    chunks = [students[i:i + chunk_rows] for i in range(0, len(students), chunk_rows)]
    out: list[AnyIntent] = [RosterStatus(**common, occurred_at=at(t), status="parsing",
                                         source_key=f"tenants/{tenant}/rosters/{import_id}.xlsx")]
    for index, rows in enumerate(chunks):
        out.append(RosterChunk(**common, occurred_at=at(t + 1 + index), chunk_index=index,
                               rows=tuple(rows)))
    out.append(RosterStatus(
        **common, occurred_at=at(t + 1 + len(chunks)), status="writing",
        total=len(students), valid=len(students), invalid=0, duplicates=0, chunks=len(chunks),
    ))
    return out


def encode_record_for(seq: int, writer_id: str) -> bytes:
    """A whole log line for a small video batch (for torn-tail tests)."""
    from writer.intentlog import encode_record

    return encode_record(seq, writer_id, at(seq), video_lifecycle(7, seq))
