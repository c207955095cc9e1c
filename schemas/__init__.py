"""The platform's contracts: job messages and write intents.

This package imports nothing else of the project, so API services, actors and the writer
can all depend on it.
"""

from schemas._base import SCHEMA_VERSION, BaseIntent, BaseJob, Contract, Lane, tenant_prefix
from schemas.errors import DecodeError, FieldError
from schemas.intents import (
    INTENT_KINDS,
    Intent,
    RosterChunk,
    RosterStatus,
    RosterStatusName,
    StudentRow,
    VideoFailed,
    VideoProcessing,
    VideoQueued,
    VideoReady,
    VideoRendition,
    decode_intent,
    encode_intent,
    intent_rank,
)
from schemas.jobs import (
    DEFAULT_LADDER,
    EncodeVideo,
    ImportRoster,
    Job,
    Rendition,
    SourceJob,
    decode_job,
)

__all__ = [
    "DEFAULT_LADDER",
    "INTENT_KINDS",
    "SCHEMA_VERSION",
    "BaseIntent",
    "BaseJob",
    "Contract",
    "DecodeError",
    "EncodeVideo",
    "FieldError",
    "ImportRoster",
    "Intent",
    "Job",
    "Lane",
    "Rendition",
    "RosterChunk",
    "RosterStatus",
    "RosterStatusName",
    "SourceJob",
    "StudentRow",
    "VideoFailed",
    "VideoProcessing",
    "VideoQueued",
    "VideoReady",
    "VideoRendition",
    "decode_intent",
    "decode_job",
    "encode_intent",
    "intent_rank",
    "tenant_prefix",
]
