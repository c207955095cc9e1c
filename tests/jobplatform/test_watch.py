from __future__ import annotations

import json
import time
import uuid

import redis
from click.testing import CliRunner

from jobplatform.cli import cli
from jobplatform.progress import ProgressStore, writer_stats_key


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
