from __future__ import annotations

import io
import json
import re
import time
import uuid
from typing import Any

import redis
from click.testing import CliRunner
from rich.console import Console

from jobplatform.broker import ENCODE_VIDEO, heartbeats_key, make_message
from jobplatform.cli import cli
from jobplatform.progress import ProgressStore, writer_stats_key
from jobplatform.settings import Settings
from jobplatform.watch import render, take_snapshot


def test_watch_once_shows_jobs_queues_and_writer(redis_url: str) -> None:
    # Given an encode and an import in progress, a finished encode, and a writer's stats
    namespace = f"jpwatch-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    store = ProgressStore(client, namespace)
    video, roster, done, old = (f"video:{uuid.uuid4()}", f"roster:{uuid.uuid4()}",
                                f"video:{uuid.uuid4()}", f"video:{uuid.uuid4()}")
    store.update(video, step="encode", percent=41.0, speed=2.25)
    store.update(roster, step="parsing", rows=1200, total=5000, written=500)
    store.update(done, step="done", percent=100.0, hls_key="tenants/1/videos/x/master.m3u8")
    store.update(old, step="done", percent=100.0)
    client.hset(store.key(old), "updated_at", json.dumps(time.time() - 3600))
    client.rpush(f"{namespace}:writes.bulk", "a", "b", "c")
    client.set(writer_stats_key(namespace), json.dumps(
        {"role": "active", "batches": 12, "batches_per_s": 3.5, "rows": 6000, "lag_ms": 40.0,
         "commit_ms_p50": 8.5, "commit_ms_p99": 31.0}))
    env = {"REDIS_URL": redis_url, "BROKER_NAMESPACE": namespace, "COLUMNS": "160"}

    # When watch prints one snapshot, as JSON and as text
    as_json = CliRunner().invoke(cli, ["watch", "--once", "--json"], env=env)
    as_text = CliRunner().invoke(cli, ["watch", "--once"], env=env)

    # Then it lists the live and recently finished jobs, the backlog and the writer
    assert as_json.exit_code == 0, as_json.output
    snapshot = json.loads(as_json.output)
    states = {job["job_id"]: (job["state"], job["step"]) for job in snapshot["jobs"]}
    assert states == {video: ("running", "encode"), roster: ("running", "parsing"),
                      done: ("done", "done")}
    assert snapshot["hidden"] == 1
    assert snapshot["queues"]["writes.bulk"] == 3
    assert snapshot["writer"]["batches"] == 12
    assert as_text.exit_code == 0, as_text.output
    text = as_text.output
    assert f"{video}" in text
    assert "41%" in text
    assert "2.25x" in text
    assert "rows parsed 1,200/5,000" in text
    assert "24%" in text  # 1,200 of 5,000 rows parsed
    assert "written 500" in text
    assert "tenants/1/videos/x/master.m3u8" in text
    assert "31.0" in text
    assert old not in text


def test_watch_counts_held_and_delayed_messages_and_dead_letters(
    bus_settings: Settings, broker: Any
) -> None:
    # Given a video job prefetched by a busy worker, a delayed retry and a dramatiq dead letter
    queue = bus_settings.queue_video
    for n in range(3):
        broker.enqueue(make_message(queue, ENCODE_VIDEO, {"n": n}))
    broker.enqueue(make_message(queue, ENCODE_VIDEO, {"n": "retry"}), delay=600_000)
    consumer = broker.consume(queue, prefetch=3, timeout=100)
    held = [next(consumer) for _ in range(3)]
    consumer.nack(held[2])
    client = broker.client
    assert client.llen(f"{broker.namespace}:{queue}") == 0
    # When watch takes a snapshot
    snapshot = take_snapshot(client, bus_settings)
    consumer.close()
    # Then the video queue is not "0": two are held, one delayed, one dead
    assert snapshot.queues[queue] == 3
    assert snapshot.dead[queue] == 1
    text = _text(render(snapshot), 80)
    assert f"{queue} 3 (2 held, 1 delayed)" in text
    assert "dead letters" in text
    assert f"{queue} 1" in text.split("dead letters")[1]


def _text(renderable: Any, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return str(out)


def test_stale_or_stopped_writer_stats_are_recognised_and_idle_lag_is_zero(
    bus_settings: Settings,
) -> None:
    assert bus_settings.redis_url is not None
    client = redis.Redis.from_url(bus_settings.redis_url)
    ns = bus_settings.broker_namespace
    stats = {"role": "active", "name": "host:42", "batches": 12, "batches_per_s": 3.5,
             "intents_per_s": 1200.5, "rows": 6_000_000, "lag_ms": 400.0,
             "commit_ms_p50": 8.5, "commit_ms_p99": 31.0, "db_share": 0.42, "db_budget": 0.5}
    # Given the stats of a writer that published a moment ago, its lanes empty
    client.set(writer_stats_key(ns), json.dumps({**stats, "at": time.time()}))
    snapshot = take_snapshot(client, bus_settings)
    # Then the lag is 0 (nothing waits), not the last batch's age, and it fits 80 columns
    assert snapshot.lag_ms == 0
    text = _text(render(snapshot), 80)
    assert "active" in text
    assert "400" not in text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    # Given stats published 100 s ago by a writer whose heartbeat stopped then too
    client.set(writer_stats_key(ns), json.dumps({**stats, "at": time.time() - 100,
                                                 "broker_id": "gone"}))
    client.zadd(heartbeats_key(ns), {"gone": (time.time() - 100) * 1000})
    text = _text(render(take_snapshot(client, bus_settings)), 80)
    # Then the panel says so rather than "active"
    assert re.search(r"no writer seen for (99|100|101) s", text), text
    # Given the stats a writer published as it stopped
    client.set(writer_stats_key(ns), json.dumps({**stats, "role": "stopped", "at": time.time()}))
    text = _text(render(take_snapshot(client, bus_settings)), 80)
    assert "writer: stopped" in text
    client.close()
