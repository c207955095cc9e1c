from __future__ import annotations

from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field

#: Version of the message format. A consumer rejects versions it does not know.
SCHEMA_VERSION: Final = 1

TenantId = Annotated[int, Field(gt=0, lt=2**63, description="The academy the data belongs to.")]
EntityId = Annotated[int, Field(gt=0, lt=2**63)]
S3Key = Annotated[str, Field(min_length=1, max_length=1024)]
ShortText = Annotated[str, Field(max_length=200)]


class Contract(BaseModel):
    """Base of every job and intent: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)
