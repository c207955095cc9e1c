"""A Redis lane that found nothing for a while polls at its idle timeout until a message comes."""

from __future__ import annotations

import time
import uuid

from dramatiq.brokers.redis import RedisBroker

from jobplatform.auth import keyring_for
from jobplatform.kinds import registry_for
from jobplatform.settings import Settings
from tests.writer.conftest import emit_all
from tests.writer.intent_factory import queued
from writer.lanes import IDLE_AFTER_S, Item, Lane


def _lane(settings: Settings, broker: RedisBroker, idle_ms: int | None) -> Lane:
    queue = settings.queue_writes_fast
    broker.declare_queue(queue)
    return Lane(broker, queue, registry=registry_for(settings), keyring=keyring_for(settings),
                max_intent_bytes=1 << 20, poll_timeout_ms=5, idle_poll_timeout_ms=idle_ms)


def test_a_quiet_lane_polls_at_its_idle_timeout_and_a_message_brings_it_back(
        settings: Settings, broker: RedisBroker) -> None:
    lane = _lane(settings, broker, 50)
    assert lane.take(10, wait=True) == []
    assert lane.idle_since is not None
    quiet = lane.idle_since
    assert lane.poll_timeout(quiet + IDLE_AFTER_S / 2) == 5
    assert lane.poll_timeout(quiet + IDLE_AFTER_S) == 50
    # quiet for longer than IDLE_AFTER_S: the next empty poll waits at the idle timeout
    lane.idle_since = time.perf_counter() - IDLE_AFTER_S - 1
    assert lane.take(10, wait=True) == []
    assert lane.consumer.timeout == 50
    # a poll that does not wait never sleeps, idle or not
    assert lane.take(10, wait=False) == []
    assert lane.consumer.timeout == 0
    # a message: the lane polls at its own timeout again
    emit_all(broker, settings, [queued(uuid.uuid4())])
    deadline = time.monotonic() + 5
    items: list[Item] = []
    while not items and time.monotonic() < deadline:
        items = lane.take(10, wait=True)
    assert len(items) == 1
    assert lane.idle_since is None
    assert lane.poll_timeout(time.perf_counter() + 60) == 5
    assert lane.take(10, wait=True) == []
    assert lane.consumer.timeout == 5


def test_an_idle_timeout_shorter_than_the_lanes_own_is_the_lanes_own(
        settings: Settings, broker: RedisBroker) -> None:
    for idle_ms in (None, 1):
        lane = _lane(settings, broker, idle_ms)
        lane.idle_since = time.perf_counter() - IDLE_AFTER_S - 1
        assert lane.poll_timeout(time.perf_counter()) == 5
