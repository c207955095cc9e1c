"""The built-in write intents (video and roster): what actors ask the writer to apply.

Every intent carries a unique ``intent_id`` (the writer applies each id at most once), the
tenant, and ``occurred_at``: the moment it happened, written to the rows as their timestamp so
that replaying the intent log is deterministic. State changes are ordered by
:func:`intent_rank` and never move backwards.

:func:`decode_intent` reads these built-in families only; the platform's processes decode
through the registry of kinds (:mod:`jobplatform.kinds`), which holds plug-in kinds too.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from datetime import date
from typing import Annotated, Any, ClassVar, Literal, Self
from uuid import UUID

from pydantic import Field, TypeAdapter, ValidationInfo, field_validator

from schemas._base import BaseIntent, Contract, EntityId, Lane, S3Key, ShortText, tenant_prefix
from schemas.jobs import _decode, check_key

#: A Korean mobile number in its canonical form.
PHONE_PATTERN = r"^01[016789]-\d{3,4}-\d{4}$"
Phone = Annotated[str, Field(pattern=PHONE_PATTERN)]


def tenant_key(key: str, info: ValidationInfo) -> str:
    """``key`` if it is a safe key (:func:`~schemas.jobs.check_key`) under the intent's tenant
    prefix (``tenants/<tenant_id>/``); a ``ValueError`` otherwise.

    An intent's S3 keys point rows at objects, so one tenant's intent must never name another
    tenant's files. The check needs ``tenant_id``, validated before every other field; when it
    is itself invalid, its own error is reported and this check is skipped.
    """
    check_key(key)
    tenant_id = info.data.get("tenant_id")
    if tenant_id is not None and not key.startswith(tenant_prefix(tenant_id)):
        raise ValueError(f"{key!r} is not under the tenant's prefix {tenant_prefix(tenant_id)!r}")
    return key


# --- video ---------------------------------------------------------------------------------

_VIDEO_RANK = {"video.queued": 0, "video.processing": 1, "video.ready": 2, "video.failed": 2}


class _VideoIntent(BaseIntent):
    video_id: UUID
    attempt: Annotated[int, Field(ge=1, le=1000)] = 1

    def entity_key(self) -> tuple[Hashable, ...]:
        return ("video", self.video_id)

    def rank(self) -> tuple[int, ...]:
        return (self.attempt, _VIDEO_RANK[self.kind])

    def describe(self) -> str:
        head = f"{self.kind:<16} tenant {self.tenant_id}  {self.occurred_at.isoformat()}"
        return f"{head}  video {self.video_id}  attempt {self.attempt}{self._detail()}"

    def _detail(self) -> str:
        return ""


class VideoQueued(_VideoIntent):
    """The video was uploaded and its encode job published."""

    kind: Literal["video.queued"] = "video.queued"
    source_key: S3Key

    _source_in_tenant = field_validator("source_key")(tenant_key)

    def _detail(self) -> str:
        return f"  {self.source_key}"


class VideoProcessing(_VideoIntent):
    """An actor started encoding; ``occurred_at`` is the start time."""

    kind: Literal["video.processing"] = "video.processing"


class VideoRendition(Contract):
    name: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,16}$")]
    width: Annotated[int, Field(gt=0, le=8192)]
    height: Annotated[int, Field(gt=0, le=8192)]
    bandwidth: Annotated[int, Field(gt=0)]
    playlist_key: S3Key


class VideoReady(_VideoIntent):
    """The HLS output is in S3; ``hls_key`` is the master playlist."""

    kind: Literal["video.ready"] = "video.ready"
    hls_key: S3Key
    duration_s: Annotated[float, Field(gt=0, lt=86_400)]
    renditions: Annotated[tuple[VideoRendition, ...], Field(min_length=1, max_length=10)]

    _hls_in_tenant = field_validator("hls_key")(tenant_key)

    @field_validator("renditions")
    @classmethod
    def _playlists_in_tenant(cls, renditions: tuple[VideoRendition, ...],
                             info: ValidationInfo) -> tuple[VideoRendition, ...]:
        for n, rendition in enumerate(renditions):
            try:
                tenant_key(rendition.playlist_key, info)
            except ValueError as exc:
                raise ValueError(f"{n}.playlist_key: {exc}") from exc
        return renditions

    def _detail(self) -> str:
        return f"  {self.hls_key}  {self.duration_s:.1f}s"


class VideoFailed(_VideoIntent):
    """Encoding failed for a reason a person can read."""

    kind: Literal["video.failed"] = "video.failed"
    reason: Annotated[str, Field(min_length=1, max_length=2000)]

    def _detail(self) -> str:
        return f"  {self.reason[:80]}"


# --- roster --------------------------------------------------------------------------------

class StudentRow(Contract):
    """One normalised roster row. ``phone`` identifies the student within the tenant."""

    source_row: Annotated[int, Field(ge=1, description="1-based row number in the source sheet.")]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    phone: Phone
    parent_phone: Phone | None = None
    school: Annotated[str | None, Field(max_length=100)] = None
    grade: Annotated[int | None, Field(ge=1, le=12)] = None
    birth_date: date | None = None


class RosterChunk(BaseIntent):
    """A chunk of valid rows of one import: upsert the students, enroll them in the lecture."""

    lane: ClassVar[Lane] = "bulk"

    kind: Literal["roster.chunk"] = "roster.chunk"
    import_id: UUID
    lecture_id: EntityId
    chunk_index: Annotated[int, Field(ge=0)]
    rows: Annotated[tuple[StudentRow, ...], Field(min_length=1, max_length=5000)]

    def weight(self) -> int:
        return len(self.rows)

    def entity_key(self) -> tuple[Hashable, ...]:
        return ("roster.chunk", self.import_id, self.chunk_index)

    def rank(self) -> tuple[int, ...]:
        return (0, self.chunk_index)

    def matches(self, entity: str) -> Self | None:
        """The chunk for its import id; for a phone, the chunk narrowed to that student."""
        entity = entity.strip()
        if str(self.import_id) == entity.lower():
            return self
        rows = tuple(r for r in self.rows if entity in (r.phone, r.parent_phone))
        return self.model_copy(update={"rows": rows}) if rows else None

    def describe(self) -> str:
        head = f"{self.kind:<16} tenant {self.tenant_id}  {self.occurred_at.isoformat()}"
        phones = ", ".join(r.phone for r in self.rows[:3])
        more = ", ..." if len(self.rows) > 3 else ""
        return (f"{head}  import {self.import_id}  lecture {self.lecture_id}  "
                f"chunk {self.chunk_index}  {len(self.rows)} rows ({phones}{more})")


class RowError(Contract):
    row: Annotated[int, Field(ge=1)]
    column: ShortText
    reason: Annotated[str, Field(max_length=500)]


RosterStatusName = Literal["queued", "parsing", "writing", "failed"]


_ROSTER_RANK = {"queued": 0, "parsing": 1, "writing": 2, "failed": 3}


class RosterStatus(BaseIntent):
    """A roster import changed state.

    ``writing`` means every row is parsed and ``chunks`` chunks were sent; the writer marks the
    import ``done`` once it has applied all of them. ``empty_slots`` counts the rows skipped as
    empty numbered slots (neither valid nor invalid, not in ``total``).
    """

    kind: Literal["roster.status"] = "roster.status"
    import_id: UUID
    lecture_id: EntityId
    status: RosterStatusName
    source_key: S3Key | None = None
    total: Annotated[int | None, Field(ge=0)] = None
    valid: Annotated[int | None, Field(ge=0)] = None
    invalid: Annotated[int | None, Field(ge=0)] = None
    duplicates: Annotated[int | None, Field(ge=0)] = None
    empty_slots: Annotated[int | None, Field(ge=0)] = None
    chunks: Annotated[int | None, Field(ge=0)] = None
    report_key: S3Key | None = None
    error: Annotated[str | None, Field(max_length=2000)] = None
    sample_errors: Annotated[tuple[RowError, ...], Field(max_length=100)] = ()

    @field_validator("source_key", "report_key")
    @classmethod
    def _keys_in_tenant(cls, key: str | None, info: ValidationInfo) -> str | None:
        return None if key is None else tenant_key(key, info)

    def entity_key(self) -> tuple[Hashable, ...]:
        return ("roster", self.import_id)

    def rank(self) -> tuple[int, ...]:
        return (0, _ROSTER_RANK[self.status])

    def describe(self) -> str:
        head = f"{self.kind:<16} tenant {self.tenant_id}  {self.occurred_at.isoformat()}"
        counts = "" if self.total is None else f"  {self.valid}/{self.total} valid"
        return f"{head}  import {self.import_id}  {self.status}{counts}"


Intent = Annotated[
    VideoQueued | VideoProcessing | VideoReady | VideoFailed | RosterChunk | RosterStatus,
    Field(discriminator="kind"),
]
AnyIntent = VideoQueued | VideoProcessing | VideoReady | VideoFailed | RosterChunk | RosterStatus
_intent_adapter: TypeAdapter[AnyIntent] = TypeAdapter(Intent)

INTENT_KINDS: frozenset[str] = frozenset(
    m.model_fields["kind"].default
    for m in (VideoQueued, VideoProcessing, VideoReady, VideoFailed, RosterChunk, RosterStatus)
)

def intent_rank(intent: BaseIntent) -> tuple[int, ...]:
    """Order of a state change within its entity: a change of lower rank never overwrites."""
    return intent.rank()


def decode_intent(data: bytes | str | Mapping[str, Any]) -> AnyIntent:
    """Decode a built-in write intent; raise :class:`~schemas.DecodeError` naming each bad field."""
    result: AnyIntent = _decode(_intent_adapter, "intent", data)
    return result


def encode_intent(intent: BaseIntent) -> dict[str, Any]:
    """The JSON-compatible form of an intent, as it travels and as the log stores it."""
    return intent.model_dump(mode="json")


def intent_json(intent: BaseIntent) -> bytes:
    """The intent as compact JSON (UTF-8), as the write-intent log stores it and as it travels
    (one call of pydantic's serializer: the JSON of :func:`encode_intent`, without building
    the dictionary first)."""
    return intent.model_dump_json().encode()
