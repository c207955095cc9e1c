"""Sending write intents to the writer's queues.

Each intent goes to the lane its model declares (``fast`` for status changes, ``bulk`` for row
sets such as roster chunks); the writer drains fast first, so a video's status never waits
behind a large import. With writer shards (``WRITER_SHARDS``), the lanes are those of the
shard its tenant routes to (:meth:`jobplatform.broker.Queues.lanes_for`), so every intent of an
entity reaches one shard, in order. It works on either broker (Redis or RabbitMQ). An intent
of a kind the registry does not hold is refused here, at the producer, instead of reaching the
writer's dead letters. Each message is signed with the broker's key (:mod:`jobplatform.auth`):
the writer applies nothing else.

An intent travels as its JSON text (the message's one argument is a string): encoded by
pydantic's serializer in one call, signed as those bytes, carried by the broker's envelope as
a single string, and validated by the writer straight from that text. A writer also accepts
the older form, the intent as a JSON object.

With a :class:`~jobplatform.backpressure.Backpressure` (the actors pass the one
``WRITER_BACKLOG_*`` describe), :meth:`IntentEmitter.emit` first waits while the writer's
backlog is over its bound, instead of filling Redis.

The emitter keeps, per thread, the time it spent encoding intents and sending them
(:meth:`IntentEmitter.timings`), so an actor can say where its time went.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import dramatiq

from jobplatform.auth import MAC_OPTION, Keyring, canonical_body, keyring_of
from jobplatform.backpressure import Backpressure
from jobplatform.broker import WRITE_INTENT, Queues, make_message
from jobplatform.kinds import Registry, UnknownKind, default_registry
from schemas import BaseIntent, FieldError


@dataclass(slots=True)
class EmitTimings:
    """What one thread's :meth:`IntentEmitter.emit` calls cost so far."""

    intents: int = 0
    encode_s: float = 0.0
    """Building the message: the intent's wire form and its MAC."""
    send_s: float = 0.0
    """``broker.enqueue``: dramatiq's envelope (its JSON), its middleware, the Redis call."""


class IntentEmitter:
    """Routes each intent to its lane and enqueues it on the broker."""

    def __init__(self, broker: dramatiq.Broker, queues: Queues,
                 registry: Registry | None = None, keyring: Keyring | None = None,
                 backpressure: Backpressure | None = None) -> None:
        self.broker = broker
        self.backpressure = backpressure
        self.queues = queues
        self.registry = registry if registry is not None else default_registry()
        self.keyring = keyring if keyring is not None else keyring_of(broker)
        self._local = threading.local()

    def lane(self, intent: BaseIntent) -> str:
        fast, bulk = self.queues.lanes_for(intent.tenant_id)
        return bulk if intent.lane == "bulk" else fast

    def emit(self, intent: BaseIntent) -> None:
        if self.registry.kind_for(intent.kind) is None:
            raise UnknownKind("intent", [FieldError("kind", self.registry.unknown(intent.kind))])
        if self.backpressure is not None:
            self.backpressure.wait(self.queues.lanes_for(intent.tenant_id))
        started = time.perf_counter()
        payload = intent.model_dump_json()
        mac = self.keyring.mac(WRITE_INTENT, canonical_body((payload,)))
        message = make_message(self.lane(intent), WRITE_INTENT, payload,
                               intent_id=str(intent.intent_id), **{MAC_OPTION: mac})
        encoded = time.perf_counter()
        self.broker.enqueue(message)
        timings = self.timings()
        timings.intents += 1
        timings.encode_s += encoded - started
        timings.send_s += time.perf_counter() - encoded

    def timings(self) -> EmitTimings:
        """The calling thread's running totals (each thread of an actor counts its own)."""
        found: EmitTimings | None = getattr(self._local, "timings", None)
        if found is None:
            found = self._local.timings = EmitTimings()
        return found
