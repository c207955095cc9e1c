"""Job messages: what API services publish and actors consume."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Field, TypeAdapter, ValidationError, field_validator

from schemas._base import SCHEMA_VERSION, BaseJob, Contract, EntityId, S3Key
from schemas.errors import DecodeError, FieldError


def check_key(key: str) -> str:
    """Reject object keys that could escape their prefix or name a local path."""
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError("must be a relative key without backslashes or NUL bytes")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError("must not contain empty, '.' or '..' path segments")
    if any(ord(c) < 0x20 for c in key):
        raise ValueError("must not contain control characters")
    return key


class Rendition(Contract):
    """One rung of an HLS ladder; a rung taller than the source is skipped."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,16}$")]
    height: Annotated[int, Field(ge=144, le=2160)]
    video_kbps: Annotated[int, Field(ge=100, le=50_000)]
    audio_kbps: Annotated[int, Field(ge=32, le=512)] = 128


DEFAULT_LADDER: tuple[Rendition, ...] = (
    Rendition(name="1080p", height=1080, video_kbps=5000),
    Rendition(name="720p", height=720, video_kbps=2800),
    Rendition(name="360p", height=360, video_kbps=800, audio_kbps=96),
)


class SourceJob(BaseJob):
    """A job whose input is a file already in S3 at ``source_key``, under its tenant's prefix."""

    source_key: S3Key

    @field_validator("source_key")
    @classmethod
    def _key_is_safe(cls, key: str) -> str:
        return check_key(key)


class EncodeVideo(SourceJob):
    """Encode an uploaded video (already in S3 at ``source_key``) to HLS."""

    kind: Literal["video.encode"] = "video.encode"
    video_id: UUID
    ladder: Annotated[tuple[Rendition, ...], Field(min_length=1, max_length=6)] = DEFAULT_LADDER
    attempt: Annotated[int, Field(ge=1, le=1000)] = 1

    @property
    def job_id(self) -> str:
        return video_job_id(self.video_id)


class ImportRoster(SourceJob):
    """Import a roster spreadsheet (already in S3 at ``source_key``) into a lecture."""

    kind: Literal["roster.import"] = "roster.import"
    import_id: UUID
    lecture_id: EntityId
    filename: Annotated[str | None, Field(max_length=255)] = None

    @property
    def job_id(self) -> str:
        return roster_job_id(self.import_id)


def video_job_id(video_id: UUID) -> str:
    """The id a video job's progress and status go by."""
    return f"video:{video_id}"


def roster_job_id(import_id: UUID) -> str:
    """The id a roster import's progress and status go by."""
    return f"roster:{import_id}"


Job = Annotated[EncodeVideo | ImportRoster, Field(discriminator="kind")]
_job_adapter: TypeAdapter[EncodeVideo | ImportRoster] = TypeAdapter(Job)


def decode_job(data: bytes | str | Mapping[str, Any]) -> EncodeVideo | ImportRoster:
    """Decode a built-in job message; raise :class:`DecodeError` naming each bad field."""
    job: EncodeVideo | ImportRoster = _decode(_job_adapter, "job", data)
    return job


def _decode(adapter: TypeAdapter[Any], what: str, data: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DecodeError(what, [FieldError("", f"not JSON: {exc}")]) from exc
    if not isinstance(data, Mapping):
        raise DecodeError(what, [FieldError("", f"expected an object, got {type(data).__name__}")])
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        message = f"unsupported version {version!r}, this build reads {SCHEMA_VERSION}"
        raise DecodeError(what, [FieldError("schema_version", message)])
    kind = data.get("kind")
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        label = f"{what} ({kind})" if isinstance(kind, str) and len(kind) < 40 else what
        error = DecodeError.from_validation(label, exc, kind)
    # Not chained: pydantic's own text quotes the whole input, which a logged traceback would
    # then carry; the DecodeError names every field and shortens the values it quotes.
    raise error
