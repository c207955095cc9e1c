"""Sending write intents to the writer's queues.

Status changes go to ``writes.fast``, roster chunks to ``writes.bulk``; the writer drains fast
first, so a video's status never waits behind a large import.
"""

from __future__ import annotations

import dramatiq

from jobplatform.broker import WRITE_INTENT, Queues, make_message
from schemas import RosterChunk, encode_intent
from schemas.intents import AnyIntent


class IntentEmitter:
    """Routes each intent to its lane and enqueues it on the broker."""

    def __init__(self, broker: dramatiq.Broker, queues: Queues) -> None:
        self.broker = broker
        self.queues = queues

    def lane(self, intent: AnyIntent) -> str:
        bulk = isinstance(intent, RosterChunk)
        return self.queues.writes_bulk if bulk else self.queues.writes_fast

    def emit(self, intent: AnyIntent) -> None:
        message = make_message(
            self.lane(intent), WRITE_INTENT, encode_intent(intent), intent_id=str(intent.intent_id)
        )
        self.broker.enqueue(message)
