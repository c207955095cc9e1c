"""Jobs that fail to decode: what can still be read of them, to record them as failed.

A job with an invalid field (a bad source key, a ladder out of range) is not worth retrying,
but it must not vanish: when its ids can be read it is recorded as failed, with the decode
error as the reason, in its progress record and by an intent. A message whose ids cannot be
read is left to dramatiq's dead-letter queue (``<namespace>:<queue>.XQ``), which
``jobplatform watch`` counts.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["JobIds", "read_ids"]

_MAX_ID = 2**63


@dataclass(frozen=True, slots=True)
class JobIds:
    """The ids of an undecodable job that could be read; None where they could not."""

    tenant_id: int | None
    entity_id: uuid.UUID | None
    """``video_id`` or ``import_id``."""
    lecture_id: int | None = None
    attempt: int = 1


def read_ids(payload: Any, entity_key: str) -> JobIds:
    """The ids of ``payload`` (a job's JSON object) that are well formed."""
    if not isinstance(payload, Mapping):
        return JobIds(None, None)
    attempt = payload.get("attempt")
    return JobIds(
        tenant_id=_positive(payload.get("tenant_id")),
        entity_id=_uuid(payload.get(entity_key)),
        lecture_id=_positive(payload.get("lecture_id")),
        attempt=attempt if isinstance(attempt, int) and 1 <= attempt <= 1000 else 1,
    )


def _positive(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _MAX_ID:
        return value
    return None


def _uuid(value: Any) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
