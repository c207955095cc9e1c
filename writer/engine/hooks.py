"""Hooks: how stats, clocks, metrics and per-kind work plug into the writer's loop.

Subclass :class:`Hooks`, override the methods you need and pass instances to the writer
(``Writer(..., hooks=[MyHooks()])``). Every method is a documented no-op; they run on the
writer's loop thread, in the order the hooks were given, so keep them short. With the fast
lane on its own connection (``WRITER_FAST_CONNECTION``), ``before_commit``, ``after_commit``,
``on_dead_letter``, ``before_ack`` and ``after_ack`` are also called from the fast lane's
thread for its batches: a hook that keeps state must be safe from two threads. A hook that raises
is logged and ignored: it never stops the writer or undoes a commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schemas import BaseIntent
    from writer.batcher import Batch
    from writer.engine.batch import BatchResult
    from writer.lanes import Item

__all__ = ["Commit", "DeadLetterEntry", "Hooks"]


@dataclass(frozen=True, slots=True)
class Commit:
    """One committed batch transaction."""

    batch_seq: int
    items: Sequence[Item]
    """The messages the transaction applied (a split batch's half, when bisecting)."""
    intents: Sequence[BaseIntent]
    """The intents newly applied, in apply order (as the write-intent log records them)."""
    result: BatchResult
    started: float
    """``time.perf_counter()`` before BEGIN."""
    ended: float
    """``time.perf_counter()`` after COMMIT."""

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1000


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """A message the writer stored in ``writer_dead_letters`` instead of applying it."""

    queue: str
    reason: str
    body: str
    intent_id: Any = None
    kind: str | None = None
    tenant_id: int | None = None
    intent: BaseIntent | None = None
    """The decoded intent, when it decoded (a poison intent); None for a malformed message."""
    message_id: str | None = None
    """The broker's id of the message (a redelivered message is recorded once)."""


class Hooks:
    """The writer's hook points, in the order one pass of its loop reaches them."""

    def on_role_change(self, old: str, new: str) -> None:
        """The writer became ``standby``, ``active`` or ``stopped``."""

    def before_collect(self) -> None:
        """The writer is about to take a batch from its lanes."""

    def after_collect(self, batch: Batch) -> None:
        """A batch was taken (possibly empty: the writer was idle)."""

    def before_pace(self, batch: Batch) -> None:
        """The batch may wait for the database time budget."""

    def after_pace(self, batch: Batch) -> None:
        """The wait, if any, is over."""

    def before_commit(self, items: Sequence[Item]) -> None:
        """A transaction is about to begin for ``items`` (again for each half of a split)."""

    def after_commit(self, commit: Commit) -> None:
        """The transaction committed: its intents are applied and in the write-intent log."""

    def on_dead_letter(self, entries: Sequence[DeadLetterEntry]) -> None:
        """Messages were stored as dead letters (committed) and will be acknowledged."""

    def before_ack(self, items: Sequence[Item]) -> None:
        """The batch's messages are about to be acknowledged."""

    def after_ack(self, items: Sequence[Item]) -> None:
        """The batch's messages are acknowledged."""
