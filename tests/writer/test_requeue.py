"""A takeover puts a dead writer's held messages back at the head of the queue, in order."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from jobplatform.broker import WRITE_INTENT, make_message
from jobplatform.settings import Settings
from tests.writer.conftest import WriterThread, emit_all, query, wait_until
from tests.writer.intent_factory import processing, queued, ready
from writer.engine.leader import consumers_key
from writer.lanes import requeue_unacked

DEAD = "dead-writer"


def _fetch_as(broker: RedisBroker, queue: str, worker_id: str, n: int) -> list[str]:
    """Fetch ``n`` messages of ``queue`` as the consumer ``worker_id`` (and never ack them):
    what a writer killed with a batch in hand leaves behind. Returns their message ids."""
    bodies = broker.scripts["dispatch"](
        keys=[broker.namespace],
        args=["fetch", int(time.time() * 1000), queue, worker_id, broker.heartbeat_timeout,
              broker.dead_message_ttl, 0, 1000, n])
    return [dramatiq.Message.decode(body).message_id for body in bodies if isinstance(body, bytes)]


def _queued_ids(broker: RedisBroker, queue: str) -> list[str]:
    client = broker.client
    redis_ids = client.lrange(f"{broker.namespace}:{queue}", 0, -1)
    bodies = client.hmget(f"{broker.namespace}:{queue}.msgs", redis_ids) if redis_ids else []
    return [dramatiq.Message.decode(body).message_id for body in bodies if isinstance(body, bytes)]


def test_requeue_puts_held_messages_at_the_head_in_the_order_they_were_sent(
    settings: Settings, broker: RedisBroker
) -> None:
    # Given 8 messages sent one after the other, the first 5 fetched by a consumer that died
    queue = settings.queue_writes_fast
    broker.declare_queue(queue)
    start = int(time.time() * 1000) - 10_000
    sent = []
    for n in range(8):
        message = dataclasses.replace(make_message(queue, WRITE_INTENT, "{}"),
                                      message_timestamp=start + n)
        broker.enqueue(message)
        sent.append(message.message_id)
    assert _fetch_as(broker, queue, DEAD, 5) == sent[:5]
    # and 3 more sent while it was dead
    later = []
    for _ in range(3):
        message = broker.enqueue(make_message(queue, WRITE_INTENT, "{}"))
        later.append(message.message_id)

    # When the held messages are requeued
    assert requeue_unacked(broker, queue, DEAD) == 5

    # Then they come first, in the order they were sent, and nobody holds them any more
    assert _queued_ids(broker, queue) == [*sent, *later]
    assert broker.client.scard(f"{broker.namespace}:__acks__.{DEAD}.{queue}") == 0
    # and requeueing again moves nothing (each message goes back once)
    assert requeue_unacked(broker, queue, DEAD) == 0
    assert len(_queued_ids(broker, queue)) == 11


def test_a_takeover_applies_the_dead_writers_statuses_before_later_ones(
    settings: Settings, broker: RedisBroker, start_writer: Callable[..., WriterThread]
) -> None:
    # Given a writer that died holding `queued` and `processing` for 10 videos
    videos = [uuid.uuid4() for _ in range(10)]
    queue = settings.queue_writes_fast
    early = [*map(queued, videos), *map(processing, videos)]
    emit_all(broker, settings, early)
    broker.client.sadd(consumers_key(broker.namespace), DEAD)
    assert len(_fetch_as(broker, queue, DEAD, 20)) == 20
    # and `ready` for each sent meanwhile
    emit_all(broker, settings, list(map(ready, videos)))

    # When a new writer takes over, applying batches of 5
    _then_applied_in_send_order(settings, start_writer, early)


def _then_applied_in_send_order(settings: Settings, start_writer: Callable[..., WriterThread],
                                early: list[Any]) -> None:
    runner = start_writer(batch_max_intents=5)
    url = settings.database_url
    assert url is not None
    wait_until(lambda: query(url, "SELECT count(*) FROM writer_ledger") == [(30,)],
               message="every intent applied")
    runner.stop()

    # Then the held statuses were applied before those sent later
    first = {intent.intent_id for intent in early}
    seqs = query(url, "SELECT intent_id, batch_seq FROM writer_ledger")
    assert max(seq for intent_id, seq in seqs if intent_id in first) <= \
        min(seq for intent_id, seq in seqs if intent_id not in first)
    # and every video is ready with the fields of its earlier statuses
    rows = query(url, "SELECT status, source_key IS NOT NULL, queued_at IS NOT NULL,"
                      " started_at IS NOT NULL, count(*) FROM videos GROUP BY 1, 2, 3, 4")
    assert rows == [("ready", True, True, True, 10)]


def test_a_late_lower_ranked_status_still_fills_its_fields_after_a_takeover(
    settings: Settings, broker: RedisBroker, start_writer: Callable[..., WriterThread]
) -> None:
    # Given a writer that died holding `queued` for 10 videos, and `ready` already applied
    # by the writer after it (the order a tail requeue, or a second dead writer, gives)
    videos = [uuid.uuid4() for _ in range(10)]
    queue = settings.queue_writes_fast
    emit_all(broker, settings, list(map(queued, videos)))
    assert len(_fetch_as(broker, queue, DEAD, 10)) == 10
    emit_all(broker, settings, [*map(ready, videos), *map(processing, videos)])
    runner = start_writer()
    url = settings.database_url
    assert url is not None
    wait_until(lambda: query(url, "SELECT count(*) FROM writer_ledger") == [(20,)],
               message="the later statuses applied")
    runner.stop()
    assert query(url, "SELECT count(*) FROM videos WHERE source_key IS NULL") == [(10,)]

    # When the dead writer's `queued` come back only now
    broker.client.sadd(consumers_key(broker.namespace), DEAD)
    runner = start_writer()
    wait_until(lambda: query(url, "SELECT count(*) FROM writer_ledger") == [(30,)],
               message="the late statuses applied")
    runner.stop()

    # Then they filled what the rows lacked, and moved no status backwards
    rows = query(url, "SELECT status, source_key IS NOT NULL, queued_at IS NOT NULL,"
                      " started_at IS NOT NULL, count(*) FROM videos GROUP BY 1, 2, 3, 4")
    assert rows == [("ready", True, True, True, 10)]


@pytest.mark.brokers("rabbitmq")
def test_rabbitmq_redelivers_a_closed_consumers_messages_first_in_their_order(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread]
) -> None:
    # Given a consumer that took `queued` and `processing` for 10 videos and died (its
    # connection closed without an ack), `ready` for each sent while it held them
    videos = [uuid.uuid4() for _ in range(10)]
    queue = settings.queue_writes_fast
    early = [*map(queued, videos), *map(processing, videos)]
    emit_all(broker, settings, early)
    consumer = broker.consume(queue, prefetch=50, timeout=200)
    assert all(next(consumer) is not None for _ in range(20))
    emit_all(broker, settings, list(map(ready, videos)))
    consumer.close()

    # When a writer consumes the queue, RabbitMQ redelivers them at their original position
    _then_applied_in_send_order(settings, start_writer, early)
