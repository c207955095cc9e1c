"""RabbitMQ as the platform's broker (``BROKER_URL=amqp://...``), with Redis beside it for state.

:class:`RabbitBroker` is dramatiq's ``RabbitmqBroker`` carrying what the rest of the platform
reads from a broker, so that code written against the Redis broker keeps working:

- ``client``: a Redis client on ``REDIS_URL``, where progress records, idempotency keys, the
  writer's stats and the consumer heartbeats live (RabbitMQ holds the messages only);
- ``namespace``: ``BROKER_NAMESPACE``, the prefix of those Redis keys;
- ``broker_id`` and a heartbeat in ``<namespace>:__heartbeats__`` (the sorted set the Redis
  broker keeps), refreshed every second by actor workers (:class:`RedisHeartbeat`) and by
  :meth:`RabbitBroker.do_qsize`, which the writer's heartbeat thread calls: readers tell a live
  worker from a dead one the same way on both brokers;
- ``do_qsize(queue)``: messages ready on a queue (RabbitMQ's count; held ones are not in it).

Messages are published with publisher confirms (``confirm_delivery``, ``BROKER_CONFIRM``):
``enqueue`` returns once RabbitMQ has taken the message (and written it to disk: the queues are
durable), as the Redis broker's returns once Redis has it.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import dramatiq
import pika.exceptions  # type: ignore[import-untyped]
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import Middleware

__all__ = ["RabbitBroker", "RedisHeartbeat"]

#: How long a consumer may be silent before readers call it dead (the Redis broker's default).
HEARTBEAT_TIMEOUT_MS = 60_000


class RabbitBroker(RabbitmqBroker):
    """dramatiq's RabbitMQ broker plus the platform's Redis for state (see the module)."""

    def __init__(self, *, url: str, redis_url: str, namespace: str,
                 middleware: list[Middleware] | None = None, confirm: bool = True) -> None:
        super().__init__(url=url, middleware=middleware, confirm_delivery=confirm)
        self.client: redis.Redis = redis.Redis.from_url(redis_url)
        self.namespace = namespace
        self.broker_id = str(uuid.uuid4())
        self.heartbeat_timeout = HEARTBEAT_TIMEOUT_MS
        self.add_middleware(RedisHeartbeat())

    def beat(self) -> None:
        """Record this process's heartbeat (ms since the epoch) in Redis."""
        self.client.zadd(f"{self.namespace}:__heartbeats__",
                         {self.broker_id: int(time.time() * 1000)})

    def do_qsize(self, queue_name: str) -> int:
        """Messages ready on ``queue_name`` (and its delay queue); refreshes the heartbeat.
        Raises ``ConnectionClosed`` (a dramatiq broker error) when RabbitMQ cannot be reached."""
        self.beat()
        try:
            ready, delayed, _dead = self.get_queue_message_counts(queue_name)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as exc:
            del self.connection  # the next call of this thread connects again
            raise ConnectionClosed(exc) from exc  # type: ignore[no-untyped-call]
        return int(ready) + int(delayed)

    def close(self) -> None:
        super().close()
        self.client.close()


class RedisHeartbeat(Middleware):
    """Beats for a worker process every second while it runs."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not isinstance(broker, RabbitBroker):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(broker,),
                                        name="redis-heartbeat", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()

    def _run(self, broker: RabbitBroker) -> None:
        while True:
            with contextlib.suppress(redis.RedisError):
                broker.beat()
            if self._stop.wait(self.interval_s):
                return
