"""The broker, built explicitly in one place, and the platform's queues.

Producers (the publish client, actors emitting intents) and consumers (actor workers, the
writer) call :func:`build_broker`; nothing relies on dramatiq's global fallback broker.
``BROKER_URL`` chooses the broker: ``amqp://`` builds a :class:`~jobplatform.rabbitmq.RabbitBroker`
(RabbitMQ for messages, ``REDIS_URL`` for state), ``redis://`` or unset a ``RedisBroker``.
Either way ``broker.client`` is the Redis client for state (progress, idempotency, stats) and
``broker.namespace`` its key prefix.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from jobplatform.auth import Keyring, MessageAuth, keyring_for
from jobplatform.errors import ConfigError
from jobplatform.extras import MissingExtra
from jobplatform.settings import Settings
from jobplatform.shards import ShardMap, parse_shard_map, shard_queue

#: Actor names the publish client addresses; actors register under the same names.
ENCODE_VIDEO = "encode_video"
IMPORT_ROSTER = "import_roster"
#: The pseudo-actor name write intents travel under; the writer consumes them in batches.
WRITE_INTENT = "write_intent"


@dataclass(frozen=True, slots=True)
class Queues:
    """The platform's queue names. ``writes_fast`` and ``writes_bulk`` are the writer's lanes
    as configured; with ``shards`` above 1 each shard has its own pair
    (:meth:`for_shard`, :mod:`jobplatform.shards`) and :meth:`lanes_for` routes a tenant."""

    video: str
    ai: str
    writes_fast: str
    writes_bulk: str
    shards: ShardMap = field(default_factory=ShardMap)

    @classmethod
    def from_settings(cls, settings: Settings) -> Queues:
        table = parse_shard_map(settings.writer.shard_map)
        return cls(
            video=settings.queue_video,
            ai=settings.queue_ai,
            writes_fast=settings.queue_writes_fast,
            writes_bulk=settings.queue_writes_bulk,
            shards=ShardMap(settings.writer.shards, table or None),
        )

    @property
    def writes(self) -> tuple[str, str]:
        return (self.writes_fast, self.writes_bulk)

    def for_shard(self, index: int, count: int | None = None) -> Queues:
        """The queues of shard ``index`` of ``count`` (default: ``shards``' count): its lanes
        as ``writes_fast`` / ``writes_bulk``, and one shard (what its writer consumes)."""
        count = self.shards.count if count is None else count
        return Queues(self.video, self.ai, shard_queue(self.writes_fast, index, count),
                      shard_queue(self.writes_bulk, index, count))

    def lanes_for(self, tenant_id: int) -> tuple[str, str]:
        """``(fast, bulk)`` lanes of the shard that applies ``tenant_id``'s intents."""
        count = self.shards.count
        if count == 1:
            return self.writes
        index = self.shards.shard_of(tenant_id)
        return (shard_queue(self.writes_fast, index, count),
                shard_queue(self.writes_bulk, index, count))

    @property
    def all_writes(self) -> tuple[str, ...]:
        """Every shard's lanes (the configured pair when unsharded)."""
        count = self.shards.count
        return tuple(shard_queue(name, index, count) for index in range(count)
                     for name in self.writes)


class LogContext(Middleware):
    """Binds the message, job and intent ids and the actor to structlog's context per message."""

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        context: dict[str, Any] = {"message_id": message.message_id, "actor": message.actor_name}
        if message.args and isinstance(message.args[0], dict):
            payload = message.args[0]
            for key in ("video_id", "import_id", "intent_id", "tenant_id", "kind"):
                if key in payload:
                    context[key] = payload[key]
        job_id = message.options.get("job_id")
        if job_id:
            context["job_id"] = job_id
        structlog.contextvars.bind_contextvars(**context)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        structlog.contextvars.clear_contextvars()

    after_skip_message = after_process_message


class StopNotice(Middleware):
    """Sets :attr:`stopping` when the worker begins a graceful stop (its one SIGTERM), so a
    long job can finish within its grace or hand itself back (see ``VIDEO_STOP_GRACE_S``)."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.since: float | None = None
        """``time.monotonic()`` when the stop began."""

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.since = time.monotonic()
        self.stopping.set()


def stop_notice(broker: dramatiq.Broker) -> StopNotice:
    """The broker's :class:`StopNotice` (one is added when the broker has none)."""
    for middleware in broker.middleware:
        if isinstance(middleware, StopNotice):
            return middleware
    notice = StopNotice()
    broker.add_middleware(notice)
    return notice


def heartbeats_key(namespace: str) -> str:
    """dramatiq's sorted set of consumer ids by their last heartbeat (ms since the epoch)."""
    return f"{namespace}:__heartbeats__"


def broker_identity(broker: dramatiq.Broker) -> dict[str, str]:
    """Fields naming this worker process in a job's progress record: where it runs, and its
    broker's consumer id, whose heartbeat tells readers whether it is still alive."""
    fields = {"worker": f"{socket.gethostname()} pid {os.getpid()}"}
    broker_id = getattr(broker, "broker_id", None)
    if isinstance(broker_id, str):
        fields["broker_id"] = broker_id
    return fields


def default_middleware(keyring: Keyring | None = None) -> list[Middleware]:
    """dramatiq's defaults less Prometheus, plus the message keys (first: a message refused
    there never reaches the others' work), the log context and the stop notice."""
    auth: list[Middleware] = [MessageAuth(keyring)] if keyring is not None else []
    return [
        *auth,
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(),
        CurrentMessage(),
        LogContext(),
        StopNotice(),
    ]


def build_broker(settings: Settings, redis_url: str, *, set_global: bool = True) -> Any:
    """The platform's broker; ``set_global`` makes it dramatiq's broker for actor decorators.

    ``redis_url`` is the Redis for state; it is the broker too unless ``BROKER_URL`` is an
    ``amqp://`` URL (RabbitMQ, which needs the ``rabbitmq`` extra). A ``redis://``
    ``BROKER_URL`` is ``REDIS_URL`` (:class:`~jobplatform.settings.Settings` checks it).
    ``redis_url`` may be ``rediss://`` (TLS) and carry a password and TLS options (README,
    Transport).

    It carries the process's message keys (:func:`jobplatform.auth.keyring_for`: a
    :class:`~jobplatform.errors.ConfigError` in production without one): producers sign with
    them and workers refuse messages they do not authenticate.
    """
    broker: Any
    middleware = default_middleware(keyring_for(settings))
    if settings.broker_kind == "rabbitmq":
        assert settings.broker_url is not None
        try:
            from jobplatform.rabbitmq import RabbitBroker
        except ImportError as exc:
            raise MissingExtra("BROKER_URL=amqp://... needs the 'rabbitmq' extra (pika is not"
                               " installed): pip install 'jobplatform[rabbitmq]'",
                               name=exc.name) from exc
        broker = RabbitBroker(url=settings.broker_url, redis_url=redis_url,
                              namespace=settings.broker_namespace,
                              middleware=middleware, confirm=settings.broker_confirm)
    else:
        broker = RedisBroker(  # type: ignore[no-untyped-call]
            url=redis_url,
            namespace=settings.broker_namespace,
            middleware=middleware,
            heartbeat_timeout=60_000,
        )
    _declare_queues(broker, settings)
    if set_global:
        dramatiq.set_broker(broker)
    return broker


def state_client(broker: dramatiq.Broker, settings: Settings) -> redis.Redis:
    """The Redis client for state (progress, idempotency, stats) that goes with ``broker``:
    the broker's own (``broker.client``: the Redis broker, or the platform's RabbitMQ broker),
    else a new client on ``settings.redis_url`` (for any other broker passed in)."""
    client = getattr(broker, "client", None)
    if isinstance(client, redis.Redis):
        return client
    if not settings.redis_url:
        raise ConfigError("REDIS_URL: progress, idempotency keys and stats live in Redis")
    return redis.Redis.from_url(settings.redis_url)


def lane_backlog(broker: Any, queues: Queues) -> dict[str, int]:
    """Messages in every shard's lanes, by queue (``do_qsize``: on Redis the waiting and the
    held ones; on RabbitMQ the waiting ones, which is what a stopped writer's held become)."""
    return {queue: int(broker.do_qsize(queue)) for queue in queues.all_writes}


def build_stub_broker(settings: Settings) -> StubBroker:
    """An in-memory broker with the platform's middleware and queues, for tests."""
    broker = StubBroker(middleware=default_middleware(keyring_for(settings)))
    _declare_queues(broker, settings)
    return broker


def _declare_queues(broker: dramatiq.Broker, settings: Settings) -> None:
    queues = Queues.from_settings(settings)
    for queue in (queues.video, queues.ai, *queues.all_writes):
        broker.declare_queue(queue)


def make_message(
    queue: str, actor_name: str, payload: dict[str, Any] | str, **options: Any
) -> dramatiq.Message[Any]:
    """A dramatiq message addressed by name, so producers need no actor code; ``payload`` is
    its one argument (a job as a JSON object, an intent as its JSON text)."""
    return dramatiq.Message(
        queue_name=queue,
        actor_name=actor_name,
        args=(payload,),
        kwargs={},
        options=options,
        message_id=str(uuid.uuid4()),
        message_timestamp=int(time.time() * 1000),
    )
