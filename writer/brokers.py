"""The writer's lanes on either broker: :func:`open_lane` and :func:`requeue_held`.

On Redis a lane is :class:`writer.lanes.Lane` (dramatiq's Redis consumer, with the broker's own
Lua commands for batch acks and requeues); on RabbitMQ it is
:class:`writer.rabbit_lane.RabbitLane` (dramatiq's RabbitMQ consumer: prefetch, an ack per
message, nack with requeue). The engine sees the same lane either way.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from jobplatform.auth import Keyring
from jobplatform.kinds import Registry
from writer.lanes import Lane, requeue_unacked

__all__ = ["open_lane", "requeue_held"]


def open_lane(broker: dramatiq.Broker, queue: str, *, registry: Registry, keyring: Keyring,
              max_intent_bytes: int, poll_timeout_ms: int, prefetch: int,
              idle_poll_timeout_ms: int | None = None) -> Lane:
    """A lane consuming ``queue`` on ``broker``; ``prefetch`` is used by RabbitMQ (on Redis
    each fetch asks for what the batch has room for), ``idle_poll_timeout_ms`` by Redis (a
    RabbitMQ consumer is sent its messages: it does not poll)."""
    if isinstance(broker, RedisBroker):
        return Lane(broker, queue, registry=registry, keyring=keyring,
                    max_intent_bytes=max_intent_bytes, poll_timeout_ms=poll_timeout_ms,
                    idle_poll_timeout_ms=idle_poll_timeout_ms)
    from writer.rabbit_lane import RabbitLane

    return RabbitLane(broker, queue, registry=registry, keyring=keyring,
                      max_intent_bytes=max_intent_bytes, poll_timeout_ms=poll_timeout_ms,
                      prefetch=prefetch)


def requeue_held(broker: dramatiq.Broker, queue: str, worker_id: str) -> int:
    """Put back what the consumer ``worker_id`` (an earlier writer) holds on ``queue``.

    Redis keeps a dead consumer's messages until its heartbeat times out (60 s), so the writer
    taking over moves them back itself. RabbitMQ requeues a consumer's messages as soon as its
    connection is gone (a killed process at once; a vanished host after the AMQP heartbeat
    timeout), so there is nothing to do: 0.
    """
    if isinstance(broker, RedisBroker):
        return requeue_unacked(broker, queue, worker_id)
    return 0
