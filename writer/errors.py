"""The writer's errors: a small tree, one line each.

Driver errors are translated where the writer meets the database (``raise ... from exc``), so
callers decide on the class alone: roll back and split the batch on :class:`DataApplyError`,
hold the batch and back off on :class:`DatabaseUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from jobplatform.errors import JobPlatformError


class WriterError(JobPlatformError):
    """Base of every error the writer raises on purpose."""


class ApplyError(WriterError):
    """A batch could not be applied; its transaction must be rolled back."""


class DataApplyError(ApplyError):
    """An intent of the batch is wrong for the database; split the batch to isolate it."""

    def __init__(self, reason: str, intent_ids: Iterable[UUID] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        #: The intents known to cause it; empty when only splitting the batch can tell.
        self.intent_ids: tuple[UUID, ...] = tuple(intent_ids)


class DatabaseUnavailable(ApplyError):
    """PostgreSQL cannot be reached, is restarting or cancelled the work; retry the batch later."""
