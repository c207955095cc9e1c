"""Queue depths as the broker keeps them, and an actor worker's endpoint during a real run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from jobplatform.auth import keyring_of
from jobplatform.broker import IMPORT_ROSTER, WRITE_INTENT, make_message
from jobplatform.metrics import oldest_ready_age_ms, queue_depths
from jobplatform.settings import Settings
from tests.scrape import Samples, get, scrape, value

ROOT = Path(__file__).parents[2]


def test_queue_depths_count_ready_held_delayed_and_dead(bus_settings: Settings,
                                                        broker: Any) -> None:
    queue = bus_settings.queue_writes_fast
    ns = broker.namespace
    for n in range(6):
        broker.enqueue(make_message(queue, WRITE_INTENT, {"n": n}))
    broker.enqueue(make_message(queue, WRITE_INTENT, {"n": "later"}), delay=600_000)
    # Given a consumer that holds two messages and rejects a third
    consumer = broker.consume(queue, prefetch=3, timeout=100)
    taken = [next(consumer) for _ in range(3)]
    consumer.nack(taken[2])
    client = broker.client
    # Then the depths are what Redis holds
    [depth] = queue_depths(client, ns, [queue])
    assert depth.ready == client.llen(f"{ns}:{queue}") == 3
    assert depth.unacked == 2
    assert depth.delayed == client.llen(f"{ns}:{queue}.DQ") == 1
    assert depth.dead == client.zcard(f"{ns}:{queue}.XQ") == 1
    assert depth.waiting == 6
    assert oldest_ready_age_ms(client, ns, queue) > 0
    consumer.close()
    # and an empty queue has no age
    [empty] = queue_depths(client, ns, [bus_settings.queue_video])
    assert (empty.ready, empty.unacked, empty.delayed, empty.dead) == (0, 0, 0, 0)
    assert oldest_ready_age_ms(client, ns, bus_settings.queue_video) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape_when(port: int, ready: Any, timeout: float = 60) -> Samples:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = scrape(port)
        except OSError as exc:
            last = exc
        else:
            if ready(last):
                return last
        time.sleep(0.2)
    pytest.fail(f"the endpoint never showed what was expected; last scrape: {last!r}")


def _jobs(samples: Samples, queue: str, name: str = "jobplatform_actor_jobs_total") -> float:
    key = (name, frozenset({("queue", queue), ("actor", IMPORT_ROSTER)}))
    return samples.get(key, 0.0)


def _settled(samples: Samples, queue: str, jobs: int) -> bool:
    """Every job counted and timed, none in progress: a job's counters are separate writes, so
    a scrape may land between them."""
    return (_jobs(samples, queue) >= jobs
            and _jobs(samples, queue, "jobplatform_actor_duration_seconds_count") >= jobs
            and _jobs(samples, queue, "jobplatform_actor_in_progress") == 0)


@pytest.mark.slow
def test_an_actor_workers_endpoint_sums_its_processes(bus_settings: Settings, broker: Any,
                                                      tmp_path: Path) -> None:
    assert bus_settings.redis_url is not None
    port = _free_port()
    queue = bus_settings.queue_ai
    env = {**os.environ, "REDIS_URL": bus_settings.redis_url,
           "BROKER_NAMESPACE": bus_settings.broker_namespace,
           "JOBPLATFORM_STATE_DIR": str(bus_settings.jobplatform_state_dir),
           "METRICS_PORT": str(port), "LOG_FORMAT": "json"}
    log = (tmp_path / "worker.log").open("wb")
    # Given an ai worker of two processes serving metrics
    proc = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors.worker", "--queues", queue,
         "--processes", "2", "--threads", "1"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _scrape_when(port, lambda s: True)
        # When imports whose files are missing (each fails at once) reach it
        tenant = 7
        jobs = 6
        for _ in range(jobs):
            payload = {"tenant_id": tenant, "import_id": str(uuid.uuid4()), "lecture_id": 1,
                       "source_key": f"tenants/{tenant}/rosters/missing.xlsx"}
            broker.enqueue(keyring_of(broker).sign(make_message(queue, IMPORT_ROSTER, payload)))
        samples = _scrape_when(port, lambda s: _settled(s, queue, jobs))
        # Then every job is counted once, across both processes, with its duration
        assert _jobs(samples, queue) == jobs
        assert value(samples, "jobplatform_actor_duration_seconds_count", queue=queue,
                     actor=IMPORT_ROSTER) == jobs
        assert value(samples, "jobplatform_actor_in_progress", queue=queue,
                     actor=IMPORT_ROSTER) == 0
        # and the queue's depth is what Redis holds
        ns = broker.namespace
        assert value(samples, "jobplatform_queue_messages", queue=queue, state="ready") == \
            broker.client.llen(f"{ns}:{queue}") == 0
        assert value(samples, "jobplatform_queue_messages", queue=queue, state="dead") == \
            broker.client.zcard(f"{ns}:{queue}.XQ")
        # and each failed import sent its status to the writer
        assert broker.client.llen(f"{ns}:{bus_settings.queue_writes_fast}") >= jobs
        assert get(port, "/healthz")[0] == 200
        assert get(port, "/readyz") == (200, "ok\n")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)
        log.close()
        print((tmp_path / "worker.log").read_text(errors="replace")[-3000:])
