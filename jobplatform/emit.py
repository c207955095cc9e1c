"""Sending write intents to the writer's queues.

Each intent goes to the lane its model declares (``fast`` for status changes, ``bulk`` for row
sets such as roster chunks); the writer drains fast first, so a video's status never waits
behind a large import. With writer shards (``WRITER_SHARDS``), the lanes are those of the
shard its tenant routes to (:meth:`jobplatform.broker.Queues.lanes_for`), so every intent of an
entity reaches one shard, in order. It works on either broker (Redis or RabbitMQ). An intent
of a kind the registry does not hold is refused here, at the producer, instead of reaching the
writer's dead letters. Each message is signed with the broker's key (:mod:`jobplatform.auth`):
the writer applies nothing else.
"""

from __future__ import annotations

import dramatiq

from jobplatform.auth import MAC_OPTION, Keyring, canonical_body, keyring_of
from jobplatform.broker import WRITE_INTENT, Queues, make_message
from jobplatform.kinds import Registry, UnknownKind, default_registry
from schemas import BaseIntent, FieldError, encode_intent


class IntentEmitter:
    """Routes each intent to its lane and enqueues it on the broker."""

    def __init__(self, broker: dramatiq.Broker, queues: Queues,
                 registry: Registry | None = None, keyring: Keyring | None = None) -> None:
        self.broker = broker
        self.queues = queues
        self.registry = registry if registry is not None else default_registry()
        self.keyring = keyring if keyring is not None else keyring_of(broker)

    def lane(self, intent: BaseIntent) -> str:
        fast, bulk = self.queues.lanes_for(intent.tenant_id)
        return bulk if intent.lane == "bulk" else fast

    def emit(self, intent: BaseIntent) -> None:
        if self.registry.kind_for(intent.kind) is None:
            raise UnknownKind("intent", [FieldError("kind", self.registry.unknown(intent.kind))])
        payload = encode_intent(intent)
        mac = self.keyring.mac(WRITE_INTENT, canonical_body((payload,)))
        message = make_message(self.lane(intent), WRITE_INTENT, payload,
                               intent_id=str(intent.intent_id), **{MAC_OPTION: mac})
        self.broker.enqueue(message)
