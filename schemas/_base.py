from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime
from typing import Annotated, ClassVar, Final, Literal, Self
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

#: Version of the message format. A consumer rejects versions it does not know.
SCHEMA_VERSION: Final = 1

TenantId = Annotated[int, Field(gt=0, lt=2**63, description="The academy the data belongs to.")]
EntityId = Annotated[int, Field(gt=0, lt=2**63)]
S3Key = Annotated[str, Field(min_length=1, max_length=1024)]
ShortText = Annotated[str, Field(max_length=200)]

def tenant_prefix(tenant_id: int) -> str:
    """The S3 prefix every object of tenant ``tenant_id`` lies under: ``tenants/<id>/``."""
    return f"tenants/{tenant_id}/"


#: The writer's two queues: ``fast`` for small state changes, ``bulk`` for large row sets.
Lane = Literal["fast", "bulk"]


class Contract(BaseModel):
    """Base of every job and intent: immutable, strict about unknown fields. A validation
    error's text never quotes the input (it may hold a student's data); :class:`DecodeError`
    quotes the offending value, shortened."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True,
                              hide_input_in_errors=True)


class BaseIntent(Contract):
    """Base of every write intent, the built-in ones and those of plug-in kinds.

    A subclass declares ``kind: Literal["family.name"] = "family.name"`` and its fields. What
    the platform needs to route, batch and coalesce it is declared here and overridden where
    the defaults do not fit:

    - :attr:`lane`: ``"fast"`` (default) or ``"bulk"``;
    - :meth:`weight`: the rows it writes, for the writer's batch limits (default 1);
    - :meth:`entity_key`: what it changes; intents of one key in a batch coalesce into one
      change (default: the intent itself, so nothing coalesces);
    - :meth:`rank`: the order of changes to one entity; a change of lower rank never overwrites
      one of higher rank (default ``(0,)``, so the later arrival wins);
    - :meth:`matches` and :meth:`describe`: how ``jobplatform log show`` filters and prints it.
    """

    lane: ClassVar[Lane] = "fast"

    schema_version: Literal[1] = 1
    intent_id: UUID = Field(default_factory=uuid4)
    tenant_id: TenantId
    occurred_at: AwareDatetime
    kind: str

    @property
    def family(self) -> str:
        """The part of ``kind`` before the first dot (``video`` for ``video.ready``)."""
        return self.kind.split(".", 1)[0]

    def weight(self) -> int:
        return 1

    def entity_key(self) -> tuple[Hashable, ...]:
        return (self.kind, self.intent_id)

    def rank(self) -> tuple[int, ...]:
        return (0,)

    def matches(self, entity: str) -> Self | None:
        """This intent (or the part of it) that concerns ``entity``, else None.

        The default compares ``entity`` with the intent id and each part of the entity key.
        """
        wanted = entity.strip().lower()
        parts = (self.intent_id, *self.entity_key()[1:])
        return self if any(str(part).lower() == wanted for part in parts) else None

    def describe(self) -> str:
        """One line a person can read."""
        key = " ".join(str(part) for part in self.entity_key()[1:])
        return f"{self.kind:<16} tenant {self.tenant_id}  {self.occurred_at.isoformat()}  {key}"


class BaseJob(Contract):
    """Base of every job message an API service publishes.

    A subclass declares ``kind: Literal["family.verb"]`` and :attr:`job_id`, the id its progress
    and status go by. Its actor name and queue are declared by the kind that registers it
    (:class:`jobplatform.kinds.JobType`).
    """

    schema_version: Literal[1] = 1
    tenant_id: TenantId
    requested_at: AwareDatetime = Field(default_factory=lambda: datetime.now().astimezone())
    kind: str

    @property
    def job_id(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} does not define job_id")

