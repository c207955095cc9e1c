"""The writer's lanes on RabbitMQ, over dramatiq's broker-neutral consumer (``broker.consume``).

:class:`RabbitLane` offers what :class:`writer.lanes.Lane` offers the engine (take, put back,
ack, release), on the consumer that dramatiq's ``RabbitmqBroker.consume`` returns:

- **Prefetch**: the channel's ``basic_qos`` prefetch is ``WRITER_BATCH_MAX_INTENTS``, so
  RabbitMQ streams a batch's worth of messages ahead; they wait in the consumer's buffer and a
  take that finds the buffer empty returns at once unless the writer is idle (then it waits up
  to the poll timeout).
- **An ack per message**, after the commit: one ``basic_ack`` per message, or a single
  ``multiple`` ack when the batch holds every message delivered before its last one (the usual
  case: batches take messages in delivery order). Acks need no reply, so a batch costs no round
  trip.
- **Requeue**: :meth:`RabbitLane.release` (a stop during a database outage, a lost lock, a
  broker error) nacks everything the lane holds with ``requeue=True`` and drops the consumer,
  whose next use opens a new one. RabbitMQ puts requeued messages back at their places in the
  queue, and requeues whatever a consumer whose connection died held.
- **Outages**: while the database is down the batch is held (not acked); :meth:`keepalive`,
  called from the writer's loop as it waits, answers RabbitMQ's heartbeats so the connection,
  and the messages it holds, stay. If the connection is lost anyway, the server requeues its
  messages; the acks of those (stale delivery tags) are skipped, and their redelivery is
  skipped by the ledger.

Malformed intents are dead-lettered by the writer as on Redis. A message that is not a dramatiq
envelope at all is nacked by dramatiq's consumer to the queue's ``.XQ`` (RabbitMQ's dead-letter
queue), which ``jobplatform watch`` lists.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import dramatiq
import pika.exceptions  # type: ignore[import-untyped]
from dramatiq.errors import ConnectionClosed

from jobplatform.auth import Keyring
from jobplatform.kinds import Registry
from jobplatform.logging import get_logger
from writer.lanes import Item, Lane, inspect_message

log = get_logger("writer")

_PIKA_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError,
                AssertionError)


class RabbitLane(Lane):
    """One of the writer's queues on RabbitMQ, consumed in batches."""

    def __init__(self, broker: dramatiq.Broker, queue: str, *, registry: Registry,
                 keyring: Keyring, max_intent_bytes: int, poll_timeout_ms: int,
                 prefetch: int = 2000) -> None:
        self.broker: Any = broker
        self.queue = queue
        self.registry = registry
        self.keyring = keyring
        self.max_intent_bytes = max_intent_bytes
        self.poll_timeout_ms = poll_timeout_ms
        self.prefetch = prefetch
        self._pending: deque[Item] = deque()
        #: Delivery tag -> message, for every message taken from the current consumer and not
        #: acked (batch in hand and put-back ones). A tag of an earlier consumer is stale.
        self._held: dict[int, Any] = {}
        self.undecodable: list[bytes] = []
        self.spent: dict[str, float] = {"fetch": 0.0, "idle": 0.0, "decode": 0.0}
        self.consumer: Any = None
        self._started = False
        self._open()

    # --- the consumer ----------------------------------------------------------------------

    def _open(self) -> Any:
        if self.consumer is None:
            self.consumer = self.broker.consume(self.queue, prefetch=self.prefetch,
                                                timeout=self.poll_timeout_ms)
            self._held = {}
            self._started = False
            #: Every delivery tag up to ``_floor`` is acked; ``_settled``: acked ones above it.
            #: (A message dramatiq itself dead-lettered leaves a gap: acks are then one each.)
            self._floor = 0
            self._settled: set[int] = set()
        return self.consumer

    def _waiting(self) -> int:
        """Messages delivered to the consumer and not taken yet (no I/O)."""
        if self.consumer is None:
            return 0
        try:
            return int(self.consumer.channel.get_waiting_message_count())
        except _PIKA_ERRORS:
            return 0

    def _lost(self, exc: BaseException) -> ConnectionClosed:
        """The connection or channel failed: the server requeues what it held."""
        self._drop()
        return ConnectionClosed(exc)  # type: ignore[no-untyped-call]

    def _drop(self) -> None:
        consumer, self.consumer = self.consumer, None
        self._held = {}
        self._pending.clear()
        if consumer is not None:
            try:
                consumer.close()
            except Exception as exc:  # already closed: nothing to hand back
                log.debug("rabbitmq consumer close failed", queue=self.queue, error=str(exc))

    # --- the lane --------------------------------------------------------------------------

    def take(self, want: int, *, wait: bool) -> list[Item]:
        """Up to ``want`` items: put-back ones first, then what the consumer has buffered.

        ``wait`` lets an empty take wait up to the poll timeout; otherwise it returns at once.
        """
        out: list[Item] = []
        while self._pending and len(out) < want:
            out.append(self._pending.popleft())
        if len(out) >= want:
            return out
        if self.consumer is not None and self.consumer.connection.is_closed:
            exc = ConnectionClosed("the consumer's connection is closed")  # type: ignore[no-untyped-call]
            raise self._lost(exc)
        try:
            consumer = self._open()
            # dramatiq's consumer subscribes at its first next(): the first take waits for the
            # subscription (and up to the poll timeout for a message).
            block = not self._started or (wait and not out)
            self._started = True
            while len(out) < want:
                if not block and not self._waiting():
                    # what already arrived on the socket, without waiting for more
                    consumer.connection.process_data_events(0)
                    if not self._waiting():
                        break
                fetching = time.perf_counter()
                message = next(consumer)
                self.spent["idle" if message is None else "fetch"] += (
                    time.perf_counter() - fetching)
                if message is None:  # the poll timed out (or dramatiq dead-lettered junk)
                    break
                block = False
                self._held[message._tag] = message
                inspecting = time.perf_counter()
                out.append(inspect_message(message, self.queue,
                                           max_bytes=self.max_intent_bytes,
                                           registry=self.registry, keyring=self.keyring))
                self.spent["decode"] += time.perf_counter() - inspecting
        except ConnectionClosed as exc:
            raise self._lost(exc) from exc
        except _PIKA_ERRORS as exc:
            raise self._lost(exc) from exc
        return out

    @property
    def has_pending(self) -> bool:
        return bool(self._pending) or self._waiting() > 0

    def ack(self, items: Sequence[Item]) -> None:
        """Acknowledge ``items`` (after their commit). Items of a consumer that is gone are
        skipped: the server requeued them, and the ledger skips their redelivery."""
        consumer = self.consumer
        tags = [item.message._tag for item in items
                if consumer is not None and self._held.get(item.message._tag) is item.message]
        if len(tags) < len(items):
            log.info("acks skipped: their connection was lost and RabbitMQ requeued them",
                     queue=self.queue, messages=len(items) - len(tags))
        if not tags:
            return
        held = self._held
        tags.sort()
        top = tags[-1]
        try:
            if tags[0] == self._floor + 1 and top - tags[0] + 1 == len(tags):
                # every tag up to ``top`` is settled by this ack: one frame for the batch
                consumer.channel.basic_ack(delivery_tag=top, multiple=True)
            else:
                for tag in tags:
                    consumer.channel.basic_ack(delivery_tag=tag)
        except _PIKA_ERRORS as exc:
            raise self._lost(exc) from exc
        for tag in tags:
            held.pop(tag, None)
            consumer.known_tags.discard(tag)
        self._settled.update(tags)
        while self._floor + 1 in self._settled:
            self._floor += 1
            self._settled.discard(self._floor)

    def ack_ids(self, redis_ids: Sequence[str]) -> None:
        """Redis message ids: none exist on RabbitMQ (undecodable messages never reach here)."""

    def quarantine(self) -> list[tuple[str, bytes]]:
        self.undecodable = []
        return []

    def keepalive(self) -> None:
        """Answer RabbitMQ's heartbeats while the writer waits (a database outage)."""
        consumer = self.consumer
        if consumer is None:
            return
        if consumer.connection.is_closed:
            log.warning("rabbitmq connection closed; its messages are requeued by the server",
                        queue=self.queue)
            self._drop()
            return
        try:
            consumer.connection.process_data_events(0)
        except _PIKA_ERRORS as exc:
            log.warning("rabbitmq connection lost; its messages are requeued by the server",
                        queue=self.queue, error=str(exc))
            self._drop()

    def release(self) -> int:
        """Put every message this lane holds back on the queue (nack with requeue), then drop
        the consumer; the next take opens a new one. Returns the messages handed back."""
        held = len(self._held) + self._waiting()
        consumer = self.consumer
        if consumer is not None:
            # (a closed channel's messages are requeued by the server)
            with contextlib.suppress(*_PIKA_ERRORS):
                consumer.channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
        self._drop()
        self.undecodable = []
        return held

    def close(self) -> None:
        self._drop()
