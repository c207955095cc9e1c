"""The writer's two lanes (``writes.fast``, ``writes.bulk``) on dramatiq's Redis consumer.

A :class:`Lane` wraps the consumer that ``broker.consume()`` returns. The writer needs three
things the consumer does not offer as such, and gets them from the consumer's own knobs and
the broker's own commands and key layout:

- fetching exactly what a batch still has room for: ``consumer.prefetch`` is set before each
  fetch to the messages held plus the room, so a fetch brings at most that many;
- a poll that does not sleep when the other lane has work: ``consumer.timeout`` is the idle
  wait of one ``next()`` (0 makes it non-blocking);
- acks for a whole batch in one Redis round trip: the broker's ``ack`` command for many ids
  (the same two steps per id, on the key layout that dramatiq's dispatch.lua documents).

Every message is inspected here (:func:`inspect_message`): the queue is never trusted. Its
MAC is checked on the bytes taken for its size anyway (:mod:`jobplatform.auth`), so
authentication costs one HMAC per message.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import dramatiq
import pydantic_core
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

from jobplatform.auth import MAC_OPTION, Keyring, canonical_body
from jobplatform.broker import WRITE_INTENT
from jobplatform.kinds import Registry
from schemas import BaseIntent, DecodeError
from writer.gchold import gc_held

#: The broker's ``ack`` command (dramatiq's dispatch.lua) for many ids at once: refresh the
#: heartbeat, then for each id held by this consumer drop it from the held set and the bodies.
_ACK_MANY = """
redis.call("zadd", KEYS[1], ARGV[1], ARGV[2])
for i = 3, #ARGV do
    if redis.call("srem", KEYS[2], ARGV[i]) > 0 then
        redis.call("hdel", KEYS[3], ARGV[i])
    end
end
"""

#: Put a consumer's held messages back at the head of their queue: ``ARGV`` holds their ids in
#: the order they were sent; pushing them to the head last one first leaves them in that order,
#: in front of whatever was queued meanwhile. Only ids still held move (like the broker's own
#: ``requeue``), so a concurrent requeue or ack cannot put one back twice.
_REQUEUE_AT_HEAD = """
local moved = 0
for i = #ARGV, 1, -1 do
    if redis.call("srem", KEYS[1], ARGV[i]) > 0 and redis.call("hexists", KEYS[3], ARGV[i]) > 0 then
        redis.call("lpush", KEYS[2], ARGV[i])
        moved = moved + 1
    end
end
return moved
"""

@dataclass(slots=True)
class Item:
    """One message taken from a lane, inspected: ``intent`` is set, or ``reason`` says why not."""

    message: MessageProxy
    queue: str
    raw: bytes
    size: int
    intent: BaseIntent | None
    reason: str | None
    rows: int

    @property
    def body(self) -> str:
        """The intent as received (JSON text), for a dead letter."""
        return self.raw.decode("utf-8", "replace")

    @property
    def redis_id(self) -> str:
        return str(self.message.options["redis_message_id"])

    @property
    def timestamp_ms(self) -> int:
        return int(self.message.message_timestamp)

    def describe(self) -> dict[str, Any]:
        """``intent_id``, ``kind`` and ``tenant_id`` for a dead letter, from whatever decoded."""
        if self.intent is not None:
            return {"intent_id": self.intent.intent_id, "kind": self.intent.kind,
                    "tenant_id": self.intent.tenant_id}
        payload = self.message.args[0] if len(self.message.args) == 1 else None
        if isinstance(payload, str):
            try:
                payload = json.loads(payload)
            except ValueError:
                payload = None
        out: dict[str, Any] = {"intent_id": None, "kind": None, "tenant_id": None}
        if isinstance(payload, dict):
            with contextlib.suppress(ValueError):
                out["intent_id"] = UUID(str(payload.get("intent_id")))
            kind = payload.get("kind")
            if isinstance(kind, str):
                out["kind"] = kind[:100]
            tenant = payload.get("tenant_id")
            if isinstance(tenant, int) and not isinstance(tenant, bool) and 0 < tenant < 2**63:
                out["tenant_id"] = tenant
        return out


def _body_bytes(message: MessageProxy) -> bytes:
    if len(message.args) == 1:
        # The canonical body (jobplatform.auth) of a message of one argument: what its MAC covers.
        try:
            return canonical_body(message.args)
        except pydantic_core.PydanticSerializationError:
            pass
    payload: Any = message.args[0] if len(message.args) == 1 else list(message.args)
    return pydantic_core.to_json(payload, fallback=str)


def inspect_message(message: MessageProxy, queue: str, *, max_bytes: int,
                    registry: Registry, keyring: Keyring) -> Item:
    """Decode a message's intent, or say in ``reason`` why it cannot be applied: a message
    ``keyring`` does not authenticate is refused before its body is decoded."""
    raw = _body_bytes(message)
    size = len(raw)
    item = Item(message, queue, raw, size, None, None, 1)
    if message.actor_name != WRITE_INTENT:
        item.reason = (f"wrong actor {message.actor_name!r} on queue {queue!r}: the writer "
                       f"applies only {WRITE_INTENT!r} messages")
    elif len(message.args) != 1 or message.kwargs:
        item.reason = (f"expected the intent as the only argument, got {len(message.args)} "
                       f"positional and {len(message.kwargs)} keyword arguments")
    elif size > max_bytes:
        item.reason = f"intent of {size} bytes exceeds WRITER_MAX_INTENT_BYTES ({max_bytes})"
    elif (refused := keyring.check(WRITE_INTENT, raw, message.options.get(MAC_OPTION))):
        item.reason = refused
    else:
        try:
            item.intent = intent = registry.decode_intent(message.args[0])
        except DecodeError as exc:
            item.reason = str(exc)
        else:
            item.rows = intent.weight()
    return item


def _acks_key(broker: RedisBroker, worker_id: str, queue: str) -> str:
    # The set of fetched-but-unacked ids of one (broker, queue): see dramatiq's dispatch.lua.
    return f"{broker.namespace}:__acks__.{worker_id}.{queue}"


def requeue_unacked(broker: RedisBroker, queue: str, worker_id: str) -> int:
    """Move every message ``worker_id`` holds unacked on ``queue`` back to the head of the
    queue, in the order they were sent.

    The writer that takes over runs this for the writers before it, so their in-flight
    messages come back at once instead of after the broker's 60 s heartbeat timeout, and
    ahead of what was queued meanwhile (they were fetched first). The broker's own
    ``requeue`` appends them, in no order, behind everything else: a ``video.queued`` held by
    a dead writer would then come after the ``video.ready`` sent later.

    The held set keeps no order, so the messages are sorted by when they were sent
    (``message_timestamp``, milliseconds; ties by id). Returns the number put back.
    """
    ns = broker.namespace
    acks = _acks_key(broker, worker_id, queue)
    messages = f"{ns}:{queue}.msgs"
    ids = sorted(broker.client.smembers(acks))
    if not ids:
        return 0
    bodies = broker.client.hmget(messages, ids)
    ordered = sorted(zip(ids, bodies, strict=True), key=lambda pair: (_sent_at(pair[1]), pair[0]))
    script = broker.client.register_script(_REQUEUE_AT_HEAD)
    return int(script(keys=[acks, f"{ns}:{queue}", messages],
                      args=[redis_id for redis_id, _ in ordered]))


def _sent_at(body: bytes | None) -> int:
    """A stored message's ``message_timestamp``; 0 for one that does not decode."""
    if body is None:
        return 0
    try:
        return int(dramatiq.Message.decode(body).message_timestamp)
    except (dramatiq.errors.DecodeError, TypeError, ValueError):
        return 0


#: Seconds without a message after which a lane polls at its idle timeout.
IDLE_AFTER_S = 2.0


class Lane:
    """One of the writer's queues, consumed in batches.

    A lane that found nothing for :data:`IDLE_AFTER_S` polls at ``idle_poll_timeout_ms``
    (when longer than ``poll_timeout_ms``) until a message comes: an idle writer then costs
    little CPU and few Redis calls, and only the first message after a quiet spell waits
    longer.
    """

    def __init__(self, broker: RedisBroker, queue: str, *, registry: Registry, keyring: Keyring,
                 max_intent_bytes: int, poll_timeout_ms: int,
                 idle_poll_timeout_ms: int | None = None) -> None:
        self.broker = broker
        self.queue = queue
        self.registry = registry
        self.keyring = keyring
        self.max_intent_bytes = max_intent_bytes
        self.poll_timeout_ms = poll_timeout_ms
        self.idle_poll_timeout_ms = max(poll_timeout_ms, idle_poll_timeout_ms or 0)
        #: When the lane's polls began to find nothing (None: the last one found messages).
        self.idle_since: float | None = None
        self.consumer: Any = broker.consume(queue, prefetch=1, timeout=poll_timeout_ms)
        self._pending: deque[Item] = deque()
        self._ack_many: Any = None
        #: Raw messages dramatiq could not decode at all; ``quarantine`` settles them.
        self.undecodable: list[bytes] = []
        #: Seconds since the last :meth:`pop_spent` in Redis fetches that brought messages
        #: (``fetch``: the round trip and dramatiq's decoding of the first message), in polls
        #: that found none (``idle``: their wait included) and decoding the others and
        #: inspecting every message (``decode``).
        self.spent: dict[str, float] = {"fetch": 0.0, "idle": 0.0, "decode": 0.0}

    def take(self, want: int, *, wait: bool) -> list[Item]:
        """Up to ``want`` items: put-back ones first, then at most one fetch from Redis.

        ``wait`` lets an empty fetch sleep up to the poll timeout; otherwise it returns at once.
        """
        out: list[Item] = []
        while self._pending and len(out) < want:
            out.append(self._pending.popleft())
        if len(out) >= want or (out and not self.consumer.message_cache):
            return out
        consumer = self.consumer
        if not consumer.message_cache:
            consumer.prefetch = consumer.outstanding_message_count + (want - len(out))
        clock = time.perf_counter
        consumer.timeout = self.poll_timeout(clock()) if wait and not out else 0
        spent = self.spent
        while len(out) < want:
            cached = bool(consumer.message_cache)
            started = clock()
            try:
                message = next(consumer)
            except dramatiq.errors.DecodeError as exc:
                self.undecodable.append(bytes(exc.data))
                if not consumer.message_cache:
                    break
                continue
            finally:
                took = clock() - started
            if message is None:
                spent["idle"] += took
                if self.idle_since is None:
                    self.idle_since = started
                break
            self.idle_since = None
            spent["decode" if cached else "fetch"] += took
            started = clock()
            with gc_held():
                out.append(inspect_message(message, self.queue,
                                           max_bytes=self.max_intent_bytes,
                                           registry=self.registry, keyring=self.keyring))
            spent["decode"] += clock() - started
            if not consumer.message_cache:
                break
        return out

    def poll_timeout(self, now: float) -> int:
        """The timeout of a poll that may wait, at ``now`` (``time.perf_counter``)."""
        idle = self.idle_since is not None and now - self.idle_since >= IDLE_AFTER_S
        return self.idle_poll_timeout_ms if idle else self.poll_timeout_ms

    def pop_spent(self) -> dict[str, float]:
        """:attr:`spent`, then reset."""
        spent, self.spent = self.spent, {"fetch": 0.0, "idle": 0.0, "decode": 0.0}
        return spent

    def put_back(self, items: Sequence[Item]) -> None:
        """Items taken but left out of the batch: the next :meth:`take` returns them first."""
        self._pending.extendleft(reversed(items))

    @property
    def has_pending(self) -> bool:
        return bool(self._pending or self.consumer.message_cache)

    def ack(self, items: Sequence[Item]) -> None:
        """Acknowledge ``items`` in one pipelined round trip; raises Redis connection errors."""
        self.ack_ids([item.redis_id for item in items])
        for item in items:
            self.consumer.queued_message_ids.discard(item.message.message_id)

    def ack_ids(self, redis_ids: Sequence[str]) -> None:
        """Acknowledge many messages in one round trip (the broker's ``ack``, for each id)."""
        if not redis_ids:
            return
        ns = self.broker.namespace
        keys = [f"{ns}:__heartbeats__", _acks_key(self.broker, self.broker.broker_id, self.queue),
                f"{ns}:{self.queue}.msgs"]
        script = self.broker.client.register_script(_ACK_MANY) if self._ack_many is None \
            else self._ack_many
        self._ack_many = script
        for start in range(0, len(redis_ids), 5000):
            script(keys=keys, args=[current_millis(), self.broker.broker_id,
                                    *redis_ids[start:start + 5000]])

    def quarantine(self) -> list[tuple[str, bytes]]:
        """Find the Redis ids of the undecodable messages this lane holds.

        Returns ``(redis_id, raw)`` pairs for the caller to dead-letter, then :meth:`ack_ids`.
        """
        if not self.undecodable:
            return []
        key = _acks_key(self.broker, self.broker.broker_id, self.queue)
        ids = sorted(self.broker.client.smembers(key))
        bodies = self.broker.client.hmget(f"{self.broker.namespace}:{self.queue}.msgs", ids) \
            if ids else []
        found: list[tuple[str, bytes]] = []
        wanted = list(self.undecodable)
        for redis_id, raw in zip(ids, bodies, strict=True):
            if raw is not None and raw in wanted:
                wanted.remove(raw)
                found.append((redis_id.decode(), raw))
        self.undecodable = []
        return found

    def release(self) -> int:
        """Put every message this lane holds back on the queue (batch, put-back, prefetched)."""
        self._pending.clear()
        self.consumer.message_cache = []
        self.consumer.queued_message_ids.clear()
        self.undecodable = []
        return requeue_unacked(self.broker, self.queue, self.broker.broker_id)

    def keepalive(self) -> None:
        """Called while the writer waits (an outage); Redis consumers need nothing."""

    def close(self) -> None:
        self.consumer.close()
