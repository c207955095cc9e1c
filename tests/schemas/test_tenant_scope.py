"""Every S3 key an intent carries lies under its tenant's prefix: each crossing is refused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import DecodeError, decode_intent, tenant_prefix

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC).isoformat()
VIDEO = str(uuid.UUID("00000000-0000-4000-8000-000000000001"))
IMPORT = str(uuid.UUID("00000000-0000-4000-8000-000000000002"))
OWN = "tenants/7/videos/v/hls/"


def _queued(source_key: str) -> dict[str, Any]:
    return {"kind": "video.queued", "tenant_id": 7, "occurred_at": NOW, "video_id": VIDEO,
            "source_key": source_key}


def _ready(hls_key: str = OWN + "master.m3u8",
           playlists: tuple[str, ...] = (OWN + "720p/index.m3u8",)) -> dict[str, Any]:
    return {"kind": "video.ready", "tenant_id": 7, "occurred_at": NOW, "video_id": VIDEO,
            "hls_key": hls_key, "duration_s": 10.0,
            "renditions": [{"name": f"r{n}", "width": 1280, "height": 720, "bandwidth": 1000,
                            "playlist_key": key} for n, key in enumerate(playlists)]}


def _status(**keys: str) -> dict[str, Any]:
    return {"kind": "roster.status", "tenant_id": 7, "occurred_at": NOW, "import_id": IMPORT,
            "lecture_id": 3, "status": "writing", **keys}


def test_keys_under_the_tenant_are_accepted() -> None:
    decode_intent(_queued("tenants/7/uploads/u/clip.mp4"))
    decode_intent(_ready())
    decode_intent(_status(source_key="tenants/7/uploads/u/r.xlsx",
                          report_key="tenants/7/uploads/u/r.xlsx.errors.xlsx"))
    assert tenant_prefix(7) == "tenants/7/"


# Another tenant's files, a prefix of another tenant's id, a key outside every tenant, and keys
# that climb out of the tenant's folder or are not relative.
CROSSINGS = [
    "tenants/8/uploads/u/clip.mp4",
    "tenants/70/uploads/u/clip.mp4",
    "tenants/7",
    "uploads/u/clip.mp4",
    "tenants/7/../8/uploads/clip.mp4",
    "tenants/7/./x",
    "tenants/7//x",
    "/tenants/7/x",
    "tenants\\7\\x",
    "tenants/7/x\x00y",
    "tenants/7/x\ny",
]


@pytest.mark.parametrize("key", CROSSINGS)
def test_video_queued_source_key_crossing(key: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_intent(_queued(key))
    assert caught.value.paths == ["source_key"]


@pytest.mark.parametrize("key", CROSSINGS)
def test_video_ready_hls_key_crossing(key: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_intent(_ready(hls_key=key))
    assert caught.value.paths == ["hls_key"]


@pytest.mark.parametrize("key", CROSSINGS)
def test_video_ready_rendition_playlist_crossing(key: str) -> None:
    # Given one honest rendition and one that points elsewhere
    with pytest.raises(DecodeError) as caught:
        decode_intent(_ready(playlists=(OWN + "720p/index.m3u8", key)))
    # Then the error names the rendition
    assert caught.value.paths == ["renditions"]
    assert "1.playlist_key" in str(caught.value)


@pytest.mark.parametrize("field", ["source_key", "report_key"])
@pytest.mark.parametrize("key", CROSSINGS)
def test_roster_status_key_crossing(field: str, key: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_intent(_status(**{field: key}))
    assert caught.value.paths == [field]


def test_an_invalid_tenant_is_reported_once() -> None:
    # The tenant itself is wrong: its error is reported, the key check does not add noise.
    payload = _queued("tenants/7/uploads/u/clip.mp4") | {"tenant_id": 0}
    with pytest.raises(DecodeError) as caught:
        decode_intent(payload)
    assert caught.value.paths == ["tenant_id"]
