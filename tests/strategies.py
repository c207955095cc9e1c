"""hypothesis strategies for the contracts: valid intents and jobs of every built-in kind, and
JSON values of any shape. Small pools of ids make intents of one entity meet often."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from schemas import (
    EncodeVideo,
    ImportRoster,
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

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TENANTS = st.sampled_from([1, 7, 2**63 - 1])
VIDEOS = st.sampled_from([uuid.UUID(int=n, version=4) for n in range(1, 4)])
IMPORTS = st.sampled_from([uuid.UUID(int=n, version=4) for n in range(11, 13)])
WHEN = st.integers(0, 10_000).map(lambda s: T0 + timedelta(seconds=s))
# Text as people type it: any letter, digit, mark or space (no control characters, which the
# models strip or refuse), Hangul included.
TEXT = st.text(st.characters(categories=("L", "N", "M", "P", "Zs")), min_size=1,
               max_size=40).filter(lambda s: bool(s.strip()))
SEGMENT = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12).filter(
    lambda s: s not in (".", ".."))


def key_under(tenant: int) -> st.SearchStrategy[str]:
    """A safe S3 key under ``tenants/<tenant>/``."""
    return st.lists(SEGMENT, min_size=1, max_size=4).map(
        lambda parts: f"tenants/{tenant}/" + "/".join(parts))


PHONES = st.builds(lambda a, b, c: f"01{a}-{b}-{c:04d}", st.sampled_from("016789"),
                   st.integers(100, 9999), st.integers(0, 9999))
STUDENTS = st.builds(
    StudentRow,
    source_row=st.integers(1, 10_000), name=TEXT,
    phone=PHONES, parent_phone=st.none() | PHONES,
    school=st.none() | TEXT, grade=st.none() | st.integers(1, 12),
    birth_date=st.none() | st.dates(date(1990, 1, 1), date(2025, 12, 31)),
)


@st.composite
def video_intents(draw: st.DrawFn) -> AnyIntent:
    tenant = draw(TENANTS)
    common: dict[str, Any] = {
        "tenant_id": tenant, "video_id": draw(VIDEOS), "occurred_at": draw(WHEN),
        "attempt": draw(st.integers(1, 3)),
    }
    kind = draw(st.sampled_from(["queued", "processing", "ready", "failed"]))
    if kind == "queued":
        return VideoQueued(**common, source_key=draw(key_under(tenant)))
    if kind == "processing":
        return VideoProcessing(**common)
    if kind == "failed":
        return VideoFailed(**common, reason=draw(TEXT))
    renditions = draw(st.lists(st.builds(
        VideoRendition, name=st.sampled_from(["360p", "720p", "1080p"]),
        width=st.integers(1, 8192), height=st.integers(1, 8192),
        bandwidth=st.integers(1, 10**9), playlist_key=key_under(tenant)),
        min_size=1, max_size=3))
    return VideoReady(**common, hls_key=draw(key_under(tenant)),
                      duration_s=draw(st.floats(0.01, 86_000)), renditions=tuple(renditions))


@st.composite
def roster_intents(draw: st.DrawFn) -> AnyIntent:
    tenant = draw(TENANTS)
    common: dict[str, Any] = {"tenant_id": tenant, "import_id": draw(IMPORTS),
                              "lecture_id": draw(st.integers(1, 3)), "occurred_at": draw(WHEN)}
    if draw(st.booleans()):
        return RosterChunk(**common, chunk_index=draw(st.integers(0, 3)),
                           rows=tuple(draw(st.lists(STUDENTS, min_size=1, max_size=5))))
    counts = st.none() | st.integers(0, 10**6)
    return RosterStatus(
        **common, status=draw(st.sampled_from(["queued", "parsing", "writing", "failed"])),
        source_key=draw(st.none() | key_under(tenant)),
        report_key=draw(st.none() | key_under(tenant)),
        total=draw(counts), valid=draw(counts), chunks=draw(counts),
        error=draw(st.none() | TEXT))


INTENTS = st.one_of(video_intents(), roster_intents())


@st.composite
def jobs(draw: st.DrawFn) -> EncodeVideo | ImportRoster:
    tenant = draw(TENANTS)
    key = draw(key_under(tenant))
    if draw(st.booleans()):
        return EncodeVideo(tenant_id=tenant, video_id=draw(VIDEOS), source_key=key,
                           attempt=draw(st.integers(1, 1000)), requested_at=draw(WHEN))
    return ImportRoster(tenant_id=tenant, import_id=draw(IMPORTS), lecture_id=draw(
        st.integers(1, 2**63 - 1)), source_key=key, filename=draw(st.none() | TEXT),
        requested_at=draw(WHEN))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
