"""The writer's engine: the run loop as named stages, the batch transaction, the hooks.

Nothing in it names a kind of intent: the registered kinds (:mod:`jobplatform.kinds`) apply
them.
"""

from writer.engine.apply import IntentLogWriter
from writer.engine.batch import BatchResult, KindTransaction, Prepared, apply_batch, prepare
from writer.engine.hooks import Commit, DeadLetterEntry, Hooks
from writer.engine.writer import Writer

__all__ = [
    "BatchResult",
    "Commit",
    "DeadLetterEntry",
    "Hooks",
    "IntentLogWriter",
    "KindTransaction",
    "Prepared",
    "Writer",
    "apply_batch",
    "prepare",
]
