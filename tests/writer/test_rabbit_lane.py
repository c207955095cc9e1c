"""The writer's lanes on RabbitMQ: acks after commit, requeue in order, a stop during an outage."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from bench._servers import TcpProxy
from jobplatform.auth import keyring_of
from jobplatform.broker import WRITE_INTENT, make_message
from jobplatform.kinds import default_registry
from jobplatform.settings import Settings
from tests.writer.conftest import (
    WriterThread,
    emit_all,
    held_messages,
    proxied_url,
    scalar,
    wait_until,
)
from tests.writer.intent_factory import queued
from writer.rabbit_lane import RabbitLane

pytestmark = pytest.mark.brokers("rabbitmq")


def _lane(broker: Any, queue: str, prefetch: int = 100) -> RabbitLane:
    return RabbitLane(broker, queue, registry=default_registry(), keyring=keyring_of(broker),
                      max_intent_bytes=1 << 20, poll_timeout_ms=20, prefetch=prefetch)


def _send(broker: Any, queue: str, count: int) -> list[str]:
    ids = []
    for n in range(count):
        message = keyring_of(broker).sign(make_message(queue, WRITE_INTENT, {"n": n}))
        broker.enqueue(message)
        ids.append(message.message_id)
    return ids


def _take_all(lane: RabbitLane, want: int) -> list[Any]:
    got: list[Any] = []
    for _ in range(50):
        got += lane.take(want - len(got), wait=True)
        if len(got) >= want:
            break
    return got


def test_released_messages_come_back_in_their_order_and_acked_ones_never(
    settings: Settings, broker: Any,
) -> None:
    queue = settings.queue_writes_fast
    ids = _send(broker, queue, 10)
    lane = _lane(broker, queue)
    try:
        # Given ten messages taken: the first four acked after their "commit"
        first = _take_all(lane, 10)
        assert [i.message.message_id for i in first] == ids
        lane.ack(first[:4])
        # When the lane releases the rest (a stop during an outage, a lost lock)
        assert lane.release() == 6
        # Then the next take gets exactly the six, in their order, and nothing is held
        again = _take_all(lane, 6)
        assert [i.message.message_id for i in again] == ids[4:]
        lane.ack(list(reversed(again)))  # out of order: acked one by one
        assert lane.take(10, wait=True) == []
    finally:
        lane.close()
    assert held_messages(broker, queue) == 0
    assert broker.get_queue_message_counts(queue)[0] == 0


def test_acks_of_a_lost_connection_are_skipped_and_the_messages_redelivered(
    settings: Settings, broker: Any,
) -> None:
    queue = settings.queue_writes_fast
    ids = _send(broker, queue, 3)
    lane = _lane(broker, queue)
    try:
        taken = _take_all(lane, 3)
        # When the consumer's connection dies before the acks (the server requeues them)
        lane.consumer.connection.close()
        lane.keepalive()
        lane.ack(taken)  # skipped, not raised: the ledger skips the redelivery
        # Then a new consumer gets them again
        again = _take_all(lane, 3)
        assert [i.message.message_id for i in again] == ids
        assert all(i.message.redelivered for i in again)
        lane.ack(again)
    finally:
        lane.close()


def test_a_stop_during_a_database_outage_requeues_the_batch_and_a_new_writer_applies_it(
    settings: Settings, broker: Any, start_writer: Callable[..., WriterThread],
    pg_proxy: TcpProxy,
) -> None:
    # Given a writer holding a batch while PostgreSQL is unreachable
    assert settings.database_url is not None
    runner = start_writer(database_url=proxied_url(settings.database_url, pg_proxy))
    wait_until(lambda: runner.writer.active, message="the writer active")
    pg_proxy.cut()
    intents = [queued(uuid.uuid4()) for _ in range(50)]
    emit_all(broker, settings, intents)
    wait_until(lambda: runner.writer.get_stats()["db_retries"] >= 1,
               message="the writer holding its batch")
    wait_until(lambda: held_messages(broker, settings.queue_writes_fast) > 0,
               message="the batch held by the writer, unacked")

    # When it is stopped: the batch goes back to the queue (nack with requeue)
    runner.stop()
    fast = settings.queue_writes_fast
    assert held_messages(broker, fast) == 0
    assert broker.get_queue_message_counts(fast)[0] == len(intents)

    # Then a writer started once the database is back applies every intent
    pg_proxy.restore()
    start_writer()
    wait_until(lambda: scalar(str(settings.database_url),
                              "SELECT count(*) FROM writer_ledger") == len(intents),
               message="every intent applied")
    wait_until(lambda: broker.do_qsize(fast) == 0, message="every message acked")
