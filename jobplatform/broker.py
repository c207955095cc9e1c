"""The Redis broker, built explicitly in one place, and the platform's queues.

Producers (the publish client, actors emitting intents) and consumers (actor workers, the
writer) call :func:`build_broker`; nothing relies on dramatiq's global fallback broker.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import dramatiq
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

from jobplatform.settings import Settings

#: Actor names the publish client addresses; actors register under the same names.
ENCODE_VIDEO = "encode_video"
IMPORT_ROSTER = "import_roster"
#: The pseudo-actor name write intents travel under; the writer consumes them in batches.
WRITE_INTENT = "write_intent"


@dataclass(frozen=True, slots=True)
class Queues:
    video: str
    ai: str
    writes_fast: str
    writes_bulk: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Queues:
        return cls(
            video=settings.queue_video,
            ai=settings.queue_ai,
            writes_fast=settings.queue_writes_fast,
            writes_bulk=settings.queue_writes_bulk,
        )

    @property
    def writes(self) -> tuple[str, str]:
        return (self.writes_fast, self.writes_bulk)


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


def default_middleware() -> list[Middleware]:
    """dramatiq's defaults less Prometheus, plus the log context and the stop notice."""
    return [
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


def build_broker(settings: Settings, redis_url: str, *, set_global: bool = True) -> RedisBroker:
    """The platform's broker; ``set_global`` makes it dramatiq's broker for actor decorators."""
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=redis_url,
        namespace=settings.broker_namespace,
        middleware=default_middleware(),
        heartbeat_timeout=60_000,
    )
    _declare_queues(broker, settings)
    if set_global:
        dramatiq.set_broker(broker)
    return broker


def build_stub_broker(settings: Settings) -> StubBroker:
    """An in-memory broker with the platform's middleware and queues, for tests."""
    broker = StubBroker(middleware=default_middleware())
    _declare_queues(broker, settings)
    return broker


def _declare_queues(broker: dramatiq.Broker, settings: Settings) -> None:
    queues = Queues.from_settings(settings)
    for queue in (queues.video, queues.ai, *queues.writes):
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
