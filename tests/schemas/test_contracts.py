from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest

from schemas import (
    DecodeError,
    EncodeVideo,
    ImportRoster,
    RosterChunk,
    RosterStatus,
    StudentRow,
    VideoFailed,
    VideoProcessing,
    VideoQueued,
    VideoReady,
    decode_intent,
    decode_job,
    encode_intent,
    intent_rank,
)
from schemas.intents import intent_json

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
VIDEO = uuid.UUID("00000000-0000-4000-8000-000000000001")
IMPORT = uuid.UUID("00000000-0000-4000-8000-000000000002")


def _row(n: int = 1, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "source_row": n + 1,
        "name": "김민준",
        "phone": f"010-1234-{n:04d}",
        "parent_phone": "010-9876-5432",
        "school": "서울고",
        "grade": 10,
        "birth_date": "2010-03-01",
    }
    row.update(changes)
    return row


def _chunk(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "kind": "roster.chunk",
        "tenant_id": 7,
        "occurred_at": NOW.isoformat(),
        "import_id": str(IMPORT),
        "lecture_id": 3,
        "chunk_index": 0,
        "rows": [_row(1), _row(2)],
    }
    payload.update(changes)
    return payload


INTENTS = [
    VideoQueued(tenant_id=1, occurred_at=NOW, video_id=VIDEO, source_key="tenants/1/uploads/a.mp4"),
    VideoProcessing(tenant_id=1, occurred_at=NOW, video_id=VIDEO, attempt=2),
    VideoReady(
        tenant_id=1, occurred_at=NOW, video_id=VIDEO, hls_key="tenants/1/videos/x/hls/master.m3u8",
        duration_s=12.5,
        renditions=[{"name": "720p", "width": 1280, "height": 720, "bandwidth": 3_000_000,
                     "playlist_key": "tenants/1/videos/x/hls/720p.m3u8"}],  # type: ignore[list-item]
    ),
    VideoFailed(tenant_id=1, occurred_at=NOW, video_id=VIDEO, reason="no video stream"),
    RosterChunk.model_validate(_chunk()),
    RosterStatus(tenant_id=7, occurred_at=NOW, import_id=IMPORT, lecture_id=3, status="writing",
                 total=10, valid=8, invalid=2, duplicates=1, chunks=1,
                 sample_errors=[{"row": 4, "column": "phone", "reason": "not a mobile number"}]),  # type: ignore[list-item]
]


@pytest.mark.parametrize("intent", INTENTS, ids=lambda i: i.kind)
def test_intent_round_trip(intent: Any) -> None:
    # Through the dict form, and through JSON bytes as the queue carries them.
    assert decode_intent(encode_intent(intent)) == intent
    assert decode_intent(intent_json(intent)) == intent


def test_job_round_trip() -> None:
    video = EncodeVideo(tenant_id=1, source_key="tenants/1/uploads/a.mp4", video_id=VIDEO)
    roster = ImportRoster(tenant_id=1, source_key="tenants/1/uploads/r.xlsx", import_id=IMPORT,
                          lecture_id=5)
    for job in (video, roster):
        assert decode_job(job.model_dump_json()) == job
    assert video.job_id == f"video:{VIDEO}"
    assert roster.job_id == f"roster:{IMPORT}"


def test_models_are_frozen() -> None:
    row = StudentRow.model_validate(_row())
    with pytest.raises(Exception, match="frozen"):
        row.name = "other"  # type: ignore[misc]


def test_rank_orders_state_changes() -> None:
    queued, processing, ready, failed = INTENTS[0], INTENTS[1], INTENTS[2], INTENTS[3]
    assert intent_rank(queued) < intent_rank(ready)  # type: ignore[arg-type]
    # A retry (attempt 2) moves past the first attempt's failure.
    assert intent_rank(processing) > intent_rank(failed)  # type: ignore[arg-type]
    assert intent_rank(ready) == intent_rank(failed)  # type: ignore[arg-type]


def test_birth_date_parsed() -> None:
    chunk = decode_intent(_chunk())
    assert isinstance(chunk, RosterChunk)
    assert chunk.rows[0].birth_date == date(2010, 3, 1)


# Each malformed payload, and the field path the error must name.
MALFORMED: list[tuple[str, Any, str]] = [
    ("not json", b"{oops", ""),
    ("not an object", b"[1, 2]", ""),
    ("invalid utf-8", b"\xff\xfe{}", ""),
    ("no kind", {k: v for k, v in _chunk().items() if k != "kind"}, "kind"),
    ("unknown kind", _chunk(kind="roster.delete"), "kind"),
    ("future schema version", _chunk(schema_version=2), "schema_version"),
    ("missing tenant", {k: v for k, v in _chunk().items() if k != "tenant_id"}, "tenant_id"),
    ("tenant zero", _chunk(tenant_id=0), "tenant_id"),
    ("tenant as text", _chunk(tenant_id="acme"), "tenant_id"),
    ("naive timestamp", _chunk(occurred_at="2026-11-26T09:00:00"), "occurred_at"),
    ("bad intent id", _chunk(intent_id="not-a-uuid"), "intent_id"),
    ("no rows", _chunk(rows=[]), "rows"),
    ("bad phone in row 2", _chunk(rows=[_row(1), _row(2, phone="02-123-4567")]), "rows.1.phone"),
    ("grade out of range", _chunk(rows=[_row(1, grade=13)]), "rows.0.grade"),
    ("empty name", _chunk(rows=[_row(1, name="   ")]), "rows.0.name"),
    ("unknown field", _chunk(extra="x"), "extra"),
    ("negative chunk index", _chunk(chunk_index=-1), "chunk_index"),
    ("too many rows", _chunk(rows=[_row(i) for i in range(5001)]), "rows"),
    ("ready without renditions",
     {"kind": "video.ready", "tenant_id": 1, "occurred_at": NOW.isoformat(),
      "video_id": str(VIDEO), "hls_key": "k", "duration_s": 3.0, "renditions": []}, "renditions"),
    ("failed without reason",
     {"kind": "video.failed", "tenant_id": 1, "occurred_at": NOW.isoformat(),
      "video_id": str(VIDEO), "reason": ""}, "reason"),
    ("unknown roster status",
     {"kind": "roster.status", "tenant_id": 1, "occurred_at": NOW.isoformat(),
      "import_id": str(IMPORT), "lecture_id": 1, "status": "done"}, "status"),
    ("negative empty slots",
     {"kind": "roster.status", "tenant_id": 1, "occurred_at": NOW.isoformat(),
      "import_id": str(IMPORT), "lecture_id": 1, "status": "writing", "empty_slots": -1},
     "empty_slots"),
]


@pytest.mark.parametrize(("payload", "path"), [(p, f) for _, p, f in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_intent_rejected_naming_the_field(payload: Any, path: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_intent(payload)
    assert path in info.value.paths
    shown = path or "<payload>"
    assert shown in str(info.value)


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/path.mp4", "a//b.mp4", "a/./b",
                                 "a\\b.mp4", "tenants/1/\x00x", ""])
def test_job_rejects_unsafe_keys(key: str) -> None:
    payload = {"kind": "video.encode", "tenant_id": 1, "source_key": key, "video_id": str(VIDEO)}
    with pytest.raises(DecodeError) as info:
        decode_job(json.dumps(payload))
    assert info.value.paths == ["source_key"]
